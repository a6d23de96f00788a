//! The sink's one connection, and its recovery after a fatal DuckDB error.
//!
//! When DuckDB hits an error it cannot recover from inside the running
//! instance (a checkpoint that failed, a block it could not pin), it
//! *invalidates* the database: every later statement fails until the database
//! is opened again. What was committed before is durable (DuckDB says so, and
//! replays its write-ahead log when the file is opened). So after a failed
//! statement the sink asks whether the connection still works; when it does
//! not, it closes the instance, opens the file again with the same settings
//! and DuckDB's memory limit raised by half (an out-of-memory failure is the
//! usual cause), and the writer finds out from the positions table whether
//! its batch committed before it writes it again (see `sink.rs`). Writers of
//! other streams share the connection, so they carry on with the reopened one.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use duckdb::{AccessMode, Config, Connection};
use sluicegate_core::{Error, ErrorKind, Result};

use crate::config::DuckDbSinkConfig;
use crate::memory::{MemoryPlan, NEW_FILE_BLOCK_SIZE};

pub(crate) fn duck_error(what: impl Into<String>, err: duckdb::Error) -> Error {
    Error::new(ErrorKind::Sink, what).with_source(err)
}

/// Rows per row group in tables the sink writes (DuckDB's default is
/// 122,880). The sink checkpoints after every few MiB of appended rows (see
/// `memory`), and a checkpoint rewrites, recompressed, the row group it ends
/// in; with row groups that hold tens of MiB of text (nested API rows stored as
/// JSON) each one was rewritten again and again, and what the rewrite read
/// back spilled to temporary files. Measured on the example API's nested
/// `events` (600,000 rows, one run each, default settings): 14.0 s with
/// DuckDB's default, 12.3 s with 65,536 rows, 3.8 s with 32,768, 6.9 s with
/// 16,384; the example shop at 1M orders (3.7M rows) 10.2 s against 11.5 s,
/// and at a lower peak. DuckDB applies it to an attached file only.
pub(crate) const ROW_GROUP_ROWS: u32 = 32_768;

/// A statement that fails once DuckDB has invalidated the database: it lists
/// the database's tables (a transaction in every attached database).
const HEALTH_CHECK: &str = "SELECT count(*) FROM duckdb_tables()";

/// The name the database file is attached under (the session's default).
const ATTACHED: &str = "sluicegate_db";

/// How the database was opened, to open it again the same way.
#[derive(Debug, Clone)]
pub(crate) struct OpenOptions {
    pub(crate) path: PathBuf,
    pub(crate) config: DuckDbSinkConfig,
    pub(crate) in_memory: bool,
    pub(crate) dry_run: bool,
}

impl OpenOptions {
    fn settings(&self, memory_mb: u64) -> Result<Config> {
        let mut settings = Config::default()
            .max_memory(&format!("{memory_mb}MB"))
            .map_err(|e| duck_error("invalid memoryLimitMb", e))?
            // New files get small blocks: DuckDB then needs a sixteenth of the
            // memory per column (see `memory`).
            .with("default_block_size", NEW_FILE_BLOCK_SIZE.to_string())
            .map_err(|e| duck_error("cannot set the block size", e))?;
        if let Some(threads) = self.config.threads {
            settings = settings
                .threads(i64::from(threads))
                .map_err(|e| duck_error("invalid threads", e))?;
        }
        if !self.in_memory {
            // Where DuckDB spills for a database file, also when the file is
            // attached to an in-memory instance (see `connect`).
            let mut temp = self.path.as_os_str().to_owned();
            temp.push(".tmp");
            settings = settings
                .with("temp_directory", temp.to_string_lossy())
                .map_err(|e| duck_error("cannot set the temporary directory", e))?;
        }
        for (name, value) in &self.config.settings {
            settings = settings
                .with(name, value)
                .map_err(|e| duck_error(format!("invalid DuckDB setting {name}"), e))?;
        }
        Ok(settings)
    }

    /// Opens the database with DuckDB's limit at `memory_mb`; `None` in a dry
    /// run against a database that does not exist (nothing is created then).
    pub(crate) fn connect(&self, memory_mb: u64) -> Result<Option<Connection>> {
        let settings = self.settings(memory_mb)?;
        let path = &self.path;
        let unfinished = !self.in_memory && interrupted_creation(path);
        if self.dry_run {
            if self.in_memory || !path.exists() || unfinished {
                return Ok(None);
            }
            let settings = settings
                .access_mode(AccessMode::ReadOnly)
                .map_err(|e| duck_error("cannot configure read-only access", e))?;
            return Connection::open_with_flags(path, settings)
                .map(Some)
                .map_err(|e| duck_error(format!("cannot open {} read-only", path.display()), e));
        }
        if self.in_memory {
            return Connection::open_in_memory_with_flags(settings)
                .map(Some)
                .map_err(|e| duck_error("cannot open an in-memory database", e));
        }
        if let Some(parent) = path.parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent).map_err(|e| {
                Error::new(
                    ErrorKind::Io,
                    format!("cannot create directory {}", parent.display()),
                )
                .with_source(e)
            })?;
        }
        if unfinished {
            tracing::warn!(path = %path.display(), "the database's creation was interrupted before DuckDB wrote its headers (it holds nothing): creating it again");
            std::fs::remove_file(path).map_err(|e| {
                Error::new(
                    ErrorKind::Io,
                    format!("cannot remove the unfinished database {}", path.display()),
                )
                .with_source(e)
            })?;
        }
        let cannot_open = |e: duckdb::Error| {
            let hint = if e.to_string().contains("lock") {
                " (is another process using it?)"
            } else {
                ""
            };
            duck_error(format!("cannot open {}{hint}", path.display()), e)
        };
        // The file is attached to an in-memory instance, because only an
        // attachment takes a row group size: see `ROW_GROUP_ROWS`.
        let conn = Connection::open_in_memory_with_flags(settings).map_err(cannot_open)?;
        let quoted = path.to_string_lossy().replace('\'', "''");
        conn.execute_batch(&format!(
            "ATTACH '{quoted}' AS {ATTACHED} (ROW_GROUP_SIZE {ROW_GROUP_ROWS}); USE {ATTACHED};"
        ))
        .map_err(cannot_open)?;
        Ok(Some(conn))
    }
}

