//! The configuration file parser and validation (no I/O) on arbitrary text:
//! a mistake is an error, never a panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use sluicegate_cli::config_file::ConfigFile;

fuzz_target!(|text: &str| {
    if let Ok(config) = ConfigFile::parse(text, Path::new("fuzz.yaml")) {
        let _ = config.select(&[]);
        for entry in &config.syncs {
            let _ = entry.mapping();
            let _ = entry.table();
        }
    }
});
