//! The `duckdb` sink: bulk appends and keyed upserts, one transaction per batch.
//!
//! Per batch: duplicate keys are merged (the last record wins); column types are
//! inferred from the records and the table is created, extended with new columns
//! (up to `maxColumns` columns of fields; the values of fields that arrive
//! later go into its `_extra` column, one JSON object per row) or has columns
//! widened as needed; the records go through DuckDB's Appender,
//! as Arrow record batches of 2,048 rows, into a temporary staging table; then `DELETE ... WHERE key IN (staging)` and
//! `INSERT ... SELECT * FROM staging` replace existing rows and add new ones.
//! All of it commits as one transaction, so a batch is either fully in the table
//! or not at all, and a batch written twice leaves the table as written once.
//!
//! A batch that arrives as JSON text and fits the table as it is (no new
//! field, no widened column, keys increasing) is parsed straight into the
//! Arrow columns instead (`json_columns`); any other is decoded into records
//! first.
//!
//! In a dry run the database is opened read-only (and not created when it does
//! not exist); only the keys of each batch are staged, in a temporary table, to
//! count which exist.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};

use async_trait::async_trait;
use duckdb::Connection;
use std::cmp::Ordering;

use serde_json::Value;
use sluicegate_core::{
    Batch, BatchAck, BuildContext, DeleteMode, Error, ErrorKind, FieldTypes, JsonFields,
    MemoryLease, MemoryRelief, PrepareBatch, Record, Rejected, Result, Sink, SinkCapabilities,
    SinkPosition, SinkWriter, Stage, StreamTarget, TargetKeys, WriterExtension, WriterSummary,
};

use crate::config::DuckDbSinkConfig;
use crate::database::{Database, OpenOptions, duck_error};
use crate::json_columns::{Decoded, Unfit};
use crate::keys::{Key, merge_duplicate_keys};
use crate::memory::{MemoryPlan, NEW_FILE_BLOCK_SIZE, block_size};
use crate::positions;
use crate::prepare::{ColumnsAhead, KnownTable, PreparedColumns};
use crate::schema::{ColumnType, FieldCache, TableSchema, cell, number_kind, quote_ident};
use crate::typed;

/// A DuckDB database file that sync streams write into.
pub struct DuckDbSink {
    path: PathBuf,
    /// `None` in a dry run against a database that does not exist yet.
    db: Option<Arc<Database>>,
    dry_run: bool,
    /// DuckDB's memory, planned from the widths of the tables being written.
    plan: Arc<MemoryPlan>,
    /// Batches of JSON text that went straight into columns.
    as_columns: Arc<AtomicU64>,
    /// Batches parsed into columns ahead of their write.
    prepared: Arc<AtomicU64>,
    /// Batches written with the columns parsed ahead.
    prepared_used: Arc<AtomicU64>,
    /// The most columns of fields a table gets (`maxColumns`).
    max_columns: usize,
}