/// Whether `path` is what a process killed while DuckDB created the database
/// leaves: a file shorter than DuckDB's three header blocks (12 KiB; every
/// database has them before it holds anything), with no write-ahead log, whose
/// bytes are zeros or begin DuckDB's main header (its magic `DUCK` at byte 8).
/// Such a file holds nothing, but DuckDB refuses to open it ("not a valid
/// DuckDB database file"), so every later run would fail. Anything else —
/// another program's file above all — is left as it is.
fn interrupted_creation(path: &std::path::Path) -> bool {
    const HEADERS: u64 = 3 * 4096;
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    if !meta.is_file() || meta.len() >= HEADERS {
        return false;
    }
    let mut wal = path.as_os_str().to_owned();
    wal.push(".wal");
    if std::path::Path::new(&wal).exists() {
        return false;
    }
    std::fs::read(path).is_ok_and(|bytes| {
        bytes.iter().all(|b| *b == 0) || bytes.get(8..12) == Some(b"DUCK".as_slice())
    })
}

/// The database every writer of the sink writes through.
pub(crate) struct Database {
    conn: Mutex<Connection>,
    options: OpenOptions,
    /// How often the database was opened again after a fatal error.
    reopened: AtomicU64,
}

impl Database {
    pub(crate) fn new(conn: Connection, options: OpenOptions) -> Self {
        Self {
            conn: Mutex::new(conn),
            options,
            reopened: AtomicU64::new(0),
        }
    }

    /// The connection, for one blocking step at a time.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Connection> {
        self.conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How often the database was opened again after a fatal error.
    pub(crate) fn reopened(&self) -> u64 {
        self.reopened.load(Ordering::Relaxed)
    }

    /// After `error` from a statement on `conn`: when DuckDB invalidated the
    /// database, opens it again (with DuckDB's limit raised by half) and
    /// returns `true`; `false` when the connection still works (an ordinary
    /// error, nothing to recover). An in-memory database cannot be recovered:
    /// its rows died with the instance, so that is an error.
    pub(crate) fn recover(
        &self,
        conn: &mut Connection,
        plan: &MemoryPlan,
        error: &Error,
    ) -> Result<bool> {
        // A statement that opens a transaction in the database itself (the
        // file is attached to an in-memory instance that stays usable).
        if self.options.dry_run || conn.execute_batch(HEALTH_CHECK).is_ok() {
            return Ok(false);
        }
        if self.options.in_memory {
            return Err(Error::new(
                ErrorKind::Sink,
                format!(
                    "DuckDB failed fatally and invalidated the in-memory database (its rows are lost): {error}"
                ),
            ));
        }
        let limit_mb = plan.raise_after_failure();
        tracing::warn!(
            path = %self.options.path.display(),
            error = %error,
            memory_limit_mb = limit_mb,
            "DuckDB failed fatally and invalidated the database: opening it again (committed batches are durable)"
        );
        // The old instance must be closed before the file is opened again: two
        // instances on one file would each think they own it.
        let placeholder = Connection::open_in_memory()
            .map_err(|e| duck_error("cannot open a placeholder connection", e))?;
        drop(std::mem::replace(conn, placeholder));
        let reopened = self.options.connect(limit_mb)?.ok_or_else(|| {
            Error::new(
                ErrorKind::Sink,
                "the database vanished while it was reopened",
            )
        })?;
        *conn = reopened;
        self.reopened.fetch_add(1, Ordering::Relaxed);
        Ok(true)
    }

    /// Runs `step` (which must be safe to repeat); when DuckDB failed fatally
    /// during it, opens the database again and runs it once more.
    pub(crate) fn retry_once<T>(
        &self,
        plan: &MemoryPlan,
        step: impl Fn(&Connection) -> Result<T>,
    ) -> Result<T> {
        let mut conn = self.lock();
        match step(&conn) {
            Ok(value) => Ok(value),
            Err(error) => {
                if self.recover(&mut conn, plan, &error)? {
                    step(&conn)
                } else {
                    Err(error)
                }
            }
        }
    }
}
