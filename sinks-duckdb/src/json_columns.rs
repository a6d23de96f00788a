//! Records as JSON text straight into columns, when they fit the table.
//!
//! A batch that arrives as JSON text ([`JsonRows`]) is parsed record by record
//! into the Arrow columns of the table's schema, without a map per record or a
//! string per field name: each field's value is read as its raw JSON text and
//! converted as [`cell`](crate::schema::cell) converts a decoded value, so the
//! rows stored are the ones the record path stores (the property suite of
//! this crate writes the same data both ways and compares the tables).
//!
//! Fields the source declared JSON ([`JsonFields`]) keep every value as JSON
//! text in their `JSON` column, a JSON `null` as the text `null` (SQL NULL is
//! the field left out), as the record path stores them.
//!
//! Fields without a column in a table that has its most columns go into its
//! extra column as the record path writes them: one JSON object per row of
//! those fields in their order, each value as `serde_json` writes it (nulls
//! left out, except a declared JSON field's), SQL NULL when there is none.
//!
//! Only a batch that needs nothing else is taken this way: every field already
//! has a column whose type holds its value (or goes into the extra column), no
//! field twice in a record, and (with a key) every record keyed, the keys
//! increasing. Anything else — a new
//! field, a value that widens a column, a duplicate or missing key, keys out of
//! order, a field name DuckDB cannot hold — is [`Unfit`]. For new fields
//! ([`Unfit::NewField`]) the writer adds their columns to the schema and decodes
//! again, and for keys out of order ([`Unfit::KeysOutOfOrder`]) decodes again keeping every
//! key ([`KeyOrder::Any`]: each key once, integers or strings); any other batch
//! is decoded into records and takes the record path, which handles all of it.

use std::borrow::Cow;
use std::fmt;

use duckdb::arrow::record_batch::RecordBatch;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;
use sluicegate_core::{JsonFields, JsonRows};

use crate::columns::{CHUNK_ROWS, Column, finish_batch};
use crate::keys::Key;
use crate::schema::{Cell, ColumnType, NumberKind, TableSchema, number_kind_text};
use crate::typed;

/// Why a batch cannot go straight into columns as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Unfit {
    /// A field the table has no column for (its name): the writer may add
    /// the columns and decode again.
    NewField(String),
    /// Keys that do not increase ([`KeyOrder::Increasing`]): the writer may
    /// decode again keeping every key ([`KeyOrder::Any`]).
    KeysOutOfOrder,
    /// Anything else (why): the batch takes the record path.
    Other(String),
}

impl fmt::Display for Unfit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unfit::NewField(name) => write!(f, "new field {name}"),
            Unfit::KeysOutOfOrder => f.write_str("keys do not increase"),
            Unfit::Other(why) => f.write_str(why),
        }
    }
}

/// A batch's records as Arrow record batches of the table's columns.
#[derive(Debug)]
pub(crate) struct Decoded {
    /// Record batches of at most [`CHUNK_ROWS`] rows, in order.
    pub(crate) chunks: Vec<RecordBatch>,
    /// Number of records.
    pub(crate) rows: usize,
    /// The smallest and largest key (keyed streams; keys increase).
    pub(crate) range: Option<(Key, Key)>,
    /// The longest string or nested value's text, in bytes.
    pub(crate) largest: usize,
    /// Heap bytes of the columns.
    pub(crate) bytes: usize,
    /// The table's schema with the columns this batch adds, when it adds
    /// some (set by the writer; `None`: the table as it is).
    pub(crate) schema: Option<TableSchema>,
}

/// What a keyed batch's keys must be to go into columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyOrder {
    /// Increasing, record after record (checked as they come).
    Increasing,
    /// In any order, each once: all kept and checked at the end (sorted).
    Any,
}

