//! The `postgres` sink against a real PostgreSQL (started by the test
//! harness): exact types, schema evolution, deletions, and several writers on
//! one table at once.

use std::sync::Arc;

use serde_json::{Value, json};
use sluicegate_core::{
    Batch, BuildContext, DeleteMode, MemoryBudget, Sink, StreamTarget, into_record,
};
use sluicegate_examples::dbserver;
use sluicegate_sinks_postgres::{PostgresSink, PostgresSinkConfig};

async fn sink(url: &str) -> Arc<PostgresSink> {
    Arc::new(
        PostgresSink::connect(&PostgresSinkConfig::new(url), &BuildContext::new("", false))
            .await
            .unwrap(),
    )
}

fn target(table: &str, key: Option<&str>) -> StreamTarget {
    StreamTarget::new(table, table, key.map(str::to_owned))
}

async fn batch(records: Vec<Value>) -> Batch {
    let budget = MemoryBudget::unlimited();
    Batch::new(
        records.into_iter().map(into_record).collect(),
        budget.acquire(1024).await.unwrap(),
    )
}

/// `sql`'s rows as JSON (each row `to_jsonb`'d by the server, so values come
/// back with their exact text).
async fn rows(url: &str, sql: &str) -> Vec<Value> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .query(&format!("SELECT to_jsonb(q)::text FROM ({sql}) q"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| serde_json::from_str(&r.get::<_, String>(0)).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_stay_exact_and_columns_widen_as_values_change() {
    let url = dbserver::postgres().fresh_database("sink_types").await;
    let sink = sink(&url).await;
    let mut writer = sink.open(target("t", Some("id"))).await.unwrap();
    let first: Vec<Value> = serde_json::from_str(
        r#"[{"id": 1, "n": 5, "x": 0.30000000000000004, "flag": true, "doc": {"b": [1, 2.50]}, "s": "ünï \"q\""},
            {"id": 2, "n": 7, "x": 1e400, "flag": false, "doc": [], "s": "b"}]"#,
    )
    .unwrap();
    writer.write(batch(first).await).await.unwrap();
    // Later: n gets a 30-digit integer, flag a string, a new field appears.
    let later: Vec<Value> = serde_json::from_str(
        r#"[{"id": 3, "n": 123456789012345678901234567890, "flag": "maybe", "late": "yes"}]"#,
    )
    .unwrap();
    writer.write(batch(later).await).await.unwrap();
    writer.finish().await.unwrap();
    let types = rows(
        &url,
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 't' ORDER BY ordinal_position",
    )
    .await;
    assert_eq!(
        types,
        [
            json!({"column_name": "id", "data_type": "bigint"}),
            json!({"column_name": "n", "data_type": "numeric"}),
            json!({"column_name": "x", "data_type": "numeric"}),
            json!({"column_name": "flag", "data_type": "text"}),
            json!({"column_name": "doc", "data_type": "jsonb"}),
            json!({"column_name": "s", "data_type": "text"}),
            json!({"column_name": "late", "data_type": "text"}),
        ]
    );
    let values = rows(
        &url,
        "SELECT n::text, x::text, flag, doc::text, s FROM t ORDER BY id",
    )
    .await;
    assert_eq!(values[0]["x"], json!("0.30000000000000004"));
    assert_eq!(values[0]["flag"], json!("true"));
    assert_eq!(values[0]["doc"], json!("{\"b\": [1, 2.50]}"));
    assert_eq!(values[0]["s"], json!("ünï \"q\""));
    assert_eq!(
        values[1]["x"].as_str().unwrap().len(),
        401,
        "1e400, every digit"
    );
    assert_eq!(values[2]["n"], json!("123456789012345678901234567890"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_writers_on_overlapping_keys_end_with_every_row_once_and_no_deadlock() {
    let url = dbserver::postgres().fresh_database("sink_concurrent").await;
    let sink = sink(&url).await;
    // Each writer upserts every key 0..2000 in its own order, in batches of
    // 250, with a field of its own, so keys, columns and row locks overlap.
    let mut tasks = Vec::new();
    for w in 0..4u64 {
        let sink = sink.clone();
        tasks.push(tokio::spawn(async move {
            let mut writer = sink.open(target("shared", Some("id"))).await.unwrap();
            let mut ids: Vec<u64> = (0..2_000).collect();
            if w % 2 == 1 {
                ids.reverse();
            }
            for chunk in ids.chunks(250) {
                let records = chunk
                    .iter()
                    .map(|id| json!({"id": id, "writer": w, format!("from_{w}"): id * 10}))
                    .collect();
                writer.write(batch(records).await).await.unwrap();
            }
            writer.finish().await.unwrap()
        }));
    }
    for task in tasks {
        let summary = task.await.unwrap();
        assert!(summary.total_rows.is_some());
    }
    let counts = rows(
        &url,
        "SELECT count(*) AS n, count(DISTINCT id) AS ids FROM shared",
    )
    .await;
    assert_eq!(counts, [json!({"n": 2000, "ids": 2000})]);
    // Every row is one writer's whole record: its own field set, the others null.
    let mixed = rows(
        &url,
        "SELECT count(*) AS n FROM shared WHERE \
         (from_0 IS NOT NULL)::int + (from_1 IS NOT NULL)::int + (from_2 IS NOT NULL)::int + (from_3 IS NOT NULL)::int <> 1 \
         OR (writer = 0 AND from_0 IS NULL) OR (writer = 1 AND from_1 IS NULL) \
         OR (writer = 2 AND from_2 IS NULL) OR (writer = 3 AND from_3 IS NULL)",
    )
    .await;
    assert_eq!(mixed, [json!({"n": 0})]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_it_cannot_store_are_rejected_alone_and_keys_delete_hard_or_soft() {
    let url = dbserver::postgres().fresh_database("sink_rejects").await;
    let sink = sink(&url).await;
    let mut writer = sink.open(target("r", Some("id"))).await.unwrap();
    let long = "f".repeat(64);
    let ack = writer
        .write(
            batch(vec![
                json!({"id": 1, "a": "ok"}),
                json!({"a": "no key"}),
                json!({"id": 2, long: 1}),
                json!({"id": 3, "a": "nul\u{0}"}),
                json!({"id": 4, "a": "ok"}),
                json!({"id": 4, "a": "last wins"}),
            ])
            .await,
        )
        .await
        .unwrap();
    assert_eq!(
        (ack.rows, ack.inserted, ack.failed, ack.duplicates),
        (6, 2, 3, 1)
    );
    let ext = writer.extension().unwrap();
    let keys = ext.target_keys(None).await.unwrap();
    assert_eq!(keys.keys, ["1", "4"]);
    assert_eq!(
        ext.delete_keys(&["4".into()], DeleteMode::Soft)
            .await
            .unwrap(),
        1
    );
    assert_eq!(ext.target_keys(None).await.unwrap().keys, ["1"]);
    assert_eq!(
        ext.delete_keys(&["1".into()], DeleteMode::Hard)
            .await
            .unwrap(),
        1
    );
    // A soft-deleted key written again is live again.
    writer
        .write(batch(vec![json!({"id": 4, "a": "back"})]).await)
        .await
        .unwrap();
    writer.finish().await.unwrap();
    assert_eq!(
        rows(
            &url,
            "SELECT id, a, _deleted_at IS NULL AS live FROM r ORDER BY id"
        )
        .await,
        [json!({"id": 4, "a": "back", "live": true})]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_key_rows_are_appended_in_order_and_a_dry_run_writes_nothing() {
    let url = dbserver::postgres().fresh_database("sink_append").await;
    let dry = Arc::new(
        PostgresSink::connect(&PostgresSinkConfig::new(&url), &BuildContext::new("", true))
            .await
            .unwrap(),
    );
    let mut planned = dry.open(target("log", None)).await.unwrap();
    let ack = planned
        .write(batch(vec![json!({"event": "a"})]).await)
        .await
        .unwrap();
    assert_eq!(ack.inserted, 1);
    planned.finish().await.unwrap();
    assert_eq!(
        rows(&url, "SELECT to_regclass('public.log') IS NULL AS absent").await,
        [json!({"absent": true})],
        "a dry run created nothing"
    );
    let sink = sink(&url).await;
    for _ in 0..2 {
        let mut writer = sink.open(target("log", None)).await.unwrap();
        let ack = writer
            .write(batch((0..3).map(|i| json!({"event": i})).collect()).await)
            .await
            .unwrap();
        assert_eq!((ack.rows, ack.inserted), (3, 3));
        writer.finish().await.unwrap();
    }
    assert_eq!(
        rows(
            &url,
            "SELECT count(*) AS n, count(DISTINCT event) AS events FROM log"
        )
        .await,
        [json!({"n": 6, "events": 3})],
        "appended twice, without a key"
    );
}
