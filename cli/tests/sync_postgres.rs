//! End-to-end: the binary syncs a changing HTTP API into the `postgres` sink
//! (a real PostgreSQL started by the test harness): created, upserted with
//! unchanged rows left alone, and rows the source lost deleted.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{pg_rows, summary_row, text};
use serde_json::json;
use sluicegate_examples::changes::{ChangesServer, Item};
use sluicegate_examples::dbserver;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changing_api_lands_in_postgres_exactly_and_lost_rows_go() {
    let url = dbserver::postgres().fresh_database("e2e_pg_sink").await;
    let api = ChangesServer::start(
        (1..=500).map(|id| Item {
            id,
            name: format!("item {id}"),
            updated: Some(1_704_067_200 + id),
        }),
        "127.0.0.1:0",
        Duration::ZERO,
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sluicegate.yaml");
    std::fs::write(
        &config,
        format!(
            "version: 1
sinks:
  pg: {{ type: postgres, connectionString: \"{{{{ env.PG_URL }}}}\" }}
syncs:
  - key: items
    sink: pg
    keyField: id
    deletes: {{ mode: hard }}
    source:
      type: http
      endPoint: \"{}\"
      resultsJsonPath: \"$.data\"
      pagination: {{ skipKey: offset, limitKey: limit, pageSize: 100, totalPath: \"$.meta.total\" }}
",
            api.url()
        ),
    )
    .unwrap();
    let sync = |args: &'static [&'static str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluicegate"));
        cmd.args(["sync-api", "--all", "--streaming", "--config"])
            .arg(&config)
            .args(args)
            .env("PG_URL", &url)
            .env_remove("SLUICEGATE_MAX_MEMORY_MB");
        async move {
            tokio::task::spawn_blocking(move || cmd.output().unwrap())
                .await
                .unwrap()
        }
    };
    let table = || pg_rows(&url, "SELECT id, name, updated_at FROM items ORDER BY id");
    let first = sync(&["--apply"]).await;
    assert!(first.status.success(), "{}", text(&first.stderr));
    assert_eq!(table().await, api.records());

    api.put(Item {
        id: 7,
        name: "renamed".into(),
        updated: Some(1),
    });
    api.remove(8);
    let dry = sync(&[]).await;
    assert!(dry.status.success(), "{}", text(&dry.stderr));
    assert_eq!(table().await.len(), 500, "a dry run writes nothing");
    let second = sync(&["--apply"]).await;
    assert!(second.status.success(), "{}", text(&second.stderr));
    let stdout = text(&second.stdout);
    // key, table, rows, new, changed, unchanged
    assert_eq!(
        summary_row(&stdout, "items")[2..6],
        ["499", "0", "1", "498"],
        "{stdout}"
    );
    assert!(
        stdout
            .contains("deletes (hard): removed 1 of the target's 500 keys (not in the source): 8"),
        "{stdout}"
    );
    assert_eq!(table().await, api.records());
    assert_eq!(
        pg_rows(&url, "SELECT data_type FROM information_schema.columns WHERE table_name = 'items' AND column_name = 'id'").await,
        [json!({"data_type": "bigint"})]
    );
}
