//! Batches: the unit that flows from a source to a sink.

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::budget::MemoryLease;
use crate::columns::ColumnRows;
use crate::error::Result;
use crate::json_rows::JsonRows;
use crate::record::{Record, approx_record_size};

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

/// Fields a source read from typed JSON columns (PostgreSQL `json`/`jsonb`,
/// MySQL `JSON`, SQLite columns declared `JSON`, a database source's
/// `jsonColumns`).
///
/// JSON alone cannot say that a value *is* JSON data rather than a scalar of
/// the row: a JSON column may hold the string `"123"` in one row and the number
/// `123` in the next, and JSON `null` is a value there, not SQL NULL. A source
/// that knows declares such fields on its batches; in them a JSON `null` is a
/// present `null` and SQL NULL is a field left out of the record. A sink that
/// stores JSON text keeps every value of a declared field as its JSON text
/// (DuckDB: a `JSON` column where `"123"`, `123` and `null` stay apart and SQL
/// NULL is `NULL`). Transforms that build new records (a mapping) drop the
/// declaration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JsonFields(BTreeSet<String>);

impl JsonFields {
    /// Declares these fields as JSON.
    pub fn new<I, S>(fields: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self(fields.into_iter().map(Into::into).collect())
    }

    /// Whether `field` is declared JSON.
    pub fn contains(&self, field: &str) -> bool {
        self.0.contains(field)
    }

    /// Whether no field is declared.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The declared fields, in name order.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }

    /// Adds the fields `other` declares.
    pub fn extend(&mut self, other: &JsonFields) {
        self.0.extend(other.0.iter().cloned());
    }
}

/// The type a source read a field's values from, when a sink may store them
/// in a typed column instead of as the text they travel as.
///
/// Each value of a declared field is still the record's JSON value: a string
/// in the text form below, or anything else the source may also send (`null`;
/// PostgreSQL's `NaN`, `Infinity` and `infinity`; dates before year 1 or after
/// 9999). A sink that types the column stores a value there only when the
/// type holds it exactly and reads back as the same text; any other value is
/// kept exactly some other way (DuckDB: the column becomes `VARCHAR` holding
/// every value's text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FieldType {
    /// An exact decimal (SQL `numeric(precision, scale)`): strings with an
    /// optional `-`, the integer digits (`0` alone when there are none) and,
    /// when `scale` > 0, a point and exactly `scale` digits (`"-12.30"`).
    Decimal {
        /// Digits in all.
        precision: u16,
        /// Digits after the point.
        scale: u16,
    },
    /// A calendar date: `"2024-02-29"`.
    Date,
    /// A date and time without a zone: `"2024-02-29T13:45:00.5"` (the
    /// fraction of a second up to microseconds, without trailing zeros, left
    /// out when zero).
    Timestamp,
    /// An instant, written in UTC as a [`FieldType::Timestamp`] followed by
    /// `Z`: `"2024-02-29T12:45:00.5Z"`.
    TimestampUtc,
}

/// Fields a source read from columns of a [`FieldType`] (see there), by name.
/// Transforms that build new records (a mapping) drop the declaration, as
/// they drop [`JsonFields`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldTypes(BTreeMap<String, FieldType>);

impl FieldTypes {
    /// Declares these fields' types.
    pub fn new<I, S>(fields: I) -> Self
    where
        I: IntoIterator<Item = (S, FieldType)>,
        S: Into<String>,
    {
        Self(fields.into_iter().map(|(f, t)| (f.into(), t)).collect())
    }

    /// The declared type of `field`, if any.
    pub fn get(&self, field: &str) -> Option<FieldType> {
        self.0.get(field).copied()
    }

