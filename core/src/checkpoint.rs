//! Checkpoints: where each stream resumes after an interrupted run.
//!
//! The rules are in [`CheckpointStore`]'s contract; [`FileCheckpointStore`] keeps
//! positions in a JSON file.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::batch::Position;
use crate::error::{Error, ErrorKind, Result};

/// Stores the last acknowledged position per sync key and stream.
///
/// # Contract
/// - The pipeline calls [`CheckpointStore::commit`] with a batch's position only
///   after the sink acknowledged that batch, so a committed position never points
///   past data the sink does not hold. A resumed run is therefore at-least-once;
///   idempotent sink writes make its final state exact.
/// - When a stream completes, the pipeline calls [`CheckpointStore::clear`]: the
///   next run of a completed stream starts from the beginning.
/// - `commit` must be atomic: after a crash, `load` returns either the previous or
///   the new position, never a torn one.
pub trait CheckpointStore: Send + Sync {
    /// The committed position of a stream, if any.
    fn load(&self, sync_key: &str, stream: &str) -> Result<Option<Position>>;

    /// Commits a position atomically.
    fn commit(&self, sync_key: &str, stream: &str, position: &Position) -> Result<()>;

    /// Forgets a stream's position (the stream completed, or a full refresh).
    fn clear(&self, sync_key: &str, stream: &str) -> Result<()>;
}

/// Checkpoints in memory, for tests and embedded pipelines that do not resume.
#[derive(Debug, Default)]
pub struct MemoryCheckpointStore {
    positions: Mutex<BTreeMap<(String, String), Position>>,
}

impl CheckpointStore for MemoryCheckpointStore {
    fn load(&self, sync_key: &str, stream: &str) -> Result<Option<Position>> {
        let map = self
            .positions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(map.get(&(sync_key.to_owned(), stream.to_owned())).cloned())
    }

    fn commit(&self, sync_key: &str, stream: &str, position: &Position) -> Result<()> {
        let mut map = self
            .positions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.insert((sync_key.to_owned(), stream.to_owned()), position.clone());
        Ok(())
    }

    fn clear(&self, sync_key: &str, stream: &str) -> Result<()> {
        let mut map = self
            .positions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.remove(&(sync_key.to_owned(), stream.to_owned()));
        Ok(())
    }
}

/// Checkpoints as one small JSON file per sync key and stream in a directory,
/// replaced atomically (write to a temporary file, sync, rename).
#[derive(Debug, Clone)]
pub struct FileCheckpointStore {
    dir: PathBuf,
}

impl FileCheckpointStore {
    /// A store in `dir` (created on the first commit).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The directory holding the checkpoint files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn file(&self, sync_key: &str, stream: &str) -> PathBuf {
        self.dir.join(format!(
            "{}.{}.json",
            file_safe(sync_key),
            file_safe(stream)
        ))
    }
}

/// A sync key or stream name as a readable, safe file name: ASCII letters,
/// digits, `-` and `_` kept, anything else `_`. Used for checkpoint files and by
/// tools that keep per-key files next to them (run locks).
pub fn file_safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn io_error(action: &str, path: &Path, err: std::io::Error) -> Error {
    Error::new(
        ErrorKind::Checkpoint,
        format!("cannot {action} checkpoint {}", path.display()),
    )
    .with_source(err)
}

impl CheckpointStore for FileCheckpointStore {
    fn load(&self, sync_key: &str, stream: &str) -> Result<Option<Position>> {
        let path = self.file(sync_key, stream);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error("read", &path, e)),
        };
        let stored: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
            Error::new(
                ErrorKind::Checkpoint,
                format!(
                    "checkpoint {} is corrupt; delete it to start the stream over",
                    path.display()
                ),
            )
            .with_source(e)
        })?;
        match stored.get("position") {
            Some(position) if stored["syncKey"] == sync_key => Ok(Some(Position(position.clone()))),
            _ => Err(Error::new(
                ErrorKind::Checkpoint,
                format!(
                    "checkpoint {} does not belong to sync '{sync_key}'; delete it to start the stream over",
                    path.display()
                ),
            )),
        }
    }

    fn commit(&self, sync_key: &str, stream: &str, position: &Position) -> Result<()> {
        fs::create_dir_all(&self.dir)
            .map_err(|e| io_error("create directory for", &self.dir, e))?;
        let path = self.file(sync_key, stream);
        let tmp = path.with_extension("json.tmp");
        let body = serde_json::json!({
            "syncKey": sync_key,
            "stream": stream,
            "position": position,
        });
        let write = || -> std::io::Result<()> {
            let mut file = fs::File::create(&tmp)?;
            file.write_all(body.to_string().as_bytes())?;
            file.sync_all()?;
            fs::rename(&tmp, &path)
        };
        write().map_err(|e| io_error("write", &path, e))
    }

    fn clear(&self, sync_key: &str, stream: &str) -> Result<()> {
        let path = self.file(sync_key, stream);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error("remove", &path, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn roundtrip(store: &dyn CheckpointStore) {
        assert_eq!(store.load("orders", "main").unwrap(), None);
        let pos = Position::new(json!({"offset": 500}));
        store.commit("orders", "main", &pos).unwrap();
        assert_eq!(store.load("orders", "main").unwrap(), Some(pos));
        assert_eq!(store.load("orders", "other").unwrap(), None);
        let later = Position::new(json!({"offset": 1000}));
        store.commit("orders", "main", &later).unwrap();
        assert_eq!(store.load("orders", "main").unwrap(), Some(later));
        store.clear("orders", "main").unwrap();
        assert_eq!(store.load("orders", "main").unwrap(), None);
    }

    #[test]
    fn memory_store_roundtrips() {
        roundtrip(&MemoryCheckpointStore::default());
    }

    #[test]
    fn file_store_roundtrips_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        roundtrip(&FileCheckpointStore::new(dir.path()));
        let store = FileCheckpointStore::new(dir.path());
        store.commit("k/1", "s", &Position::new(json!(7))).unwrap();
        let reopened = FileCheckpointStore::new(dir.path());
        assert_eq!(
            reopened.load("k/1", "s").unwrap(),
            Some(Position::new(json!(7)))
        );
    }

    #[test]
    fn corrupt_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileCheckpointStore::new(dir.path());
        std::fs::write(dir.path().join("k.s.json"), "{not json").unwrap();
        let err = store.load("k", "s").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Checkpoint);
        assert!(err.to_string().contains("is corrupt; delete it"), "{err}");
    }
}