/// Decodes `rows` into columns of `schema`, keyed by the field `key` (its
/// column must exist), the fields in `declared` read by the source as JSON.
/// `Err` when the batch does not fit (see the module docs).
pub(crate) fn decode(
    schema: &TableSchema,
    key: Option<&str>,
    rows: &JsonRows,
    declared: Option<&JsonFields>,
    order: KeyOrder,
) -> Result<Decoded, Unfit> {
    let key_column = key_column(schema, key)?;
    // A declared field's column is JSON (the record path makes it so, and
    // widens it to VARCHAR only for values of other sources).
    let json_text = schema.json_nulls(declared);
    for field in declared.into_iter().flat_map(JsonFields::iter) {
        if let Some(idx) = schema.column_of(field)
            && (!json_text[idx] || Some(idx) == key_column)
        {
            return Err(Unfit::Other(format!(
                "field {field} is declared JSON, its column is {}",
                schema.columns[idx].1.sql()
            )));
        }
    }
    let mut state = State {
        schema,
        key_column,
        declared,
        json_text,
        cache: Vec::new(),
        set: vec![false; schema.columns.len()],
        first_key: None,
        last_key: None,
        order,
        keys: Vec::new(),
        largest: 0,
        unfit: None,
        extra_text: String::new(),
        extra_names: Vec::new(),
    };
    let mut chunks = Vec::with_capacity(rows.len().div_ceil(CHUNK_ROWS));
    let mut bytes = 0;
    let mut texts = rows.iter_str();
    let mut left = rows.len();
    while left > 0 {
        let n = left.min(CHUNK_ROWS);
        left -= n;
        let mut columns: Vec<Column> = schema
            .columns
            .iter()
            .map(|(_, ty)| Column::for_type(ty, n))
            .collect();
        for text in texts.by_ref().take(n) {
            state.record(text, &mut columns)?;
        }
        let batch = finish_batch(schema, columns).map_err(|e| Unfit::Other(e.to_string()))?;
        bytes += batch.get_array_memory_size();
        chunks.push(batch);
    }
    let range = match state.order {
        KeyOrder::Increasing => match (state.first_key, state.last_key) {
            (Some(first), Some(last)) => Some((first, last)),
            _ => None,
        },
        KeyOrder::Any => any_order_range(state.keys)?,
    };
    Ok(Decoded {
        chunks,
        rows: rows.len(),
        range,
        largest: state.largest,
        bytes,
        schema: None,
    })
}

/// The decoder's state across the records of a batch.
struct State<'s> {
    schema: &'s TableSchema,
    key_column: Option<usize>,
    /// The fields the source declared JSON.
    declared: Option<&'s JsonFields>,
    /// The columns of declared fields: every value is stored as JSON text.
    json_text: Vec<bool>,
    /// The previous record's field names in order, with their columns: the
    /// next record usually has the same, compared instead of hashed.
    cache: Vec<(String, Option<usize>)>,
    /// Which columns the current record has set.
    set: Vec<bool>,
    first_key: Option<Key>,
    last_key: Option<Key>,
    order: KeyOrder,
    /// Every key, in [`KeyOrder::Any`].
    keys: Vec<Key>,
    largest: usize,
    /// Set when a record does not fit (the parse is stopped with an error).
    unfit: Option<Unfit>,
    /// The current record's fields for the extra column, as JSON object text
    /// without its closing brace (empty: none yet).
    extra_text: String,
    /// Where their names are in `extra_text` (as written, so equal names
    /// are equal text), to find one that is there twice.
    extra_names: Vec<std::ops::Range<usize>>,
}

