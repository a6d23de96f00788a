//! The CLI's state store: checkpoints of every sync key and stream, and the
//! high-water marks of incremental syncs, in one SQLite database,
//! `.sluicegate/state/state.db` next to the configuration file.
//!
//! Each commit is one SQLite transaction (WAL journal, `synchronous = FULL`), so
//! after a crash or `kill -9` the store holds either the previous or the new
//! position of a stream, never a torn one. Several runs (of different keys, see
//! [`crate::lock`]) share the file; SQLite serialises their commits.
//!
//! The file is marked as Sluicegate's (`PRAGMA application_id`) with a schema
//! version (`PRAGMA user_version`). A file that is not a SQLite database, belongs
//! to another program or was written by a newer Sluicegate is refused with a
//! message naming the file and `sluicegate state reset`, which moves it aside.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use serde_json::Value;
use sluicegate_core::{CheckpointStore, Error, ErrorKind, Position, Result};
use sluicegate_engine::{SavedWindow, WindowStore};

/// `PRAGMA application_id` of a Sluicegate state database ("SLGT").
const APPLICATION_ID: i32 = 0x534C_4754;
/// The schema version this build writes and reads. Version 1 had no
/// `incremental` table; opening such a file for writing adds it.
const SCHEMA_VERSION: i32 = 2;

/// The table of high-water marks (schema version 2).
const INCREMENTAL_TABLE: &str = "CREATE TABLE IF NOT EXISTS incremental (
                 sync_key TEXT NOT NULL,
                 stream TEXT NOT NULL,
                 last_value TEXT,
                 progress TEXT,
                 updated_at TEXT NOT NULL,
                 PRIMARY KEY (sync_key, stream)
             );";
/// The database's file name inside the state directory.
pub const STATE_FILE: &str = "state.db";

/// Checkpoints in a SQLite database (see the module docs).
pub struct SqliteStateStore {
    path: PathBuf,
    conn: Mutex<Connection>,
    /// Opened read-only on a version-1 file: there are no high-water marks.
    no_windows: bool,
}

/// One saved high-water mark, as `sluicegate state show` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedMark {
    /// The sync key.
    pub sync_key: String,
    /// The stream (table).
    pub stream: String,
    /// The high-water mark of the last complete run, as JSON.
    pub last_value: Option<String>,
    /// The highest acknowledged cursor of a window that did not complete.
    pub progress: Option<String>,
    /// When it last changed (UTC).
    pub updated_at: String,
}

/// One saved checkpoint, as `sluicegate state show` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedCheckpoint {
    /// The sync key.
    pub sync_key: String,
    /// The stream (table).
    pub stream: String,
    /// The position, as JSON.
    pub position: String,
    /// When it was committed (UTC, SQLite's `datetime('now')`).
    pub committed_at: String,
}

