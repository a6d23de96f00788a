//! DuckDB's memory, planned from the shape of what is written.
//!
//! What DuckDB needs to append and checkpoint grows with the number of columns
//! being written: each column holds blocks of its own while a row group fills
//! and while it is compressed at a checkpoint. Measured with DuckDB 1.5.6, one
//! thread, batches of 1,000 rows in one transaction each, then `CHECKPOINT`
//! (the smallest memory limit that completed, by bisection):
//!
//! | block size | 10 columns | 30 columns | 100 columns | 400 columns |
//! |---|---|---|---|---|
//! | 256 KiB (DuckDB's default) | 9 MiB | 25 MiB | 111 MiB | not measured (about 1.1 MiB per column above) |
//! | 64 KiB | 4 MiB | - | 19 MiB | 101 MiB |
//! | 16 KiB | ≤ 16 MiB | ≤ 16 MiB | 6–32 MiB | 32–48 MiB |
//!
//! Small blocks cost time as tables grow: the example shop's 3.7M rows (1M
//! orders) loaded in 37.9 s with 256 KiB blocks, 50.7 s with 64 KiB and 86 s
//! with 16 KiB (peak 105, 100 and 114 MiB). So the sink creates new database
//! files with 64 KiB blocks, and raises DuckDB's limit before a batch when the
//! columns of the tables being written need more than it has: 16 MiB plus
//! 5/16 MiB per column (1/8 MiB with 16 KiB blocks, 1¼ MiB with 256 KiB: files
//! created elsewhere keep their block size). A fixed limit below that fails,
//! and a failed checkpoint invalidates the database for the rest of the run.
//!
//! Rows committed since the last checkpoint stay in DuckDB's pool, uncompressed,
//! until a checkpoint writes them into the file; the checkpoint itself needs
//! about as much again while it compresses them. When the pool overflows,
//! DuckDB spills blocks to temporary files, and for a file whose blocks are
//! not 256 KiB every spilled block is a file of its own, created and deleted
//! again: a quarter of a 1M-order load's time went into the kernel creating
//! files. So after each appended batch the sink checkpoints once the committed
//! rows in memory reach a quarter of the pool, at least 8 MiB. Measured on the
//! example shop, first load of 1M orders (3.7M rows), medians of three
//! alternating runs: 0.79× the wall time of DuckDB's own schedule (a checkpoint
//! per 16 MB of write-ahead log), 16.0 s against 20.2 s, with 3.3 s of system
//! time against 8.0 s, at the same peak RSS (124 and 122 MiB). Checkpointing
//! earlier rewrites a table's last, partly filled row group again and again:
//! at 4 MiB a load was four times slower (with DuckDB's row groups of 122,880
//! rows; the sink now writes row groups of 32,768, see `database`, so that a
//! rewrite is bounded by a few MiB even for tables of long text). A larger pool does not pay: 32 MiB leaves records in flight 10 MiB
//! less of the run's memory, and the example's re-sync got slower.

use std::collections::BTreeMap;
use std::sync::Mutex;

use duckdb::Connection;
use sluicegate_core::{Error, ErrorKind, Result};

/// The block size the sink creates database files with.
pub(crate) const NEW_FILE_BLOCK_SIZE: u64 = 64 * 1024;

/// DuckDB's working memory besides the columns being written, in MiB.
const BASE_MB: u64 = 16;

/// The least committed-but-not-checkpointed data in DuckDB's pool that makes
/// the sink checkpoint, in bytes (see the module docs).
const MIN_CHECKPOINT_BYTES: u64 = 8 << 20;

/// What DuckDB allocates besides its buffer pool while the sink appends,
/// upserts and checkpoints with one thread, in MiB: its own allocator's
/// caches, the catalog, the appender's chunks, checkpoint compression. DuckDB's
/// `memory_limit` does not cover it. Measured on the bundled example (first
/// load and re-sync of its six resources): the process's anonymous memory
/// minus what Rust's allocator holds peaked at the limit plus 20-26 MiB, for
/// limits of 16 and 32 MiB.
pub(crate) const OUTSIDE_POOL_MB: u64 = 24;

