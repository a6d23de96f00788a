//! The pipeline: read a source, write a sink, commit checkpoints after acks.
//!
//! In [`ReadMode::Streaming`] the source runs in its own task, ahead of the sink
//! by at most what the memory budget allows; its pages are split and regrouped
//! into sink batches of at most `batch_rows` records (or `batch_bytes`, at most
//! half the budget's bytes), and a partial batch is flushed when the source has
//! been quiet for `linger`, so a slow source never holds data back. Each batch's
//! position is committed only after the sink acknowledged the batch.
//!
//! With a [`MemoryMonitor`] ([`Pipeline::monitor`]) the batch sizes follow the
//! monitor's scale, and a flush request writes the partial batch at once and asks
//! the sink's writer to relieve memory between batches. With
//! [`PipelineOptions::transform_rows`] large pages are split before mapping.
//!
//! In [`ReadMode::Classic`] the whole source is read first and then written. Give
//! it a budget with [`WhenFull::Fail`](sluicegate_core::WhenFull::Fail): when the data does
//! not fit, the run stops with an [`ErrorKind::MemoryLimit`] error instead of
//! growing until the process is killed.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::deletes::{DeletionReport, Deletions};
use crate::incremental::{IncrementalReport, IncrementalRun};
use crate::mapping::Mapper;
use crate::monitor::MemoryMonitor;
use sluicegate_core::{
    Batch, BatchAck, BatchStream, CheckpointStore, Error, ErrorKind, MemoryBudget, MemoryRelief,
    NoObserver, Position, PrepareBatch, ReadRequest, Result, ResultExt, RunObserver, RunStats,
    SinkPosition, SinkWriter, Source, WriterSummary,
};

/// How a stream is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadMode {
    /// Read and write concurrently under the memory budget.
    Streaming,
    /// Read everything first, then write (small data only).
    Classic,
}

/// Tuning of a pipeline run.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PipelineOptions {
    /// Streaming or classic.
    pub mode: ReadMode,
    /// Most records per sink batch (one sink transaction): a maximum, a source
    /// page larger than it is split (its position stays on the last piece).
    pub batch_rows: usize,
    /// Bytes (as batches lease them) at which a sink batch is full before it
    /// has `batch_rows` records, in streaming mode; `None`: half the budget
    /// (a larger value is capped at that too).
    pub batch_bytes: Option<usize>,
    /// Most records mapped in one step: larger source pages are split into
    /// chunks of this size, each mapped and passed on by itself (streaming mode);
    /// `None`: up to `batch_rows` at a time.
    pub transform_rows: Option<usize>,
    /// How long a partial batch may wait for more records before it is written.
    pub linger: Duration,
    /// Stop the stream once more records were rejected (by the mapping or the
    /// sink) than this allows; `None`: never stop for rejected records.
    pub max_errors: Option<ErrorLimit>,
}

/// How many rejected records a run tolerates (`--max-errors 10` or `2.5%`).
///
/// Counted over the run's [`RunStats`] (all streams sharing them). A percentage
/// is of the records read so far, checked once at least
/// [`ErrorLimit::MIN_SAMPLE`] were read and at the end of each stream.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ErrorLimit {
    /// At most this many rejected records.
    Count(u64),
    /// At most this percentage of the records read.
    Percent(f64),
}

impl ErrorLimit {
    /// Records read before a percentage is checked mid-stream.
    pub const MIN_SAMPLE: u64 = 100;

    /// Whether `rejected` of `read` records is over the limit; `finished`: the
    /// stream ended (a percentage is then checked whatever was read).
    pub fn exceeded(&self, rejected: u64, read: u64, finished: bool) -> bool {
        match *self {
            ErrorLimit::Count(n) => rejected > n,
            ErrorLimit::Percent(p) => {
                (finished || read >= Self::MIN_SAMPLE)
                    && read > 0
                    && rejected as f64 * 100.0 > p * read as f64
            }
        }
    }
}

impl std::fmt::Display for ErrorLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ErrorLimit::Count(n) => write!(f, "{n}"),
            ErrorLimit::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl std::str::FromStr for ErrorLimit {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let s = s.trim();
        match s.strip_suffix('%') {
            Some(p) => match p.trim().parse::<f64>() {
                Ok(p) if (0.0..=100.0).contains(&p) => Ok(ErrorLimit::Percent(p)),
                _ => Err(format!("'{s}' is not a percentage between 0% and 100%")),
            },
            None => s
                .parse::<u64>()
                .map(ErrorLimit::Count)
                .map_err(|_| format!("'{s}' is neither a count (10) nor a percentage (2.5%)")),
        }
    }
}