impl DuckDbSink {
    /// Opens (or, unless in a dry run, creates) the database.
    pub fn open(config: &DuckDbSinkConfig, ctx: &BuildContext) -> Result<Self> {
        config.validate()?;
        let in_memory = config.path == ":memory:";
        let path = if in_memory || Path::new(&config.path).is_absolute() {
            PathBuf::from(&config.path)
        } else {
            ctx.base_dir.join(&config.path)
        };
        let floor_mb = config
            .memory_limit_mb
            .unwrap_or(crate::config::DEFAULT_MEMORY_LIMIT_MB);
        let options = OpenOptions {
            path: path.clone(),
            config: config.clone(),
            in_memory,
            dry_run: ctx.dry_run,
        };
        let conn = options.connect(floor_mb)?;
        let block_size = conn.as_ref().map_or(NEW_FILE_BLOCK_SIZE, block_size);
        Ok(Self {
            path,
            db: conn.map(|c| Arc::new(Database::new(c, options))),
            dry_run: ctx.dry_run,
            plan: Arc::new(MemoryPlan::new(
                floor_mb,
                config.memory_limit_mb.is_some(),
                block_size,
            )),
            as_columns: Arc::default(),
            prepared: Arc::default(),
            prepared_used: Arc::default(),
            max_columns: config.max_columns,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How often the database was opened again after DuckDB failed fatally
    /// during this sink's life (see the crate's README).
    pub fn reopened(&self) -> u64 {
        self.db.as_ref().map_or(0, |db| db.reopened())
    }

    /// How many batches arrived as JSON text and went straight into columns
    /// (the others were decoded into records first; see the crate's README).
    pub fn batches_as_columns(&self) -> u64 {
        self.as_columns.load(AtomicOrdering::Relaxed)
    }

    /// How many batches were parsed into columns ahead of their write, while
    /// the batch before was being written, and how many of them were written
    /// so (the others were parsed again: a batch before them had changed the
    /// table).
    pub fn batches_prepared_ahead(&self) -> (u64, u64) {
        (
            self.prepared.load(AtomicOrdering::Relaxed),
            self.prepared_used.load(AtomicOrdering::Relaxed),
        )
    }
}

#[async_trait]
impl Sink for DuckDbSink {
    async fn open(&self, target: StreamTarget) -> Result<Box<dyn SinkWriter>> {
        self.plan.set_hard_limit(target.memory_limit);
        Ok(Box::new(DuckDbWriter {
            db: self.db.clone(),
            plan: self.plan.clone(),
            target: Arc::new(target),
            table: None,
            dry_run: self.dry_run,
            empty_at_start: None,
            max_written: None,
            unordered: false,
            keep_positions: false,
            position_seq: 0,
            as_columns: self.as_columns.clone(),
            prepared: self.prepared.clone(),
            prepared_used: self.prepared_used.clone(),
            known: Arc::default(),
            max_columns: self.max_columns,
        }))
    }

    fn describe(&self) -> String {
        format!("duckdb {}", self.path.display())
    }

    /// Batches of 10,000 rows or 4 MiB of records (5,000 rows in a dry run);
    /// as working memory, DuckDB's memory limit
    /// (planned from the widths of the tables being written, raised after a
    /// fatal failure; see the crate's README) plus what DuckDB allocates
    /// outside it (none in a dry run that opened no database).
    fn capabilities(&self) -> SinkCapabilities {
        let capabilities = if self.dry_run {
            SinkCapabilities::none().with_preferred_batch_rows(DRY_RUN_BATCH_ROWS)
        } else {
            SinkCapabilities::none()
                .with_preferred_batch_rows(BATCH_ROWS)
                .with_preferred_batch_bytes(BATCH_BYTES)
        };
        if self.db.is_none() {
            return capabilities;
        }
        let plan = self.plan.clone();
        capabilities.with_working_memory(move || plan.working_bytes())
    }
}

/// The rows of a batch (one transaction): DuckDB's cost per transaction (its
/// commit, the position row, the checkpoint check) is what larger batches
/// save. 10,000 rows or [`BATCH_BYTES`] against 5,000 rows: the example
/// shop's 1M rows in 0.95× the time at the same peak RSS (97.1 against
/// 96.7 MiB), the benchmark's nested and wide shapes together in 0.91× at
/// 121.7 against 123.4 MiB, a PostgreSQL table of 1M narrow rows in 0.91× at
/// 93.9 against 88.6 MiB (medians of eight alternating pairs each,
/// `/usr/bin/time -v`).
const BATCH_ROWS: usize = 10_000;

/// The bytes (as leased from the budget: about 1.5–3× a record's JSON text)
/// at which a batch is full before it has [`BATCH_ROWS`] rows. A transaction's
/// own storage in DuckDB grows with its bytes, not its rows: 10,000 rows
/// without this bound made the benchmark's nested `events` peak 9 MiB higher
/// and its wide, sparse `profiles` 17 MiB higher than 5,000 rows (medians of
/// five pairs); the shop's narrow rows still make batches of 10,000.
const BATCH_BYTES: usize = 4 << 20;

/// The rows of a batch in a dry run, which decodes each batch into records
/// (to count its keys, duplicates and refused records) instead of columns:
/// their maps' memory grows with the rows. With [`BATCH_ROWS`] a dry run of
/// the benchmark's one huge response (1.4M orders, `--max-memory-mb 64`)
/// peaked at 101.0 MiB against 66.1 MiB with these (medians of four pairs).
const DRY_RUN_BATCH_ROWS: usize = 5_000;

/// At most this many of a batch's first records, and about this many bytes
/// of their text, choose the columns of a table created for a batch of JSON
/// text (see `DuckDbWriter::prepare_table`).
const PREFIX_ROWS: usize = 1024;
const PREFIX_BYTES: usize = 1 << 20;

/// What the writer knows of its table.
#[derive(Debug, Clone)]
pub(crate) struct TableState {
    pub(crate) schema: TableSchema,
    pub(crate) exists: bool,
    /// The table was absent or had no rows when it was loaded.
    empty_at_load: bool,
}

struct DuckDbWriter {
    db: Option<Arc<Database>>,
    plan: Arc<MemoryPlan>,
    target: Arc<StreamTarget>,
    /// Loaded on the first write; dropped after a failed write so it is re-read.
    table: Option<TableState>,
    dry_run: bool,
    /// Whether the table was empty (or absent) when this writer first saw it:
    /// then every row in it was written by this writer.
    empty_at_start: Option<bool>,
    /// The largest key written so far, while every key written was of one
    /// orderable kind. A batch whose keys all exceed it cannot collide with any
    /// row, so it is appended without the staging-and-delete upsert.
    max_written: Option<Key>,
    /// Set once a batch's keys could not be ordered; disables the append path.
    unordered: bool,
    /// Each batch's position is committed with its rows (the pipeline resumes
    /// from checkpoints: it asked where the stream stands).
    keep_positions: bool,
    /// The sequence number of the last position row written (or read).
    position_seq: u64,
    /// The sink's count of batches that went straight into columns.
    as_columns: Arc<AtomicU64>,
    /// The sink's counts of batches parsed ahead, and of those written so.
    prepared: Arc<AtomicU64>,
    prepared_used: Arc<AtomicU64>,
    /// The table as this writer knows it, for its preparer.
    known: Arc<KnownTable>,
    /// The most columns of fields the table gets (`maxColumns`).
    max_columns: usize,
}

/// What a source declared of a batch's fields: which are JSON, and the
/// types of typed ones.
type Declared<'a> = (Option<&'a JsonFields>, Option<&'a FieldTypes>);

/// How rows go into a table's columns: its schema, the columns where a null
/// is the JSON text `null`, and the fields the source declared JSON.
type Layout<'a> = (&'a TableSchema, &'a [bool], Option<&'a JsonFields>);

impl DuckDbWriter {
    /// Remembers the largest key written, or gives up on ordering.
    fn note_written(&mut self, range: Option<(Key, Key)>) {
        if self.target.key_field.is_none() {
            return;
        }
        match (range, &self.max_written) {
            (Some((_, highest)), None) => self.max_written = Some(highest),
            (Some((_, highest)), Some(max)) => match highest.compare(max) {
                Some(Ordering::Greater) => self.max_written = Some(highest),
                Some(_) => {}
                None => self.unordered = true,
            },
            (None, _) => self.unordered = true,
        }
    }
}

impl DuckDbWriter {
    /// Before a batch of JSON text, when the table is not known to exist:
    /// reads it, and creates it (empty, in a transaction of its own) with the
    /// columns of the batch's first records when it does not exist, so the
    /// batch can go straight into columns instead of decoding into records
    /// whole (with batches of 32,768 rows of a PostgreSQL table, the budget
    /// peaked at 60.8 MiB of its 27.6 MiB when the first one became maps, and
    /// at 13.6 MiB with this). Only the records of [`PREFIX_ROWS`] and
    /// [`PREFIX_BYTES`] are decoded; fields that come later get their columns
    /// as any new field does (see `columns_of`). An empty table left by a run
    /// stopped here holds nothing the next run could miss.
    async fn prepare_table(
        &mut self,
        text: &sluicegate_core::JsonRows,
        json: Option<Arc<JsonFields>>,
        types: Option<Arc<FieldTypes>>,
    ) -> Result<()> {
        if self.db.is_none() || self.dry_run {
            return Ok(());
        }
        let mut records = Vec::new();
        let mut bytes = 0;
        for record in text.iter_str().take(PREFIX_ROWS) {
            bytes += record.len();
            if bytes > PREFIX_BYTES && !records.is_empty() {
                break;
            }
            // Checked by the source: one that does not decode leaves the
            // batch to the record path, which reports it.
            let Some(record) = record_of(record) else {
                return Ok(());
            };
            records.push(record);
        }
        self.create_table(records, json, types).await
    }

    /// [`DuckDbWriter::prepare_table`] for a batch of columns: the table
    /// from the records the source's decoder makes of its first rows.
    async fn prepare_table_for_columns(
        &mut self,
        columns: &sluicegate_core::ColumnRows,
        json: Option<Arc<JsonFields>>,
        types: Option<Arc<FieldTypes>>,
    ) -> Result<()> {
        if self.db.is_none() || self.dry_run {
            return Ok(());
        }
        // Keys that repeat make the record path keep a later record at an
        // earlier one's place, so the columns' order could differ from the
        // first rows': such a batch creates the table from all its records.
        if let Some(key) = &self.target.key_field
            && !crate::arrow_columns::keys_increase(columns, key)
        {
            return Ok(());
        }
        let Ok(records) = columns.clone().take_front(PREFIX_ROWS).decode() else {
            // The record path reports it.
            return Ok(());
        };
        self.create_table(records, json, types).await
    }

    /// Creates the table (or loads it, when it exists) with the columns of
    /// `records`, a batch's first ones (see [`DuckDbWriter::prepare_table`]).
    async fn create_table(
        &mut self,
        records: Vec<Record>,
        json: Option<Arc<JsonFields>>,
        types: Option<Arc<FieldTypes>>,
    ) -> Result<()> {
        let Some(db) = self.db.clone() else {
            return Ok(());
        };
        // The records the record path would write (refused ones left out),
        // so the columns come in the same order.
        let records = merge_duplicate_keys(records, self.target.key_field.as_deref()).records;
        let target = self.target.clone();
        let plan = self.plan.clone();
        let known = self.table.take();
        let max_columns = self.max_columns;
        let state = blocking(move || {
            db.retry_once(&plan, |conn| {
                let mut state = match &known {
                    Some(state) => TableState::clone(state),
                    None => load_table(conn, &target, Some(max_columns))?,
                };
                state.schema.adopt_declared(types.as_deref());
                if state.exists {
                    return Ok(state);
                }
                let mut schema = state.schema.clone();
                let changes = evolve(&mut schema, &records, (json.as_deref(), types.as_deref()));
                let key_known = target
                    .key_field
                    .as_deref()
                    .is_none_or(|key| schema.column_of(key).is_some());
                if schema.columns.is_empty() || !key_known {
                    return Ok(state);
                }
                conn.execute_batch(&schema_ddl(&target, false, &schema, &changes))
                    .map_err(|e| duck_error(format!("cannot create table {}", target.table), e))?;
                state.schema = schema;
                state.exists = true;
                Ok(state)
            })
        })
        .await?;
        self.empty_at_start.get_or_insert(state.empty_at_load);
        self.table = Some(state);
        Ok(())
    }

    /// A batch of JSON text parsed straight into the table's columns, when
    /// it fits the table as this writer knows it (see [`columns_for`]): not
    /// in a dry run, not before the table exists.
    fn columns_of(
        &self,
        text: &sluicegate_core::JsonRows,
        declared: Declared<'_>,
    ) -> std::result::Result<Decoded, Unfit> {
        match &self.table {
            Some(table) if table.exists && !self.dry_run => columns_for(
                &table.schema,
                self.target.key_field.as_deref(),
                text,
                declared,
            ),
            _ => Err(Unfit::Other("the table is not known yet".to_owned())),
        }
    }

    /// A batch of Arrow columns as the table's columns, when they fit the
    /// table as this writer knows it (see [`crate::arrow_columns`]): not in a
    /// dry run, not before the table exists.
    fn arrow_columns_of(
        &self,
        columns: &sluicegate_core::ColumnRows,
        declared: Option<&JsonFields>,
    ) -> std::result::Result<Decoded, Unfit> {
        match &self.table {
            Some(table) if table.exists && !self.dry_run => crate::arrow_columns::decode(
                &table.schema,
                self.target.key_field.as_deref(),
                columns,
                declared,
            ),
            _ => Err(Unfit::Other("the table is not known yet".to_owned())),
        }
    }

    /// The rows to write of a batch of JSON text or columns: the columns
    /// `mapped` when it fits the table (the lease fitted to their exact
    /// size), else its records (`records`: the text decoded, or the source's
    /// decoder), the lease grown by them.
    fn columns_or_records(
        &self,
        mapped: std::result::Result<Decoded, Unfit>,
        records: impl FnOnce() -> Result<Vec<Record>>,
        lease: &mut MemoryLease,
    ) -> Result<Rows> {
        let sync = &self.target.sync_key;
        match mapped {
            Ok(decoded) => {
                self.as_columns.fetch_add(1, AtomicOrdering::Relaxed);
                tracing::debug!(%sync, rows = decoded.rows, "batch straight into columns");
                fit_lease(lease, decoded.bytes);
                Ok(Rows::Columns(decoded))
            }
            Err(why) => {
                tracing::debug!(%sync, %why, "batch decoded into records");
                let records = records()?;
                lease.grow_now(
                    records
                        .iter()
                        .map(sluicegate_core::approx_record_size)
                        .sum(),
                );
                Ok(Rows::Records {
                    records,
                    range: None,
                })
            }
        }
    }

    /// Tells the writer's preparer (see [`crate::prepare`]) the table as
    /// this writer now knows it.
    fn publish_table(&self) {
        let schema = self
            .table
            .as_ref()
            .filter(|t| t.exists && !self.dry_run)
            .map(|t| &t.schema);
        self.known.publish(schema);
    }
}

/// A batch of JSON text parsed straight into the columns of a table of
/// `schema`, keyed by `key`, when it fits (see `json_columns`), with the
/// columns of new fields added, and with keys in any order. A function of its
/// arguments only, so that a batch can be parsed ahead of its write
/// ([`crate::prepare`]).
pub(crate) fn columns_for(
    table: &TableSchema,
    key: Option<&str>,
    text: &sluicegate_core::JsonRows,
    (declared, types): Declared<'_>,
) -> std::result::Result<Decoded, Unfit> {
    use crate::json_columns::{KeyOrder, decode};
    let mut wider: Option<TableSchema> = None;
    let mut order = KeyOrder::Increasing;
    loop {
        let schema = wider.as_ref().unwrap_or(table);
        match decode(schema, key, text, declared, order) {
            Ok(mut decoded) => {
                decoded.schema = wider;
                return Ok(decoded);
            }
            Err(unfit @ Unfit::NewField(_)) if wider.is_none() => {
                // Late fields: the columns they need (decoding one record
                // at a time), then the batch into the wider table's
                // columns; only new columns, a widened one takes the
                // record path.
                let mut schema = table.clone();
                let mut failed = false;
                let records = text.iter_str().map_while(|t| {
                    let record = record_of(t);
                    failed |= record.is_none();
                    record
                });
                let changes = evolve(&mut schema, records, (declared, types));
                if failed || !changes.widened.is_empty() {
                    return Err(unfit);
                }
                wider = Some(schema);
            }
            // Keys in another order (each once) go in as well (appended
            // when all are above the keys written, else upserted).
            Err(Unfit::KeysOutOfOrder) if order == KeyOrder::Increasing => {
                order = KeyOrder::Any;
            }
            Err(unfit) => return Err(unfit),
        }
    }
}

/// The field types a batch declares that get typed columns: all but the
/// key's (keys are compared and deleted as the text or integer they came
/// as).
pub(crate) fn declared_types(
    key: Option<&str>,
    declared: Option<&Arc<FieldTypes>>,
) -> Option<Arc<FieldTypes>> {
    let declared = declared?;
    match key {
        Some(key) if declared.get(key).is_some() => {
            let mut types = FieldTypes::clone(declared);
            types.remove(key);
            (!types.is_empty()).then(|| Arc::new(types))
        }
        _ => Some(declared.clone()),
    }
}

/// Makes `lease` hold exactly `bytes`, without waiting (the source may be
/// waiting for this batch's memory).
pub(crate) fn fit_lease(lease: &mut MemoryLease, bytes: usize) {
    if bytes > lease.bytes() {
        lease.grow_now(bytes);
    } else {
        lease.shrink_to(bytes);
    }
}

/// One record's JSON text decoded (`None`: it does not parse); as a `&str`,
/// which [`JsonRows`](sluicegate_core::JsonRows) checked is UTF-8.
fn record_of(text: &str) -> Option<Record> {
    serde_json::from_str::<Value>(text)
        .ok()
        .map(sluicegate_core::into_record)
}

/// Whether every key of a batch starting at `lowest` sorts after `after`.
fn is_after(lowest: &Key, after: Option<&Key>) -> bool {
    match after {
        None => true,
        Some(after) => lowest.compare(after) == Some(Ordering::Greater),
    }
}

/// How a batch goes into its table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriteMode {
    /// Straight into the table: no key of the batch can be in it yet.
    Append,
    /// Staged, then replacing rows with the same keys and adding the rest.
    Upsert,
}

/// One batch's blocking work: written (or, in a dry run, planned), and after a
/// fatal DuckDB error found out or written again, once.
struct BatchJob {
    target: Arc<StreamTarget>,
    plan: Arc<MemoryPlan>,
    rows: Rows,
    /// The table as the writer knows it (`None`: read it first).
    table: Option<TableState>,
    /// Whether the table was empty when the writer first saw it.
    empty: Option<bool>,
    dry_run: bool,
    /// The largest key written so far, while keys are ordered (see
    /// `DuckDbWriter::max_written`).
    append_after: Option<Option<Key>>,
    /// The batch's position, when positions are kept.
    position: Option<String>,
    /// The sequence number of that position.
    seq: u64,
    /// The most columns of fields the table gets (`maxColumns`).
    max_columns: usize,
    /// The fields the source declared JSON.
    json: Option<Arc<JsonFields>>,
    /// The field types the source declared (the key's left out).
    types: Option<Arc<FieldTypes>>,
}

/// A batch's rows on their way in.
enum Rows {
    /// Records (duplicate keys merged), and their lowest and highest keys.
    Records {
        records: Vec<Record>,
        range: Option<(Key, Key)>,
    },
    /// Columns parsed from JSON text or taken from a batch of Arrow columns
    /// (they fit the table as it was).
    Columns(Decoded),
}

impl Rows {
    fn len(&self) -> usize {
        match self {
            Rows::Records { records, .. } => records.len(),
            Rows::Columns(decoded) => decoded.rows,
        }
    }

