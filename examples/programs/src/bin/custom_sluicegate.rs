//! The `sluicegate` command line with a third-party adapter crate added: the
//! in-tree adapters and `sluicegate-adapter-files`, each registered with one
//! explicit call, then the whole CLI (`sync-api` and the rest) through
//! `main_with`.

use std::process::ExitCode;

use sluicegate_core::Registry;

fn main() -> ExitCode {
    let mut registry = Registry::new();
    sluicegate_adapters_http::register(&mut registry);
    sluicegate_adapters_db::register(&mut registry);
    sluicegate_sinks_duckdb::register(&mut registry);
    sluicegate_sinks_cms::register(&mut registry);
    sluicegate_adapter_files::register(&mut registry);
    sluicegate_cli::exit_code(sluicegate_cli::main_with(registry))
}