impl PipelineOptions {
    /// Streaming (or classic) reading.
    pub fn with_mode(mut self, mode: ReadMode) -> Self {
        self.mode = mode;
        self
    }

    /// At most `rows` records per sink batch.
    pub fn with_batch_rows(mut self, rows: usize) -> Self {
        self.batch_rows = rows;
        self
    }

    /// Sink batches full at `bytes` bytes (`None`: half the budget).
    pub fn with_batch_bytes(mut self, bytes: Option<usize>) -> Self {
        self.batch_bytes = bytes;
        self
    }

    /// At most `rows` records mapped in one step (`None`: a page at a time).
    pub fn with_transform_rows(mut self, rows: Option<usize>) -> Self {
        self.transform_rows = rows;
        self
    }

    /// A partial batch waits at most `linger` for more records.
    pub fn with_linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// Stop once more records were rejected than `limit` allows.
    pub fn with_max_errors(mut self, limit: Option<ErrorLimit>) -> Self {
        self.max_errors = limit;
        self
    }
}

impl Default for PipelineOptions {
    fn default() -> Self {
        Self {
            mode: ReadMode::Streaming,
            batch_rows: 5000,
            batch_bytes: None,
            transform_rows: None,
            linger: Duration::from_millis(500),
            max_errors: None,
        }
    }
}

/// The outcome of one stream.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct StreamReport {
    /// The sync key.
    pub sync_key: String,
    /// The stream (table) name.
    pub stream: String,
    /// Summed sink acknowledgements.
    pub ack: BatchAck,
    /// Sink batches written.
    pub batches: u64,
    /// The checkpoint this run resumed from, if any.
    pub resumed_from: Option<Position>,
    /// Rows in the target after the run, if the sink can tell.
    pub total_rows: Option<u64>,
    /// What the sink's writer reported at the end.
    pub writer: WriterSummary,
    /// Wall time of the stream.
    pub elapsed: Duration,
    /// The window an incremental stream read, and its new high-water mark.
    pub incremental: Option<IncrementalReport>,
    /// What deletions removed (or would remove, or why they were skipped).
    pub deletions: Option<DeletionReport>,
}

/// One source-to-sink run of a stream.
///
/// In [`ReadMode::Streaming`] the source runs in its own task, ahead of the sink
/// by at most what the memory budget allows; its pages are split and regrouped
/// into sink batches of at most `batch_rows` records (or `batch_bytes`, at most
/// half the budget's bytes), and a partial batch is flushed when the source has
/// been quiet for `linger`, so a slow source never holds data back. Each batch's
/// position is committed only after the sink acknowledged the batch.
///
/// With a [`MemoryMonitor`] ([`Pipeline::monitor`]) the batch sizes follow the
/// monitor's scale, and a flush request writes the partial batch at once and asks
/// the sink's writer to relieve memory between batches. With
/// [`PipelineOptions::transform_rows`] large pages are split before mapping.
///
/// In [`ReadMode::Classic`] the whole source is read first and then written. Give
/// it a budget with [`WhenFull::Fail`](sluicegate_core::WhenFull::Fail): when the data does
/// not fit, the run stops with an [`ErrorKind::MemoryLimit`] error instead of
/// growing until the process is killed.
pub struct Pipeline {
    sync_key: String,
    stream: String,
    source: Arc<dyn Source>,
    writer: Box<dyn SinkWriter>,
    budget: MemoryBudget,
    stats: Arc<RunStats>,
    checkpoints: Option<Arc<dyn CheckpointStore>>,
    options: PipelineOptions,
    mapper: Option<Arc<Mapper>>,
    observer: Arc<dyn RunObserver>,
    monitor: MemoryMonitor,
    /// Start over: forget the positions of the checkpoint store and the sink.
    fresh: bool,
    /// Where the run resumes, once decided (see [`Pipeline::resume_point`]).
    decided: Option<Option<Position>>,
    /// The sink commits positions with its batches.
    sink_positions: bool,
    /// An incremental read: cursors checked, high-water mark followed.
    incremental: Option<Arc<IncrementalRun>>,
    /// Deletions after a complete read: keys sent recorded, then compared.
    deletions: Option<Arc<Deletions>>,
}

