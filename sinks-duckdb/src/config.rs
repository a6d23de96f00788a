//! Configuration of the `duckdb` sink.
//!
//! ```yaml
//! sinks:
//!   warehouse:
//!     type: duckdb
//!     path: shop.duckdb      # relative to the configuration file
//!     memoryLimitMb: 32      # the least DuckDB's buffer pool gets (optional)
//!     maxColumns: 64         # columns of fields per table; later fields go into `_extra`
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;
use sluicegate_core::{Result, field_error};

/// The `duckdb` sink section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DuckDbSinkConfig {
    /// The database file, relative to the configuration file's directory;
    /// `:memory:` for a database that lives only as long as the run.
    pub path: String,
    /// The least memory DuckDB's buffer pool gets, in MiB (default 16). The sink
    /// raises DuckDB's limit above it when the tables being written are too wide
    /// for it (see the sink's README): a lower limit fails at a checkpoint.
    #[serde(default)]
    pub memory_limit_mb: Option<u64>,
    /// DuckDB worker threads. One is plenty for batch appends and keeps DuckDB's
    /// per-thread memory low; raise it for very large tables with many updates.
    #[serde(default = "default_threads")]
    pub threads: Option<u32>,
    /// The most columns of fields a table gets (default 64): fields that
    /// arrive once a table has that many get no column of their own; their
    /// values go, as one JSON object per row, into its `_extra` column (see
    /// the sink's README). DuckDB needs memory per column being written, so
    /// this bounds what a table of wide, sparse records takes.
    #[serde(default = "default_max_columns")]
    pub max_columns: usize,
    /// Further DuckDB settings, passed to DuckDB as they are when the database is
    /// opened (for example `allocator_flush_threshold: 8MB`).
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
}

/// DuckDB's buffer pool when `memoryLimitMb` is not set, in MiB.
pub(crate) const DEFAULT_MEMORY_LIMIT_MB: u64 = 16;

fn default_threads() -> Option<u32> {
    Some(1)
}

/// `maxColumns` when it is not set.
pub const DEFAULT_MAX_COLUMNS: usize = 64;

fn default_max_columns() -> usize {
    DEFAULT_MAX_COLUMNS
}

impl DuckDbSinkConfig {
    /// A configuration for the database file at `path` with the default memory
    /// limit, threads and settings (for building the sink in code).
    pub fn new(path: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            memory_limit_mb: None,
            threads: default_threads(),
            max_columns: DEFAULT_MAX_COLUMNS,
            settings: BTreeMap::new(),
        }
    }

    /// Checks the values without touching the file system.
    pub fn validate(&self) -> Result<()> {
        if self.path.trim().is_empty() {
            return Err(field_error("path", "must not be empty"));
        }
        // At 12 MiB a 1M-row sync of the example's orders failed to checkpoint
        // (DuckDB could not pin a block), which invalidates the database.
        if self.memory_limit_mb.is_some_and(|mb| mb < 16) {
            return Err(field_error("memoryLimitMb", "must be at least 16"));
        }
        if self.max_columns == 0 {
            return Err(field_error("maxColumns", "must be at least 1"));
        }
        if self.threads == Some(0) {
            return Err(field_error("threads", "must be at least 1"));
        }
        Ok(())
    }
}