    fn range(&self) -> Option<&(Key, Key)> {
        match self {
            Rows::Records { range, .. } => range.as_ref(),
            Rows::Columns(decoded) => decoded.range.as_ref(),
        }
    }

    fn as_ref(&self) -> RowsRef<'_> {
        match self {
            Rows::Records { records, .. } => RowsRef::Records(records),
            Rows::Columns(decoded) => RowsRef::Columns(decoded),
        }
    }
}

/// A batch's rows, borrowed for writing.
#[derive(Clone, Copy)]
enum RowsRef<'a> {
    Records(&'a [Record]),
    Columns(&'a Decoded),
}

impl RowsRef<'_> {
    fn len(self) -> usize {
        match self {
            RowsRef::Records(records) => records.len(),
            RowsRef::Columns(decoded) => decoded.rows,
        }
    }
}

/// What a batch is after DuckDB failed fatally and the database was opened again.
enum AfterReopen {
    /// It had committed: acknowledged with these counts.
    Committed(BatchAck),
    /// It had not (or writing it again is harmless).
    WriteAgain,
    /// Nothing can tell.
    Unknown(Error),
}

impl BatchJob {
    /// Writes the batch through `db`; returns the outcome, the table state to
    /// keep (after success) and whether the table was empty at first sight.
    fn run(mut self, db: &Database) -> (Result<BatchAck>, Option<TableState>, Option<bool>) {
        let mut conn = db.lock();
        let mut reopened = false;
        let (result, table) = loop {
            let mut prepared = None;
            let error = match self.attempt(&conn, reopened, &mut prepared) {
                Ok((ack, state, mode)) => {
                    let checkpointed = mode == Some(WriteMode::Append)
                        && checkpoint_if_due(db, &mut conn, &self.plan);
                    if mode.is_some() {
                        self.plan
                            .after_batch(&conn, &self.target.sync_key, checkpointed);
                    }
                    break (Ok(ack), Some(state));
                }
                Err(e) => e,
            };
            // A second failure of the same batch is not retried.
            if reopened {
                break (Err(error), None);
            }
            match db.recover(&mut conn, &self.plan, &error) {
                Ok(true) => reopened = true,
                Ok(false) => break (Err(error), None),
                Err(fatal) => break (Err(fatal), None),
            }
            match self.after_reopen(&conn, error, prepared) {
                Ok(AfterReopen::Committed(ack)) => break (Ok(ack), None),
                Ok(AfterReopen::Unknown(e)) | Err(e) => break (Err(e), None),
                Ok(AfterReopen::WriteAgain) => {
                    tracing::warn!(sync = %self.target.sync_key, "writing the batch again after DuckDB failed");
                }
            }
        };
        (result, table, self.empty)
    }