/// What happens to each source batch before it is regrouped and written.
#[derive(Clone)]
struct Shaping {
    sync_key: String,
    mapper: Option<Arc<Mapper>>,
    observer: Arc<dyn RunObserver>,
    stats: Arc<RunStats>,
    incremental: Option<Arc<IncrementalRun>>,
    /// Records the mapping rejected in this stream.
    rejected: Arc<AtomicU64>,
}

impl Shaping {
    /// Checks the cursors of an incremental read, maps the batch (if there is a
    /// mapping), reports rejected rows and fits the batch's lease to the mapped
    /// size.
    async fn apply(&self, mut batch: Batch) -> Result<Batch> {
        if self.incremental.is_some() || self.mapper.is_some() {
            // Both read the records.
            batch.decode_records()?;
        }
        if let Some(incremental) = &self.incremental {
            incremental.check(&mut batch, &self.sync_key, &*self.observer, &self.stats);
        }
        let Some(mapper) = &self.mapper else {
            return Ok(batch);
        };
        let outcome = mapper.map_batch(&mut batch);
        self.stats.add_rows_filtered(outcome.filtered);
        self.stats.add_rows_rejected(outcome.rejected.len() as u64);
        self.rejected
            .fetch_add(outcome.rejected.len() as u64, Ordering::Relaxed);
        if let Some(incremental) = &self.incremental {
            incremental.note_rejected(outcome.rejected.len() as u64);
        }
        for rejected in outcome.rejected {
            self.observer.rejected(&self.sync_key, rejected);
        }
        batch.lease_mut().resize(outcome.bytes).await?;
        Ok(batch)
    }
}

impl Pipeline {
    /// A pipeline for `sync_key`/`stream` with default options, an unlimited
    /// budget, fresh counters and no checkpoints.
    pub fn new(
        sync_key: impl Into<String>,
        stream: impl Into<String>,
        source: Arc<dyn Source>,
        writer: Box<dyn SinkWriter>,
    ) -> Self {
        Self {
            sync_key: sync_key.into(),
            stream: stream.into(),
            source,
            writer,
            budget: MemoryBudget::unlimited(),
            stats: Arc::new(RunStats::default()),
            checkpoints: None,
            options: PipelineOptions::default(),
            mapper: None,
            observer: Arc::new(NoObserver),
            monitor: MemoryMonitor::disabled(),
            fresh: false,
            decided: None,
            sink_positions: false,
            incremental: None,
            deletions: None,
        }
    }

    /// Whether a resumed run writes every record exactly once even without a
    /// key: the sink commits each batch's position with its rows. Known once
    /// [`Pipeline::resume_point`] ran with a checkpoint store.
    pub fn exactly_once_resume(&self) -> bool {
        self.sink_positions
    }

    /// Starts over (a full refresh): the checkpoint store's and the sink's
    /// positions of this stream are forgotten before anything is read.
    #[must_use]
    pub fn fresh_start(mut self) -> Self {
        self.fresh = true;
        self
    }

    /// Where the run resumes: after the checkpoint store's position, or after
    /// the sink's when the sink commits positions with its batches and the two
    /// differ (the sink is the truth: a run stopped between its commit and the
    /// store's); from the beginning when the sink says the stream's last run
    /// completed. Decided once, before reading; `run` uses the same answer.
    pub async fn resume_point(&mut self) -> Result<Option<Position>> {
        if let Some(decided) = &self.decided {
            return Ok(decided.clone());
        }
        let Some(store) = self.checkpoints.clone() else {
            self.decided = Some(None);
            return Ok(None);
        };
        let in_sink = match self.writer.extension() {
            Some(ext) => ext.committed_position().await?,
            None => SinkPosition::Unknown,
        };
        self.sink_positions = !matches!(in_sink, SinkPosition::Unknown);
        if self.fresh {
            store.clear(&self.sync_key, &self.stream)?;
            if let Some(ext) = self.writer.extension() {
                ext.forget_position().await?;
            }
            self.decided = Some(None);
            return Ok(None);
        }
        let stored = store.load(&self.sync_key, &self.stream)?;
        let point = match in_sink {
            SinkPosition::After(position) => {
                if stored.as_ref() != Some(&position) {
                    tracing::info!(sync = %self.sync_key, stream = %self.stream, %position, "the sink committed past the checkpoint store; resuming after the sink's position");
                    store.commit(&self.sync_key, &self.stream, &position)?;
                }
                Some(position)
            }
            SinkPosition::Complete => {
                if stored.is_some() {
                    tracing::info!(sync = %self.sync_key, stream = %self.stream, "the sink says the last run completed; starting from the beginning");
                    store.clear(&self.sync_key, &self.stream)?;
                }
                None
            }
            _ => stored,
        };
        self.decided = Some(point.clone());
        Ok(point)
    }

