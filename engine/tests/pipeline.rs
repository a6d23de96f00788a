//! The pipeline against the in-memory test doubles: regrouping, checkpoints,
//! resume after a sink failure, classic-mode memory errors and backpressure.

use std::sync::Arc;
use std::time::Duration;

use sluicegate_core::{
    CheckpointStore, ErrorKind, MemoryBudget, MemoryCheckpointStore, Position, Sink, StreamTarget,
    WhenFull,
};
use sluicegate_engine::{Pipeline, PipelineOptions, ReadMode};
use sluicegate_testkit::doubles::{MemorySink, VecSource, numbered_records};

fn target() -> StreamTarget {
    StreamTarget::new("numbers", "numbers", Some("id".into()))
}

fn options(mode: ReadMode, batch_rows: usize) -> PipelineOptions {
    PipelineOptions::default()
        .with_mode(mode)
        .with_batch_rows(batch_rows)
        .with_linger(Duration::from_millis(200))
}

/// A pipeline from `source` into a writer of `sink` for the `numbers` stream.
async fn pipeline(sink: &MemorySink, source: Arc<VecSource>) -> Pipeline {
    let writer = sink.open(target()).await.unwrap();
    Pipeline::new("numbers", "numbers", source, writer)
}

#[tokio::test]
async fn streaming_regroups_pages_into_sink_batches_and_writes_everything() {
    let sink = MemorySink::new();
    let source = Arc::new(VecSource::new(numbered_records(1000), 30));
    let store = Arc::new(MemoryCheckpointStore::default());
    let report = pipeline(&sink, source)
        .await
        .checkpoints(store.clone())
        .options(options(ReadMode::Streaming, 100))
        .run()
        .await
        .unwrap();
    assert_eq!(report.ack.rows, 1000);
    assert_eq!(report.ack.inserted, 1000);
    // 34 pages of 30 regrouped into batches of at most 100 records.
    assert!(
        report.batches >= 10 && report.batches <= 12,
        "{}",
        report.batches
    );
    assert_eq!(report.total_rows, Some(1000));
    assert_eq!(sink.tables()["numbers"].len(), 1000);
    assert_eq!(
        store.load("numbers", "numbers").unwrap(),
        None,
        "completed streams clear their checkpoint"
    );
}

/// A sink batch is full at `batch_bytes` before it has `batch_rows` records:
/// at one byte every page of 30 records goes on by itself; without it (or
/// with more than the budget's half) the rows make the batch.
#[tokio::test]
async fn streaming_batches_are_full_at_their_bytes_before_their_rows() {
    for (bytes, batches) in [(Some(1), 34), (None, 1), (Some(usize::MAX), 1)] {
        let sink = MemorySink::new();
        let source = Arc::new(VecSource::new(numbered_records(1000), 30));
        let report = pipeline(&sink, source)
            .await
            .budget(MemoryBudget::new(64 << 20))
            .options(
                options(ReadMode::Streaming, 1000)
                    .with_batch_bytes(bytes)
                    .with_linger(Duration::from_secs(30)),
            )
            .run()
            .await
            .unwrap();
        assert_eq!(report.batches, batches, "batch bytes {bytes:?}");
        assert_eq!(sink.tables()["numbers"].len(), 1000);
    }
}

#[tokio::test]
async fn a_sink_failure_keeps_the_last_acknowledged_position_and_a_rerun_resumes_exactly() {
    let store = Arc::new(MemoryCheckpointStore::default());
    let sink = MemorySink::new().failing_on_write(4);
    let source = Arc::new(VecSource::new(numbered_records(1000), 50));

    let err = pipeline(&sink, source.clone())
        .await
        .checkpoints(store.clone())
        .options(options(ReadMode::Streaming, 100))
        .run()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Sink);
    assert_eq!(err.context_value("sync"), Some("numbers"));
    assert!(err.context_value("pages").is_some(), "{err}");

    // Three batches of 100 were acknowledged before the fourth failed.
    let committed = store.load("numbers", "numbers").unwrap();
    assert_eq!(
        committed,
        Some(Position::new(serde_json::json!({"offset": 300})))
    );
    assert_eq!(sink.tables()["numbers"].len(), 300);

    let report = pipeline(&sink, source)
        .await
        .checkpoints(store.clone())
        .options(options(ReadMode::Streaming, 100))
        .run()
        .await
        .unwrap();
    assert_eq!(report.resumed_from, committed);
    assert_eq!(report.ack.rows, 700, "only the rest is read again");
    let table = &sink.tables()["numbers"];
    assert_eq!(table.len(), 1000);
    assert!((0..1000).all(|i| table.contains_key(&i.to_string())));
}

