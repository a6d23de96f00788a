//! Deletions: after a complete read, remove from the target what the source
//! no longer has.
//!
//! A sync entry's `deletes` section ([`DeletesConfig`]) picks the mode. While
//! the stream runs, the pipeline records the key of every record it hands to
//! the sink in a [`SeenKeys`] set, which lives in a temporary SQLite file (a
//! few MiB of page cache, whatever the number of keys), so ten million keys
//! fit in the same memory budget as the sync itself. When the stream completed,
//! [`Deletions::apply`] lists the target's keys page by page through the
//! writer ([`WriterExtension::target_keys`]), keeps those the read did not
//! send (in the same file), and removes them in chunks
//! ([`WriterExtension::delete_keys`]).
//!
//! Nothing is removed after a read that is not complete and clean: a run that
//! resumed from a checkpoint (it did not see the keys before it), or in which
//! any record was rejected (its key did not reach the sink, so the set cannot
//! tell it from a deleted one). And nothing is removed when more than
//! `maxFraction` of the target would go, unless the run allows it: a source
//! that answered an empty list by mistake must not empty the target.

use std::sync::{Arc, Mutex, PoisonError};

use rusqlite::{Connection, params};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sluicegate_core::{
    DeleteMode, Error, ErrorKind, Record, Result, RunObserver, WriterExtension, key_text,
};

/// The `deletes` section of a sync entry.
///
/// ```yaml
/// deletes: { mode: hard, maxFraction: 0.1 }
/// ```
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeletesConfig {
    /// What happens to target rows or entries whose key a complete read did
    /// not send: `none` (default), `hard` (removed), `soft` (DuckDB: marked in
    /// `_deleted_at`), `archive` (Contentful: unpublished and archived).
    #[serde(default)]
    pub mode: DeletesMode,
    /// The largest share of the target one run may remove (default 0.1): above
    /// it the run removes nothing and fails, unless it is run with
    /// `--allow-mass-delete`.
    #[serde(default = "default_max_fraction")]
    pub max_fraction: f64,
}

fn default_max_fraction() -> f64 {
    0.1
}

/// `deletes.mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeletesMode {
    /// Nothing is removed.
    #[default]
    None,
    /// Rows and entries are removed.
    Hard,
    /// Rows are kept, marked as deleted.
    Soft,
    /// Entries are unpublished and archived.
    Archive,
}

impl DeletesMode {
    /// The sink's mode, `None` for `none`.
    pub fn delete_mode(self) -> Option<DeleteMode> {
        match self {
            DeletesMode::None => None,
            DeletesMode::Hard => Some(DeleteMode::Hard),
            DeletesMode::Soft => Some(DeleteMode::Soft),
            DeletesMode::Archive => Some(DeleteMode::Archive),
        }
    }
}

impl DeletesConfig {
    /// Checks the section.
    pub fn validate(&self) -> Result<()> {
        if !(self.max_fraction > 0.0 && self.max_fraction <= 1.0) {
            return Err(sluicegate_core::field_error(
                "deletes.maxFraction",
                format!(
                    "{} is not a share of the target between 0 (exclusive) and 1",
                    self.max_fraction
                ),
            ));
        }
        Ok(())
    }
}

/// Keys kept on disk: those a read sent to the sink, and those the target
/// holds that it did not send.
pub struct SeenKeys {
    conn: Mutex<Connection>,
}

/// Pages of the SQLite file kept in memory, in KiB.
const CACHE_KIB: i64 = 2048;

impl SeenKeys {
    /// An empty set in a new temporary file (removed when the set is dropped).
    pub fn new() -> Result<Self> {
        let failed = |e: rusqlite::Error| {
            Error::new(
                ErrorKind::Io,
                "cannot create the temporary file of seen keys",
            )
            .with_source(e)
        };
        // An empty name: a private temporary file, deleted when closed.
        let conn = Connection::open("").map_err(failed)?;
        conn.execute_batch(&format!(
            "PRAGMA cache_size = -{CACHE_KIB};
             PRAGMA journal_mode = OFF;
             PRAGMA synchronous = OFF;
             PRAGMA temp_store = FILE;
             CREATE TABLE seen (k TEXT PRIMARY KEY) WITHOUT ROWID;
             CREATE TABLE missing (k TEXT PRIMARY KEY) WITHOUT ROWID;"
        ))
        .map_err(failed)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn failed(e: rusqlite::Error) -> Error {
        Error::new(ErrorKind::Io, "cannot use the temporary file of seen keys").with_source(e)
    }

    /// Adds keys a read sent.
    pub fn insert(&self, keys: &[String]) -> Result<()> {
        self.insert_into("seen", keys)
    }

    /// Inserts keys in one statement: the keys travel as one JSON array.
    fn insert_into(&self, table: &str, keys: &[String]) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let array = serde_json::to_string(keys)
            .map_err(|e| Error::new(ErrorKind::Io, "cannot encode keys").with_source(e))?;
        self.conn()
            .prepare_cached(&format!(
                "INSERT OR IGNORE INTO {table} (k) SELECT value FROM json_each(?1)"
            ))
            .and_then(|mut insert| insert.execute(params![array]))
            .map(drop)
            .map_err(Self::failed)
    }