    /// Follows this memory monitor: gathers batches of the size it allows, writes
    /// the partial batch and relieves the sink writer when it asks for a flush.
    /// (Sampling is the monitor's own task; see [`MemoryMonitor::spawn`].)
    #[must_use]
    pub fn monitor(mut self, monitor: MemoryMonitor) -> Self {
        self.monitor = monitor;
        self
    }

    /// Maps every record with this mapping before it is written.
    #[must_use]
    pub fn mapper(mut self, mapper: Arc<Mapper>) -> Self {
        self.mapper = Some(mapper);
        self
    }

    /// Reports rejected records to this observer.
    #[must_use]
    pub fn observer(mut self, observer: Arc<dyn RunObserver>) -> Self {
        self.observer = observer;
        self
    }

    /// Uses this memory budget (shared with the rest of the run).
    #[must_use]
    pub fn budget(mut self, budget: MemoryBudget) -> Self {
        self.budget = budget;
        self
    }

    /// Counts into these run counters.
    #[must_use]
    pub fn stats(mut self, stats: Arc<RunStats>) -> Self {
        self.stats = stats;
        self
    }

    /// Resumes from and commits to this checkpoint store.
    #[must_use]
    pub fn checkpoints(mut self, store: Arc<dyn CheckpointStore>) -> Self {
        self.checkpoints = Some(store);
        self
    }

    /// Reads incrementally: every record's cursor is checked before mapping
    /// (records without a usable one are rejected), the high-water mark
    /// follows the acknowledged batches and is committed when the stream
    /// completes (see [`IncrementalRun`]).
    #[must_use]
    pub fn incremental(mut self, run: Arc<IncrementalRun>) -> Self {
        self.incremental = Some(run);
        self
    }

    /// After a complete read, removes from the target what the source no
    /// longer has (see [`Deletions`]); the report says what went, or why
    /// nothing was looked at.
    #[must_use]
    pub fn deletions(mut self, deletions: Deletions) -> Self {
        self.deletions = Some(Arc::new(deletions));
        self
    }

    /// Sets the options.
    #[must_use]
    pub fn options(mut self, options: PipelineOptions) -> Self {
        self.options = options;
        self
    }