impl State<'_> {
    /// Adds one record's values to `columns` (a null for every column it lacks).
    /// The text is parsed as a `&str`: [`JsonRows`] checked it is UTF-8, so
    /// the parser does not check each name's and value's bytes again.
    fn record(&mut self, text: &str, columns: &mut [Column]) -> Result<(), Unfit> {
        self.set.iter_mut().for_each(|s| *s = false);
        self.extra_text.clear();
        self.extra_names.clear();
        let mut de = serde_json::Deserializer::from_str(text);
        let parsed = de
            .deserialize_map(RecordVisitor {
                state: self,
                columns,
            })
            .and_then(|()| de.end());
        if let Some(unfit) = self.unfit.take() {
            return Err(unfit);
        }
        // The source checked the text; a failure here is a surprise, and the
        // record path reports it properly.
        parsed.map_err(|e| Unfit::Other(format!("a record does not parse: {e}")))?;
        if let Some(idx) = self.key_column
            && !self.set[idx]
        {
            return Err(Unfit::Other("a record has no key".to_owned()));
        }
        if let Some(idx) = self.schema.extra()
            && !self.extra_text.is_empty()
        {
            self.extra_text.push('}');
            self.largest = self.largest.max(self.extra_text.len());
            if !columns[idx].push(&Cell::Text(&self.extra_text)) {
                return Err(Unfit::Other("the extra column is not text".to_owned()));
            }
            self.set[idx] = true;
        }
        for (idx, column) in columns.iter_mut().enumerate() {
            if !self.set[idx] {
                column.push(&Cell::Null);
            }
        }
        Ok(())
    }

    /// The column of the `position`th field named `name`, if the table has one.
    fn column_of(&mut self, position: usize, name: &str) -> Option<usize> {
        if let Some((cached, column)) = self.cache.get(position)
            && cached == name
        {
            return *column;
        }
        let column = self.schema.column_of(name);
        if position < self.cache.len() {
            self.cache[position] = (name.to_owned(), column);
        } else {
            self.cache.push((name.to_owned(), column));
        }
        column
    }

    /// One field: its value into its column, or why the batch does not fit.
    fn field(
        &mut self,
        position: usize,
        name: &str,
        raw: &str,
        columns: &mut [Column],
    ) -> Result<(), Unfit> {
        if name.is_empty() || name.contains('\0') {
            return Err(Unfit::Other(format!(
                "field name {name:?} cannot be a column"
            )));
        }
        let Some(idx) = self.column_of(position, name) else {
            let declared = self.declared.is_some_and(|d| d.contains(name));
            return if raw == "null" && !declared {
                // A null of a field without a column adds nothing (as in the
                // record path, which makes no column for it unless the field
                // is declared JSON).
                Ok(())
            } else if self.schema.extra().is_some() && !self.schema.takes_column(name) {
                self.extra_field(name, raw)
            } else {
                Err(Unfit::NewField(name.to_owned()))
            };
        };
        if std::mem::replace(&mut self.set[idx], true) {
            return Err(Unfit::Other(format!("field {name} twice in a record")));
        }
        let ty = &self.schema.columns[idx].1;
        let cell = if self.json_text[idx] {
            json_text_cell(raw, &mut self.largest)
        } else {
            raw_cell(raw, ty, &mut self.largest)
        }
        .ok_or_else(|| Unfit::Other(format!("a value of {name} does not fit {}", ty.sql())))?;
        if Some(idx) == self.key_column {
            self.key(raw, name)?;
        }
        if columns[idx].push(&cell) {
            Ok(())
        } else {
            Err(Unfit::Other(format!(
                "a value of {name} does not fit its column"
            )))
        }
    }

    /// A field for the extra column: its name and value appended to the
    /// record's object text, both as `serde_json` writes them.
    fn extra_field(&mut self, name: &str, raw: &str) -> Result<(), Unfit> {
        let value = json_text_cell(raw, &mut self.largest)
            .ok_or_else(|| Unfit::Other(format!("a value of {name} does not parse")))?;
        let value = match &value {
            Cell::Text(t) => *t,
            Cell::Owned(t) => t.as_str(),
            _ => return Err(Unfit::Other(format!("a value of {name} is not text"))),
        };
        self.extra_text
            .push(if self.extra_text.is_empty() { '{' } else { ',' });
        let start = self.extra_text.len();
        if name.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
            // What serde_json writes for a name with nothing to escape.
            self.extra_text.push('"');
            self.extra_text.push_str(name);
            self.extra_text.push('"');
        } else {
            let name = serde_json::to_string(name)
                .map_err(|e| Unfit::Other(format!("field name {name:?}: {e}")))?;
            self.extra_text.push_str(&name);
        }
        let written = start..self.extra_text.len();
        let text = &self.extra_text;
        if self
            .extra_names
            .iter()
            .any(|n| text[n.clone()] == text[written.clone()])
        {
            return Err(Unfit::Other(format!("field {name} twice in a record")));
        }
        self.extra_names.push(written);
        self.extra_text.push(':');
        self.extra_text.push_str(value);
        Ok(())
    }

    /// Checks the record's key: present, and after the previous record's
    /// (or kept, in [`KeyOrder::Any`]).
    fn key(&mut self, raw: &str, name: &str) -> Result<(), Unfit> {
        let key = raw_key(raw)
            .ok_or_else(|| Unfit::Other(format!("key {name} is null or not orderable")))?;
        if self.order == KeyOrder::Any {
            self.keys.push(key);
            return Ok(());
        }
        if let Some(last) = &self.last_key
            && last.compare(&key) != Some(std::cmp::Ordering::Less)
        {
            return Err(Unfit::KeysOutOfOrder);
        }
        if self.first_key.is_none() {
            self.first_key = Some(key.clone());
        }
        self.last_key = Some(key);
        Ok(())
    }
}

