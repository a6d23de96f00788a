//! The sink contract: per-stream writers that acknowledge every batch.
//!
//! The rules are in [`Sink`]'s contract.

use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;

use crate::batch::Batch;
use crate::error::Result;
use crate::observe::{NoObserver, RunObserver};
use crate::stats::{CacheStats, RunStats};

/// Which stream a writer writes, how records are matched, and where it reports.
#[derive(Clone)]
#[non_exhaustive]
pub struct StreamTarget {
    /// The sync key (for context in errors and logs).
    pub sync_key: String,
    /// The target table, collection or content type.
    pub table: String,
    /// The record field that identifies a record; `None` appends without upsert.
    pub key_field: Option<String>,
    /// The run's counters (requests made by the sink count here).
    pub stats: Arc<RunStats>,
    /// Where rejected records and change notes go.
    pub observer: Arc<dyn RunObserver>,
    /// The most memory the process may use, in bytes, when something outside
    /// it enforces a limit (a container's): a sink whose own working memory
    /// would pass it stops the stream with an error
    /// ([`ErrorKind::MemoryLimit`](crate::ErrorKind::MemoryLimit)) saying what
    /// needs how much, instead of the process being killed. `None` when no
    /// such limit is known.
    pub memory_limit: Option<u64>,
}

impl StreamTarget {
    /// A target with fresh counters and no observer.
    pub fn new(
        sync_key: impl Into<String>,
        table: impl Into<String>,
        key_field: Option<String>,
    ) -> Self {
        Self {
            sync_key: sync_key.into(),
            table: table.into(),
            key_field,
            stats: Arc::new(RunStats::default()),
            observer: Arc::new(NoObserver),
            memory_limit: None,
        }
    }

    /// The same target under a hard memory limit of `bytes` (see
    /// [`StreamTarget::memory_limit`]).
    pub fn with_memory_limit(mut self, bytes: Option<u64>) -> Self {
        self.memory_limit = bytes;
        self
    }
}

impl std::fmt::Debug for StreamTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamTarget")
            .field("sync_key", &self.sync_key)
            .field("table", &self.table)
            .field("key_field", &self.key_field)
            .finish()
    }
}

/// A sink's acknowledgement of one batch.
///
/// In a dry run the counts are what *would* happen: `inserted` counts keys not yet
/// in the sink, `updated` keys that exist (whether their content changed is only
/// known to sinks that compare content; those report `unchanged` as well).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct BatchAck {
    /// Records in the batch after merging duplicate keys.
    pub rows: u64,
    /// Records that were (or would be) new in the sink.
    pub inserted: u64,
    /// Records that replaced (or would replace) existing ones.
    pub updated: u64,
    /// Records identical to what the sink already held (not written).
    pub unchanged: u64,
    /// Records the sink rejected (each reported to the target's observer).
    pub failed: u64,
    /// Duplicate keys merged within the batch (the last record wins).
    pub duplicates: u64,
}

impl BatchAck {
    /// An acknowledgement of `rows` records, none of them counted yet.
    pub fn new(rows: u64) -> Self {
        Self {
            rows,
            ..Self::default()
        }
    }

    /// With `n` records inserted.
    pub fn with_inserted(mut self, n: u64) -> Self {
        self.inserted = n;
        self
    }

    /// With `n` records updated.
    pub fn with_updated(mut self, n: u64) -> Self {
        self.updated = n;
        self
    }

    /// With `n` records unchanged.
    pub fn with_unchanged(mut self, n: u64) -> Self {
        self.unchanged = n;
        self
    }

    /// With `n` records rejected.
    pub fn with_failed(mut self, n: u64) -> Self {
        self.failed = n;
        self
    }

    /// With `n` duplicate keys merged.
    pub fn with_duplicates(mut self, n: u64) -> Self {
        self.duplicates = n;
        self
    }

    /// Adds another acknowledgement's counts to this one.
    pub fn add(&mut self, other: &BatchAck) {
        self.rows += other.rows;
        self.inserted += other.inserted;
        self.updated += other.updated;
        self.unchanged += other.unchanged;
        self.failed += other.failed;
        self.duplicates += other.duplicates;
    }
}

/// What a writer reports when a stream is finished.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct WriterSummary {
    /// The target's row count after the run, when the sink can tell cheaply.
    pub total_rows: Option<u64>,
    /// Figures of the writer's lookup cache, if it has one.
    pub cache: Option<CacheStats>,
    /// Entries published.
    pub published: u64,
    /// Whether the sink compares content, so `unchanged` counts mean something
    /// (keyed sinks do; bulk loaders that replace rows do not).
    pub compares_content: bool,
}