    /// Runs the stream to completion.
    pub async fn run(mut self) -> Result<StreamReport> {
        let started = Instant::now();
        let resumed_from = self.resume_point().await?;
        if let Some(position) = &resumed_from {
            tracing::info!(sync = %self.sync_key, stream = %self.stream, %position, "resuming from checkpoint");
        }
        if let Some(deletions) = &self.deletions {
            // Said before anything is read.
            deletions
                .check_writer(self.writer.extension())
                .context("sync", &self.sync_key)?;
        }
        // Records stay JSON text from source to sink when the writer decodes
        // JSON itself and nothing on the way reads them.
        // The same for columns, when the writer takes those.
        let accepts_json = self
            .writer
            .extension()
            .is_some_and(|ext| ext.accepts_json_rows());
        let accepts_columns = self
            .writer
            .extension()
            .is_some_and(|ext| ext.accepts_columns());
        let undecoded =
            self.mapper.is_none() && self.incremental.is_none() && self.deletions.is_none();
        let request = ReadRequest::new(self.sync_key.clone(), self.budget.clone())
            .with_resume_from(resumed_from.clone())
            .with_stats(self.stats.clone())
            .with_json_rows(accepts_json && undecoded)
            .with_columns(accepts_columns && undecoded);
        // A source that panics while polled ends the read with an error (what
        // was gathered before it is still written), never as the end of the data.
        let stream: BatchStream = Box::pin(
            std::panic::AssertUnwindSafe(self.source.read(request))
                .catch_unwind()
                .map(|item| {
                    item.unwrap_or_else(|panic| Err(sluicegate_core::panicked(panic.as_ref())))
                }),
        );
        let mut writer = Writer {
            sync_key: self.sync_key.clone(),
            stream: self.stream.clone(),
            inner: self.writer,
            stats: self.stats.clone(),
            checkpoints: self.checkpoints.clone(),
            ack: BatchAck::default(),
            batches: 0,
            max_errors: self.options.max_errors,
            incremental: self.incremental.clone(),
            deletions: self.deletions.clone(),
            accepts_json,
            accepts_columns,
        };
        let mapping_rejected = Arc::new(AtomicU64::new(0));
        let shaping = Shaping {
            sync_key: self.sync_key.clone(),
            mapper: self.mapper.clone(),
            observer: self.observer.clone(),
            stats: self.stats.clone(),
            incremental: self.incremental.clone(),
            rejected: mapping_rejected.clone(),
        };
        match self.options.mode {
            ReadMode::Streaming => {
                let limits = Gathering {
                    batch_rows: self.options.batch_rows.max(1),
                    batch_bytes: self
                        .options
                        .batch_bytes
                        .map_or(usize::MAX, |b| b.max(1))
                        .min(self.budget.capacity() / 2),
                    transform_rows: self.options.transform_rows.map(|n| n.max(1)),
                    linger: self.options.linger,
                    monitor: self.monitor.clone(),
                };
                streaming(stream, shaping, &mut writer, limits).await?
            }
            ReadMode::Classic => classic(stream, shaping, &mut writer, &self.options).await?,
        }
        // Judged at the end too (a percentage of a short stream); the stream
        // is complete either way, so it is finished and its checkpoint cleared.
        let over_limit = writer.check_errors(true);
        let deletions = match &self.deletions {
            None => None,
            Some(deletions) => {
                let rejected = mapping_rejected.load(Ordering::Relaxed) + writer.ack.failed;
                Some(if resumed_from.is_some() {
                    Ok(deletions.skipped(
                        "the read resumed from a checkpoint, so it did not see the keys before \
                         it; deletions run after a complete read from the start"
                            .to_owned(),
                    ))
                } else if rejected > 0 {
                    Ok(deletions.skipped(format!(
                        "{rejected} records were rejected, so their keys did not reach the sink \
                         and cannot be told from deleted ones"
                    )))
                } else {
                    match writer.inner.extension() {
                        Some(ext) => deletions.apply(ext, &self.sync_key, &*self.observer).await,
                        None => Err(Error::config("this sink cannot remove anything")),
                    }
                })
            }
        };
        let Writer {
            inner,
            ack,
            batches,
            ..
        } = writer;
        let summary = inner.finish().await.context("sync", &self.sync_key)?;
        if let Some(store) = &self.checkpoints {
            store.clear(&self.sync_key, &self.stream)?;
        }
        over_limit?;
        // The read was complete, so a refusal to delete comes after the
        // checkpoint was cleared: the next run reads everything again.
        let deletions = deletions.transpose()?;
        // Every batch was acknowledged: the window is complete.
        let incremental = match &self.incremental {
            Some(run) => Some(run.finish().context("sync", &self.sync_key)?),
            None => None,
        };
        Ok(StreamReport {
            sync_key: self.sync_key,
            stream: self.stream,
            ack,
            batches,
            resumed_from,
            total_rows: summary.total_rows,
            writer: summary,
            elapsed: started.elapsed(),
            incremental,
            deletions,
        })
    }
}

struct Writer {
    sync_key: String,
    stream: String,
    inner: Box<dyn SinkWriter>,
    stats: Arc<RunStats>,
    checkpoints: Option<Arc<dyn CheckpointStore>>,
    ack: BatchAck,
    batches: u64,
    max_errors: Option<ErrorLimit>,
    incremental: Option<Arc<IncrementalRun>>,
    deletions: Option<Arc<Deletions>>,
    /// The writer takes batches of JSON text; others are decoded for it.
    accepts_json: bool,
    /// The writer takes batches of columns; others are decoded for it.
    accepts_columns: bool,
}