/// The memory DuckDB needs to write and checkpoint one value of `bytes` bytes
/// (a long string, or a nested value stored as JSON text), in MiB. Measured
/// with DuckDB 1.5.6, 16 KiB blocks, one thread, three such rows in their own
/// transactions, then `CHECKPOINT` (the smallest limit that completed): a 4 MiB
/// string needed 13 MiB, 16 MiB needed 49, 40 MiB needed 121: three times the
/// value plus 1 MiB; one more MiB here for margin.
pub(crate) fn value_needs_mb(bytes: usize) -> u64 {
    3 * (bytes as u64).div_ceil(1 << 20) + 2
}

/// The memory DuckDB needs to write `columns` columns at once with blocks of
/// `block_size` bytes, in MiB (see the module docs).
pub(crate) fn needed_mb(block_size: u64, columns: usize) -> u64 {
    BASE_MB + (columns as u64 * per_column(block_size).0).div_ceil(1024)
}

/// The memory planned per column with blocks of `block_size` bytes, in KiB
/// and as text in MiB, from the measured table: 1/8 MiB with 16 KiB blocks,
/// 5/16 MiB with 64 KiB, 1¼ MiB with 256 KiB (and larger); a size between two
/// measured ones counts as the larger.
fn per_column(block_size: u64) -> (u64, &'static str) {
    match block_size {
        0..=16_384 => (128, "1/8"),
        16_385..=65_536 => (320, "5/16"),
        _ => (1280, "1¼"),
    }
}

/// The sink's plan: the configured floor, the file's block size, and the width
/// of each table being written.
#[derive(Debug)]
pub(crate) struct MemoryPlan {
    floor_mb: u64,
    /// `memoryLimitMb` was set explicitly: raising it is announced as a warning.
    explicit: bool,
    block_size: u64,
    state: Mutex<PlanState>,
}

#[derive(Debug, Default)]
struct PlanState {
    /// Columns of each stream's table, while its writer is open.
    widths: BTreeMap<String, usize>,
    /// The limit DuckDB has now, in MiB.
    applied_mb: u64,
    /// The process's hard memory limit (a container's), in MiB, when known:
    /// DuckDB's working memory is never planned past it.
    hard_limit_mb: Option<u64>,
}

impl MemoryPlan {
    /// A plan starting at `floor_mb` for a database whose blocks are
    /// `block_size` bytes.
    pub(crate) fn new(floor_mb: u64, explicit: bool, block_size: u64) -> Self {
        Self {
            floor_mb,
            explicit,
            block_size,
            state: Mutex::new(PlanState {
                widths: BTreeMap::new(),
                applied_mb: floor_mb,
                hard_limit_mb: None,
            }),
        }
    }

    /// DuckDB's limit now, in MiB.
    pub(crate) fn limit_mb(&self) -> u64 {
        self.state().applied_mb
    }