impl SqliteStateStore {
    /// Opens (creating it, owner-only, if missing) the state database in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        create_private_dir(dir)?;
        let path = dir.join(STATE_FILE);
        let fresh = !path.exists();
        if fresh {
            create_private_file(&path)?;
        }
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| unusable(&path, &e.to_string()))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| unusable(&path, &e.to_string()))?;
        check_or_init(&conn, &path)?;
        Ok(Self {
            path,
            conn: Mutex::new(conn),
            no_windows: false,
        })
    }

    /// Opens the state database in `dir` for reading only (a dry run, or
    /// `validate`): `None` when there is none yet. Nothing is created or changed.
    pub fn open_read_only(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join(STATE_FILE);
        if !path.exists() {
            return Ok(None);
        }
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| unusable(&path, &e.to_string()))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| unusable(&path, &e.to_string()))?;
        let version = check_version(&conn, &path)?;
        Ok(Some(Self {
            path,
            conn: Mutex::new(conn),
            no_windows: version < 2,
        }))
    }

    /// Every saved high-water mark, by key and stream.
    pub fn marks(&self) -> Result<Vec<SavedMark>> {
        if self.no_windows {
            return Ok(Vec::new());
        }
        let conn = self.lock();
        let mut statement = conn
            .prepare(
                "SELECT sync_key, stream, last_value, progress, updated_at FROM incremental \
                 ORDER BY sync_key, stream",
            )
            .map_err(|e| self.failed("read", e))?;
        let rows = statement
            .query_map([], |row| {
                Ok(SavedMark {
                    sync_key: row.get(0)?,
                    stream: row.get(1)?,
                    last_value: row.get(2)?,
                    progress: row.get(3)?,
                    updated_at: row.get(4)?,
                })
            })
            .map_err(|e| self.failed("read", e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.failed("read", e))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every saved checkpoint, by key and stream.
    pub fn list(&self) -> Result<Vec<SavedCheckpoint>> {
        let conn = self.lock();
        let mut statement = conn
            .prepare(
                "SELECT sync_key, stream, position, committed_at FROM checkpoints ORDER BY sync_key, stream",
            )
            .map_err(|e| self.failed("read", e))?;
        let rows = statement
            .query_map([], |row| {
                Ok(SavedCheckpoint {
                    sync_key: row.get(0)?,
                    stream: row.get(1)?,
                    position: row.get(2)?,
                    committed_at: row.get(3)?,
                })
            })
            .map_err(|e| self.failed("read", e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.failed("read", e))
    }

    /// Forgets every checkpoint and high-water mark of `sync_key`; returns how
    /// many checkpoints and marks there were.
    pub fn clear_key(&self, sync_key: &str) -> Result<(usize, usize)> {
        let conn = self.lock();
        let checkpoints = conn
            .execute(
                "DELETE FROM checkpoints WHERE sync_key = ?1",
                params![sync_key],
            )
            .map_err(|e| self.failed("clear", e))?;
        let marks = conn
            .execute(
                "DELETE FROM incremental WHERE sync_key = ?1",
                params![sync_key],
            )
            .map_err(|e| self.failed("clear", e))?;
        Ok((checkpoints, marks))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn failed(&self, action: &str, err: rusqlite::Error) -> Error {
        Error::new(
            ErrorKind::Checkpoint,
            format!("cannot {action} checkpoints in {}", self.path.display()),
        )
        .with_source(err)
    }
}

impl CheckpointStore for SqliteStateStore {
    fn load(&self, sync_key: &str, stream: &str) -> Result<Option<Position>> {
        let text: Option<String> = self
            .lock()
            .query_row(
                "SELECT position FROM checkpoints WHERE sync_key = ?1 AND stream = ?2",
                params![sync_key, stream],
                |row| row.get(0),
            )
            .optional()
            .map_err(|e| self.failed("read", e))?;
        text.map(|text| {
            serde_json::from_str(&text).map_err(|e| {
                Error::new(
                    ErrorKind::Checkpoint,
                    format!(
                        "the checkpoint of '{sync_key}' ({stream}) in {} is not valid JSON ({e}); \
                         run `sluicegate state reset --key {sync_key}` to start that sync over",
                        self.path.display()
                    ),
                )
            })
        })
        .transpose()
    }

    fn commit(&self, sync_key: &str, stream: &str, position: &Position) -> Result<()> {
        let text = serde_json::to_string(position).map_err(|e| {
            Error::new(ErrorKind::Checkpoint, "cannot encode a checkpoint").with_source(e)
        })?;
        self.lock()
            .execute(
                "INSERT INTO checkpoints (sync_key, stream, position, committed_at)
                 VALUES (?1, ?2, ?3, datetime('now'))
                 ON CONFLICT (sync_key, stream)
                 DO UPDATE SET position = excluded.position, committed_at = excluded.committed_at",
                params![sync_key, stream, text],
            )
            .map_err(|e| self.failed("commit", e))?;
        Ok(())
    }

    fn clear(&self, sync_key: &str, stream: &str) -> Result<()> {
        self.lock()
            .execute(
                "DELETE FROM checkpoints WHERE sync_key = ?1 AND stream = ?2",
                params![sync_key, stream],
            )
            .map_err(|e| self.failed("clear", e))?;
        Ok(())
    }
}

impl WindowStore for SqliteStateStore {
    fn load(&self, sync_key: &str, stream: &str) -> Result<SavedWindow> {
        if self.no_windows {
            return Ok(SavedWindow::default());
        }
        let row: Option<(Option<String>, Option<String>)> = self
            .lock()
            .query_row(
                "SELECT last_value, progress FROM incremental WHERE sync_key = ?1 AND stream = ?2",
                params![sync_key, stream],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()
            .map_err(|e| self.failed("read", e))?;
        let Some((last, progress)) = row else {
            return Ok(SavedWindow::default());
        };
        let decode = |text: Option<String>| -> Result<Option<Value>> {
            text.map(|t| {
                serde_json::from_str(&t).map_err(|e| {
                    Error::new(
                        ErrorKind::Checkpoint,
                        format!(
                            "the high-water mark of '{sync_key}' ({stream}) in {} is not valid \
                             JSON ({e}); run `sluicegate state reset --key {sync_key}` to start \
                             that sync over",
                            self.path.display()
                        ),
                    )
                })
            })
            .transpose()
        };
        Ok(SavedWindow::new(decode(last)?, decode(progress)?))
    }

    fn progress(&self, sync_key: &str, stream: &str, highest: &Value) -> Result<()> {
        self.lock()
            .execute(
                "INSERT INTO incremental (sync_key, stream, progress, updated_at)
                 VALUES (?1, ?2, ?3, datetime('now'))
                 ON CONFLICT (sync_key, stream)
                 DO UPDATE SET progress = excluded.progress, updated_at = excluded.updated_at",
                params![sync_key, stream, highest.to_string()],
            )
            .map_err(|e| self.failed("commit", e))?;
        Ok(())
    }

    fn complete(&self, sync_key: &str, stream: &str, last_value: &Value) -> Result<()> {
        self.lock()
            .execute(
                "INSERT INTO incremental (sync_key, stream, last_value, progress, updated_at)
                 VALUES (?1, ?2, ?3, NULL, datetime('now'))
                 ON CONFLICT (sync_key, stream)
                 DO UPDATE SET last_value = excluded.last_value, progress = NULL,
                               updated_at = excluded.updated_at",
                params![sync_key, stream, last_value.to_string()],
            )
            .map_err(|e| self.failed("commit", e))?;
        Ok(())
    }

    fn clear(&self, sync_key: &str, stream: &str) -> Result<()> {
        self.lock()
            .execute(
                "DELETE FROM incremental WHERE sync_key = ?1 AND stream = ?2",
                params![sync_key, stream],
            )
            .map_err(|e| self.failed("clear", e))?;
        Ok(())
    }
}

/// Moves the state database in `dir` aside (to `state.db.<unix seconds>.bak`),
/// whatever its content, so the next run starts every stream over. Returns where
/// it went, or `None` when there was none.
pub fn move_aside(dir: &Path) -> Result<Option<PathBuf>> {
    let path = dir.join(STATE_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let aside = dir.join(format!("{STATE_FILE}.{seconds}.bak"));
    std::fs::rename(&path, &aside).map_err(|e| {
        Error::new(
            ErrorKind::Checkpoint,
            format!("cannot move {} aside", path.display()),
        )
        .with_source(e)
    })?;
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(dir.join(format!("{STATE_FILE}{suffix}")));
    }
    Ok(Some(aside))
}

fn unusable(path: &Path, why: &str) -> Error {
    Error::new(
        ErrorKind::Checkpoint,
        format!(
            "the state file {} cannot be used ({why}); run `sluicegate state reset` (with the same \
             --config or --state-dir) to move it aside and start every sync over",
            path.display()
        ),
    )
}

/// Checks that `conn` is a Sluicegate state database this build can use, or makes
/// an empty file one.
fn check_or_init(conn: &Connection, path: &Path) -> Result<()> {
    // Several processes (the shards of a job) may open a new file at once:
    // the first to take the write lock creates the tables, the others wait
    // for it (the busy timeout) and then find them.
    conn.execute_batch("BEGIN IMMEDIATE")
        .map_err(|e| unusable(path, &e.to_string()))?;
    let outcome = (|| {
        let pragma = |name: &str| -> Result<i32> {
            conn.pragma_query_value(None, name, |row| row.get(0))
                .map_err(|e| unusable(path, &e.to_string()))
        };
        let application_id = pragma("application_id")?;
        let version = pragma("user_version")?;
        if application_id == 0 {
            let tables: i64 = conn
                .query_row("SELECT count(*) FROM sqlite_master", [], |row| row.get(0))
                .map_err(|e| unusable(path, &e.to_string()))?;
            if tables > 0 {
                return Err(unusable(
                    path,
                    "it is a SQLite database of another program, not Sluicegate's state",
                ));
            }
            conn.execute_batch(&format!(
                "CREATE TABLE checkpoints (
                     sync_key TEXT NOT NULL,
                     stream TEXT NOT NULL,
                     position TEXT NOT NULL,
                     committed_at TEXT NOT NULL,
                     PRIMARY KEY (sync_key, stream)
                 );
                 {INCREMENTAL_TABLE}
                 PRAGMA application_id = {APPLICATION_ID};
                 PRAGMA user_version = {SCHEMA_VERSION};"
            ))
            .map_err(|e| unusable(path, &e.to_string()))?;
        } else {
            check_version(conn, path)?;
            if version < SCHEMA_VERSION {
                conn.execute_batch(&format!(
                    "{INCREMENTAL_TABLE}
                     PRAGMA user_version = {SCHEMA_VERSION};"
                ))
                .map_err(|e| unusable(path, &e.to_string()))?;
            }
        }
        Ok(())
    })();
    match outcome {
        Ok(()) => conn
            .execute_batch("COMMIT")
            .map_err(|e| unusable(path, &e.to_string()))?,
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(e);
        }
    }
    use_wal(conn, path)?;
    conn.execute_batch("PRAGMA synchronous = FULL;")
        .map_err(|e| unusable(path, &e.to_string()))?;
    Ok(())
}

/// How long a statement waits for another process that holds the state file.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Puts the file in WAL mode (kept in the file: later opens find it so).
/// Switching needs the file to itself, and SQLite answers "database is
/// locked" at once, without its busy timeout, while another process that
/// opened the new file at the same moment holds it: the switch is tried
/// again for as long as the busy timeout would have waited.
fn use_wal(conn: &Connection, path: &Path) -> Result<()> {
    let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
    loop {
        let mode = conn.query_row("PRAGMA journal_mode = WAL", [], |row| {
            row.get::<_, String>(0)
        });
        match mode {
            Ok(mode) if mode.eq_ignore_ascii_case("wal") => return Ok(()),
            Ok(_) | Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Ok(mode) => {
                return Err(unusable(
                    path,
                    &format!("it stays in journal mode {mode}, not WAL"),
                ));
            }
            Err(e) => return Err(unusable(path, &e.to_string())),
        }
    }
}

/// Checks that `conn` is a Sluicegate state database this build reads; returns
/// its schema version.
fn check_version(conn: &Connection, path: &Path) -> Result<i32> {
    let pragma = |name: &str| -> Result<i32> {
        conn.pragma_query_value(None, name, |row| row.get(0))
            .map_err(|e| unusable(path, &e.to_string()))
    };
    let application_id = pragma("application_id")?;
    let version = pragma("user_version")?;
    if application_id != APPLICATION_ID {
        return Err(unusable(
            path,
            &format!(
                "it is a SQLite database of another program (application id {application_id:#x})"
            ),
        ));
    }
    if version > SCHEMA_VERSION {
        return Err(unusable(
            path,
            &format!(
                "it was written by a newer Sluicegate (state version {version}, this one reads {SCHEMA_VERSION})"
            ),
        ));
    }
    Ok(version)
}

/// Creates `dir` (and parents) readable by the owner only.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|e| {
        Error::new(
            ErrorKind::Checkpoint,
            format!("cannot create the state directory {}", dir.display()),
        )
        .with_source(e)
    })
}