impl Writer {
    async fn write(&mut self, mut batch: Batch) -> Result<()> {
        let position = batch.position().cloned();
        let pages = batch.pages();
        let located = |e: Error| {
            let e = e.with_context("sync", &self.sync_key);
            match pages {
                Some((first, last)) if first == last => e.with_context("page", first),
                Some((first, last)) => e.with_context("pages", format!("{first}-{last}")),
                None => e,
            }
        };
        if (batch.json_rows().is_some() && !self.takes_json_text())
            || (batch.column_rows().is_some() && !self.takes_columns())
        {
            batch.decode_records().map_err(located)?;
        }
        let keys = self.deletions.as_ref().map(|d| d.keys_of(batch.records()));
        let ack = self.inner.write(batch).await.map_err(located)?;
        self.ack.add(&ack);
        self.stats.add_rows_rejected(ack.failed);
        self.batches += 1;
        self.stats.add_rows_written(ack.rows);
        self.stats.add_batch();
        if let (Some(store), Some(position)) = (&self.checkpoints, &position) {
            store.commit(&self.sync_key, &self.stream, position)?;
        }
        if let (Some(deletions), Some(keys)) = (&self.deletions, keys) {
            deletions.note_sent(&keys)?;
        }
        if let Some(incremental) = &self.incremental {
            incremental.note_rejected(ack.failed);
            if let Some(position) = &position {
                incremental.acknowledged(position)?;
            }
        }
        self.check_errors(false)
    }

    /// Whether batches of JSON text reach the writer as text (others are
    /// decoded first: the writer does not take text, or deletions read the
    /// keys).
    fn takes_json_text(&self) -> bool {
        self.accepts_json && self.deletions.is_none()
    }

    /// Whether batches of columns reach the writer as columns (as
    /// [`Writer::takes_json_text`]).
    fn takes_columns(&self) -> bool {
        self.accepts_columns && self.deletions.is_none()
    }

    /// Fails when the rejected records are over the run's limit.
    fn check_errors(&self, finished: bool) -> Result<()> {
        let Some(limit) = self.max_errors else {
            return Ok(());
        };
        let snap = self.stats.snapshot();
        if limit.exceeded(snap.rows_rejected, snap.rows_read, finished) {
            return Err(Error::new(
                ErrorKind::TooManyRejected,
                format!(
                    "too many rejected records: {} of {} read, over the limit of {limit}; the stream stopped \
                     (what was written before stays, the rejected records are reported)",
                    snap.rows_rejected, snap.rows_read
                ),
            )
            .with_context("sync", &self.sync_key));
        }
        Ok(())
    }
}

/// How the streaming producer gathers pages into sink batches.
struct Gathering {
    /// Configured records per batch (the monitor may scale it down).
    batch_rows: usize,
    /// Configured bytes per batch (the monitor may scale it down).
    batch_bytes: usize,
    /// Records mapped per step, if source pages are split.
    transform_rows: Option<usize>,
    /// How long a partial batch waits for more records.
    linger: Duration,
    monitor: MemoryMonitor,
}

/// Source in a task, regrouping pages into sink batches; the sink in this task.
async fn streaming(
    stream: BatchStream,
    shaping: Shaping,
    writer: &mut Writer,
    limits: Gathering,
) -> Result<()> {
    let (tx, rx) = mpsc::channel::<Result<Batch>>(1);
    let monitor = limits.monitor.clone();
    let sink_flushes = monitor.flush_requests();
    // Batches of JSON text are prepared for the writer as they are sent, so
    // that the work overlaps the writing of the batch before (see
    // `PrepareBatch`); decoded batches are not.
    let preparer = writer
        .inner
        .extension()
        .and_then(|ext| ext.preparer())
        .filter(|_| writer.takes_json_text());
    let outbox = Outbox { tx, preparer };
    let producer = tokio::spawn(gather(stream, shaping, limits, outbox));
    let result = write_all(rx, writer, &monitor, sink_flushes).await;
    if result.is_err() {
        // Stop the source: dropping its stream cancels the read.
        producer.abort();
    }
    match producer.await {
        Ok(()) => {}
        Err(e) if e.is_cancelled() => {}
        Err(e) => {
            return Err(Error::new(ErrorKind::Contract, "source task panicked").with_source(e));
        }
    }
    result
}

