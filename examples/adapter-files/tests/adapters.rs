//! The example adapter through the real pipeline, registry and checkpoints.

use std::io::Write;
use std::sync::Arc;

use futures::StreamExt;
use serde_json::json;
use sluicegate_core::{
    BuildContext, CheckpointStore, MemoryBudget, MemoryCheckpointStore, Registry, RunStats, Sink,
    StreamTarget,
};
use sluicegate_engine::{Pipeline, PipelineOptions};
use sluicegate_testkit::doubles::MemorySink;

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
    sluicegate_adapter_files::register(&mut registry);
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
    .options(
        PipelineOptions::default()
            .with_batch_rows(40)
            .with_transform_rows(None),
    )
    .checkpoints(checkpoints.clone())
    .run()
    .await
    .unwrap_err();
    assert!(err.to_string().contains("injected write failure"), "{err}");
    let saved = checkpoints.load("events", "events").unwrap().unwrap();
    assert_eq!(saved.as_value()["line"], 120);
    assert_eq!(saved.as_value()["file"], "events.jsonl");

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
    sluicegate_adapter_files::register(&mut registry);
    let source = build(&registry, dir.path(), json!({"path": "events.jsonl"})).await;
    let sink = MemorySink::new();
    let target = StreamTarget::new("events", "events", None);
    let err = Pipeline::new("events", "events", source, sink.open(target).await.unwrap())
        .run()
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("jsonl source: events.jsonl line 2 is not a JSON object but an array"),
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

#[tokio::test]
async fn a_directory_is_read_file_by_file_and_resumes_inside_a_file() {
    let dir = tempfile::tempdir().unwrap();
    for (name, ids) in [
        ("b.jsonl", 10..20),
        ("a.jsonl", 0..10),
        ("c.ndjson", 20..25),
    ] {
        let mut f = std::fs::File::create(dir.path().join(name)).unwrap();
        for i in ids {
            writeln!(f, "{}", json!({"id": i})).unwrap();
        }
    }
    std::fs::write(dir.path().join("notes.txt"), "not read").unwrap();
    let mut registry = Registry::new();
    sluicegate_adapter_files::register(&mut registry);
    let raw = json!({"path": ".", "linesPerPage": 4});
    let read = |resume: Option<sluicegate_core::Position>| {
        let registry = &registry;
        let raw = raw.clone();
        let dir = dir.path().to_owned();
        async move {
            let source = build(registry, &dir, raw).await;
            let mut request =
                sluicegate_core::ReadRequest::new("events", MemoryBudget::new(1 << 20));
            request.resume_from = resume;
            let mut stream = source.read(request);
            let mut out = Vec::new();
            while let Some(batch) = stream.next().await {
                let batch = batch.unwrap();
                let pos = batch.position().cloned();
                for r in batch.records() {
                    out.push((r["id"].as_u64().unwrap(), pos.clone()));
                }
            }
            out
        }
    };
    let all = read(None).await;
    let ids: Vec<u64> = all.iter().map(|(id, _)| *id).collect();
    assert_eq!(
        ids,
        (0..25).collect::<Vec<_>>(),
        "files in name order, other files skipped"
    );
    // Resume from the position after id 13 (inside b.jsonl).
    let position = all
        .iter()
        .find(|(id, _)| *id == 13)
        .unwrap()
        .1
        .clone()
        .unwrap();
    assert_eq!(position.as_value()["file"], "b.jsonl");
    let rest: Vec<u64> = read(Some(position))
        .await
        .iter()
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(rest, (14..25).collect::<Vec<_>>());
}

#[tokio::test]
async fn the_json_files_sink_upserts_and_a_dry_run_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut registry = Registry::new();
    sluicegate_adapter_files::register(&mut registry);
    let sink_for = |dry_run: bool| {
        let mut ctx = BuildContext::new("", dry_run);
        ctx.base_dir = dir.path().to_owned();
        registry
            .sink("json_files")
            .unwrap()
            .prepare(json!({"dir": "store"}), "sinks.store", ctx)
            .unwrap()
    };
    let budget = MemoryBudget::new(1 << 20);
    let batch = |records: Vec<serde_json::Value>| {
        let records: Vec<sluicegate_core::Record> = records
            .into_iter()
            .map(sluicegate_core::into_record)
            .collect();
        let budget = budget.clone();
        async move { sluicegate_core::Batch::new(records, budget.acquire(1).await.unwrap()) }
    };
    let target = StreamTarget::new("people", "people", Some("id".to_owned()));

    let dry = sink_for(true).build().await.unwrap();
    let mut w = dry.open(target.clone()).await.unwrap();
    let ack = w
        .write(batch(vec![json!({"id": "a/1", "n": 1})]).await)
        .await
        .unwrap();
    assert_eq!(ack.inserted, 1);
    assert!(
        !dir.path().join("store").exists(),
        "a dry run creates nothing"
    );

    let sink = sink_for(false).build().await.unwrap();
    let mut w = sink.open(target.clone()).await.unwrap();
    let ack = w
        .write(
            batch(vec![
                json!({"id": "a/1", "n": 1}),
                json!({"id": 2, "n": 2}),
                json!({"n": 3}),
            ])
            .await,
        )
        .await
        .unwrap();
    assert_eq!((ack.inserted, ack.failed), (2, 1));
    let ack = w
        .write(
            batch(vec![
                json!({"id": "a/1", "n": 1}),
                json!({"id": 2, "n": 20}),
                json!({"id": 2, "n": 21}),
            ])
            .await,
        )
        .await
        .unwrap();
    assert_eq!((ack.unchanged, ack.updated, ack.duplicates), (1, 1, 1));
    let summary = w.finish().await.unwrap();
    assert_eq!(summary.total_rows, Some(2));
    let stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("store/people/2.json")).unwrap())
            .unwrap();
    assert_eq!(stored, json!({"id": 2, "n": 21}), "the last duplicate wins");
    assert!(dir.path().join("store/people/a%2F1.json").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_adapters_pass_the_testkit_suites() {
    use sluicegate_testkit::{SinkCase, SourceCase, check_sink, check_source};
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<String> = (0..2_000)
        .map(|i| json!({"id": i, "body": "x".repeat(80)}).to_string())
        .collect();
    write_lines(dir.path(), &lines);
    let mut registry = Registry::new();
    sluicegate_adapter_files::register(&mut registry);
    let source = build(
        &registry,
        dir.path(),
        json!({"path": "events.jsonl", "linesPerPage": 100}),
    )
    .await;
    check_source(SourceCase::new("jsonl", source, 2_000).small_budget(32 * 1024)).await;

    let sink = |dry_run: bool| {
        let mut ctx = BuildContext::new("", dry_run);
        ctx.base_dir = dir.path().to_owned();
        let registry = &registry;
        async move {
            registry
                .sink("json_files")
                .unwrap()
                .prepare(json!({"dir": "store"}), "sinks.store", ctx)
                .unwrap()
                .build()
                .await
                .unwrap()
        }
    };
    let make =
        |id: u64, version: u64| sluicegate_core::into_record(json!({"id": id, "v": version}));
    let case = SinkCase::new(
        "json_files",
        sink(false).await,
        sink(true).await,
        "items",
        "id",
        make,
    )
    .compares_content()
    .invalid(sluicegate_core::into_record(json!({"name": "no id"})));
    check_sink(case).await;
}