fn create_private_file(path: &Path) -> Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path).map(drop).map_err(|e| {
        Error::new(
            ErrorKind::Checkpoint,
            format!("cannot create the state file {}", path.display()),
        )
        .with_source(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn position(n: u64) -> Position {
        serde_json::from_value(json!({"after": n})).unwrap()
    }

    #[test]
    fn commits_survive_reopening_and_clear_forgets() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStateStore::open(dir.path()).unwrap();
        assert_eq!(CheckpointStore::load(&store, "k", "t").unwrap(), None);
        store.commit("k", "t", &position(5)).unwrap();
        store.commit("k", "t", &position(9)).unwrap();
        store.commit("other", "t", &position(1)).unwrap();
        drop(store);
        let store = SqliteStateStore::open(dir.path()).unwrap();
        assert_eq!(
            CheckpointStore::load(&store, "k", "t").unwrap(),
            Some(position(9))
        );
        CheckpointStore::clear(&store, "k", "t").unwrap();
        assert_eq!(CheckpointStore::load(&store, "k", "t").unwrap(), None);
        assert_eq!(
            CheckpointStore::load(&store, "other", "t").unwrap(),
            Some(position(1))
        );
        assert_eq!(store.clear_key("other").unwrap(), (1, 0));
        assert!(store.list().unwrap().is_empty());
    }

    #[test]
    fn processes_opening_a_new_state_file_at_once_all_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_owned();
        let openers: Vec<_> = (0..8)
            .map(|_| {
                let path = path.clone();
                std::thread::spawn(move || SqliteStateStore::open(&path).map(drop))
            })
            .collect();
        for opener in openers {
            opener.join().unwrap().unwrap();
        }
    }

    #[test]
    fn marks_survive_reopening_and_a_read_only_open_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            SqliteStateStore::open_read_only(dir.path())
                .unwrap()
                .is_none()
        );
        assert!(!dir.path().join(STATE_FILE).exists(), "nothing created");
        let store = SqliteStateStore::open(dir.path()).unwrap();
        store
            .progress("k", "t", &json!("2024-01-02T00:00:00Z"))
            .unwrap();
        assert_eq!(
            WindowStore::load(&store, "k", "t").unwrap(),
            SavedWindow::new(None, Some(json!("2024-01-02T00:00:00Z")))
        );
        store.complete("k", "t", &json!(12.5)).unwrap();
        drop(store);
        let read = SqliteStateStore::open_read_only(dir.path())
            .unwrap()
            .unwrap();
        assert_eq!(
            WindowStore::load(&read, "k", "t").unwrap(),
            SavedWindow::new(Some(json!(12.5)), None)
        );
        assert!(read.progress("k", "t", &json!(1)).is_err(), "read-only");
        assert_eq!(read.marks().unwrap()[0].last_value.as_deref(), Some("12.5"));
        drop(read);
        let store = SqliteStateStore::open(dir.path()).unwrap();
        assert_eq!(store.clear_key("k").unwrap(), (0, 1));
        assert_eq!(
            WindowStore::load(&store, "k", "t").unwrap(),
            SavedWindow::default()
        );
    }

    #[test]
    fn a_version_1_file_keeps_its_checkpoints_and_gains_the_marks_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STATE_FILE);
        Connection::open(&path)
            .unwrap()
            .execute_batch(&format!(
                "CREATE TABLE checkpoints (sync_key TEXT NOT NULL, stream TEXT NOT NULL,
                     position TEXT NOT NULL, committed_at TEXT NOT NULL,
                     PRIMARY KEY (sync_key, stream));
                 INSERT INTO checkpoints VALUES ('k', 't', '{{\"after\": 3}}', '2026-01-01');
                 PRAGMA application_id = {APPLICATION_ID};
                 PRAGMA user_version = 1;"
            ))
            .unwrap();
        // Read only, it is used as it is: no marks yet.
        let read = SqliteStateStore::open_read_only(dir.path())
            .unwrap()
            .unwrap();
        assert_eq!(
            WindowStore::load(&read, "k", "t").unwrap(),
            SavedWindow::default()
        );
        drop(read);
        let store = SqliteStateStore::open(dir.path()).unwrap();
        assert_eq!(
            CheckpointStore::load(&store, "k", "t").unwrap(),
            Some(position(3))
        );
        store.complete("k", "t", &json!(5)).unwrap();
        let version: i32 = store
            .lock()
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
    }

    #[cfg(unix)]
    #[test]
    fn the_state_file_and_directory_are_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        SqliteStateStore::open(&state).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&state), 0o700);
        assert_eq!(mode(&state.join(STATE_FILE)), 0o600);
    }

    #[test]
    fn a_corrupt_file_is_refused_with_the_reset_command() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(STATE_FILE),
            b"this is not a database at all, sorry",
        )
        .unwrap();
        let err = SqliteStateStore::open(dir.path())
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("cannot be used (file is not a database)"),
            "{err}"
        );
        assert!(err.contains("sluicegate state reset"), "{err}");
        let aside = move_aside(dir.path()).unwrap().unwrap();
        assert!(aside.exists());
        let store = SqliteStateStore::open(dir.path()).unwrap();
        assert!(store.list().unwrap().is_empty(), "a reset starts empty");
    }

    #[test]
    fn a_database_of_another_program_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STATE_FILE);
        Connection::open(&path)
            .unwrap()
            .execute_batch("CREATE TABLE invoices (id INTEGER); INSERT INTO invoices VALUES (1);")
            .unwrap();
        let err = SqliteStateStore::open(dir.path())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("another program"), "{err}");
        let rows: i64 = Connection::open(&path)
            .unwrap()
            .query_row("SELECT count(*) FROM invoices", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 1, "the foreign database is untouched");
    }

    #[test]
    fn a_newer_state_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        SqliteStateStore::open(dir.path()).unwrap();
        Connection::open(dir.path().join(STATE_FILE))
            .unwrap()
            .execute_batch("PRAGMA user_version = 7;")
            .unwrap();
        let err = SqliteStateStore::open(dir.path())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("newer Sluicegate (state version 7"), "{err}");
    }

    #[test]
    fn a_position_that_is_not_json_names_the_key_and_the_reset() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStateStore::open(dir.path()).unwrap();
        store
            .lock()
            .execute(
                "INSERT INTO checkpoints VALUES ('orders', 'orders', '{broken', datetime('now'))",
                [],
            )
            .unwrap();
        let err = CheckpointStore::load(&store, "orders", "orders")
            .unwrap_err()
            .to_string();
        assert!(err.contains("state reset --key orders"), "{err}");
    }
}