/// The producer: reads the source, splits large pages for mapping, maps, and
/// gathers the result into sink batches sent on `tx`. A batch goes out when it
/// is full (rows or bytes, as the memory monitor scales them), when the source
/// has been quiet for `linger`, on a flush request, before an error, and at
/// the end.
async fn gather(mut stream: BatchStream, shaping: Shaping, limits: Gathering, tx: Outbox) {
    let Gathering {
        batch_rows: configured_rows,
        batch_bytes: configured_bytes,
        transform_rows,
        linger,
        monitor,
    } = limits;
    let mut flushes = monitor.flush_requests();
    let mut pending: Option<Batch> = None;
    // Chunks of a split source page, not mapped yet.
    let mut chunks: VecDeque<Batch> = VecDeque::new();
    loop {
        // A flush request: write what was gathered so far at once.
        if flushes.has_changed().unwrap_or(false) {
            flushes.mark_unchanged();
            if let Some(batch) = pending.take() {
                monitor.note_batch_flushed(batch.len());
                if tx.send(Ok(batch)).await.is_err() {
                    return;
                }
            }
        }
        let batch_rows = monitor.batch_rows(configured_rows);
        let batch_bytes = monitor.batch_bytes(configured_bytes);
        let next = if let Some(chunk) = chunks.pop_front() {
            Some(Ok(chunk))
        } else if pending.is_some() {
            match tokio::time::timeout(linger, stream.next()).await {
                Ok(next) => next,
                Err(_quiet) => {
                    if let Some(batch) = pending.take()
                        && tx.send(Ok(batch)).await.is_err()
                    {
                        return;
                    }
                    continue;
                }
            }
        } else {
            stream.next().await
        };
        let next = match next {
            Some(Ok(batch)) => Some(
                shaping
                    .apply(split_page(
                        batch,
                        step_rows(transform_rows, batch_rows),
                        &mut chunks,
                    ))
                    .await,
            ),
            other => other,
        };
        let (ready, end) = match next {
            Some(Ok(batch)) => match add_to_pending(&mut pending, batch, batch_rows, batch_bytes) {
                Ok(ready) => (ready, None),
                Err(e) => ([None, None], Some(Err(e))),
            },
            // Write what was read before the error, so its position commits.
            Some(Err(e)) => ([pending.take(), None], Some(Err(e))),
            None => ([pending.take(), None], Some(Ok(()))),
        };
        for batch in ready.into_iter().flatten() {
            if tx.send(Ok(batch)).await.is_err() {
                return;
            }
        }
        match end {
            None => {}
            Some(Ok(())) => return,
            Some(Err(e)) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        }
    }
}

/// Where the producer sends batches: the channel to the writer, and the
/// writer's preparation, if it has one.
struct Outbox {
    tx: mpsc::Sender<Result<Batch>>,
    preparer: Option<Arc<dyn PrepareBatch>>,
}

impl Outbox {
    /// Sends `item` once the channel has room, the batch prepared then (not
    /// before: a prepared batch waits for the writer, not for the channel, so
    /// what it rests on is as new as can be and at most one waits). `Err`
    /// when the writer is gone.
    async fn send(&self, item: Result<Batch>) -> std::result::Result<(), ()> {
        let permit = self.tx.reserve().await.map_err(|_| ())?;
        let item = match (item, &self.preparer) {
            (Ok(mut batch), Some(preparer)) if batch.json_rows().is_some() => {
                preparer.prepare(&mut batch);
                Ok(batch)
            }
            (item, _) => item,
        };
        permit.send(item);
        Ok(())
    }
}

/// Records mapped in one step: `transform_rows` when set, and never more than
/// a sink batch holds (mapping never adds records, so `--batch-size` is a
/// maximum even for a source page larger than it).
fn step_rows(transform_rows: Option<usize>, batch_rows: usize) -> usize {
    transform_rows
        .map_or(batch_rows, |n| n.min(batch_rows))
        .max(1)
}

/// The first `rows` records of a source page; the rest is queued on `chunks`
/// in pieces of that size (each is mapped and passed on by itself). The last
/// piece keeps the page's position.
fn split_page(batch: Batch, rows: usize, chunks: &mut VecDeque<Batch>) -> Batch {
    if batch.len() <= rows {
        return batch;
    }
    let mut rest = batch;
    let first = rest.take_front(rows);
    while rest.len() > rows {
        chunks.push_back(rest.take_front(rows));
    }
    chunks.push_back(rest);
    first
}