    /// One try. After a reopening the batch is upserted (never appended): it
    /// may be partly known to the table. Returns how the batch went in (`None`
    /// in a dry run).
    fn attempt(
        &mut self,
        conn: &Connection,
        reopened: bool,
        prepared: &mut Option<BatchAck>,
    ) -> Result<(BatchAck, TableState, Option<WriteMode>)> {
        let mut state = match self.table.take() {
            Some(t) => t,
            None => load_table(conn, &self.target, Some(self.max_columns))?,
        };
        state.schema.adopt_declared(self.types.as_deref());
        let is_empty = *self.empty.get_or_insert(state.empty_at_load);
        if self.dry_run {
            let records = match &self.rows {
                Rows::Records { records, .. } => records.as_slice(),
                Rows::Columns(_) => &[],
            };
            let ack = plan_batch(conn, &self.target, &state, records)?;
            return Ok((ack, state, None));
        }
        let mode = match (&self.append_after, self.rows.range()) {
            (Some(after), Some((lowest, _)))
                if !reopened && is_empty && is_after(lowest, after.as_ref()) =>
            {
                WriteMode::Append
            }
            _ => WriteMode::Upsert,
        };
        let batch = BatchWrite {
            target: &self.target,
            rows: self.rows.as_ref(),
            mode,
            position: self.position.as_deref().map(|p| (self.seq, p)),
            json: self.json.as_deref(),
            types: self.types.as_deref(),
        };
        let ack = write_batch(conn, &self.plan, &mut state, &batch, prepared)?;
        Ok((ack, state, Some(mode)))
    }

    /// Whether the batch committed before DuckDB failed: its position says;
    /// without positions a keyed batch is written again (upserts are
    /// idempotent) and an unkeyed one cannot be told.
    fn after_reopen(
        &self,
        conn: &Connection,
        error: Error,
        prepared: Option<BatchAck>,
    ) -> Result<AfterReopen> {
        if self.position.is_some() {
            let (_, committed) = positions::read(conn, &self.target)?;
            if committed < self.seq {
                return Ok(AfterReopen::WriteAgain);
            }
            tracing::info!(sync = %self.target.sync_key, "the batch had committed before DuckDB failed");
            let rows = self.rows.len() as u64;
            return Ok(AfterReopen::Committed(
                prepared.unwrap_or(BatchAck::new(rows).with_inserted(rows)),
            ));
        }
        if self.target.key_field.is_some() {
            return Ok(AfterReopen::WriteAgain);
        }
        Ok(AfterReopen::Unknown(error.with_context(
            "recovery",
            "the database was opened again, but whether this batch committed is unknown (no key, no positions): check the table, or run with checkpoints",
        )))
    }
}

#[async_trait]
impl SinkWriter for DuckDbWriter {
    async fn write(&mut self, mut batch: Batch) -> Result<BatchAck> {
        let target = self.target.clone();
        let json = batch.json_fields().cloned();
        let types = declared_types(self.target.key_field.as_deref(), batch.field_types());
        let ahead = batch.take_prepared::<PreparedColumns>();
        let (rows, position, lease) = match batch.into_column_parts() {
            Ok((columns, position, lease)) => {
                if !self.table.as_ref().is_some_and(|t| t.exists) {
                    self.prepare_table_for_columns(&columns, json.clone(), types.clone())
                        .await?;
                }
                if let Some(table) = &mut self.table {
                    table.schema.adopt_declared(types.as_deref());
                }
                let mut lease = lease;
                let mapped = self.arrow_columns_of(&columns, json.as_deref());
                let rows = self.columns_or_records(mapped, || columns.decode(), &mut lease)?;
                (rows, position, lease)
            }
            Err(batch) => match batch.into_json_parts() {
                Ok((text, position, mut lease)) => {
                    if !self.table.as_ref().is_some_and(|t| t.exists) {
                        self.prepare_table(&text, json.clone(), types.clone())
                            .await?;
                    }
                    if let Some(table) = &mut self.table {
                        table.schema.adopt_declared(types.as_deref());
                    }
                    // Parsed ahead for the table as it still is, or parsed now.
                    let ahead = ahead.and_then(|ahead| {
                        let table = self.table.as_ref().filter(|t| t.exists && !self.dry_run)?;
                        ahead.for_table(&table.schema)
                    });
                    let parsed_ahead = ahead.is_some();
                    if parsed_ahead {
                        self.prepared_used.fetch_add(1, AtomicOrdering::Relaxed);
                    }
                    let mapped = match ahead {
                        Some(decoded) => Ok(decoded),
                        None => self.columns_of(&text, (json.as_deref(), types.as_deref())),
                    };
                    let rows = self.columns_or_records(mapped, || text.decode(), &mut lease)?;
                    (rows, position, lease)
                }
                Err(batch) => {
                    let (records, position, lease) = batch.into_parts();
                    (
                        Rows::Records {
                            records,
                            range: None,
                        },
                        position,
                        lease,
                    )
                }
            },
        };
        let position = position
            .filter(|_| self.keep_positions && !self.dry_run)
            .map(|p| p.as_value().to_string());
        let seq = self.position_seq + 1;
        let has_position = position.is_some();
        let (rows, duplicates, failed) = match rows {
            Rows::Records { records, .. } => {
                let mut merged = merge_duplicate_keys(records, target.key_field.as_deref());
                let refused = std::mem::take(&mut merged.refused);
                let failed = refused.len() as u64;
                for (key, reason, record) in refused {
                    tracing::warn!(sync = %target.sync_key, key = key.as_deref().unwrap_or("-"), %reason, "record rejected");
                    target.observer.rejected(
                        &target.sync_key,
                        Rejected {
                            stage: Stage::Write,
                            key,
                            reason,
                            record,
                        },
                    );
                }
                let rows = Rows::Records {
                    records: merged.records,
                    range: merged.range,
                };
                (rows, merged.duplicates, failed)
            }
            columns @ Rows::Columns(_) => (columns, 0, 0),
        };
        let merged_range = rows.range().cloned();
        let Some(db) = self.db.clone() else {
            // Dry run against a database that does not exist: everything is new.
            let rows = rows.len() as u64;
            return Ok(BatchAck::new(rows)
                .with_inserted(rows)
                .with_duplicates(duplicates)
                .with_failed(failed));
        };
        let job = BatchJob {
            target,
            plan: self.plan.clone(),
            rows,
            table: self.table.take(),
            empty: self.empty_at_start,
            dry_run: self.dry_run,
            append_after: (!self.unordered).then(|| self.max_written.clone()),
            position,
            seq,
            max_columns: self.max_columns,
            json,
            types,
        };
        let (result, table, empty) = tokio::task::spawn_blocking(move || {
            let outcome = job.run(&db);
            drop(lease);
            outcome
        })
        .await
        .map_err(|e| Error::new(ErrorKind::Sink, "duckdb writer task failed").with_source(e))?;
        self.empty_at_start = empty;
        self.table = table;
        self.publish_table();
        let plan = self.plan.clone();
        let mut ack = result.map_err(|e| {
            let e = e.with_context("table", &self.target.table);
            // DuckDB's message names its own `SET memory_limit`; say which
            // setting of ours it is.
            if e.to_string().contains("Out of Memory") {
                e.with_context(
                    "what to do",
                    format!(
                        "DuckDB ran out of its memory limit ({} MiB now): raise memoryLimitMb on this sink",
                        plan.limit_mb()
                    ),
                )
            } else {
                e
            }
        })?;
        if !self.dry_run {
            self.note_written(merged_range);
        }
        if has_position {
            self.position_seq = seq;
        }
        ack.duplicates = duplicates;
        ack.failed += failed;
        Ok(ack)
    }

