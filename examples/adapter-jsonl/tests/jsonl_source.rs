//! The example adapter through the real pipeline, registry and checkpoints.

use std::io::Write;
use std::sync::Arc;

use serde_json::json;
use sluicegate_core::testing::MemorySink;
use sluicegate_core::{
    BuildContext, CheckpointStore, MemoryBudget, MemoryCheckpointStore, Pipeline, PipelineOptions,
    Registry, RunStats, Sink, StreamTarget,
};

fn write_lines(dir: &std::path::Path, lines: &[String]) {
    let mut f = std::fs::File::create(dir.join("events.jsonl")).unwrap();
    for l in lines {
        writeln!(f, "{l}").unwrap();
    }
}

async fn build(
    registry: &Registry,
    dir: &std::path::Path,
    raw: serde_json::Value,
) -> Arc<dyn sluicegate_core::Source> {
    let mut ctx = BuildContext::new("events", false);
    ctx.base_dir = dir.to_owned();
    registry
        .source("jsonl")
        .unwrap()
        .prepare(raw, "syncs[events].source", ctx)
        .unwrap()
        .build()
        .await
        .unwrap()
}

#[tokio::test]
async fn reads_every_line_and_resumes_after_a_failed_write() {
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<String> = (0..250)
        .map(|i| json!({"id": i, "name": format!("event {i}")}).to_string())
        .collect();
    write_lines(dir.path(), &lines);
    let mut registry = Registry::new();
    sluicegate_adapter_jsonl::register(&mut registry);
    let raw = json!({"path": "events.jsonl", "linesPerPage": 40});
    let checkpoints = Arc::new(MemoryCheckpointStore::default());

    // The fourth write fails: three pages (120 lines) are committed.
    let failing = MemorySink::new().failing_on_write(4);
    let target = StreamTarget::new("events", "events", Some("id".to_owned()));
    let source = build(&registry, dir.path(), raw.clone()).await;
    let err = Pipeline::new(
        "events",
        "events",
        source,
        failing.open(target.clone()).await.unwrap(),
    )
    .budget(MemoryBudget::new(1 << 20))
    .options(PipelineOptions {
        batch_rows: 40,
        ..PipelineOptions::default()
    })
    .checkpoints(checkpoints.clone())
    .run()
    .await
    .unwrap_err();
    assert!(err.to_string().contains("injected write failure"), "{err}");
    let saved = checkpoints.load("events", "events").unwrap().unwrap();
    assert_eq!(saved.as_value()["line"], 120);

    // The rerun starts at line 121 and ends with every line exactly once.
    let sink = MemorySink::new();
    let source = build(&registry, dir.path(), raw).await;
    let stats = Arc::new(RunStats::default());
    let report = Pipeline::new("events", "events", source, sink.open(target).await.unwrap())
        .checkpoints(checkpoints)
        .stats(stats.clone())
        .run()
        .await
        .unwrap();
    assert_eq!(
        stats.rows_read(),
        130,
        "only the unwritten lines are read again"
    );
    assert_eq!(report.total_rows, Some(130));
    let ids: Vec<u64> = sink.tables()["events"]
        .values()
        .map(|r| r["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids.len(), 130);
    assert_eq!(ids.iter().min(), Some(&120));
}

#[tokio::test]
async fn a_bad_line_is_named_and_unknown_keys_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    write_lines(dir.path(), &["{\"id\": 1}".into(), "[1, 2]".into()]);
    let mut registry = Registry::new();
    sluicegate_adapter_jsonl::register(&mut registry);
    let source = build(&registry, dir.path(), json!({"path": "events.jsonl"})).await;
    let sink = MemorySink::new();
    let target = StreamTarget::new("events", "events", None);
    let err = Pipeline::new("events", "events", source, sink.open(target).await.unwrap())
        .run()
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("jsonl source: line 2 is not a JSON object but an array"),
        "{err}"
    );

    let err = registry
        .source("jsonl")
        .unwrap()
        .prepare(
            json!({"path": "x", "linesPerPag": 5}),
            "syncs[events].source",
            BuildContext::new("events", true),
        )
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("unknown field `linesPerPag`"),
        "{err}"
    );
}