#[tokio::test]
async fn a_source_failure_writes_what_came_before_and_names_the_page() {
    let sink = MemorySink::new();
    let store = Arc::new(MemoryCheckpointStore::default());
    let source = Arc::new(VecSource::new(numbered_records(500), 50).failing_at_page(4));
    let err = pipeline(&sink, source)
        .await
        .checkpoints(store.clone())
        .options(options(ReadMode::Streaming, 1000))
        .run()
        .await
        .unwrap_err();
    assert_eq!(err.context_value("page"), Some("4"), "{err}");
    assert_eq!(
        sink.tables()["numbers"].len(),
        150,
        "pages 1-3 were flushed before the error"
    );
    assert_eq!(
        store.load("numbers", "numbers").unwrap(),
        Some(Position::new(serde_json::json!({"offset": 150})))
    );
}

#[tokio::test]
async fn a_panicking_source_fails_the_run_and_keeps_the_checkpoint() {
    for (on_a_task, mode) in [
        (true, ReadMode::Streaming),
        (false, ReadMode::Streaming),
        (true, ReadMode::Classic),
        (false, ReadMode::Classic),
    ] {
        let sink = MemorySink::new();
        let store = Arc::new(MemoryCheckpointStore::default());
        let mut source = VecSource::new(numbered_records(500), 50).panicking_at_page(4);
        if on_a_task {
            source = source.on_a_task();
        }
        let err = pipeline(&sink, Arc::new(source))
            .await
            .checkpoints(store.clone())
            .options(options(mode, 1000))
            .run()
            .await
            .expect_err("a panic is never the end of the data");
        let case = format!("on a task: {on_a_task}, {mode:?}");
        assert_eq!(err.kind(), ErrorKind::Contract, "{case}: {err}");
        assert!(err.to_string().contains("panicked"), "{case}: {err}");
        let written = sink.tables().get("numbers").map_or(0, |t| t.len());
        let kept = store.load("numbers", "numbers").unwrap();
        match mode {
            ReadMode::Streaming => {
                assert_eq!(written, 150, "{case}: pages 1-3 were written");
                assert_eq!(
                    kept,
                    Some(Position::new(serde_json::json!({"offset": 150}))),
                    "{case}"
                );
            }
            ReadMode::Classic => {
                assert_eq!(written, 0, "{case}: classic writes after the whole read");
                assert_eq!(kept, None, "{case}");
            }
        }
    }
}

#[tokio::test]
async fn classic_mode_stops_with_a_memory_error_when_the_source_does_not_fit() {
    let sink = MemorySink::new();
    let source = Arc::new(VecSource::new(numbered_records(20_000), 500));
    let budget = MemoryBudget::with_policy(256 * 1024, WhenFull::Fail);
    let err = pipeline(&sink, source)
        .await
        .budget(budget)
        .options(options(ReadMode::Classic, 1000))
        .run()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::MemoryLimit);
    assert!(
        err.to_string()
            .contains("classic mode reads the whole source"),
        "{err}"
    );
    assert!(
        sink.tables().is_empty(),
        "nothing is written when the read fails"
    );
}

#[tokio::test]
async fn classic_mode_writes_everything_when_it_fits() {
    let sink = MemorySink::new();
    let source = Arc::new(VecSource::new(numbered_records(2_000), 500));
    let budget = MemoryBudget::with_policy(64 << 20, WhenFull::Fail);
    let report = pipeline(&sink, source)
        .await
        .budget(budget)
        .options(options(ReadMode::Classic, 1000))
        .run()
        .await
        .unwrap();
    assert_eq!(report.ack.rows, 2000);
    assert_eq!(report.batches, 2);
}

#[tokio::test]
async fn streaming_keeps_data_in_flight_inside_the_budget() {
    let sink = MemorySink::new();
    let source = Arc::new(VecSource::new(numbered_records(50_000), 200));
    let budget = MemoryBudget::new(512 * 1024);
    let report = pipeline(&sink, source)
        .await
        .budget(budget.clone())
        .options(options(ReadMode::Streaming, 1000))
        .run()
        .await
        .unwrap();
    assert_eq!(report.ack.rows, 50_000);
    let snap = budget.snapshot();
    assert!(
        snap.peak <= snap.capacity,
        "peak {} > capacity {}",
        snap.peak,
        snap.capacity
    );
    assert!(
        snap.waits > 0,
        "a budget this small must have applied backpressure"
    );
    assert_eq!(snap.in_use, 0, "every lease is returned at the end");
}