    async fn finish(self: Box<Self>) -> Result<WriterSummary> {
        self.plan.forget(&self.target.sync_key);
        let Some(db) = self.db.clone() else {
            return Ok(WriterSummary::default().with_total_rows(0));
        };
        let complete = (self.keep_positions && !self.dry_run).then_some(self.position_seq + 1);
        let target = self.target.clone();
        let plan = self.plan.clone();
        blocking(move || {
            if let Some(seq) = complete {
                db.retry_once(&plan, |conn| {
                    positions::record(conn, &target, seq, None, true)
                })?;
            }
            db.retry_once(&plan, |conn| {
                let table = &target.table;
                if !load_table(conn, &target, None)?.exists {
                    return Ok(WriterSummary::default().with_total_rows(0));
                }
                if tracing::enabled!(tracing::Level::DEBUG) {
                    log_memory(conn);
                }
                let n: i64 = conn
                    .query_row(
                        &format!("SELECT count(*) FROM main.{}", quote_ident(table)),
                        [],
                        |r| r.get(0),
                    )
                    .map_err(|e| duck_error(format!("cannot count rows of {table}"), e))?;
                Ok(WriterSummary::default().with_total_rows(u64::try_from(n).unwrap_or(0)))
            })
        })
        .await
    }

    fn extension(&mut self) -> Option<&mut dyn WriterExtension> {
        Some(self)
    }
}

#[async_trait]
impl WriterExtension for DuckDbWriter {
    /// Writes the write-ahead log into the database file (`CHECKPOINT`), so
    /// DuckDB can evict the pages it kept for it.
    async fn relieve_memory(&mut self) -> Result<MemoryRelief> {
        let Some(db) = self.db.clone().filter(|_| !self.dry_run) else {
            return Ok(MemoryRelief::default());
        };
        let plan = self.plan.clone();
        blocking(move || {
            let mut conn = db.lock();
            let Err(e) = conn.execute_batch("CHECKPOINT") else {
                return Ok(MemoryRelief::default().with_buffers_flushed(1));
            };
            let error = duck_error("cannot checkpoint the database", e);
            // A checkpoint that failed fatally loses nothing committed: the
            // database is opened again and the run goes on.
            if db.recover(&mut conn, &plan, &error)? {
                Ok(MemoryRelief::default())
            } else {
                Err(error)
            }
        })
        .await
    }

    async fn committed_position(&mut self) -> Result<SinkPosition> {
        let Some(db) = self.db.clone().filter(|_| !self.dry_run) else {
            return Ok(SinkPosition::Unknown);
        };
        self.keep_positions = true;
        let target = self.target.clone();
        let plan = self.plan.clone();
        let (position, seq) =
            blocking(move || db.retry_once(&plan, |conn| positions::read(conn, &target))).await?;
        self.position_seq = seq;
        Ok(position)
    }

    async fn forget_position(&mut self) -> Result<()> {
        let Some(db) = self.db.clone().filter(|_| !self.dry_run) else {
            return Ok(());
        };
        self.keep_positions = true;
        let target = self.target.clone();
        let plan = self.plan.clone();
        blocking(move || db.retry_once(&plan, |conn| positions::forget(conn, &target))).await
    }

    /// With a key: `hard` (rows deleted) and `soft` (rows marked in
    /// `_deleted_at`).
    fn delete_modes(&self) -> &'static [DeleteMode] {
        if self.target.key_field.is_some() {
            &[DeleteMode::Hard, DeleteMode::Soft]
        } else {
            &[]
        }
    }

    async fn target_keys(&mut self, page: Option<Value>) -> Result<TargetKeys> {
        let Some(db) = self.db.clone() else {
            return Ok(TargetKeys::default());
        };
        let target = self.target.clone();
        let plan = self.plan.clone();
        blocking(move || {
            db.retry_once(&plan, |conn| {
                crate::deletes::target_keys(conn, &target, page.as_ref())
            })
        })
        .await
    }

    async fn delete_keys(&mut self, keys: &[String], mode: DeleteMode) -> Result<u64> {
        let Some(db) = self.db.clone().filter(|_| !self.dry_run) else {
            return Ok(0);
        };
        let target = self.target.clone();
        let keys = keys.to_vec();
        // The table changes (a column, or rows): read it again on the next write.
        self.table = None;
        blocking(move || {
            let conn = db.lock();
            crate::deletes::delete_keys(&conn, &target, &keys, mode)
        })
        .await
    }

    fn accepts_json_rows(&self) -> bool {
        true
    }

    /// Batches of Arrow columns go into the table as they are when they fit
    /// it (see `arrow_columns`), else as the records their source makes.
    fn accepts_columns(&self) -> bool {
        true
    }

    fn preparer(&self) -> Option<Arc<dyn PrepareBatch>> {
        Some(Arc::new(ColumnsAhead {
            key: self.target.key_field.clone(),
            known: self.known.clone(),
            prepared: self.prepared.clone(),
        }))
    }
}

/// Runs a blocking step of a writer on the blocking pool.
async fn blocking<T: Send + 'static>(
    step: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(step)
        .await
        .map_err(|e| Error::new(ErrorKind::Sink, "duckdb writer task failed").with_source(e))?
}

/// Reads `target`'s table: its columns (none when it does not exist), whether
/// it holds rows, and its limit of `max_columns` columns of fields (`None`
/// where nothing is written: no limit).
pub(crate) fn load_table(
    conn: &Connection,
    target: &StreamTarget,
    max_columns: Option<usize>,
) -> Result<TableState> {
    let table = target.table.as_str();
    let mut stmt = conn
        .prepare(
            "SELECT column_name, data_type FROM information_schema.columns \
             WHERE table_catalog = current_database() AND table_schema = 'main' AND lower(table_name) = lower(?) \
             ORDER BY ordinal_position",
        )
        .map_err(|e| duck_error("cannot read the table schema", e))?;
    let columns = stmt
        .query_map([table], |row| {
            Ok((
                row.get::<_, String>(0)?,
                ColumnType::from_sql(&row.get::<_, String>(1)?),
            ))
        })
        .and_then(|rows| rows.collect::<duckdb::Result<Vec<_>>>())
        .map_err(|e| duck_error(format!("cannot read the schema of {table}"), e))?;
    let exists = !columns.is_empty();
    let empty_at_load = if exists {
        let rows: i64 = conn
            .query_row(
                &format!("SELECT count(*) FROM main.{}", quote_ident(table)),
                [],
                |r| r.get(0),
            )
            .map_err(|e| duck_error(format!("cannot count rows of {table}"), e))?;
        rows == 0
    } else {
        true
    };
    let mut schema = TableSchema::from_columns(columns);
    schema.set_max_columns(max_columns, target.key_field.as_deref());
    Ok(TableState {
        exists,
        empty_at_load,
        schema,
    })
}