    /// Whether no field is declared.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The declared fields and their types, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, FieldType)> {
        self.0.iter().map(|(f, t)| (f.as_str(), *t))
    }

    /// Removes the declaration of `field` (a sink that keeps a field as text,
    /// a key say, whatever its type).
    pub fn remove(&mut self, field: &str) {
        self.0.remove(field);
    }

    /// Adds the fields `other` declares; where both declare a field with
    /// different types, neither type holds (it is dropped).
    pub fn extend(&mut self, other: &FieldTypes) {
        for (field, ty) in &other.0 {
            match self.0.get(field) {
                Some(mine) if mine != ty => {
                    self.0.remove(field);
                }
                _ => {
                    self.0.insert(field.clone(), *ty);
                }
            }
        }
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
    /// The records as JSON text instead (then `records` is empty).
    json: Option<JsonRows>,
    /// The records as Arrow columns instead (then `records` is empty).
    columns: Option<ColumnRows>,
    position: Option<Position>,
    pages: Option<(u64, u64)>,
    json_fields: Option<Arc<JsonFields>>,
    field_types: Option<Arc<FieldTypes>>,
    /// What the writer's [`PrepareBatch`](crate::PrepareBatch) made of it.
    prepared: Option<Prepared>,
    lease: MemoryLease,
}

/// A writer's preparation of a batch (see [`Batch::set_prepared`]).
struct Prepared(Box<dyn Any + Send + Sync>);

impl fmt::Debug for Prepared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Prepared(..)")
    }
}

impl Batch {
    /// A batch of records whose memory is held by `lease`.
    pub fn new(records: Vec<Record>, lease: MemoryLease) -> Self {
        Self {
            records,
            json: None,
            columns: None,
            position: None,
            pages: None,
            json_fields: None,
            field_types: None,
            prepared: None,
            lease,
        }
    }

    /// A batch of records still as JSON text (see [`JsonRows`]), whose memory
    /// is held by `lease`. Sources build these only when the read asks for
    /// them ([`ReadRequest::json_rows`](crate::ReadRequest::json_rows)).
    pub fn from_json(rows: JsonRows, lease: MemoryLease) -> Self {
        Self {
            json: Some(rows),
            ..Self::new(Vec::new(), lease)
        }
    }

    /// A batch of records as Arrow columns (see [`ColumnRows`]), whose memory
    /// is held by `lease`. Sources build these only when the read asks for
    /// them ([`ReadRequest::columns`](crate::ReadRequest::columns)).
    pub fn from_columns(rows: ColumnRows, lease: MemoryLease) -> Self {
        Self {
            columns: Some(rows),
            ..Self::new(Vec::new(), lease)
        }
    }

    /// The records as Arrow columns, when the batch holds them so (then
    /// [`Batch::records`] is empty until [`Batch::decode_records`]).
    pub fn column_rows(&self) -> Option<&ColumnRows> {
        self.columns.as_ref()
    }

    /// Takes the columns out of a batch that holds them, with the position
    /// and the lease; `Err(self)` for a batch in another form.
    #[allow(clippy::result_large_err)]
    pub fn into_column_parts(
        self,
    ) -> std::result::Result<(ColumnRows, Option<Position>, MemoryLease), Batch> {
        match self.columns {
            Some(rows) => Ok((rows, self.position, self.lease)),
            None => Err(self),
        }
    }

    /// The records as JSON text, when the batch holds them so (then
    /// [`Batch::records`] is empty until [`Batch::decode_records`]).
    pub fn json_rows(&self) -> Option<&JsonRows> {
        self.json.as_ref()
    }

    /// Takes the JSON text out of a batch that holds it, with the position and
    /// the lease; `Err(self)` for a batch of records.
    #[allow(clippy::result_large_err)]
    pub fn into_json_parts(
        self,
    ) -> std::result::Result<(JsonRows, Option<Position>, MemoryLease), Batch> {
        match self.json {
            Some(rows) => Ok((rows, self.position, self.lease)),
            None => Err(self),
        }
    }