#[derive(Default)]
struct Rejects(std::sync::Mutex<Vec<sluicegate_core::Rejected>>);

impl sluicegate_core::RunObserver for Rejects {
    fn rejected(&self, _sync_key: &str, rejected: sluicegate_core::Rejected) {
        self.0.lock().unwrap().push(rejected);
    }
}

#[tokio::test]
async fn mapping_filters_rows_and_rejects_bad_ones_without_stopping() {
    let config: sluicegate_engine::MappingConfig = serde_json::from_value(serde_json::json!({
        "filterExpression": "{{ row.id is even }}",
        "mapping": [
            {"fieldName": "id", "expression": "{{ row.id }}"},
            {"fieldName": "n", "expression": "{{ row.n | to_int }}"},
        ],
    }))
    .unwrap();
    let mapper = Arc::new(sluicegate_engine::Mapper::new(&config, &serde_json::json!({})).unwrap());
    let records: Vec<_> = (0..20)
        .map(|i| {
            let n = if i == 4 {
                "four".to_owned()
            } else {
                i.to_string()
            };
            sluicegate_core::into_record(serde_json::json!({"id": i, "n": n}))
        })
        .collect();
    let sink = MemorySink::new();
    let rejects = Arc::new(Rejects::default());
    let stats = Arc::new(sluicegate_core::RunStats::default());
    let report = pipeline(&sink, Arc::new(VecSource::new(records, 6)))
        .await
        .mapper(mapper)
        .observer(rejects.clone())
        .stats(stats.clone())
        .run()
        .await
        .unwrap();
    assert_eq!(report.ack.rows, 9, "10 even ids, one rejected");
    let snap = stats.snapshot();
    assert_eq!((snap.rows_filtered, snap.rows_rejected), (10, 1));
    let rejected = rejects.0.lock().unwrap();
    assert_eq!(rejected[0].stage, sluicegate_core::Stage::Map);
    assert!(
        rejected[0].reason.contains("'four' is not a number"),
        "{}",
        rejected[0].reason
    );
    assert_eq!(sink.tables()["numbers"]["8"]["n"], serde_json::json!("8"));
}

#[tokio::test]
async fn under_memory_pressure_batches_shrink_and_everything_is_still_written() {
    use sluicegate_engine::{MemoryMonitor, MonitorSettings};
    let monitor =
        MemoryMonitor::with_probe(MonitorSettings::new(100, 0.8, Duration::from_millis(10)), {
            // Memory that keeps growing: each sample is over the threshold and higher.
            let rss = std::sync::atomic::AtomicU64::new(90);
            move || Some(rss.fetch_add(10, std::sync::atomic::Ordering::Relaxed))
        });
    // Two samples over the threshold: batches are a quarter of their size.
    monitor.check();
    monitor.check();
    let sink = MemorySink::new();
    let source = Arc::new(VecSource::new(numbered_records(1000), 30));
    let report = pipeline(&sink, source)
        .await
        .monitor(monitor.clone())
        .options(options(ReadMode::Streaming, 400))
        .run()
        .await
        .unwrap();
    assert_eq!(report.ack.rows, 1000);
    assert_eq!(sink.tables()["numbers"].len(), 1000);
    // Batches of at most 100 records (400 / 4) instead of 400.
    assert!(report.batches >= 10, "{} batches", report.batches);
    assert_eq!(monitor.snapshot().batch_shrinks, 2);
}

#[tokio::test]
async fn pages_larger_than_the_transform_size_are_split_and_all_written() {
    let sink = MemorySink::new();
    let source = Arc::new(VecSource::new(numbered_records(1000), 100));
    let mut opts = options(ReadMode::Streaming, 30);
    let report = pipeline(&sink, source.clone())
        .await
        .options(opts.clone())
        .run()
        .await
        .unwrap();
    // `--batch-size` is a maximum: each page of 100 goes on as 30, 30, 30 and 10.
    assert_eq!(report.ack.rows, 1000);
    assert_eq!(report.batches, 40);

    let sink = MemorySink::new();
    opts.transform_rows = Some(20);
    let report = pipeline(&sink, source)
        .await
        .options(opts)
        .run()
        .await
        .unwrap();
    assert_eq!(report.ack.rows, 1000);
    assert_eq!(sink.tables()["numbers"].len(), 1000);
    // Each page of 100 is mapped as five chunks of 20; two would overflow a
    // batch of 30, so each goes on by itself.
    assert_eq!(report.batches, 50);
}

