//! Checkpoints: where each stream resumes after an interrupted run.
//!
//! The rules are in [`CheckpointStore`]'s contract; [`MemoryCheckpointStore`]
//! keeps positions for one process (tests, dry runs). The CLI keeps them in
//! SQLite.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::batch::Position;
use crate::error::Result;

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
///
/// The rules are in [`CheckpointStore`]'s contract; [`MemoryCheckpointStore`]
/// keeps positions for one process (tests, dry runs). The CLI keeps them in
/// SQLite.
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
}