/// The column of the key field `key`, when the stream has one; `Unfit` when
/// the table has no column for it yet.
pub(crate) fn key_column(schema: &TableSchema, key: Option<&str>) -> Result<Option<usize>, Unfit> {
    key.map(|field| {
        schema
            .column_of(field)
            .ok_or_else(|| Unfit::Other(format!("no column for the key field {field} yet")))
    })
    .transpose()
}

/// The lowest and highest of keys in any order; `Unfit` when one is there
/// twice (the record path keeps the last record of a key) or the keys are of
/// different kinds (integers and strings: no order).
pub(crate) fn any_order_range(mut keys: Vec<Key>) -> Result<Option<(Key, Key)>, Unfit> {
    let Some(first) = keys.first() else {
        return Ok(None);
    };
    if keys.iter().any(|k| first.compare(k).is_none()) {
        return Err(Unfit::Other("keys of different kinds".to_owned()));
    }
    keys.sort_unstable_by(|a, b| a.compare(b).unwrap_or(std::cmp::Ordering::Equal));
    if keys
        .windows(2)
        .any(|w| w[0].compare(&w[1]) == Some(std::cmp::Ordering::Equal))
    {
        return Err(Unfit::Other("a key twice in the batch".to_owned()));
    }
    Ok(keys.first().cloned().zip(keys.last().cloned()))
}

/// A key as [`Key::of`] makes it from the decoded value, for integers and
/// strings (the keys whose order is known); `None` for anything else.
fn raw_key(raw: &str) -> Option<Key> {
    match raw.as_bytes().first()? {
        b'"' => Some(Key::Text(string_value(raw)?.into_owned())),
        b'-' | b'0'..=b'9' => raw.parse::<i64>().ok().map(Key::Int),
        _ => None,
    }
}

/// A JSON string's value: borrowed when it holds no escape.
fn string_value(raw: &str) -> Option<Cow<'_, str>> {
    let inner = raw.get(1..raw.len().checked_sub(1)?)?;
    if inner.contains('\\') {
        serde_json::from_str::<String>(raw).ok().map(Cow::Owned)
    } else {
        Some(Cow::Borrowed(inner))
    }
}