#[tokio::test]
async fn classic_mode_splits_pages_larger_than_the_batch_size() {
    let sink = MemorySink::new();
    let source = Arc::new(VecSource::new(numbered_records(2_000), 500));
    let report = pipeline(&sink, source)
        .await
        .options(options(ReadMode::Classic, 300))
        .run()
        .await
        .unwrap();
    assert_eq!(report.ack.rows, 2000);
    assert_eq!(sink.tables()["numbers"].len(), 2000);
    // Pages of 500 go on as 300 and 200 (200 + 300 would overflow).
    assert_eq!(report.batches, 8);
}

#[tokio::test]
async fn an_incremental_mark_never_passes_what_the_sink_acknowledged() {
    use sluicegate_engine::{IncrementalConfig, IncrementalRun, MemoryWindowStore, WindowStore};
    let config: IncrementalConfig = serde_json::from_value(serde_json::json!({
        "cursorField": "id", "initialValue": -1,
    }))
    .unwrap();
    let windows = Arc::new(MemoryWindowStore::default());
    let store = Arc::new(MemoryCheckpointStore::default());
    let sink = MemorySink::new().failing_on_write(4);
    let source = Arc::new(VecSource::new(numbered_records(1000), 50));
    let run = |progress: Option<serde_json::Value>| {
        let window = config.window(None).unwrap();
        Arc::new(
            IncrementalRun::new(&config, window, progress.as_ref())
                .unwrap()
                .with_store(windows.clone(), "numbers", "numbers"),
        )
    };

    let err = pipeline(&sink, source.clone())
        .await
        .checkpoints(store.clone())
        .incremental(run(None))
        .options(options(ReadMode::Streaming, 100))
        .run()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Sink);
    // Three batches of 100 (ids 0..=299) were acknowledged: the progress is
    // their highest cursor, however far the source had read ahead, and no
    // mark was set.
    let saved = windows.load("numbers", "numbers").unwrap();
    assert_eq!(saved.progress, Some(serde_json::json!(299)));
    assert_eq!(saved.last_value, None);

    let report = pipeline(&sink, source)
        .await
        .checkpoints(store.clone())
        .incremental(run(saved.progress))
        .options(options(ReadMode::Streaming, 100))
        .run()
        .await
        .unwrap();
    let incremental = report.incremental.unwrap();
    assert_eq!(incremental.to, serde_json::json!(999));
    assert_eq!(incremental.rows, 700, "the resumed run read the rest");
    assert!(incremental.committed);
    let saved = windows.load("numbers", "numbers").unwrap();
    assert_eq!(saved.last_value, Some(serde_json::json!(999)));
    assert_eq!(saved.progress, None);
}

/// Pages of JSON text: `pages` pages of `rows` records `{"id":n}`.
struct JsonTextSource {
    pages: u64,
    rows: u64,
}