/// Schema changes a batch needs: new columns and widened ones.
struct SchemaChanges {
    added: Vec<usize>,
    widened: Vec<usize>,
    /// The typed columns among the widened ones, with their type before (see
    /// `typed`): their rows become the text they came as.
    typed_from: Vec<(usize, ColumnType)>,
}

fn evolve<R: std::borrow::Borrow<Record>>(
    schema: &mut TableSchema,
    records: impl IntoIterator<Item = R>,
    (json, types): Declared<'_>,
) -> SchemaChanges {
    let existing = schema.columns.len();
    let mut widened = Vec::new();
    let mut typed_from = Vec::new();
    // Columns holding an integer no double holds exactly (beyond ±2^53).
    let mut beyond_double: Vec<usize> = Vec::new();
    let mut cache = FieldCache::default();
    for record in records {
        let record = record.borrow();
        let mut added = false;
        for ((field, value), column) in record.iter().zip(cache.resolve(schema, record)) {
            // A field without a column once the table has its most columns:
            // its value goes into the extra column (a null only when the
            // field is declared JSON, as in a column).
            if column.is_none() && schema.column_of(field).is_none() && !schema.takes_column(field)
            {
                if !value.is_null() || json.is_some_and(|j| j.contains(field)) {
                    schema.extra_column();
                }
                continue;
            }
            // Typed columns (see `typed`): a value they hold changes nothing;
            // a new field declared typed gets its type when its value fits.
            if !json.is_some_and(|j| j.contains(field)) {
                match column.or_else(|| schema.column_of(field)) {
                    Some(idx) => {
                        let current = &schema.columns[idx].1;
                        if current.is_typed() && typed::fits(current, value) {
                            continue;
                        }
                    }
                    None => {
                        let declared = types
                            .and_then(|t| t.get(field))
                            .and_then(typed::column_type);
                        if let Some(ty) =
                            declared.filter(|ty| !value.is_null() && typed::fits(ty, value))
                        {
                            schema.add_field(field, ty);
                            added = true;
                            continue;
                        }
                    }
                }
            }
            // A number is classified once (its text parsed once) for both
            // its type and whether a DOUBLE column would hold it exactly.
            let (ty, exact_in_double) = match value {
                // Declared JSON by the source: every value (a null too) is JSON text.
                _ if json.is_some_and(|j| j.contains(field)) => (ColumnType::Json, true),
                Value::Number(n) => {
                    let kind = number_kind(n);
                    (kind.column_type(), kind.fits_double())
                }
                other => match ColumnType::of(other) {
                    Some(ty) => (ty, true),
                    None => continue,
                },
            };
            let idx = match column {
                Some(idx) => {
                    let current = &schema.columns[*idx].1;
                    if current != &ty {
                        let wider = current.widen(&ty);
                        if &wider != current {
                            let was = std::mem::replace(&mut schema.columns[*idx].1, wider);
                            if *idx < existing && !widened.contains(idx) {
                                widened.push(*idx);
                                if was.is_typed() {
                                    typed_from.push((*idx, was));
                                }
                            }
                        }
                    }
                    *idx
                }
                None => match schema.column_of(field) {
                    Some(idx) => idx,
                    None => {
                        added = true;
                        schema.add_field(field, ty)
                    }
                },
            };
            if !exact_in_double && !beyond_double.contains(&idx) {
                beyond_double.push(idx);
            }
        }
        if added {
            cache.clear();
        }
    }
    // Integers and fractions in one column make it DOUBLE, which is exact only
    // for integers within ±2^53; with a larger one the column holds each
    // number's text instead.
    for idx in beyond_double {
        if schema.columns[idx].1 == ColumnType::Double {
            schema.columns[idx].1 = ColumnType::Varchar;
            if idx < existing && !widened.contains(&idx) {
                widened.push(idx);
            }
        }
    }
    SchemaChanges {
        added: (existing..schema.columns.len()).collect(),
        widened,
        typed_from,
    }
}

/// Widening an existing integer column to `DOUBLE` is exact only when every
/// integer it holds is within ±2^53; otherwise it becomes `VARCHAR` (each
/// number's digits) instead.
fn keep_existing_integers_exact(
    conn: &Connection,
    target: &StreamTarget,
    before: &TableSchema,
    after: &mut TableSchema,
    widened: &[usize],
) -> Result<()> {
    for idx in widened {
        let was = &before.columns[*idx].1;
        if after.columns[*idx].1 != ColumnType::Double
            || !matches!(was, ColumnType::BigInt | ColumnType::HugeInt)
        {
            continue;
        }
        let column = quote_ident(&after.columns[*idx].0);
        let limit = crate::schema::DOUBLE_EXACT_INT;
        let sql = format!(
            "SELECT count(*) FROM main.{} WHERE {column} > {limit} OR {column} < -{limit}",
            quote_ident(&target.table),
        );
        let beyond: i64 = conn
            .query_row(&sql, [], |row| row.get(0))
            .map_err(|e| duck_error("cannot check an integer column before widening it", e))?;
        if beyond > 0 {
            after.columns[*idx].1 = ColumnType::Varchar;
        }
    }
    Ok(())
}

fn stage_name(table: &str) -> String {
    quote_ident(&format!("sluicegate_stage_{table}"))
}

/// One batch to write: its stream, records, mode and the position that
/// commits with it (the position's sequence number and text).
struct BatchWrite<'a> {
    target: &'a StreamTarget,
    rows: RowsRef<'a>,
    mode: WriteMode,
    position: Option<(u64, &'a str)>,
    json: Option<&'a JsonFields>,
    types: Option<&'a FieldTypes>,
}

impl BatchWrite<'_> {
    /// Records the batch's position (inside the caller's transaction, if any).
    fn record_position(&self, conn: &Connection) -> Result<()> {
        match self.position {
            Some((seq, p)) => positions::record(conn, self.target, seq, Some(p), false),
            None => Ok(()),
        }
    }
}