/// The cell a value (its raw JSON text) makes in a column of type `ty`, as
/// [`cell`](crate::schema::cell) makes it from the decoded value, when the
/// column's type holds it (as the record path's widening would leave it);
/// `None` when the column would have to widen. `largest` follows the longest
/// string or nested value.
fn raw_cell<'a>(raw: &'a str, ty: &ColumnType, largest: &mut usize) -> Option<Cell<'a>> {
    let first = *raw.as_bytes().first()?;
    if ty.is_typed() {
        // A string with an escape takes the record path (none of the typed
        // forms has one).
        let typed = match first {
            b'n' => return Some(Cell::Null),
            b'"' => match string_value(raw)? {
                Cow::Borrowed(s) => typed::parse_str(ty, s).map(|t| Cell::Typed(t, s)),
                Cow::Owned(_) => None,
            },
            b'-' | b'0'..=b'9' => typed::parse_number(ty, raw).map(|t| Cell::Typed(t, raw)),
            _ => None,
        };
        return typed;
    }
    match first {
        b'n' => Some(Cell::Null),
        b't' | b'f' => {
            let b = first == b't';
            match ty {
                ColumnType::Boolean => Some(Cell::Bool(b)),
                ColumnType::Varchar | ColumnType::Json | ColumnType::Other(_) => {
                    Some(Cell::Text(if b { "true" } else { "false" }))
                }
                _ => None,
            }
        }
        b'"' => match ty {
            ColumnType::Varchar | ColumnType::Other(_) => {
                let s = string_value(raw)?;
                *largest = (*largest).max(s.len());
                Some(match s {
                    Cow::Borrowed(s) => Cell::Text(s),
                    Cow::Owned(s) => Cell::Owned(s),
                })
            }
            _ => None,
        },
        b'{' | b'[' => match ty {
            ColumnType::Json | ColumnType::Varchar | ColumnType::Other(_) => {
                *largest = (*largest).max(raw.len());
                Some(if is_canonical(raw.as_bytes()) {
                    Cell::Text(raw)
                } else {
                    Cell::Owned(serde_json::from_str::<Value>(raw).ok()?.to_string())
                })
            }
            _ => None,
        },
        _ => number_cell(raw, ty),
    }
}

/// The cell of a declared JSON field's value: its JSON text as `serde_json`
/// writes it once decoded (a `null` too; see [`cell`](crate::schema::cell)).
fn json_text_cell<'a>(raw: &'a str, largest: &mut usize) -> Option<Cell<'a>> {
    *largest = (*largest).max(raw.len());
    Some(match json_text(raw)? {
        Cow::Borrowed(text) => Cell::Text(text),
        Cow::Owned(text) => Cell::Owned(text),
    })
}

/// The text a declared JSON field's value (its raw JSON text) is stored as:
/// as `serde_json` writes the value once decoded (see [`json_text_cell`]);
/// `None` when it does not parse.
pub(crate) fn json_text(raw: &str) -> Option<Cow<'_, str>> {
    Some(match raw.as_bytes().first()? {
        b'{' | b'[' | b'"' if !is_canonical(raw.as_bytes()) => {
            Cow::Owned(serde_json::from_str::<Value>(raw).ok()?.to_string())
        }
        b'-' | b'0'..=b'9' => number_text(raw),
        _ => Cow::Borrowed(raw),
    })
}