    /// How many distinct keys were sent.
    pub fn sent(&self) -> Result<u64> {
        self.count("seen")
    }

    fn count(&self, table: &str) -> Result<u64> {
        self.conn()
            .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| {
                r.get::<_, i64>(0)
            })
            .map(|n| u64::try_from(n).unwrap_or(0))
            .map_err(Self::failed)
    }

    /// Of `keys` (the target's), keeps those that were not sent as missing;
    /// returns how many.
    fn note_missing(&self, keys: &[String]) -> Result<u64> {
        if keys.is_empty() {
            return Ok(0);
        }
        let array = serde_json::to_string(keys)
            .map_err(|e| Error::new(ErrorKind::Io, "cannot encode keys").with_source(e))?;
        let added = self
            .conn()
            .prepare_cached(
                "INSERT OR IGNORE INTO missing (k) SELECT value FROM json_each(?1) \
                 WHERE value NOT IN (SELECT k FROM seen)",
            )
            .and_then(|mut insert| insert.execute(params![array]))
            .map_err(Self::failed)?;
        Ok(added as u64)
    }

    /// Missing keys after `after`, in order, at most `limit`.
    fn missing_page(&self, after: Option<&str>, limit: usize) -> Result<Vec<String>> {
        let conn = self.conn();
        let mut page = conn
            .prepare_cached("SELECT k FROM missing WHERE k > ?1 ORDER BY k LIMIT ?2")
            .map_err(Self::failed)?;
        page.query_map(
            params![
                after.unwrap_or(""),
                i64::try_from(limit).unwrap_or(i64::MAX)
            ],
            |r| r.get(0),
        )
        .and_then(|rows| rows.collect())
        .map_err(Self::failed)
    }
}

/// What deletions did (or, in a dry run, would do) after a stream.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct DeletionReport {
    /// The mode.
    pub mode: DeleteMode,
    /// Live keys the target held before.
    pub target_keys: u64,
    /// Those the read did not send.
    pub missing: u64,
    /// Those removed (0 in a dry run).
    pub deleted: u64,
    /// Up to 20 of the missing keys, in key order.
    pub sample: Vec<String>,
    /// Why nothing was looked at, when deletions were skipped.
    pub skipped: Option<String>,
    /// A dry run: nothing was removed.
    pub dry_run: bool,
}

/// Missing keys removed per call of [`WriterExtension::delete_keys`].
const DELETE_CHUNK: usize = 500;

/// The deletions of one stream (see the module docs).
pub struct Deletions {
    mode: DeleteMode,
    max_fraction: f64,
    allow_mass: bool,
    dry_run: bool,
    key_field: String,
    seen: Arc<SeenKeys>,
}

