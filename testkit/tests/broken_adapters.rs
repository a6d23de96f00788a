//! The suites catch adapters that break the contracts: each broken double
//! below must make its check fail with a message naming it.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde_json::json;
use sluicegate_core::{
    Batch, BatchAck, BatchStream, Position, ReadRequest, Record, Result, Sink, SinkCapabilities,
    SinkWriter, Source, StreamTarget, WriterExtension, WriterSummary, approx_record_size,
    channel_stream, into_record,
};
use sluicegate_testkit::doubles::{MemorySink, VecSource, numbered_records};
use sluicegate_testkit::{SinkCase, SourceCase, check_sink, check_source};

/// How a test source misbehaves.
#[derive(Clone, Copy, PartialEq)]
enum Flaw {
    None,
    /// Sends batches without leasing memory for them.
    NoLease,
    /// Starts reading (and leasing) as soon as `read` is called.
    Eager,
    /// Goes on reading after its stream is dropped.
    Detached,
    /// Starts from the beginning whatever the checkpoint says.
    IgnoresResume,
}

struct Numbers {
    flaw: Flaw,
    count: u64,
}

impl Numbers {
    async fn produce(
        flaw: Flaw,
        count: u64,
        request: ReadRequest,
        tx: sluicegate_core::BatchSender,
    ) -> Result<()> {
        let start = match (&request.resume_from, flaw) {
            (Some(p), f) if f != Flaw::IgnoresResume => p.as_value()["next"].as_u64().unwrap_or(0),
            _ => 0,
        };
        let mut i = start;
        while i < count {
            let records: Vec<Record> = (i..(i + 50).min(count))
                .map(|n| into_record(json!({"id": n, "pad": "x".repeat(200)})))
                .collect();
            i += records.len() as u64;
            let size: usize = records.iter().map(approx_record_size).sum();
            let lease = if flaw == Flaw::NoLease {
                request.budget.empty_lease()
            } else {
                request.budget.acquire(size).await?
            };
            let batch =
                Batch::new(records, lease).with_position(Some(Position::new(json!({"next": i}))));
            tx.send(batch).await?;
        }
        Ok(())
    }
}

impl Source for Numbers {
    fn read(&self, request: ReadRequest) -> BatchStream {
        let (flaw, count) = (self.flaw, self.count);
        match flaw {
            Flaw::Eager => {
                let budget = request.budget.clone();
                let early = tokio::spawn(async move { budget.acquire(1024).await });
                channel_stream(move |tx| async move {
                    drop(early.await);
                    Numbers::produce(flaw, count, request, tx).await
                })
            }
            Flaw::Detached => {
                let budget = request.budget.clone();
                // A background task the stream does not own.
                tokio::spawn(async move {
                    tokio::time::sleep(std::time::Duration::from_millis(60)).await;
                    loop {
                        let lease = budget.acquire(512).await;
                        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                        drop(lease);
                    }
                });
                channel_stream(move |tx| Numbers::produce(flaw, count, request, tx))
            }
            _ => channel_stream(move |tx| Numbers::produce(flaw, count, request, tx)),
        }
    }

    fn describe(&self) -> String {
        "numbers".into()
    }

    /// Read whole, by one shard.
    fn splits(&self) -> bool {
        false
    }
}

async fn check(flaw: Flaw) {
    let source = Arc::new(Numbers { flaw, count: 2_000 });
    check_source(SourceCase::new("numbers", source, 2_000).small_budget(32 * 1024)).await;
}

#[tokio::test]
async fn a_correct_source_passes() {
    check(Flaw::None).await;
    let vec = Arc::new(VecSource::new(numbered_records(3_000), 100));
    check_source(SourceCase::new("vec", vec, 3_000).small_budget(16 * 1024)).await;
}

#[tokio::test]
#[should_panic(expected = "numbers: a full read: a batch of 50 records holds a lease of 0 bytes")]
async fn a_source_that_leases_nothing_fails() {
    check(Flaw::NoLease).await;
}

#[tokio::test]
#[should_panic(expected = "numbers: laziness: memory was leased before the stream was polled")]
async fn an_eager_source_fails() {
    check(Flaw::Eager).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[should_panic(expected = "numbers: cancellation by drop")]
async fn a_source_that_outlives_its_stream_fails() {
    check(Flaw::Detached).await;
}

#[tokio::test]
#[should_panic(expected = "numbers: resume from a checkpoint")]
async fn a_source_that_ignores_checkpoints_fails() {
    check(Flaw::IgnoresResume).await;
}

/// A sink that appends every record (no upsert on the key), and writes in a
/// dry run when told to.
struct Appender {
    rows: Arc<Mutex<Vec<Record>>>,
    writes: bool,
}

#[async_trait]
impl Sink for Appender {
    async fn open(&self, _target: StreamTarget) -> Result<Box<dyn SinkWriter>> {
        Ok(Box::new(AppendWriter {
            rows: self.rows.clone(),
            writes: self.writes,
        }))
    }

    fn describe(&self) -> String {
        "appender".into()
    }

    fn capabilities(&self) -> SinkCapabilities {
        SinkCapabilities::none()
    }
}

struct AppendWriter {
    rows: Arc<Mutex<Vec<Record>>>,
    writes: bool,
}

#[async_trait]
impl SinkWriter for AppendWriter {
    async fn write(&mut self, batch: Batch) -> Result<BatchAck> {
        if self.writes {
            self.rows
                .lock()
                .unwrap()
                .extend(batch.records().iter().cloned());
        }
        Ok(BatchAck::new(batch.len() as u64).with_inserted(batch.len() as u64))
    }

    async fn finish(self: Box<Self>) -> Result<WriterSummary> {
        Ok(WriterSummary::default().with_total_rows(self.rows.lock().unwrap().len() as u64))
    }

    fn extension(&mut self) -> Option<&mut dyn WriterExtension> {
        None
    }
}

fn make(id: u64, version: u64) -> Record {
    into_record(json!({"id": id, "v": version}))
}

#[tokio::test]
async fn a_correct_sink_passes() {
    let sink = MemorySink::new();
    let dry = Arc::new(Appender {
        rows: Arc::default(),
        writes: false,
    });
    check_sink(SinkCase::new("memory", Arc::new(sink), dry, "t", "id", make).compares_content())
        .await;
}

#[tokio::test]
#[should_panic(expected = "appender: the same records again")]
async fn a_sink_that_duplicates_on_rewrite_fails() {
    let rows = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::new(Appender { rows, writes: true });
    let dry = Arc::new(Appender {
        rows: Arc::default(),
        writes: false,
    });
    check_sink(SinkCase::new("appender", sink, dry, "t", "id", make)).await;
}

#[tokio::test]
#[should_panic(expected = "memory: a dry run: the table holds 12 records after a dry run")]
async fn a_sink_that_writes_in_a_dry_run_fails() {
    let sink = Arc::new(MemorySink::new());
    check_sink(SinkCase::new("memory", sink.clone(), sink, "t", "id", make)).await;
}
