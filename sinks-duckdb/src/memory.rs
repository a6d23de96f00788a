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

use std::collections::BTreeMap;
use std::sync::Mutex;

use duckdb::Connection;
use sluicegate_core::{Error, ErrorKind, Result};

/// The block size the sink creates database files with.
pub(crate) const NEW_FILE_BLOCK_SIZE: u64 = 64 * 1024;

/// DuckDB's working memory besides the columns being written, in MiB.
const BASE_MB: u64 = 16;

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
    // Per column, from the measured table: 1/8 MiB with 16 KiB blocks, 5/16
    // MiB with 64 KiB, 1¼ MiB with 256 KiB (and larger); a size between two
    // measured ones counts as the larger.
    let per_column_kib = match block_size {
        0..=16_384 => 128,
        16_385..=65_536 => 320,
        _ => 1280,
    };
    BASE_MB + (columns as u64 * per_column_kib).div_ceil(1024)
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

    /// Notes that `stream` writes a table of `columns` columns in a batch whose
    /// largest value is `largest_value` bytes, and raises DuckDB's limit (on
    /// `conn`) when the open tables or that value need more than it has.
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
        st.widths.insert(stream.to_owned(), columns);
        let total: usize = st.widths.values().sum();
        let want = needed_mb(self.block_size, total)
            .max(self.floor_mb)
            .max(for_value);
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
    /// database is opened again with, half as much again as it had, in MiB.
    pub(crate) fn raise_after_failure(&self) -> u64 {
        let mut st = self.state();
        st.applied_mb = st.applied_mb.saturating_add(st.applied_mb.div_ceil(2));
        st.applied_mb
    }

    /// `stream`'s writer is done: its columns no longer count (the limit stays
    /// where it is; DuckDB gives back what it does not use).
    pub(crate) fn forget(&self, stream: &str) {
        self.state().widths.remove(stream);
    }
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