    fn state(&self) -> std::sync::MutexGuard<'_, PlanState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Notes the process's hard memory limit (`StreamTarget::memory_limit`,
    /// in bytes), when one is known.
    pub(crate) fn set_hard_limit(&self, bytes: Option<u64>) {
        if let Some(bytes) = bytes {
            self.state().hard_limit_mb = Some(bytes >> 20);
        }
    }

    /// Notes that `stream` writes a table of `columns` columns in a batch whose
    /// largest value is `largest_value` bytes, and raises DuckDB's limit (on
    /// `conn`) when the open tables or that value need more than it has.
    ///
    /// Under a hard memory limit (a container's) that DuckDB's working memory
    /// alone would pass, nothing is raised and the batch is refused with
    /// [`ErrorKind::MemoryLimit`]: DuckDB would take the memory it needs and
    /// the container would kill the process (a table of 400 columns in a
    /// 128 MiB container was; one of 250 completed, planned at 119 MiB).
    pub(crate) fn note_width(
        &self,
        conn: &Connection,
        stream: &str,
        columns: usize,
        largest_value: usize,
    ) -> Result<()> {
        let mut st = self.state();
        let for_value = value_needs_mb(largest_value);
        if st.widths.get(stream) == Some(&columns) && for_value <= st.applied_mb {
            return Ok(());
        }
        let others: usize = st
            .widths
            .iter()
            .filter(|(s, _)| s.as_str() != stream)
            .map(|(_, c)| c)
            .sum();
        let total = others + columns;
        let for_columns = needed_mb(self.block_size, total);
        let want = for_columns.max(self.floor_mb).max(for_value);
        if let Some(limit) = st.hard_limit_mb
            && want > st.applied_mb
            && want + OUTSIDE_POOL_MB > limit
        {
            let (what, fewer) = if for_value > for_columns {
                (
                    format!(
                        "a value of {} (DuckDB needs about three times a value's size to write and checkpoint it)",
                        sluicegate_core::format_bytes(largest_value)
                    ),
                    "",
                )
            } else {
                let beside = if others > 0 {
                    format!(" of this table beside {others} of the tables being written with it")
                } else {
                    " at once".to_owned()
                };
                let (_, per_column) = per_column(self.block_size);
                (
                    format!(
                        "{columns} columns{beside} ({per_column} MiB per column with this file's {} KiB blocks)",
                        self.block_size >> 10
                    ),
                    ", or lower the sink's maxColumns (fields past it go into the table's _extra column)",
                )
            };
            return Err(Error::new(
                ErrorKind::MemoryLimit,
                format!(
                    "DuckDB needs about {} MiB to write {what}: {want} MiB for its buffer pool and {OUTSIDE_POOL_MB} MiB outside it, more than the {limit} MiB this process may use (its container's memory limit), so the stream stops here instead of the process being killed; the batches before this one are written. Give the container more memory{fewer}",
                    want + OUTSIDE_POOL_MB
                ),
            ));
        }
        st.widths.insert(stream.to_owned(), columns);
        if want <= st.applied_mb {
            return Ok(());
        }
        conn.execute_batch(&format!("SET memory_limit = '{want}MiB'"))
            .map_err(|e| {
                Error::new(
                    ErrorKind::Sink,
                    format!("cannot raise DuckDB's memory limit to {want} MiB"),
                )
                .with_source(e)
            })?;
        if self.explicit {
            tracing::warn!(
                columns = total,
                from_mb = st.applied_mb,
                to_mb = want,
                "DuckDB needs more memory than memoryLimitMb for tables this wide; raised it (a lower limit fails at a checkpoint)"
            );
        } else {
            tracing::info!(
                columns = total,
                from_mb = st.applied_mb,
                to_mb = want,
                "DuckDB's memory limit raised for the columns being written"
            );
        }
        st.applied_mb = want;
        Ok(())
    }

    /// The memory DuckDB works with now, in bytes: its limit (its buffer pool)
    /// plus what it allocates outside it (see [`OUTSIDE_POOL_MB`]).
    pub(crate) fn working_bytes(&self) -> u64 {
        (self.state().applied_mb + OUTSIDE_POOL_MB).saturating_mul(1 << 20)
    }

    /// DuckDB failed fatally (most often for want of memory): the limit the
    /// database is opened again with, half as much again as it had, in MiB
    /// (under a hard limit, at most what it leaves DuckDB's pool).
    pub(crate) fn raise_after_failure(&self) -> u64 {
        let mut st = self.state();
        let raised = st.applied_mb.saturating_add(st.applied_mb.div_ceil(2));
        let ceiling = st
            .hard_limit_mb
            .map_or(u64::MAX, |l| l.saturating_sub(OUTSIDE_POOL_MB));
        st.applied_mb = raised.min(ceiling).max(st.applied_mb);
        st.applied_mb
    }

    /// The committed rows DuckDB may hold in memory before the sink
    /// checkpoints, in bytes: a quarter of its limit, at least 8 MiB.
    pub(crate) fn checkpoint_at_bytes(&self) -> u64 {
        (self.limit_mb().saturating_mul(1 << 20) / 4).max(MIN_CHECKPOINT_BYTES)
    }

    /// After a commit: checkpoints when the committed rows DuckDB holds in
    /// memory (its `IN_MEMORY_TABLE` blocks, see `duckdb_memory()`) reached
    /// [`Self::checkpoint_at_bytes`]; whether it did.
    pub(crate) fn checkpoint_if_due(&self, conn: &Connection) -> Result<bool> {
        if committed_in_memory(conn)? < self.checkpoint_at_bytes() {
            return Ok(false);
        }
        conn.execute_batch("CHECKPOINT").map_err(|e| {
            Error::new(ErrorKind::Sink, "cannot checkpoint the database").with_source(e)
        })?;
        Ok(true)
    }

    /// After a committed batch of `stream`: hands the memory DuckDB freed back
    /// to the system when that is a lot, that is after a checkpoint (the rows
    /// it compressed leave the pool) and after every batch of a wide table (a
    /// transaction's own storage holds two blocks per column, values and
    /// validity, freed at its commit: 75 MiB for 601 columns of 64 KiB
    /// blocks). DuckDB's allocator keeps freed pages for seconds before it
    /// returns them; setting the limit (to the value it has) makes it return
    /// them at once. Without this, batches of a table of 601 sparse columns
    /// left up to 270 MiB of freed memory resident (`tests/wide_memory.rs`).
    /// It costs page faults when the memory is used again, so narrow tables
    /// keep it between checkpoints: for the example shop, handing it back
    /// after every batch made the sync 1.13× slower for 4 MiB less.
    pub(crate) fn after_batch(&self, conn: &Connection, stream: &str, checkpointed: bool) {
        if !checkpointed && !self.is_wide(stream) {
            return;
        }
        let mb = self.limit_mb();
        if let Err(e) = conn.execute_batch(&format!("SET memory_limit = '{mb}MiB'")) {
            tracing::debug!(error = %e, "cannot make DuckDB return freed memory");
        }
    }

    /// Whether `stream`'s table is wide: the two blocks per column its
    /// transactions hold in their own storage (values and validity, freed at
    /// each commit) reach 8 MiB, 64 columns of 64 KiB blocks.
    pub(crate) fn is_wide(&self, stream: &str) -> bool {
        let columns = self.state().widths.get(stream).copied().unwrap_or(0);
        columns as u64 * 2 * self.block_size >= MIN_CHECKPOINT_BYTES
    }

    /// `stream`'s writer is done: its columns no longer count (the limit stays
    /// where it is; DuckDB gives back what it does not use).
    pub(crate) fn forget(&self, stream: &str) {
        self.state().widths.remove(stream);
    }
}

/// The committed rows DuckDB holds in its pool, not yet checkpointed (its
/// `IN_MEMORY_TABLE` blocks in `duckdb_memory()`), in bytes.
fn committed_in_memory(conn: &Connection) -> Result<u64> {
    // Asked after every batch: prepared once per connection.
    conn.prepare_cached(
        "SELECT coalesce(sum(memory_usage_bytes), 0)::BIGINT FROM duckdb_memory() WHERE tag = 'IN_MEMORY_TABLE'",
    )
    .and_then(|mut stmt| stmt.query_row([], |r| r.get::<_, i64>(0)))
    .map(|bytes| u64::try_from(bytes).unwrap_or(0))
    .map_err(|e| Error::new(ErrorKind::Sink, "cannot read DuckDB's memory use").with_source(e))
}

/// The block size of the main database of `conn`, in bytes.
pub(crate) fn block_size(conn: &Connection) -> u64 {
    conn.query_row(
        "SELECT block_size FROM pragma_database_size() WHERE database_name = current_database()",
        [],
        |r| r.get::<_, i64>(0),
    )
    .ok()
    .and_then(|b| u64::try_from(b).ok())
    .filter(|&b| b > 0)
    .unwrap_or(256 * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_need_follows_the_measured_table() {
        // 16 KiB blocks: 400 columns completed at 48 MiB, not at 32.
        assert_eq!(needed_mb(16 * 1024, 400), 66);
        assert_eq!(needed_mb(16 * 1024, 10), 18);
        // 64 KiB blocks: 400 columns needed 101 MiB.
        assert_eq!(needed_mb(64 * 1024, 400), 141);
        assert_eq!(needed_mb(64 * 1024, 10), 20);
        // 256 KiB blocks: 100 columns needed between 64 and 128 MiB.
        assert_eq!(needed_mb(256 * 1024, 100), 141);
        assert_eq!(needed_mb(256 * 1024, 30), 54);
    }

    #[test]
    fn under_a_hard_limit_the_plan_refuses_what_would_pass_it_and_raises_nothing() {
        let conn = Connection::open_in_memory().unwrap();
        let plan = MemoryPlan::new(16, false, NEW_FILE_BLOCK_SIZE);
        plan.set_hard_limit(Some(128 << 20));
        // 250 columns: 95 MiB + 24 outside the pool fit 128 MiB.
        plan.note_width(&conn, "a", 250, 100).unwrap();
        assert_eq!(plan.limit_mb(), 95);
        // Another table of 150 beside it would need 141 + 24.
        let err = plan.note_width(&conn, "b", 150, 100).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::MemoryLimit);
        let text = err.to_string();
        assert!(
            text.contains("150 columns of this table beside 250"),
            "{text}"
        );
        assert!(text.contains("more than the 128 MiB"), "{text}");
        assert_eq!(plan.limit_mb(), 95, "nothing raised");
        // The refused table does not count: a narrow one still fits.
        plan.note_width(&conn, "b", 10, 100).unwrap();
        // A value of 40 MiB would need 122 MiB for itself.
        let err = plan.note_width(&conn, "a", 250, 40 << 20).unwrap_err();
        assert!(err.to_string().contains("a value of 40.0 MiB"), "{err}");
        // Reopened after a fatal failure: raised, but not past the limit.
        assert_eq!(plan.raise_after_failure(), 104);
        assert_eq!(plan.raise_after_failure(), 104);
        // Without a hard limit the same widths are planned for.
        let free = MemoryPlan::new(16, false, NEW_FILE_BLOCK_SIZE);
        free.set_hard_limit(None);
        free.note_width(&conn, "a", 601, 100).unwrap();
        assert_eq!(free.limit_mb(), 204);
    }

    #[test]
    fn committed_rows_in_memory_stay_under_a_quarter_of_the_pool() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plan.duckdb");
        let config = duckdb::Config::default()
            .max_memory("32MB")
            .unwrap()
            .with("default_block_size", NEW_FILE_BLOCK_SIZE.to_string())
            .unwrap()
            .threads(1)
            .unwrap();
        let conn = Connection::open_with_flags(&path, config).unwrap();
        let plan = MemoryPlan::new(32, false, NEW_FILE_BLOCK_SIZE);
        assert_eq!(plan.checkpoint_at_bytes(), 8 << 20);
        conn.execute_batch("CREATE TABLE t (id BIGINT, name VARCHAR, price DOUBLE, meta VARCHAR)")
            .unwrap();
        let (mut checkpoints, mut highest) = (0, 0);
        for batch in 0..60_i64 {
            conn.execute_batch(&format!(
                "BEGIN; INSERT INTO t SELECT i, 'name ' || i || ' ' || repeat('x', 20), i * 0.25, '{{\"k\":' || i || '}}' \
                 FROM range({start}, {end}) r(i); COMMIT;",
                start = batch * 5000,
                end = (batch + 1) * 5000
            ))
            .unwrap();
            if plan.checkpoint_if_due(&conn).unwrap() {
                checkpoints += 1;
            }
            highest = highest.max(committed_in_memory(&conn).unwrap());
        }
        assert!(
            checkpoints >= 2,
            "{checkpoints} checkpoints for 300,000 rows"
        );
        // After each commit the rows held in memory are at most the threshold
        // plus one batch (5,000 rows of about 60 bytes).
        assert!(
            highest <= (8 << 20) + (1 << 20),
            "{highest} bytes of committed rows in memory"
        );
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 300_000);
        // The default pool checkpoints at 8 MiB too; a larger one later.
        assert_eq!(
            MemoryPlan::new(16, false, NEW_FILE_BLOCK_SIZE).checkpoint_at_bytes(),
            8 << 20
        );
        let wide = MemoryPlan::new(141, false, NEW_FILE_BLOCK_SIZE);
        assert_eq!(wide.checkpoint_at_bytes(), (141 << 20) / 4);
    }

    #[test]
    fn the_limit_rises_with_the_open_tables_and_never_below_the_floor() {
        let conn = Connection::open_in_memory().unwrap();
        let plan = MemoryPlan::new(16, false, 16 * 1024);
        plan.note_width(&conn, "a", 10, 100).unwrap();
        assert_eq!(plan.limit_mb(), 18);
        plan.note_width(&conn, "b", 400, 100).unwrap();
        assert_eq!(plan.limit_mb(), 68);
        let set: String = conn
            .query_row("SELECT current_setting('memory_limit')", [], |r| r.get(0))
            .unwrap();
        assert!(set.starts_with("68.0 MiB") || set.contains("MiB"), "{set}");
        plan.forget("b");
        plan.note_width(&conn, "a", 11, 100).unwrap();
        assert_eq!(plan.limit_mb(), 68, "never lowered while the run goes on");
        // A 40 MiB value needs three times its size.
        plan.note_width(&conn, "a", 11, 40 << 20).unwrap();
        assert_eq!(plan.limit_mb(), 122);
        let floor = MemoryPlan::new(512, true, 16 * 1024);
        floor.note_width(&conn, "a", 400, 100).unwrap();
        assert_eq!(floor.limit_mb(), 512);
    }
}