/// Writes one batch in one transaction: evolves the table's schema to the
/// records, then appends or upserts them, and records the batch's position
/// with them. `prepared` holds the acknowledgement from just before the commit
/// (to tell, after DuckDB failed, whether the commit happened).
fn write_batch(
    conn: &Connection,
    plan: &MemoryPlan,
    table: &mut TableState,
    batch: &BatchWrite<'_>,
    prepared: &mut Option<BatchAck>,
) -> Result<BatchAck> {
    let target = batch.target;
    let rows = batch.rows.len() as u64;
    if rows == 0 {
        batch.record_position(conn)?;
        return Ok(BatchAck::default());
    }
    let mut schema = table.schema.clone();
    let (changes, largest) = match batch.rows {
        RowsRef::Records(records) => (
            evolve(&mut schema, records, (batch.json, batch.types)),
            largest_value(records),
        ),
        // Columns fit the table as it is, or with the columns they add.
        RowsRef::Columns(decoded) => {
            let existing = schema.columns.len();
            if let Some(wider) = &decoded.schema {
                schema = wider.clone();
            }
            (
                SchemaChanges {
                    added: (existing..schema.columns.len()).collect(),
                    widened: Vec::new(),
                    typed_from: Vec::new(),
                },
                decoded.largest,
            )
        }
    };
    if table.exists {
        keep_existing_integers_exact(conn, target, &table.schema, &mut schema, &changes.widened)?;
    }
    if let Some(extra) = schema.extra()
        && changes.added.contains(&extra)
        && let Some((name, ty)) = schema.foreign_extra()
    {
        return Err(Error::new(
            ErrorKind::Sink,
            format!(
                "table {} has its most columns of fields (maxColumns), so the fields past them go, \
                 as one JSON object per row, into its {} column; but the table's column {name} ({}) \
                 is not the sink's, which is named exactly that and of type JSON (nothing of this \
                 batch was written)",
                target.table,
                crate::schema::EXTRA,
                ty.sql()
            ),
        )
        .with_context(
            "what to do",
            format!(
                "rename or drop the column {name}, or raise the sink's maxColumns above the fields the records have"
            ),
        ));
    }
    if schema.columns.is_empty() {
        // Only empty records or nulls: nothing to store yet.
        batch.record_position(conn)?;
        return Ok(BatchAck::new(rows));
    }
    let ddl = schema_ddl(target, table.exists, &schema, &changes);
    let json_nulls = schema.json_nulls(batch.json);
    plan.note_width(conn, &target.sync_key, schema.columns.len(), largest)?;
    let key_column = key_column(target, &schema)?;

    // Checkpoints after appends do not vacuum (see `vacuum_setting`).
    conn.prepare_cached(vacuum_setting(batch.mode))
        .and_then(|mut set| set.execute([]))
        .map_err(|e| duck_error("cannot set DuckDB's vacuum tasks", e))?;
    injected_fault(conn, "begin")?;
    conn.execute_batch("BEGIN TRANSACTION")
        .map_err(|e| duck_error("cannot begin a transaction", e))?;
    let result = (|| -> Result<BatchAck> {
        if !ddl.is_empty() {
            conn.execute_batch(&ddl).map_err(|e| {
                duck_error(format!("cannot create or alter table {}", target.table), e)
            })?;
        }
        let ack = match &key_column {
            Some(key) if batch.mode == WriteMode::Upsert => upsert_rows(
                conn,
                target,
                (&schema, &json_nulls, batch.json),
                batch.rows,
                key,
            )?,
            _ => {
                append_rows(
                    conn,
                    &target.table,
                    false,
                    (&schema, &json_nulls, batch.json),
                    batch.rows,
                )?;
                BatchAck::new(rows).with_inserted(rows)
            }
        };
        // The batch's position commits with its rows.
        batch.record_position(conn)?;
        Ok(ack)
    })();
    match result {
        Ok(ack) => {
            *prepared = Some(ack);
            injected_fault(conn, "commit")?;
            conn.execute_batch("COMMIT")
                .map_err(|e| duck_error("cannot commit", e))?;
            table.schema = schema;
            table.exists = true;
            Ok(ack)
        }
        Err(e) => {
            if let Err(rollback) = conn.execute_batch("ROLLBACK") {
                tracing::error!(error = %rollback, "rollback failed");
            }
            Err(e)
        }
    }
}

/// Whether the checkpoints that follow a batch written in `mode` may vacuum:
/// merge row groups, rewriting them (the sink's checkpoints, and DuckDB's own
/// when a commit's log grew past its threshold). After appends they do not.
/// Rows appended after a checkpoint start a row group of their own, so each
/// checkpoint leaves a partly filled one behind, and vacuuming merged those
/// again and again, compressing the same rows once more each time. DuckDB
/// alone (`bench/duckdb_alone.py`: the benchmark's `orders` rows, the sink's
/// checkpoint schedule) spent 1.84 s of 2.72 s in the checkpoints of a million
/// rows appended 5,000 at a time with vacuuming, 0.83 s of 1.69 s without, and
/// 0.82-0.83 s either way appended 20,000 at a time (whose row groups happened
/// not to merge). A load of 100,000 records of 601 sparse columns took 30.3 s
/// with those rewrites, 10.6 s without. A table loaded so keeps row groups of
/// the rows between two checkpoints (32,768 at most; PostgreSQL's 10M `orders`
/// rows: 428 row groups instead of 306). Upserts and deletes vacuum as DuckDB
/// does by default: their checkpoints reclaim the rows they replaced.
fn vacuum_setting(mode: WriteMode) -> &'static str {
    if mode == WriteMode::Append {
        "SET max_vacuum_tasks = 0"
    } else {
        "RESET max_vacuum_tasks"
    }
}

/// After a committed append: checkpoints when DuckDB's pool holds enough
/// committed rows (see `memory`). Upserts keep DuckDB's own schedule: a
/// checkpoint after deletes rewrites the row groups they touched, and
/// checkpointing early made the example's re-sync at 100,000 orders 1.11×
/// slower. The batch is durable whatever happens here;
/// when the checkpoint failed fatally the database is opened again at once,
/// and when even that fails the next statement reports it. Whether it
/// checkpointed.
fn checkpoint_if_due(db: &Database, conn: &mut Connection, plan: &MemoryPlan) -> bool {
    let error = match plan.checkpoint_if_due(conn) {
        Ok(done) => return done,
        Err(error) => error,
    };
    match db.recover(conn, plan, &error) {
        Ok(true) => {}
        Ok(false) => tracing::warn!(error = %error, "checkpoint failed (the batch is committed)"),
        Err(e) => {
            tracing::warn!(error = %e, "checkpoint failed and the database could not be opened again (the batch is committed)")
        }
    }
    false
}

/// The statements that bring the table to `schema`: its creation, or the
/// columns added and widened.
fn schema_ddl(
    target: &StreamTarget,
    exists: bool,
    schema: &TableSchema,
    changes: &SchemaChanges,
) -> String {
    let t = quote_ident(&target.table);
    let mut ddl = String::new();
    if let Some(extra) = schema.extra()
        && changes.added.contains(&extra)
    {
        tracing::warn!(
            table = %target.table,
            columns = extra,
            "the table has its most columns of fields (the sink's maxColumns): fields without a column go, as one JSON object per row, into its {} column",
            crate::schema::EXTRA
        );
    }
    if !exists {
        let cols: Vec<String> = schema
            .columns
            .iter()
            .map(|(name, ty)| format!("{} {}", quote_ident(name), ty.sql()))
            .collect();
        ddl.push_str(&format!("CREATE TABLE main.{t} ({});", cols.join(", ")));
        return ddl;
    }
    if !changes.typed_from.is_empty()
        || changes
            .widened
            .iter()
            .any(|i| schema.columns[*i].1 == ColumnType::Json)
    {
        // DuckDB cannot replay `ALTER COLUMN … SET DATA TYPE JSON` from its
        // write-ahead log ("no default database set"): a process killed
        // before the next checkpoint would leave a file that no longer
        // opens. The table is rebuilt instead, its columns in their order
        // (what the log then holds replays); so too when a typed column
        // becomes the text its values came as (an expression per type).
        let existing = schema.columns.len() - changes.added.len();
        let select: Vec<String> = schema.columns[..existing]
            .iter()
            .enumerate()
            .map(|(i, (name, ty))| {
                let q = quote_ident(name);
                if let Some((_, was)) = changes.typed_from.iter().find(|(t, _)| *t == i) {
                    format!("{} AS {q}", typed::as_text(was, &q))
                } else if changes.widened.contains(&i) {
                    format!("CAST({q} AS {}) AS {q}", ty.sql())
                } else {
                    q
                }
            })
            .collect();
        let rebuilt = quote_ident(&format!("sluicegate_rebuild_{}", target.table));
        ddl.push_str(&format!(
            "CREATE TABLE main.{rebuilt} AS SELECT {} FROM main.{t}; DROP TABLE main.{t}; ALTER TABLE main.{rebuilt} RENAME TO {t};",
            select.join(", ")
        ));
    } else {
        for idx in &changes.widened {
            let (name, ty) = &schema.columns[*idx];
            ddl.push_str(&format!(
                "ALTER TABLE main.{t} ALTER COLUMN {} SET DATA TYPE {};",
                quote_ident(name),
                ty.sql()
            ));
        }
    }
    for idx in &changes.added {
        let (name, ty) = &schema.columns[*idx];
        ddl.push_str(&format!(
            "ALTER TABLE main.{t} ADD COLUMN {} {};",
            quote_ident(name),
            ty.sql()
        ));
    }
    if !changes.added.is_empty() {
        tracing::info!(table = %target.table, columns = ?changes.added.iter().map(|i| &schema.columns[*i].0).collect::<Vec<_>>(), "adding columns");
    }
    ddl
}

