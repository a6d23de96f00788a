//! DuckDB failing fatally in the middle of a run: the sink opens the database
//! again, the stream goes on from its last committed batch, other streams of
//! the sink are not affected, and every record lands exactly once.
//!
//! The failure is real: DuckDB's own `debug_checkpoint_abort` setting makes a
//! checkpoint fail, which invalidates the database (the fail point in
//! `sink.rs` only chooses the moment).

use std::path::Path;
use std::sync::Arc;

use fail::FailScenario;
use serde_json::{Value, json};
use sluicegate_core::{
    Batch, BuildContext, MemoryBudget, MemoryCheckpointStore, Sink, StreamTarget, into_record,
};
use sluicegate_engine::{Pipeline, PipelineOptions};
use sluicegate_sinks_duckdb::{DuckDbSink, DuckDbSinkConfig};
use sluicegate_testkit::doubles::{VecSource, numbered_records};

fn sink(dir: &Path) -> DuckDbSink {
    let ctx = BuildContext::new("", false)
        .with_template_scope(json!({}))
        .with_base_dir(dir.to_path_buf());
    DuckDbSink::open(&DuckDbSinkConfig::new("test.duckdb"), &ctx).unwrap()
}

async fn batch(records: Vec<Value>) -> Batch {
    let budget = MemoryBudget::unlimited();
    Batch::new(
        records.into_iter().map(into_record).collect(),
        budget.acquire(1024).await.unwrap(),
    )
}

fn count(dir: &Path, sql: &str) -> Vec<i64> {
    let conn = duckdb::Connection::open(dir.join("test.duckdb")).unwrap();
    let mut stmt = conn.prepare(sql).unwrap();
    stmt.query_row([], |r| {
        let n = r.as_ref().column_count();
        (0..n).map(|i| r.get::<_, i64>(i)).collect()
    })
    .unwrap()
}

/// Each batch passes the fail point twice (before `BEGIN`, before `COMMIT`):
/// the actions that fail the third batch at `at`.
fn third_batch(at: &str) -> String {
    let skip = if at == "begin" { 4 } else { 5 };
    format!("{skip}*off->1*return({at})")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_error_reopens_the_database_and_the_stream_resumes_exactly_once() {
    for at in ["begin", "commit"] {
        let scenario = FailScenario::setup();
        let dir = tempfile::tempdir().unwrap();
        let sink = sink(dir.path());
        // Another stream's writer, open before DuckDB fails and used after.
        let mut other = sink
            .open(StreamTarget::new("other", "other", Some("id".into())))
            .await
            .unwrap();
        other
            .write(batch(vec![json!({"id": 1, "v": "before"})]).await)
            .await
            .unwrap();

        fail::cfg("duckdb-sink-fatal", &third_batch(at)).unwrap();
        let source = Arc::new(VecSource::new(numbered_records(1000), 100));
        let writer = sink
            .open(StreamTarget::new("events", "events", None))
            .await
            .unwrap();
        let store = Arc::new(MemoryCheckpointStore::default());
        let mut pipeline = Pipeline::new("events", "events", source, writer)
            .options(PipelineOptions::default().with_batch_rows(100))
            .checkpoints(store);
        assert_eq!(pipeline.resume_point().await.unwrap(), None);
        let summary = pipeline.run().await.unwrap_or_else(|e| panic!("{at}: {e}"));
        fail::remove("duckdb-sink-fatal");
        assert_eq!(
            (summary.ack.rows, summary.ack.inserted),
            (1000, 1000),
            "{at}"
        );
        assert_eq!(sink.reopened(), 1, "{at}: DuckDB failed once");

        let ack = other
            .write(batch(vec![json!({"id": 2, "v": "after"})]).await)
            .await
            .unwrap();
        assert_eq!(ack.inserted, 1, "{at}");
        other.finish().await.unwrap();
        drop(sink);
        assert_eq!(
            count(
                dir.path(),
                "SELECT count(*), count(DISTINCT id), min(id), max(id) FROM events"
            ),
            vec![1000, 1000, 0, 999],
            "{at}: every record exactly once"
        );
        assert_eq!(count(dir.path(), "SELECT count(*) FROM other"), vec![2]);
        scenario.teardown();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_positions_a_keyed_batch_is_written_again_and_an_unkeyed_one_is_an_error() {
    let scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let sink = sink(dir.path());
    let records = |from: i64| {
        (from..from + 10)
            .map(|i| json!({"id": i, "name": format!("n{i}")}))
            .collect::<Vec<_>>()
    };

    // Keyed upserts are idempotent: the batch is written again.
    let mut keyed = sink
        .open(StreamTarget::new("keyed", "keyed", Some("id".into())))
        .await
        .unwrap();
    fail::cfg("duckdb-sink-fatal", "1*off->1*return(commit)").unwrap();
    keyed.write(batch(records(0)).await).await.unwrap();
    fail::remove("duckdb-sink-fatal");
    keyed.write(batch(records(5)).await).await.unwrap();
    keyed.finish().await.unwrap();
    assert_eq!(sink.reopened(), 1);

    // Rows without a key or positions: DuckDB committed the batch and failed;
    // the sink cannot tell, so it says so instead of doubling or dropping it.
    let mut unkeyed = sink
        .open(StreamTarget::new("unkeyed", "unkeyed", None))
        .await
        .unwrap();
    fail::cfg("duckdb-sink-fatal", "1*off->1*return(commit)").unwrap();
    let err = unkeyed
        .write(batch(records(0)).await)
        .await
        .expect_err("unknowable outcome");
    fail::remove("duckdb-sink-fatal");
    let text = format!("{err:#}");
    assert!(
        text.contains("whether this batch committed is unknown") && text.contains("unkeyed"),
        "{text}"
    );
    assert_eq!(sink.reopened(), 2);
    // The reopened database goes on working for the next batch.
    unkeyed.write(batch(records(100)).await).await.unwrap();
    drop(unkeyed);
    drop(sink);
    assert_eq!(
        count(
            dir.path(),
            "SELECT count(*), count(DISTINCT id), min(id), max(id) FROM keyed"
        ),
        vec![15, 15, 0, 14]
    );
    assert_eq!(
        count(dir.path(), "SELECT count(*) FROM unkeyed"),
        vec![20],
        "the first batch had committed (DuckDB says so), the second too"
    );
    scenario.teardown();
}