/// A number's cell (see [`raw_cell`]); the widening rules of the record path:
/// `BIGINT` holds 64-bit integers, `HUGEINT` 128-bit ones, `DOUBLE` fractions
/// and integers within ±2^53, and text columns the number's text.
fn number_cell<'a>(raw: &'a str, ty: &ColumnType) -> Option<Cell<'a>> {
    let kind = number_kind_text(raw);
    match (kind, ty) {
        (NumberKind::Int64(i), ColumnType::BigInt) => Some(Cell::Int(i)),
        (NumberKind::Int64(i), ColumnType::HugeInt) => Some(Cell::Huge(i128::from(i))),
        (NumberKind::Int128(i), ColumnType::HugeInt) => Some(Cell::Huge(i)),
        (NumberKind::Float(x), ColumnType::Double) => {
            Some(Cell::Double(if x == 0.0 { 0.0 } else { x }))
        }
        (NumberKind::Int64(_) | NumberKind::Int128(_), ColumnType::Double)
            if kind.fits_double() =>
        {
            Some(Cell::Double(match kind {
                NumberKind::Int64(i) => i as f64,
                NumberKind::Int128(i) => i as f64,
                _ => return None,
            }))
        }
        // A number beyond every numeric type widens a JSON column to VARCHAR.
        (NumberKind::Text, ColumnType::Json) => None,
        (_, ColumnType::Varchar | ColumnType::Json | ColumnType::Other(_)) => {
            Some(match number_text(raw) {
                Cow::Borrowed(text) => Cell::Text(text),
                Cow::Owned(text) => Cell::Owned(text),
            })
        }
        _ => None,
    }
}

/// A number's text as `serde_json` keeps it: an exponent is written `e`,
/// with its sign (`1E5` is `1e+5`); anything else as it came.
fn number_text(raw: &str) -> Cow<'_, str> {
    let Some(at) = raw.find(['e', 'E']) else {
        return Cow::Borrowed(raw);
    };
    let exponent = &raw[at + 1..];
    if raw.as_bytes()[at] == b'e' && exponent.starts_with(['+', '-']) {
        return Cow::Borrowed(raw);
    }
    let sign = if exponent.starts_with(['+', '-']) {
        ""
    } else {
        "+"
    };
    Cow::Owned(format!("{}e{sign}{exponent}", &raw[..at]))
}

/// Whether a nested value's text is exactly what `serde_json` writes for it
/// once decoded: no whitespace outside strings, no escape (so every string is
/// written back as it came), and no object with a key twice (decoding keeps
/// the last), and no exponent other than `e` with a sign (see
/// [`number_text`]).
fn is_canonical(text: &[u8]) -> bool {
    if text.contains(&b'\\') {
        return false;
    }
    /// An open object's keys so far (objects with many keys are checked
    /// through the decoder instead).
    const MAX_KEYS: usize = 32;
    enum Frame<'t> {
        Object {
            keys: Vec<&'t [u8]>,
            expect_key: bool,
        },
        Array,
    }
    let mut stack: Vec<Frame<'_>> = Vec::new();
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'"' => {
                let Some(len) = text[i + 1..].iter().position(|b| *b == b'"') else {
                    return false;
                };
                let s = &text[i + 1..i + 1 + len];
                if let Some(Frame::Object { keys, expect_key }) = stack.last_mut()
                    && *expect_key
                {
                    if keys.len() >= MAX_KEYS || keys.contains(&s) {
                        return false;
                    }
                    keys.push(s);
                    *expect_key = false;
                }
                i += len + 2;
                continue;
            }
            b'{' => stack.push(Frame::Object {
                keys: Vec::new(),
                expect_key: true,
            }),
            b'[' => stack.push(Frame::Array),
            b'}' | b']' => {
                stack.pop();
            }
            b',' => {
                if let Some(Frame::Object { expect_key, .. }) = stack.last_mut() {
                    *expect_key = true;
                }
            }
            b' ' | b'\t' | b'\n' | b'\r' | b'E' => return false,
            // Outside strings an `e` is an exponent's, or ends `true`/`false`.
            b'e' if text.get(i + 1).is_some_and(u8::is_ascii_digit) => return false,
            _ => {}
        }
        i += 1;
    }
    true
}

/// Visits a record's fields: names borrowed when unescaped, values as raw text.
struct RecordVisitor<'a, 's> {
    state: &'a mut State<'s>,
    columns: &'a mut [Column],
}