/// Adds a mapped batch to the one being gathered and returns the batches
/// ready to be written, in order: the gathered one when the new one would
/// overflow it, and the gathered one when it is full.
fn add_to_pending(
    pending: &mut Option<Batch>,
    batch: Batch,
    batch_rows: usize,
    batch_bytes: usize,
) -> Result<[Option<Batch>; 2]> {
    let mut overflowed = None;
    let full = match pending {
        // A batch of columns is gathered only with batches of columns: the
        // two together would go on as records.
        Some(p)
            if p.len() + batch.len() > batch_rows
                || p.column_rows().is_some() != batch.column_rows().is_some() =>
        {
            overflowed = Some(std::mem::replace(p, batch));
            p.len() >= batch_rows || p.bytes() >= batch_bytes
        }
        Some(p) => {
            p.append(batch)?;
            p.len() >= batch_rows || p.bytes() >= batch_bytes
        }
        None => {
            let full = batch.len() >= batch_rows || batch.bytes() >= batch_bytes;
            *pending = Some(batch);
            full
        }
    };
    let filled = if full { pending.take() } else { None };
    Ok([overflowed, filled])
}

/// The sink side: writes each batch as it comes, and between batches asks the
/// writer to free memory when the monitor requests a flush.
async fn write_all(
    mut rx: mpsc::Receiver<Result<Batch>>,
    writer: &mut Writer,
    monitor: &MemoryMonitor,
    mut sink_flushes: tokio::sync::watch::Receiver<u64>,
) -> Result<()> {
    loop {
        tokio::select! {
            item = rx.recv() => match item {
                Some(item) => writer.write(item?).await?,
                None => return Ok(()),
            },
            Ok(()) = sink_flushes.changed() => {
                sink_flushes.mark_unchanged();
                let relief = match writer.inner.extension() {
                    Some(ext) => ext.relieve_memory().await.map_err(|e| e.with_context("sync", &writer.sync_key))?,
                    None => MemoryRelief::default(),
                };
                monitor.note_relief(&writer.sync_key, relief);
            }
        }
    }
}

/// Reads the whole source, then writes it in batches.
async fn classic(
    mut stream: BatchStream,
    shaping: Shaping,
    writer: &mut Writer,
    options: &PipelineOptions,
) -> Result<()> {
    let mut all: Vec<Batch> = Vec::new();
    while let Some(item) = stream.next().await {
        let item = match item {
            Ok(batch) => shaping.apply(batch).await,
            Err(e) => Err(e),
        };
        all.push(item.map_err(|e| {
            if e.kind() == ErrorKind::MemoryLimit {
                Error::new(
                    ErrorKind::MemoryLimit,
                    format!("classic mode reads the whole source before writing and it does not fit: {}", e.message()),
                )
                .with_context("sync", &writer.sync_key)
            } else {
                e
            }
        })?);
    }
    drop(stream);
    let rows = options.batch_rows.max(1);
    let mut pending: Option<Batch> = None;
    let mut pieces = VecDeque::new();
    for page in all {
        let first = split_page(page, rows, &mut pieces);
        for batch in std::iter::once(first).chain(pieces.drain(..)) {
            match &mut pending {
                Some(p) if p.len() + batch.len() <= rows => p.append(batch)?,
                _ => {
                    if let Some(ready) = pending.replace(batch) {
                        writer.write(ready).await?;
                    }
                }
            }
        }
    }
    if let Some(ready) = pending {
        writer.write(ready).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::ErrorLimit;

    #[test]
    fn error_limits_parse_and_count() {
        assert_eq!("10".parse(), Ok(ErrorLimit::Count(10)));
        assert_eq!("2.5%".parse(), Ok(ErrorLimit::Percent(2.5)));
        assert!(
            "ten"
                .parse::<ErrorLimit>()
                .unwrap_err()
                .contains("neither a count")
        );
        assert!("150%".parse::<ErrorLimit>().is_err());
        assert!(!ErrorLimit::Count(2).exceeded(2, 10, false));
        assert!(ErrorLimit::Count(2).exceeded(3, 10, false));
        // 5 of 50 is 10%, but 50 is too few to judge mid-stream.
        assert!(!ErrorLimit::Percent(5.0).exceeded(5, 50, false));
        assert!(ErrorLimit::Percent(5.0).exceeded(5, 50, true));
        assert!(ErrorLimit::Percent(5.0).exceeded(6, 100, false));
        assert!(!ErrorLimit::Percent(5.0).exceeded(5, 100, false));
    }
}