    /// Decodes a batch of JSON text or columns into records (nothing to do
    /// for a batch of records), growing its lease to what the records take
    /// without waiting ([`MemoryLease::grow_now`]: the batch may be what
    /// others wait for).
    pub fn decode_records(&mut self) -> Result<()> {
        let records = match (self.json.take(), self.columns.take()) {
            (Some(rows), _) => rows.decode()?,
            (None, Some(columns)) => columns.decode()?,
            (None, None) => return Ok(()),
        };
        self.prepared = None;
        let bytes: usize = records.iter().map(approx_record_size).sum();
        self.records = records;
        self.lease.grow_now(bytes);
        Ok(())
    }

    /// What [`Batch::decode_records`] was called before batches could hold
    /// columns (it decodes those too).
    #[deprecated(note = "renamed to decode_records, which decodes columns as well")]
    pub fn decode_json(&mut self) -> Result<()> {
        self.decode_records()
    }

    /// Declares the fields whose values the source read from JSON columns
    /// (see [`JsonFields`]).
    #[must_use]
    pub fn with_json_fields(mut self, fields: Option<Arc<JsonFields>>) -> Self {
        self.json_fields = fields.filter(|f| !f.is_empty());
        self
    }

    /// The fields the source declared JSON, if any.
    pub fn json_fields(&self) -> Option<&Arc<JsonFields>> {
        self.json_fields.as_ref()
    }

    /// Removes the declaration of JSON fields (for transforms that build new
    /// records, whose fields are no longer the source's).
    pub fn forget_json_fields(&mut self) {
        self.json_fields = None;
    }

    /// Declares the types of fields the source read from typed columns (see
    /// [`FieldTypes`]).
    #[must_use]
    pub fn with_field_types(mut self, types: Option<Arc<FieldTypes>>) -> Self {
        self.field_types = types.filter(|t| !t.is_empty());
        self
    }

    /// The field types the source declared, if any.
    pub fn field_types(&self) -> Option<&Arc<FieldTypes>> {
        self.field_types.as_ref()
    }

    /// Removes the declaration of field types (for transforms that build new
    /// records).
    pub fn forget_field_types(&mut self) {
        self.field_types = None;
    }

    /// Attaches what a writer's [`PrepareBatch`](crate::PrepareBatch) made of
    /// this batch (replacing anything attached before). Whatever changes the
    /// batch afterwards ([`Batch::append`], [`Batch::take_front`],
    /// [`Batch::decode_records`]) drops it.
    pub fn set_prepared<T: Any + Send + Sync>(&mut self, prepared: T) {
        self.prepared = Some(Prepared(Box::new(prepared)));
    }