impl<'de> Visitor<'de> for RecordVisitor<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut position = 0;
        while let Some(FieldName(name)) = map.next_key_seed(FieldNameSeed)? {
            let raw: &RawValue = map.next_value()?;
            if let Err(unfit) = self.state.field(position, &name, raw.get(), self.columns) {
                self.state.unfit = Some(unfit);
                return Err(de::Error::custom("does not fit the table"));
            }
            position += 1;
        }
        Ok(())
    }
}

/// A field name, borrowed from the text when it holds no escape.
struct FieldName<'de>(Cow<'de, str>);

struct FieldNameSeed;

impl<'de> DeserializeSeed<'de> for FieldNameSeed {
    type Value = FieldName<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(FieldNameVisitor)
    }
}

struct FieldNameVisitor;

impl<'de> Visitor<'de> for FieldNameVisitor {
    type Value = FieldName<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(FieldName(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(FieldName(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(FieldName(Cow::Owned(v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_text_is_what_serde_json_writes() {
        for text in [
            r#"{"a":1,"b":[1,2.50,"x"],"c":{"d":null,"e":true}}"#,
            r#"[{"a":1},{"a":2}]"#,
            r#"{"ünï":"cödé ☃","n":1e+400,"m":-2.5e-3}"#,
            "[]",
            "{}",
            r#"{"a":{"a":{"a":1}}}"#,
        ] {
            assert!(is_canonical(text.as_bytes()), "{text}");
            let decoded: Value = serde_json::from_str(text).unwrap();
            assert_eq!(decoded.to_string(), text);
        }
        for text in [
            r#"{"a": 1}"#,
            r#"{"a":"\u00e9"}"#,
            r#"{"a":1,"a":2}"#,
            "[1,\n2]",
            r#"{"a":"\/"}"#,
            "[1E+5]",
            "[1e5]",
        ] {
            assert!(!is_canonical(text.as_bytes()), "{text}");
        }
        // Keys in different objects may repeat.
        assert!(is_canonical(br#"[{"a":1},{"a":1}]"#));
        assert!(is_canonical(br#"{"a":{"b":1},"b":{"a":2}}"#));
        // A string value equal to a key is no key.
        assert!(is_canonical(br#"{"a":"a","b":"a"}"#));
    }

    #[test]
    fn numbers_follow_the_column_type() {
        let cell = |raw, ty| number_cell(raw, &ty);
        assert!(matches!(
            cell("12", ColumnType::BigInt),
            Some(Cell::Int(12))
        ));
        assert!(
            cell("1.5", ColumnType::BigInt).is_none(),
            "widens to DOUBLE"
        );
        assert!(cell("18446744073709551615", ColumnType::BigInt).is_none());
        assert!(matches!(cell("-0", ColumnType::Double), Some(Cell::Double(z)) if z == 0.0));
        assert!(
            cell("9007199254740993", ColumnType::Double).is_none(),
            "beyond 2^53"
        );
        assert!(
            matches!(
                cell("1e-400", ColumnType::Varchar),
                Some(Cell::Text("1e-400"))
            ),
            "a double 0, but not written 0"
        );
        assert!(cell("1e400", ColumnType::Double).is_none());
        for (raw, kept) in [
            ("1E400", "1e+400"),
            ("2e9999", "2e+9999"),
            ("-1.5E-999", "-1.5e-999"),
        ] {
            let Some(Cell::Owned(text)) = cell(raw, ColumnType::Varchar) else {
                panic!("{raw}");
            };
            assert_eq!(text, kept);
            let decoded: serde_json::Number = serde_json::from_str(raw).unwrap();
            assert_eq!(decoded.to_string(), kept, "as serde_json keeps it");
        }
    }

    #[test]
    fn unfit_batches_say_why() {
        let schema = TableSchema::from_columns(vec![
            ("id".into(), ColumnType::BigInt),
            ("name".into(), ColumnType::Varchar),
        ]);
        let rows = |texts: &[serde_json::Value]| {
            let mut rows = JsonRows::new();
            for t in texts {
                rows.push(t.to_string().as_bytes()).unwrap();
            }
            rows
        };
        let ok = decode(
            &schema,
            Some("id"),
            &rows(&[
                json!({"id": 1, "name": "a"}),
                json!({"name": "b", "id": 2, "x": null}),
            ]),
            None,
            KeyOrder::Increasing,
        )
        .unwrap();
        assert_eq!(ok.rows, 2);
        assert_eq!(ok.range, Some((Key::Int(1), Key::Int(2))));
        for (batch, why) in [
            (vec![json!({"id": 1, "extra": 1})], "new field"),
            (
                vec![json!({"id": 2}), json!({"id": 1})],
                "keys do not increase",
            ),
            (
                vec![json!({"id": 1}), json!({"id": 1})],
                "keys do not increase",
            ),
            (vec![json!({"name": "x"})], "no key"),
            (vec![json!({"id": null})], "null"),
            (vec![json!({"id": 1.5})], "does not fit"),
            (vec![json!({"id": 1, "": 1})], "cannot be a column"),
        ] {
            let reason: String = decode(
                &schema,
                Some("id"),
                &rows(&batch),
                None,
                KeyOrder::Increasing,
            )
            .unwrap_err()
            .to_string();
            assert!(reason.contains(why), "{batch:?}: {reason}");
        }
        // In any order: each key once, of one kind; the range is the lowest
        // and highest.
        let any = |batch: &[serde_json::Value]| {
            decode(&schema, Some("id"), &rows(batch), None, KeyOrder::Any)
        };
        let ok = any(&[json!({"id": 3}), json!({"id": -7}), json!({"id": 5})]).unwrap();
        assert_eq!(ok.range, Some((Key::Int(-7), Key::Int(5))));
        let reason: String = any(&[json!({"id": 2}), json!({"id": 1}), json!({"id": 2})])
            .unwrap_err()
            .to_string();
        assert!(reason.contains("twice"), "{reason}");
        // A text key column holding numbers and strings: no order between them.
        let text_key = TableSchema::from_columns(vec![("id".into(), ColumnType::Varchar)]);
        let mixed = rows(&[json!({"id": 2}), json!({"id": "1"})]);
        let reason: String = decode(&text_key, Some("id"), &mixed, None, KeyOrder::Any)
            .unwrap_err()
            .to_string();
        assert!(reason.contains("different kinds"), "{reason}");
        let mut twice = JsonRows::new();
        twice.push(br#"{"id":1,"id":2}"#).unwrap();
        let reason: String = decode(&schema, Some("id"), &twice, None, KeyOrder::Increasing)
            .unwrap_err()
            .to_string();
        assert!(reason.contains("twice"), "{reason}");
        // A table at its most columns: other fields go into its extra
        // column, each once (the same name escaped or not is the same field).
        let mut full = schema.clone();
        full.set_max_columns(Some(2), Some("id"));
        full.extra_column();
        let extra = |text: &[u8]| {
            let mut rows = JsonRows::new();
            rows.push(text).unwrap();
            decode(&full, Some("id"), &rows, None, KeyOrder::Increasing)
        };
        let ok = extra(br#"{"id":1,"b":1E5,"a":null,"c":[1, 2]}"#).unwrap();
        let stored = ok.chunks[0].column(2).as_any();
        let stored = stored
            .downcast_ref::<duckdb::arrow::array::StringArray>()
            .unwrap();
        assert_eq!(stored.value(0), r#"{"b":1e+5,"c":[1,2]}"#);
        for twice in [
            &br#"{"id":1,"b":1,"b":2}"#[..],
            br#"{"id":1,"b":1,"\u0062":2}"#,
        ] {
            let reason = extra(twice).unwrap_err().to_string();
            assert!(reason.contains("field b twice"), "{reason}");
        }
    }
}