impl Deletions {
    /// Deletions in `mode` for a stream keyed by `key_field`; `allow_mass`
    /// lifts the `maxFraction` guard; in a `dry_run` nothing is removed.
    pub fn new(
        mode: DeleteMode,
        config: &DeletesConfig,
        key_field: impl Into<String>,
        allow_mass: bool,
        dry_run: bool,
    ) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            mode,
            max_fraction: config.max_fraction,
            allow_mass,
            dry_run,
            key_field: key_field.into(),
            seen: Arc::new(SeenKeys::new()?),
        })
    }

    /// Fails unless the writer can remove in this mode.
    pub(crate) fn check_writer(&self, ext: Option<&mut dyn WriterExtension>) -> Result<()> {
        let modes = ext.map(|e| e.delete_modes()).unwrap_or_default();
        if modes.contains(&self.mode) {
            return Ok(());
        }
        let can = if modes.is_empty() {
            "it cannot remove anything".to_owned()
        } else {
            format!(
                "it can: {}",
                modes
                    .iter()
                    .map(|m| m.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        Err(Error::config(format!(
            "deletes.mode {} is not something this sink can do ({can})",
            self.mode.as_str()
        )))
    }

    /// The keys of a batch's records, as [`key_text`] writes them.
    pub(crate) fn keys_of(&self, records: &[Record]) -> Vec<String> {
        records
            .iter()
            .filter_map(|r| {
                r.get(&self.key_field)
                    .or_else(|| {
                        let mut parts = self.key_field.split('.');
                        let first = r.get(parts.next()?)?;
                        parts.try_fold(first, |v, p| v.get(p))
                    })
                    .and_then(key_text)
            })
            .collect()
    }

    /// Records the keys a batch sent: one statement on the writer's task (a
    /// millisecond or two for a batch of 5,000 keys), so no thread of the
    /// blocking pool, with its own allocator caches, is started for it.
    pub(crate) fn note_sent(&self, keys: &[String]) -> Result<()> {
        self.seen.insert(keys)
    }

    /// A report of deletions that were skipped, and why.
    pub(crate) fn skipped(&self, why: String) -> DeletionReport {
        DeletionReport {
            mode: self.mode,
            target_keys: 0,
            missing: 0,
            deleted: 0,
            sample: Vec::new(),
            skipped: Some(why),
            dry_run: self.dry_run,
        }
    }

    /// After a complete read: finds the target's keys the read did not send
    /// and removes them (see the module docs).
    pub(crate) async fn apply(
        &self,
        ext: &mut dyn WriterExtension,
        sync_key: &str,
        observer: &dyn RunObserver,
    ) -> Result<DeletionReport> {
        let mut page: Option<Value> = None;
        let (mut target_keys, mut missing) = (0u64, 0u64);
        loop {
            let listed = ext.target_keys(page.take()).await?;
            target_keys += listed.keys.len() as u64;
            missing += self.seen.note_missing(&listed.keys)?;
            match listed.next {
                Some(next) => page = Some(next),
                None => break,
            }
        }
        let sample = self.seen.missing_page(None, 20)?;
        let mut report = DeletionReport {
            mode: self.mode,
            target_keys,
            missing,
            deleted: 0,
            sample,
            skipped: None,
            dry_run: self.dry_run,
        };
        #[allow(clippy::cast_precision_loss)]
        let share = if target_keys == 0 {
            0.0
        } else {
            missing as f64 / target_keys as f64
        };
        if missing > 0 && share > self.max_fraction && !self.allow_mass {
            return Err(Error::new(
                ErrorKind::MassDeletion,
                format!(
                    "deletes: {missing} of the target's {target_keys} keys ({:.1}%) are not in the \
                     source, more than deletes.maxFraction ({:.1}%), so nothing was removed. If the \
                     source really lost them, run again with --allow-mass-delete (or raise \
                     maxFraction); if not, check the source (an empty or partial answer)",
                    share * 100.0,
                    self.max_fraction * 100.0
                ),
            )
            .with_context("sync", sync_key));
        }
        let verb = if self.dry_run {
            "would remove"
        } else {
            "removing"
        };
        let mut after: Option<String> = None;
        loop {
            let chunk = self.seen.missing_page(after.as_deref(), DELETE_CHUNK)?;
            let Some(last) = chunk.last().cloned() else {
                break;
            };
            if observer.wants_changes() {
                for key in &chunk {
                    observer.change(
                        sync_key,
                        &format!("{verb} {key} ({}): not in the source", self.mode.as_str()),
                    );
                }
            }
            if !self.dry_run {
                report.deleted += ext
                    .delete_keys(&chunk, self.mode)
                    .await
                    .map_err(|e| e.with_context("sync", sync_key))?;
            }
            after = Some(last);
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seen_set_finds_what_a_read_did_not_send() {
        let set = SeenKeys::new().unwrap();
        let sent: Vec<String> = (0..5_000).map(|i| format!("k{i}")).collect();
        set.insert(&sent).unwrap();
        set.insert(&sent[..10]).unwrap();
        assert_eq!(set.sent().unwrap(), 5_000);
        let target: Vec<String> = (4_990..5_010).map(|i| format!("k{i}")).collect();
        assert_eq!(set.note_missing(&target).unwrap(), 10);
        let page = set.missing_page(None, 3).unwrap();
        assert_eq!(page, ["k5000", "k5001", "k5002"]);
        let rest = set.missing_page(Some("k5002"), 100).unwrap();
        assert_eq!(rest.len(), 7);
    }

    #[test]
    fn keys_are_read_as_text_from_the_key_field_or_a_path() {
        let config = DeletesConfig {
            mode: DeletesMode::Hard,
            max_fraction: 0.1,
        };
        let d = Deletions::new(DeleteMode::Hard, &config, "id", false, true).unwrap();
        let records: Vec<Record> = [
            serde_json::json!({"id": 7}),
            serde_json::json!({"id": "a"}),
            serde_json::json!({"id": null}),
            serde_json::json!({"other": 1}),
        ]
        .into_iter()
        .map(sluicegate_core::into_record)
        .collect();
        assert_eq!(d.keys_of(&records), ["7", "a"]);
        let nested = Deletions::new(DeleteMode::Hard, &config, "sys.id", false, true).unwrap();
        let records = vec![sluicegate_core::into_record(
            serde_json::json!({"sys": {"id": "x1"}}),
        )];
        assert_eq!(nested.keys_of(&records), ["x1"]);
        let bad = DeletesConfig {
            mode: DeletesMode::Hard,
            max_fraction: 1.5,
        };
        assert!(bad.validate().is_err());
    }
}