    /// Takes what was attached with [`Batch::set_prepared`], when it is a `T`
    /// (anything else attached is dropped).
    pub fn take_prepared<T: Any>(&mut self) -> Option<T> {
        let Prepared(any) = self.prepared.take()?;
        any.downcast::<T>().ok().map(|t| *t)
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

    /// The records (empty for a batch of JSON text or columns: see
    /// [`Batch::json_rows`], [`Batch::column_rows`] and
    /// [`Batch::decode_records`]).
    pub fn records(&self) -> &[Record] {
        &self.records
    }

    /// The records, mutably (for transforms that keep the batch's lease; empty
    /// for a batch of JSON text or columns, as [`Batch::records`]).
    pub fn records_mut(&mut self) -> &mut Vec<Record> {
        &mut self.records
    }

    /// Number of records (in any form).
    pub fn len(&self) -> usize {
        match (&self.json, &self.columns) {
            (Some(json), _) => json.len(),
            (None, Some(columns)) => columns.len(),
            (None, None) => self.records.len(),
        }
    }

    /// Whether the batch holds no records.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
        self.prepared = None;
        if self.json.is_some() != later.json.is_some()
            || self.columns.is_some() != later.columns.is_some()
        {
            // Two forms: both become records.
            self.decode_records()?;
            later.decode_records()?;
        }
        match (
            &mut self.json,
            &mut later.json,
            &mut self.columns,
            &mut later.columns,
        ) {
            (Some(mine), Some(theirs), _, _) => mine.append(theirs),
            (_, _, Some(mine), Some(theirs)) => mine.append(theirs),
            _ => self.records.append(&mut later.records),
        }
        if later.position.is_some() {
            self.position = later.position.take();
        }
        self.json_fields = merged(
            self.json_fields.take(),
            later.json_fields.take(),
            JsonFields::extend,
        );
        self.field_types = merged(
            self.field_types.take(),
            later.field_types.take(),
            FieldTypes::extend,
        );
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

    /// Takes the first `n` records off into a batch of their own, with the share
    /// of the lease their count makes up. This batch keeps the rest and the
    /// position; the part taken off has none (the source cannot resume in the
    /// middle of a page), so committing it moves no checkpoint.
    pub fn take_front(&mut self, n: usize) -> Batch {
        self.prepared = None;
        let total = self.len();
        let n = n.min(total);
        let (front, json, columns) = match (&mut self.json, &mut self.columns) {
            (Some(rows), _) => (Vec::new(), Some(rows.take_front(n)), None),
            (None, Some(columns)) => (Vec::new(), None, Some(columns.take_front(n))),
            (None, None) => {
                let rest = self.records.split_off(n);
                (std::mem::replace(&mut self.records, rest), None, None)
            }
        };
        let bytes = if total == 0 {
            0
        } else {
            usize::try_from(self.lease.bytes() as u128 * n as u128 / total as u128)
                .unwrap_or(usize::MAX)
        };
        Batch {
            records: front,
            json,
            columns,
            position: None,
            pages: self.pages,
            json_fields: self.json_fields.clone(),
            field_types: self.field_types.clone(),
            prepared: None,
            lease: self.lease.split(bytes),
        }
    }

    /// Splits the batch into its records and its lease, for sinks that need to
    /// own the records while keeping the memory accounted until they are done
    /// (no records for a batch of JSON text or columns: [`Batch::decode_records`]
    /// first).
    pub fn into_parts(self) -> (Vec<Record>, Option<Position>, MemoryLease) {
        (self.records, self.position, self.lease)
    }
}

/// Two batches' declarations of one kind as one: either's, or both merged
/// with `extend`.
fn merged<T: Clone + PartialEq>(
    mine: Option<Arc<T>>,
    theirs: Option<Arc<T>>,
    extend: impl FnOnce(&mut T, &T),
) -> Option<Arc<T>> {
    match (mine, theirs) {
        (Some(mine), Some(theirs)) if mine != theirs => {
            let mut both = (*mine).clone();
            extend(&mut both, &theirs);
            Some(Arc::new(both))
        }
        (mine, theirs) => mine.or(theirs),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::MemoryBudget;
    use crate::record::into_record;
    use serde_json::json;

    #[test]
    fn a_preparation_is_taken_as_its_type_and_dropped_by_any_change() {
        let budget = MemoryBudget::new(1 << 20);
        let rows = || {
            let mut rows = JsonRows::new();
            rows.push(br#"{"id":1}"#).unwrap();
            rows.push(br#"{"id":2}"#).unwrap();
            rows
        };
        let mut batch = Batch::from_json(rows(), budget.empty_lease());
        batch.set_prepared(7u32);
        assert_eq!(batch.take_prepared::<String>(), None, "another type");
        assert_eq!(
            batch.take_prepared::<u32>(),
            None,
            "dropped by the wrong take"
        );
        batch.set_prepared(7u32);
        assert_eq!(batch.take_prepared::<u32>(), Some(7));
        assert_eq!(batch.take_prepared::<u32>(), None, "taken once");

        batch.set_prepared(1u32);
        let mut front = batch.take_front(1);
        assert_eq!(front.take_prepared::<u32>(), None);
        assert_eq!(batch.take_prepared::<u32>(), None, "split");
        batch.set_prepared(2u32);
        front.set_prepared(3u32);
        front.append(batch).unwrap();
        assert_eq!(front.take_prepared::<u32>(), None, "appended to");
        front.set_prepared(4u32);
        front.decode_records().unwrap();
        assert_eq!(front.take_prepared::<u32>(), None, "decoded");
        assert_eq!(front.len(), 2);
    }

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

    #[tokio::test]
    async fn declared_json_fields_follow_appends_and_splits() {
        let budget = MemoryBudget::new(1 << 20);
        let fields = |names: &[&str]| Some(Arc::new(JsonFields::new(names.iter().copied())));
        let records = |n: usize| (0..n).map(|i| into_record(json!({"id": i}))).collect();
        let mut a = Batch::new(records(4), budget.acquire(10).await.unwrap())
            .with_json_fields(fields(&["doc"]));
        let b = Batch::new(records(2), budget.acquire(10).await.unwrap())
            .with_json_fields(fields(&["meta"]));
        a.append(b).unwrap();
        let declared: Vec<&str> = a.json_fields().unwrap().iter().collect();
        assert_eq!(declared, ["doc", "meta"], "both batches' declarations");
        let front = a.take_front(3);
        assert_eq!(front.json_fields(), a.json_fields());
        let none =
            Batch::new(records(1), budget.acquire(10).await.unwrap()).with_json_fields(fields(&[]));
        assert!(none.json_fields().is_none(), "an empty declaration is none");
        a.forget_json_fields();
        assert!(a.json_fields().is_none());
    }

    #[tokio::test]
    async fn declared_field_types_follow_appends_and_splits() {
        let budget = MemoryBudget::new(1 << 20);
        let types =
            |fields: &[(&str, FieldType)]| Some(Arc::new(FieldTypes::new(fields.iter().copied())));
        let money = FieldType::Decimal {
            precision: 12,
            scale: 2,
        };
        let records = |n: usize| (0..n).map(|i| into_record(json!({"id": i}))).collect();
        let mut a = Batch::new(records(4), budget.acquire(10).await.unwrap())
            .with_field_types(types(&[("total", money), ("day", FieldType::Date)]));
        let b =
            Batch::new(records(2), budget.acquire(10).await.unwrap()).with_field_types(types(&[
                ("day", FieldType::Timestamp),
                ("at", FieldType::TimestampUtc),
            ]));
        a.append(b).unwrap();
        let declared: Vec<(&str, FieldType)> = a.field_types().unwrap().iter().collect();
        assert_eq!(
            declared,
            [("at", FieldType::TimestampUtc), ("total", money)],
            "both batches' declarations, without the field they disagree on"
        );
        let front = a.take_front(3);
        assert_eq!(front.field_types(), a.field_types());
        let none =
            Batch::new(records(1), budget.acquire(10).await.unwrap()).with_field_types(types(&[]));
        assert!(none.field_types().is_none(), "an empty declaration is none");
        a.forget_field_types();
        assert!(a.field_types().is_none());
    }

    #[tokio::test]
    async fn take_front_splits_records_and_memory_and_keeps_the_position_behind() {
        let budget = MemoryBudget::new(1 << 20);
        let records = (0..10).map(|i| into_record(json!({"id": i}))).collect();
        let mut batch = Batch::new(records, budget.acquire(10_000).await.unwrap())
            .with_page(3)
            .with_position(Some(Position::new(json!({"offset": 10}))));
        let front = batch.take_front(4);
        assert_eq!((front.len(), batch.len()), (4, 6));
        assert_eq!((front.bytes(), batch.bytes()), (4000, 6000));
        assert_eq!(
            front.position(),
            None,
            "no resuming in the middle of a page"
        );
        assert_eq!(
            batch.position(),
            Some(&Position::new(json!({"offset": 10})))
        );
        assert_eq!(front.pages(), Some((3, 3)));
        assert_eq!(budget.in_use(), 10_000, "nothing released by splitting");
        drop(front);
        assert_eq!(budget.in_use(), 6000);
        // The budget's permits moved with the bytes: all of it can be acquired again.
        drop(batch);
        assert_eq!(budget.in_use(), 0);
        let all = budget.try_acquire(1 << 20);
        assert!(all.is_some(), "every permit came back");
    }
}
