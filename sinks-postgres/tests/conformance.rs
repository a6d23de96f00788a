//! The `postgres` sink passes the testkit's sink suite on a real PostgreSQL
//! (started by the test harness).

use std::sync::Arc;

use serde_json::json;
use sluicegate_core::{BuildContext, into_record};
use sluicegate_examples::dbserver;
use sluicegate_sinks_postgres::{PostgresSink, PostgresSinkConfig};
use sluicegate_testkit::{SinkCase, check_sink};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_sink_conforms() {
    let url = dbserver::postgres()
        .fresh_database("sink_conformance")
        .await;
    let open = |dry_run: bool| {
        let url = url.clone();
        async move {
            Arc::new(
                PostgresSink::connect(
                    &PostgresSinkConfig::new(url),
                    &BuildContext::new("", dry_run),
                )
                .await
                .unwrap(),
            )
        }
    };
    let dry = open(true).await;
    let sink = open(false).await;
    let make = |id: u64, version: u64| {
        into_record(
            json!({"id": id, "name": format!("item {id}"), "version": version, "tags": ["a", version]}),
        )
    };
    let invalid = into_record(json!({"id": 999, "name": "nul \u{0} inside"}));
    check_sink(
        SinkCase::new("postgres", sink, dry, "items", "id", make)
            .compares_content()
            .invalid(invalid),
    )
    .await;
}