impl sluicegate_core::Source for JsonTextSource {
    fn read(&self, request: sluicegate_core::ReadRequest) -> sluicegate_core::BatchStream {
        let (pages, rows) = (self.pages, self.rows);
        assert!(request.json_rows, "the writer takes JSON text");
        sluicegate_core::channel_stream(move |tx| async move {
            for page in 0..pages {
                let mut text = sluicegate_core::JsonRows::new();
                for n in page * rows..(page + 1) * rows {
                    text.push(format!(r#"{{"id":{n}}}"#).as_bytes()).unwrap();
                }
                let lease = request.budget.acquire(text.heap_bytes()).await?;
                let batch = sluicegate_core::Batch::from_json(text, lease)
                    .with_position(Some(Position::new(serde_json::json!(page))));
                tx.send(batch).await?;
            }
            Ok(())
        })
    }

    fn describe(&self) -> String {
        "pages of JSON text".into()
    }

    fn splits(&self) -> bool {
        false
    }
}

/// Tags each batch with its first key, and counts the batches it tagged.
struct FirstKey {
    prepared: tokio::sync::watch::Sender<u64>,
}

impl sluicegate_core::PrepareBatch for FirstKey {
    fn prepare(&self, batch: &mut sluicegate_core::Batch) {
        let first = batch.json_rows().and_then(|rows| rows.get(0)).unwrap();
        let first: serde_json::Value = serde_json::from_slice(first).unwrap();
        batch.set_prepared(first["id"].as_u64().unwrap());
        self.prepared.send_modify(|n| *n += 1);
    }
}

/// A writer with a preparer: each write waits until the next batch has been
/// prepared (the batch after it, if any), and notes what it got.
struct PreparedWriter {
    batches: u64,
    written: u64,
    prepared: tokio::sync::watch::Sender<u64>,
    seen: Seen,
}

/// Per batch written: the preparation it carried, and whether the next batch
/// was prepared during its write.
type Seen = Arc<std::sync::Mutex<Vec<(Option<u64>, bool)>>>;

#[async_trait::async_trait]
impl sluicegate_core::SinkWriter for PreparedWriter {
    async fn write(
        &mut self,
        mut batch: sluicegate_core::Batch,
    ) -> sluicegate_core::Result<sluicegate_core::BatchAck> {
        let tag = batch.take_prepared::<u64>();
        let next = self.written + 2;
        let overlapped = if next <= self.batches {
            let mut prepared = self.prepared.subscribe();
            tokio::time::timeout(Duration::from_secs(10), prepared.wait_for(|n| *n >= next))
                .await
                .is_ok()
        } else {
            true
        };
        self.seen.lock().unwrap().push((tag, overlapped));
        self.written += 1;
        let rows = batch.len() as u64;
        Ok(sluicegate_core::BatchAck::new(rows).with_inserted(rows))
    }

    async fn finish(self: Box<Self>) -> sluicegate_core::Result<sluicegate_core::WriterSummary> {
        Ok(sluicegate_core::WriterSummary::default())
    }

    fn extension(&mut self) -> Option<&mut dyn sluicegate_core::WriterExtension> {
        Some(self)
    }
}

#[async_trait::async_trait]
impl sluicegate_core::WriterExtension for PreparedWriter {
    async fn relieve_memory(&mut self) -> sluicegate_core::Result<sluicegate_core::MemoryRelief> {
        Ok(sluicegate_core::MemoryRelief::default())
    }

    async fn committed_position(
        &mut self,
    ) -> sluicegate_core::Result<sluicegate_core::SinkPosition> {
        Ok(sluicegate_core::SinkPosition::Unknown)
    }

    async fn forget_position(&mut self) -> sluicegate_core::Result<()> {
        Ok(())
    }

    fn delete_modes(&self) -> &'static [sluicegate_core::DeleteMode] {
        &[]
    }

    async fn target_keys(
        &mut self,
        _page: Option<serde_json::Value>,
    ) -> sluicegate_core::Result<sluicegate_core::TargetKeys> {
        Ok(sluicegate_core::TargetKeys::new(Vec::new(), None))
    }

    async fn delete_keys(
        &mut self,
        _keys: &[String],
        _mode: sluicegate_core::DeleteMode,
    ) -> sluicegate_core::Result<u64> {
        Ok(0)
    }

    fn accepts_json_rows(&self) -> bool {
        true
    }

    fn preparer(&self) -> Option<Arc<dyn sluicegate_core::PrepareBatch>> {
        Some(Arc::new(FirstKey {
            prepared: self.prepared.clone(),
        }))
    }
}

#[tokio::test]
async fn each_batch_is_prepared_while_the_one_before_is_written() {
    let (pages, rows) = (6, 50);
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let writer = PreparedWriter {
        batches: pages,
        written: 0,
        prepared: tokio::sync::watch::channel(0).0,
        seen: seen.clone(),
    };
    let source = Arc::new(JsonTextSource { pages, rows });
    let report = Pipeline::new("numbers", "numbers", source, Box::new(writer))
        .options(options(ReadMode::Streaming, rows as usize))
        .run()
        .await
        .unwrap();
    assert_eq!(report.ack.rows, pages * rows);
    let seen = seen.lock().unwrap().clone();
    let expected: Vec<(Option<u64>, bool)> = (0..pages).map(|p| (Some(p * rows), true)).collect();
    assert_eq!(
        seen, expected,
        "each batch carried its own preparation, and the next one was prepared during its write"
    );
}
