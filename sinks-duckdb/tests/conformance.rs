//! The `duckdb` sink passes the testkit's sink suite on a real database file.

use std::sync::Arc;

use serde_json::json;
use sluicegate_core::{BuildContext, into_record};
use sluicegate_sinks_duckdb::{DuckDbSink, DuckDbSinkConfig};
use sluicegate_testkit::{SinkCase, check_sink};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_duckdb_sink_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let open = |dry_run: bool, file: &str| {
        let mut ctx = BuildContext::new("", dry_run);
        ctx.base_dir = dir.path().to_owned();
        Arc::new(DuckDbSink::open(&DuckDbSinkConfig::new(file), &ctx).unwrap())
    };
    // A dry run against a database that does not exist must not create it.
    let dry = open(true, "conformance.duckdb");
    let sink = open(false, "conformance.duckdb");
    let make = |id: u64, version: u64| {
        into_record(
            json!({"id": id, "name": format!("item {id}"), "version": version, "tags": ["a", version]}),
        )
    };
    check_sink(SinkCase::new("duckdb", sink, dry, "items", "id", make)).await;
}
