//! Batches: the unit that flows from a source to a sink.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::budget::MemoryLease;
use crate::error::Result;
use crate::record::Record;

/// A source's resume token: opaque to everyone but the source that made it.
///
/// A batch's position means "everything up to and including this batch has been
/// read; to continue, read after this position". It is what checkpoints store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Position(pub Value);

impl Position {
    /// Wraps any JSON value as a position.
    pub fn new(value: impl Into<Value>) -> Self {
        Self(value.into())
    }

    /// The JSON value of this position.
    pub fn as_value(&self) -> &Value {
        &self.0
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Records plus the memory they hold and the source position after them.
///
/// The [`MemoryLease`] inside accounts the records' bytes on the run's budget; it is
/// released when the batch is dropped, which is how a sink that has written a batch
/// lets the source read more.
#[derive(Debug)]
pub struct Batch {
    records: Vec<Record>,
    position: Option<Position>,
    pages: Option<(u64, u64)>,
    lease: MemoryLease,
}

impl Batch {
    /// A batch of records whose memory is held by `lease`.
    pub fn new(records: Vec<Record>, lease: MemoryLease) -> Self {
        Self {
            records,
            position: None,
            pages: None,
            lease,
        }
    }

    /// Sets the position after this batch (its resume token).
    #[must_use]
    pub fn with_position(mut self, position: Option<Position>) -> Self {
        self.position = position;
        self
    }

    /// Records which source page (1-based) this batch came from.
    #[must_use]
    pub fn with_page(mut self, page: u64) -> Self {
        self.pages = Some((page, page));
        self
    }

    /// The records.
    pub fn records(&self) -> &[Record] {
        &self.records
    }

    /// The records, mutably (for transforms that keep the batch's lease).
    pub fn records_mut(&mut self) -> &mut Vec<Record> {
        &mut self.records
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether the batch holds no records.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The position after this batch, if the source can resume.
    pub fn position(&self) -> Option<&Position> {
        self.position.as_ref()
    }

    /// The first and last source page in this batch, when known.
    pub fn pages(&self) -> Option<(u64, u64)> {
        self.pages
    }

    /// Bytes accounted on the budget for this batch.
    pub fn bytes(&self) -> usize {
        self.lease.bytes()
    }

    /// The lease, to resize it after transforming the records.
    pub fn lease_mut(&mut self) -> &mut MemoryLease {
        &mut self.lease
    }

    /// Appends a later batch of the same stream to this one: records, memory, the
    /// later position and the page range.
    pub fn append(&mut self, mut later: Batch) -> Result<()> {
        self.records.append(&mut later.records);
        if later.position.is_some() {
            self.position = later.position.take();
        }
        self.pages = match (self.pages, later.pages) {
            (Some((first, _)), Some((_, last))) => Some((first, last)),
            (None, other) | (other, None) => other,
        };
        let lease = std::mem::replace(&mut later.lease, self.lease_empty_twin());
        self.lease.merge(lease)
    }

    fn lease_empty_twin(&self) -> MemoryLease {
        // A zero-byte placeholder so `later` can be dropped without releasing
        // what was moved out of it.
        self.lease.empty_twin()
    }

    /// Splits the batch into its records and its lease, for sinks that need to
    /// own the records while keeping the memory accounted until they are done.
    pub fn into_parts(self) -> (Vec<Record>, Option<Position>, MemoryLease) {
        (self.records, self.position, self.lease)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::MemoryBudget;
    use crate::record::into_record;
    use serde_json::json;

    #[tokio::test]
    async fn append_moves_records_memory_and_position() {
        let budget = MemoryBudget::new(1 << 20);
        let a = Batch::new(
            vec![into_record(json!({"id": 1}))],
            budget.acquire(100).await.unwrap(),
        )
        .with_page(1)
        .with_position(Some(Position::new(json!({"offset": 1}))));
        let b = Batch::new(
            vec![into_record(json!({"id": 2}))],
            budget.acquire(300).await.unwrap(),
        )
        .with_page(2)
        .with_position(Some(Position::new(json!({"offset": 2}))));
        let mut a = a;
        a.append(b).unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(a.bytes(), 400);
        assert_eq!(budget.in_use(), 400);
        assert_eq!(a.pages(), Some((1, 2)));
        assert_eq!(a.position(), Some(&Position::new(json!({"offset": 2}))));
        drop(a);
        assert_eq!(budget.in_use(), 0);
    }
}