impl WriterSummary {
    /// A summary reporting the target's row count.
    pub fn with_total_rows(mut self, rows: u64) -> Self {
        self.total_rows = Some(rows);
        self
    }

    /// A summary with the figures of the writer's lookup cache.
    pub fn with_cache(mut self, cache: CacheStats) -> Self {
        self.cache = Some(cache);
        self
    }

    /// A summary counting `n` entries published.
    pub fn with_published(mut self, n: u64) -> Self {
        self.published = n;
        self
    }

    /// A summary of a writer that compares content (its `unchanged` counts mean
    /// something).
    pub fn comparing_content(mut self) -> Self {
        self.compares_content = true;
        self
    }
}

/// A configured destination; opens one writer per stream.
///
/// # Contract
/// - A [`Sink`] is one configured destination (a DuckDB file, a CMS space). It
///   opens one [`SinkWriter`] per stream ([`StreamTarget`]).
/// - [`SinkWriter::write`] returns only once the batch is durable in the sink (or,
///   in a dry run, fully planned). Its [`BatchAck`] is the acknowledgement the
///   pipeline waits for before it commits the batch's position as a checkpoint.
/// - Writing the same batch twice must leave the sink in the same state as writing
///   it once (idempotent upserts on the stream's key), so that a resumed run,
///   which is at-least-once, ends exact.
/// - Dropping the batch after writing releases its memory; a writer must not keep
///   records beyond `write` unless it keeps their lease too.
/// - In a dry run (the sink was built with `BuildContext::dry_run`), nothing in the
///   sink changes: no files created, no rows or entries written.
#[async_trait]
pub trait Sink: Send + Sync + 'static {
    /// Opens a writer for one stream (may create the table on first write).
    async fn open(&self, target: StreamTarget) -> Result<Box<dyn SinkWriter>>;

    /// A one-line human description, free of secrets.
    fn describe(&self) -> String;

    /// What the sink offers beyond opening writers. Required rather than a
    /// default, so a sink that wraps another says what it passes on; a sink
    /// with nothing to declare returns [`SinkCapabilities::none`].
    fn capabilities(&self) -> SinkCapabilities;
}

/// What a sink offers beyond opening writers, declared as a value.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct SinkCapabilities {
    /// The batch size (records) that suits this sink, used when the run does not
    /// set one: large for bulk loaders, smaller for APIs where a batch's lookups,
    /// writes and publishing are held in memory together.
    pub preferred_batch_rows: Option<usize>,
    /// The bytes (as batches lease them from the budget) at which a batch is
    /// full before it has [`preferred_batch_rows`](Self::preferred_batch_rows)
    /// records, used with that size: for a sink whose memory per transaction
    /// grows with a batch's bytes, so that wide or long records make batches of
    /// fewer rows. `None`: only the budget bounds a batch's bytes (half of it).
    pub preferred_batch_bytes: Option<usize>,
    /// The memory the sink itself works with besides the batches it is handed
    /// (an embedded database's buffer pool, for example). A run plans it inside
    /// its memory target (records in flight get what is left) and reads it again
    /// while it runs, since it may grow (wider tables).
    pub working_memory: Option<WorkingMemory>,
}

impl SinkCapabilities {
    /// Nothing beyond writers.
    pub fn none() -> Self {
        Self::default()
    }

    /// With `rows` records as the batch size that suits the sink.
    pub fn with_preferred_batch_rows(mut self, rows: usize) -> Self {
        self.preferred_batch_rows = Some(rows);
        self
    }

    /// With `bytes` as the size at which a batch of the preferred size is full
    /// before it has all its rows (see [`preferred_batch_bytes`](Self::preferred_batch_bytes)).
    pub fn with_preferred_batch_bytes(mut self, bytes: usize) -> Self {
        self.preferred_batch_bytes = Some(bytes);
        self
    }

    /// With working memory of its own, in bytes, as `read` tells at any time.
    pub fn with_working_memory(mut self, read: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        self.working_memory = Some(WorkingMemory(Arc::new(read)));
        self
    }

    /// The sink's own working memory now, in bytes (0 if it declares none).
    pub fn working_memory_bytes(&self) -> u64 {
        self.working_memory.as_ref().map_or(0, WorkingMemory::bytes)
    }
}

