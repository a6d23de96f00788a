//! The `sluicegate` binary: registers the in-tree adapters and runs the CLI.

use std::process::ExitCode;

use sluicegate_core::Registry;

fn main() -> ExitCode {
    let mut registry = Registry::new();
    sluicegate_adapters_http::register(&mut registry);
    sluicegate_sinks_duckdb::register(&mut registry);
    sluicegate_cli::exit_code(sluicegate_cli::main_with(registry))
}
