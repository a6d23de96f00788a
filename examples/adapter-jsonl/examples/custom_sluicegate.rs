//! The `sluicegate` command line with one more source type: the in-tree adapters
//! plus `jsonl`, registered explicitly, then the whole CLI through `main_with`.

use std::process::ExitCode;

use sluicegate_core::Registry;

fn main() -> ExitCode {
    let mut registry = Registry::new();
    sluicegate_adapters_http::register(&mut registry);
    sluicegate_adapters_db::register(&mut registry);
    sluicegate_sinks_duckdb::register(&mut registry);
    sluicegate_sinks_cms::register(&mut registry);
    sluicegate_adapter_jsonl::register(&mut registry);
    sluicegate_cli::exit_code(sluicegate_cli::main_with(registry))
}