/// The key field's column, quoted; an error when the schema has none (the
/// key held only nulls so far).
fn key_column(target: &StreamTarget, schema: &TableSchema) -> Result<Option<String>> {
    let Some(field) = target.key_field.as_deref() else {
        return Ok(None);
    };
    let idx = schema.column_of(field).ok_or_else(|| {
        Error::new(
            ErrorKind::Sink,
            format!("key field '{field}' has only null values"),
        )
    })?;
    Ok(Some(quote_ident(&schema.columns[idx].0)))
}

/// Upserts `records` by `key`: stages them, deletes the rows they replace and
/// inserts them (inside the caller's transaction).
fn upsert_rows(
    conn: &Connection,
    target: &StreamTarget,
    schema: Layout<'_>,
    records: RowsRef<'_>,
    key: &str,
) -> Result<BatchAck> {
    let rows = records.len() as u64;
    let t = quote_ident(&target.table);
    let stage = stage_name(&target.table);
    conn.execute_batch(&format!(
        "CREATE OR REPLACE TEMP TABLE {stage} AS SELECT * FROM main.{t} LIMIT 0"
    ))
    .map_err(|e| duck_error("cannot create the staging table", e))?;
    append_rows(
        conn,
        &format!("sluicegate_stage_{}", target.table),
        true,
        schema,
        records,
    )?;
    let replaced = conn
        .execute(
            &format!("DELETE FROM main.{t} WHERE {key} IN (SELECT {key} FROM temp.{stage})"),
            [],
        )
        .map_err(|e| duck_error("cannot replace existing rows", e))? as u64;
    conn.execute(
        &format!("INSERT INTO main.{t} SELECT * FROM temp.{stage}"),
        [],
    )
    .map_err(|e| duck_error("cannot insert rows", e))?;
    conn.execute_batch(&format!("DROP TABLE temp.{stage}"))
        .map_err(|e| duck_error("cannot drop the staging table", e))?;
    Ok(BatchAck::new(rows)
        .with_inserted(rows - replaced.min(rows))
        .with_updated(replaced.min(rows)))
}

/// Fault injection for this crate's tests: with the fail point
/// `duckdb-sink-fatal` set to `return(begin)` or `return(commit)`, DuckDB
/// really fails fatally at that step (a checkpoint aborted by DuckDB's own
/// `debug_checkpoint_abort` setting): before the batch's transaction begins, or
/// as its commit checkpoints (the commit is durable, the database invalidated).
/// Without the `fail/failpoints` feature this is nothing.
#[allow(clippy::unnecessary_wraps)]
fn injected_fault(conn: &Connection, at: &str) -> Result<()> {
    let _ = (conn, at);
    fail::fail_point!("duckdb-sink-fatal", |arg| {
        if arg.as_deref() != Some(at) {
            return Ok(());
        }
        let abort = "SET debug_checkpoint_abort = 'before_header';";
        let sql = if at == "commit" {
            format!("{abort} SET checkpoint_threshold = '1b';")
        } else {
            format!("{abort} CHECKPOINT;")
        };
        conn.execute_batch(&sql)
            .map_err(|e| duck_error("injected fault", e))
    });
    Ok(())
}

/// The size of the largest value of `records` as DuckDB stores it, in bytes
/// (about: a nested value's JSON text is estimated from its strings).
fn largest_value(records: &[Record]) -> usize {
    fn size(value: &Value) -> usize {
        match value {
            Value::String(s) => s.len(),
            Value::Array(items) => items.iter().map(|v| size(v) + 8).sum(),
            Value::Object(map) => map.iter().map(|(k, v)| k.len() + size(v) + 8).sum(),
            _ => 8,
        }
    }
    records
        .iter()
        .flat_map(|r| r.values())
        .map(size)
        .max()
        .unwrap_or(0)
}

/// Appends records into `main.table` or `temp.table` as whole columns: every
/// 2,048 records become one Arrow record batch (a column per table column,
/// typed by the schema, [`crate::columns`]) that DuckDB's appender takes as a
/// chunk. `json_nulls` marks the columns where a null is
/// the JSON text `null` ([`TableSchema::json_nulls`]), `declared` the fields
/// the source declared JSON.
fn append_rows(
    conn: &Connection,
    table: &str,
    temp: bool,
    (schema, json_nulls, declared): Layout<'_>,
    rows: RowsRef<'_>,
) -> Result<()> {
    let appender = if temp {
        conn.appender_to_catalog_and_db(table, "temp", "main")
    } else {
        conn.appender_to_db(table, "main")
    };
    let mut appender =
        appender.map_err(|e| duck_error(format!("cannot open an appender on {table}"), e))?;
    // A chunk of DuckDB's vector size at a time: the columns built beside the
    // records stay as small as the appender's own buffer.
    let append = |appender: &mut duckdb::Appender<'_>, batch| {
        appender
            .append_record_batch(batch)
            .map_err(|e| duck_error("cannot append the batch's rows", e))
    };
    match rows {
        RowsRef::Records(records) => {
            for chunk in records.chunks(crate::columns::CHUNK_ROWS) {
                let batch = crate::columns::record_batch(schema, (json_nulls, declared), chunk)?;
                append(&mut appender, batch)?;
            }
        }
        // Parsed for this schema (the columns of a batch that fits it).
        RowsRef::Columns(decoded) => {
            for batch in &decoded.chunks {
                append(&mut appender, batch.clone())?;
            }
        }
    }
    appender
        .flush()
        .map_err(|e| duck_error("cannot flush the appender", e))
}

/// Dry run: counts which keys of the batch already exist.
fn plan_batch(
    conn: &Connection,
    target: &StreamTarget,
    table: &TableState,
    records: &[Record],
) -> Result<BatchAck> {
    let rows = records.len() as u64;
    let all_new = BatchAck::new(rows).with_inserted(rows);
    let Some(field) = target.key_field.as_deref() else {
        return Ok(all_new);
    };
    let Some(idx) = table.schema.column_of(field).filter(|_| table.exists) else {
        return Ok(all_new);
    };
    let (column, ty) = &table.schema.columns[idx];
    let stage = quote_ident("sluicegate_plan_keys");
    conn.execute_batch(&format!(
        "CREATE OR REPLACE TEMP TABLE {stage} (k {})",
        ty.sql()
    ))
    .map_err(|e| duck_error("cannot create the key staging table", e))?;
    {
        let mut appender = conn
            .appender_to_catalog_and_db("sluicegate_plan_keys", "temp", "main")
            .map_err(|e| duck_error("cannot open an appender", e))?;
        for record in records {
            let value = record.get(field).unwrap_or(&Value::Null);
            appender
                .append_row([cell(value, ty)])
                .map_err(|e| duck_error("cannot stage a key", e))?;
        }
    }
    let existing: i64 = conn
        .query_row(
            &format!(
                "SELECT count(*) FROM main.{} WHERE {} IN (SELECT k FROM temp.{stage})",
                quote_ident(&target.table),
                quote_ident(column)
            ),
            [],
            |r| r.get(0),
        )
        .map_err(|e| duck_error("cannot count existing keys", e))?;
    let existing = u64::try_from(existing).unwrap_or(0).min(rows);
    Ok(BatchAck::new(rows)
        .with_inserted(rows - existing)
        .with_updated(existing))
}

/// Logs DuckDB's own view of its memory (buffer manager use by tag).
fn log_memory(conn: &Connection) {
    let rows = conn.prepare("SELECT tag, memory_usage_bytes, temporary_storage_bytes FROM duckdb_memory() WHERE memory_usage_bytes > 0 OR temporary_storage_bytes > 0").and_then(|mut stmt| {
        stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?)))?
            .collect::<duckdb::Result<Vec<_>>>()
    });
    match rows {
        Ok(rows) => {
            for (tag, bytes, temp) in rows {
                tracing::debug!(tag, bytes, temp, "duckdb memory");
            }
        }
        Err(e) => tracing::debug!(error = %e, "cannot read duckdb_memory()"),
    }
}