/// A live figure of a sink's own working memory (see
/// [`SinkCapabilities::working_memory`]).
#[derive(Clone)]
pub struct WorkingMemory(Arc<dyn Fn() -> u64 + Send + Sync>);

impl WorkingMemory {
    /// The figure now, in bytes.
    pub fn bytes(&self) -> u64 {
        (self.0)()
    }
}

impl std::fmt::Debug for WorkingMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WorkingMemory({} bytes)", self.bytes())
    }
}

/// Writes the batches of one stream, acknowledging each.
///
/// # Contract
/// - `write` is called with one batch at a time, in stream order, and returns
///   only when the batch is durable (or, in a dry run, planned); its
///   [`BatchAck`] counts every record of the batch exactly once (inserted,
///   updated, unchanged or failed).
/// - A record the sink rejects is counted as failed and reported to the
///   target's observer ([`RunObserver::rejected`]); only an error that makes the
///   whole batch fail is returned as `Err`, and then its position is not committed.
/// - `finish` is called once after the last batch (not after an error) and may
///   flush what the writer buffered; its summary's figures cover the whole stream.
/// - `extension` gives the writer's optional operations ([`WriterExtension`]):
///   `None` for a writer that holds nothing beyond a batch and keeps no
///   positions. It is required, not a default, so that a writer wrapping
///   another passes the inner writer's on instead of silently losing them.
#[async_trait]
pub trait SinkWriter: Send {
    /// Writes (or, in a dry run, plans) one batch and acknowledges it.
    async fn write(&mut self, batch: Batch) -> Result<BatchAck>;

    /// Finishes the stream and reports its final figures.
    async fn finish(self: Box<Self>) -> Result<WriterSummary>;

    /// The writer's optional operations, if it has any.
    fn extension(&mut self) -> Option<&mut dyn WriterExtension>;
}

/// What a writer can do beyond writing batches. A writer that has any of it
/// implements all of it (every method is required, so nothing is lost to a
/// default) and returns itself from [`SinkWriter::extension`].
#[async_trait]
pub trait WriterExtension: Send {
    /// Frees what the writer caches or buffers, under memory pressure. Called
    /// between batches when the run's memory monitor (`sluicegate-engine`) sees
    /// memory above its threshold: drop caches (they are looked up again),
    /// write out buffers, and say what was freed.
    async fn relieve_memory(&mut self) -> Result<MemoryRelief>;

    /// Where this stream stands in the sink itself, for a sink that commits each
    /// batch's position in the same transaction as the batch's rows: then the
    /// sink, not the checkpoint store, is the truth when they differ (a run
    /// stopped between the two commits), and a resumed run writes every record
    /// exactly once, with or without a key. A writer that keeps no positions
    /// answers [`SinkPosition::Unknown`].
    async fn committed_position(&mut self) -> Result<SinkPosition>;

    /// Forgets the position the sink holds for this stream (a full refresh);
    /// nothing to do for a writer that keeps none.
    async fn forget_position(&mut self) -> Result<()>;

    /// The ways this writer can remove rows or entries whose key a complete
    /// read did not send (empty: it cannot).
    fn delete_modes(&self) -> &'static [DeleteMode];

    /// One page of the keys the target holds for this stream, live ones only
    /// (not soft-deleted, not archived), in a stable order: `page` is the
    /// previous page's [`TargetKeys::next`] (`None` for the first). Keys are
    /// written as [`key_text`] writes a record's key. Called after the stream's
    /// last batch, before anything is removed.
    async fn target_keys(&mut self, page: Option<serde_json::Value>) -> Result<TargetKeys>;

    /// Removes the rows or entries with these keys in `mode` (one of
    /// [`WriterExtension::delete_modes`]); returns how many were removed.
    /// Never called in a dry run.
    async fn delete_keys(&mut self, keys: &[String], mode: DeleteMode) -> Result<u64>;

    /// Whether [`SinkWriter::write`] takes batches of records as JSON text
    /// ([`Batch::from_json`](crate::Batch::from_json)). The pipeline asks its
    /// source for them only then, and decodes any other batch of JSON text
    /// into records before it reaches the writer.
    fn accepts_json_rows(&self) -> bool;

