//! Batches of JSON text parsed into their table's columns ahead of their
//! write ([`PrepareBatch`]): the pipeline does it as it hands a batch over,
//! while the batch before is being written, so the parsing overlaps DuckDB's
//! work instead of coming before it.
//!
//! A batch is prepared only when the run's memory budget has room for its
//! columns besides its text; otherwise the writer parses it at its turn.
//!
//! What is parsed rests on the table as the writer knew it then
//! ([`KnownTable`]). The writer takes the columns only when its table is still
//! exactly that one (a batch before may have added columns); otherwise it
//! parses the batch again, so a batch goes in exactly as it would without.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use sluicegate_core::{Batch, JsonRows, PrepareBatch};

use crate::json_columns::Decoded;
use crate::schema::TableSchema;
use crate::sink::{columns_for, declared_types, fit_lease};

/// The table a writer last wrote (an existing one, outside dry runs), shared
/// with its preparer.
#[derive(Debug, Default)]
pub(crate) struct KnownTable(Mutex<Option<Arc<TableSchema>>>);

impl KnownTable {
    /// Sets the table (`None`: none to parse batches for); kept as it is when
    /// unchanged, so that batches prepared for it still apply.
    pub(crate) fn publish(&self, schema: Option<&TableSchema>) {
        let mut known = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match (schema, known.as_deref()) {
            (Some(now), Some(before)) if now == before => {}
            (now, _) => *known = now.map(|s| Arc::new(s.clone())),
        }
    }

    fn get(&self) -> Option<Arc<TableSchema>> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// A DuckDB writer's [`PrepareBatch`]: parses a batch of JSON text into the
/// columns of the table as the writer knew it last.
pub(crate) struct ColumnsAhead {
    /// The stream's key field.
    pub(crate) key: Option<String>,
    pub(crate) known: Arc<KnownTable>,
    /// Batches prepared (the sink's count).
    pub(crate) prepared: Arc<AtomicU64>,
}

impl PrepareBatch for ColumnsAhead {
    fn prepare(&self, batch: &mut Batch) {
        let Some(schema) = self.known.get() else {
            return;
        };
        let Some(text_bytes) = batch.json_rows().map(JsonRows::heap_bytes) else {
            return;
        };
        // Only within the budget: the columns are held besides the text
        // until the writer takes them (about as large; exact once parsed).
        let before = batch.lease_mut().bytes();
        if !batch.lease_mut().try_grow(before + text_bytes) {
            return;
        }
        let key = self.key.as_deref();
        let types = declared_types(key, batch.field_types());
        let json = batch.json_fields().map(|j| &**j);
        let decoded = batch
            .json_rows()
            .map(|text| columns_for(&schema, key, text, (json, types.as_deref())));
        let lease = batch.lease_mut();
        // A batch that does not fit is left to the writer, which says why.
        let Some(Ok(decoded)) = decoded else {
            lease.shrink_to(before);
            return;
        };
        fit_lease(lease, before + decoded.bytes);
        self.prepared.fetch_add(1, Ordering::Relaxed);
        batch.set_prepared(PreparedColumns {
            against: schema,
            decoded,
        });
    }
}

/// A batch's columns, parsed ahead for a table of schema `against`.
pub(crate) struct PreparedColumns {
    against: Arc<TableSchema>,
    decoded: Decoded,
}

impl PreparedColumns {
    /// The columns, when they were parsed for a table of `schema`.
    pub(crate) fn for_table(self, schema: &TableSchema) -> Option<Decoded> {
        (*self.against == *schema).then_some(self.decoded)
    }
}
