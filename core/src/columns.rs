//! Records as Arrow columns, as a source read them.
//!
//! A source whose rows arrive typed (a database's binary rows) can hand a
//! batch on as Arrow record batches instead of a record or a JSON text per row,
//! when the read asks for it ([`ReadRequest::columns`](crate::ReadRequest::columns)):
//! a sink that stores columns takes the arrays as they are. Anything that needs
//! records gets them from the source's own [`ColumnDecoder`]
//! ([`ColumnRows::decode`], or [`Batch::decode_records`](crate::Batch::decode_records)),
//! so they are exactly the records the source would have sent.
//!
//! A column declared JSON on the batch ([`JsonFields`](crate::JsonFields))
//! holds each value's JSON text (a JSON `null` as the text `null`, SQL NULL as
//! a null); declared typed fields ([`FieldTypes`](crate::FieldTypes)) hold
//! the values their Arrow type holds, and the decoder turns them into the
//! text forms [`FieldType`](crate::FieldType) documents.

use std::fmt;
use std::sync::Arc;

pub use arrow_array::RecordBatch;

use crate::error::Result;
use crate::record::Record;

/// How a source turns its columns back into the records it would have sent.
pub trait ColumnDecoder: Send + Sync {
    /// The records of `batch`, one per row, in order.
    fn records(&self, batch: &RecordBatch) -> Result<Vec<Record>>;
}

/// Records as Arrow record batches, each with the decoder of the source that
/// made it.
#[derive(Clone, Default)]
pub struct ColumnRows {
    chunks: Vec<(RecordBatch, Arc<dyn ColumnDecoder>)>,
    rows: usize,
}

impl fmt::Debug for ColumnRows {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ColumnRows")
            .field("chunks", &self.chunks.len())
            .field("rows", &self.rows)
            .finish()
    }
}

impl ColumnRows {
    /// The rows of `batch`, decoded into records (where something needs them)
    /// by `decoder`.
    pub fn new(batch: RecordBatch, decoder: Arc<dyn ColumnDecoder>) -> Self {
        let rows = batch.num_rows();
        Self {
            chunks: vec![(batch, decoder)],
            rows,
        }
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.rows
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// The record batches, in order (their schemas may differ: each is as its
    /// read made it).
    pub fn chunks(&self) -> impl ExactSizeIterator<Item = &RecordBatch> + '_ {
        self.chunks.iter().map(|(batch, _)| batch)
    }

    /// Heap bytes held by the arrays.
    pub fn heap_bytes(&self) -> usize {
        self.chunks
            .iter()
            .map(|(batch, _)| batch.get_array_memory_size())
            .sum()
    }

    /// Moves the records of `later` after these (no copy).
    pub fn append(&mut self, later: &mut ColumnRows) {
        self.chunks.append(&mut later.chunks);
        self.rows += std::mem::take(&mut later.rows);
    }

    /// Takes the first `n` records off into rows of their own (slices of the
    /// same arrays); these keep the rest.
    pub fn take_front(&mut self, n: usize) -> ColumnRows {
        let mut front = ColumnRows::default();
        let mut wanted = n.min(self.rows);
        while wanted > 0 {
            let (batch, decoder) = self.chunks.remove(0);
            let len = batch.num_rows();
            if len <= wanted {
                wanted -= len;
                front.rows += len;
                front.chunks.push((batch, decoder));
            } else {
                front.rows += wanted;
                front.chunks.push((batch.slice(0, wanted), decoder.clone()));
                self.chunks
                    .insert(0, (batch.slice(wanted, len - wanted), decoder));
                wanted = 0;
            }
        }
        self.rows -= front.rows;
        front
    }

    /// The records, in order, as each chunk's source makes them.
    pub fn decode(&self) -> Result<Vec<Record>> {
        let mut records = Vec::with_capacity(self.rows);
        for (batch, decoder) in &self.chunks {
            records.extend(decoder.records(batch)?);
        }
        Ok(records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{ArrayRef, Int64Array};
    use serde_json::json;

    struct Ids;

    impl ColumnDecoder for Ids {
        fn records(&self, batch: &RecordBatch) -> Result<Vec<Record>> {
            let ids = batch
                .column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .expect("Int64");
            Ok(ids
                .iter()
                .map(|id| crate::into_record(json!({ "id": id })))
                .collect())
        }
    }

    fn rows(ids: std::ops::Range<i64>) -> ColumnRows {
        let array: ArrayRef = Arc::new(Int64Array::from_iter_values(ids));
        let batch = RecordBatch::try_from_iter([("id", array)]).unwrap();
        ColumnRows::new(batch, Arc::new(Ids))
    }

    fn ids(rows: &ColumnRows) -> Vec<i64> {
        rows.decode()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_i64().unwrap())
            .collect()
    }

    #[test]
    fn appended_and_split_rows_keep_their_order() {
        let mut all = rows(0..3);
        all.append(&mut rows(3..7));
        all.append(&mut rows(7..8));
        assert_eq!(all.len(), 8);
        assert_eq!(all.chunks().len(), 3);
        for n in [0, 2, 3, 4] {
            let mut rest = all.clone();
            let front = rest.take_front(n);
            assert_eq!(ids(&front), (0..n as i64).collect::<Vec<_>>());
            assert_eq!(ids(&rest), (n as i64..8).collect::<Vec<_>>());
            assert_eq!(front.len() + rest.len(), 8);
        }
        let mut rest = all.clone();
        assert_eq!(ids(&rest.take_front(20)), (0..8).collect::<Vec<_>>());
        assert!(rest.is_empty());
    }
}