    /// Whether [`SinkWriter::write`] takes batches of records as Arrow
    /// columns ([`Batch::from_columns`](crate::Batch::from_columns)). The
    /// pipeline asks its source for them only then, and decodes any other
    /// batch of columns into records before it reaches the writer. No by
    /// default.
    fn accepts_columns(&self) -> bool {
        false
    }

    /// The writer's work on a batch that can be done before its turn to be
    /// written (see [`PrepareBatch`]), when it has such work: the pipeline
    /// runs it on each batch of JSON text it hands this writer, while the
    /// batch before is being written. `None`: batches go to
    /// [`SinkWriter::write`] as the source made them.
    fn preparer(&self) -> Option<Arc<dyn PrepareBatch>>;
}

/// A writer's work on a batch ahead of [`SinkWriter::write`], so that it
/// overlaps the writing of the batch before (parsing JSON text into a table's
/// columns, for instance). Got from [`WriterExtension::preparer`].
///
/// # Contract
/// - `prepare` runs on each batch of JSON text once, in stream order, after
///   every change the pipeline makes to it and before the batch is handed to
///   `write`; it runs while earlier batches are still being written, so what
///   it makes may rest on what the writer knew before them.
/// - It attaches what it made with [`Batch::set_prepared`] and never changes
///   the records; `write` must produce exactly what it would without it (it
///   checks that what was prepared still applies, and does the work itself
///   when not).
/// - Memory it allocates is added to the batch's lease; work that is only
///   worth doing ahead is done only when the budget has room for it
///   ([`MemoryLease::try_grow`](crate::MemoryLease::try_grow)), never by
///   waiting (the batch the budget waits for may be the one being written).
/// - It fails silently: a batch it cannot prepare goes to `write` as it is,
///   and `write` reports what is wrong with it.
pub trait PrepareBatch: Send + Sync {
    /// Prepares `batch` for the writer (see the trait's contract).
    fn prepare(&self, batch: &mut Batch);
}

/// How rows or entries that the source no longer has are removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeleteMode {
    /// Remove them (a content platform unpublishes first).
    Hard,
    /// Keep them, marked as deleted (DuckDB: the time in a `_deleted_at` column).
    Soft,
    /// Take them offline and keep them archived (Contentful: unpublish, then archive).
    Archive,
}

impl DeleteMode {
    /// The mode's name in configuration (`hard`, `soft`, `archive`).
    pub fn as_str(self) -> &'static str {
        match self {
            DeleteMode::Hard => "hard",
            DeleteMode::Soft => "soft",
            DeleteMode::Archive => "archive",
        }
    }
}

/// One page of the keys a target holds (see [`WriterExtension::target_keys`]).
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct TargetKeys {
    /// The keys of this page.
    pub keys: Vec<String>,
    /// Where the next page starts; `None` after the last one.
    pub next: Option<serde_json::Value>,
}

impl TargetKeys {
    /// A page of `keys`, followed by the page at `next` (if any).
    pub fn new(keys: Vec<String>, next: Option<serde_json::Value>) -> Self {
        Self { keys, next }
    }
}

/// A key value as text, the one form keys are compared in: a string as it is,
/// a number as written, `true`/`false`. `None` for `null`, objects and lists,
/// which are not keys.
pub fn key_text(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Where a stream stands in a sink that commits positions with its batches.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum SinkPosition {
    /// The sink keeps no positions.
    Unknown,
    /// The sink keeps positions, but none for this stream yet (the checkpoint
    /// store's, if any, is used).
    NotYet,
    /// Every batch up to this position is in the sink, and nothing after it.
    After(crate::batch::Position),
    /// The stream's last run finished: a new run starts from the beginning.
    Complete,
}

/// What a sink writer freed when asked to relieve memory pressure.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
#[serde(rename_all = "camelCase")]
pub struct MemoryRelief {
    /// Cached entries dropped (looked up again when needed).
    pub cache_entries: u64,
    /// Bytes those entries held, as the cache weighs them.
    pub cache_bytes: u64,
    /// Buffers written out (for example a database checkpoint).
    pub buffers_flushed: u64,
}

impl MemoryRelief {
    /// With `entries` cached entries of `bytes` dropped.
    pub fn with_cache(mut self, entries: u64, bytes: u64) -> Self {
        self.cache_entries = entries;
        self.cache_bytes = bytes;
        self
    }

    /// With `n` buffers written out.
    pub fn with_buffers_flushed(mut self, n: u64) -> Self {
        self.buffers_flushed = n;
        self
    }

    /// Whether the writer freed anything.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}
