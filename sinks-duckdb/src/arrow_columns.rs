//! Batches of Arrow columns ([`ColumnRows`]: a database's typed rows) into
//! the table's columns, the arrays taken as they are.
//!
//! A batch goes in this way when each of its columns has a column in the
//! table whose type holds the column's values exactly as the record path
//! stores the records the source's decoder makes of them:
//!
//! | Arrow | table column |
//! |---|---|
//! | `Int64` | `BIGINT` |
//! | `Boolean` | `BOOLEAN` |
//! | `Float64` | `DOUBLE` (every zero stored as `0.0`, as the record path does) |
//! | `Utf8` | `VARCHAR` (or a column of a type the sink did not make) |
//! | `Utf8` of a field declared JSON | its `JSON` column, each text as `serde_json` writes the value |
//! | `Decimal128(p,s)` | `DECIMAL(q,s)`, `q ≥ p` |
//! | `Date32` | `DATE` |
//! | `Timestamp(µs)`, `Timestamp(µs, zone)` | `TIMESTAMP`, `TIMESTAMPTZ` |
//!
//! and (with a key) every row has its key, an integer or a string, each once.
//! Anything else — a field without a column, a column of another type, a
//! missing or repeated key — is [`Unfit`], and the batch takes the record
//! path (its records made by the source's own decoder), which handles all of
//! it. The property suite of this crate writes the same rows both ways and
//! compares the tables.

use std::sync::Arc;

use duckdb::arrow::array::{
    Array, ArrayRef, Decimal128Array, Float64Array, Int64Array, StringArray, StringBuilder,
    new_null_array,
};
use duckdb::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use duckdb::arrow::record_batch::RecordBatch;
use sluicegate_core::{ColumnRows, JsonFields};

use crate::columns::{CHUNK_ROWS, UTC, arrow_type};
use crate::json_columns::{Decoded, Unfit, any_order_range, json_text, key_column};
use crate::keys::Key;
use crate::schema::{ColumnType, TableSchema};

/// Maps the batch's columns onto the columns of `schema`, keyed by the field
/// `key` (its column must exist), the fields in `declared` read by the source
/// as JSON. `Err` when the batch does not fit (see the module docs).
pub(crate) fn decode(
    schema: &TableSchema,
    key: Option<&str>,
    rows: &ColumnRows,
    declared: Option<&JsonFields>,
) -> Result<Decoded, Unfit> {
    let key_column = key_column(schema, key)?;
    let json_text = schema.json_nulls(declared);
    let types: Vec<DataType> = schema
        .columns
        .iter()
        .map(|(_, ty)| arrow_type(ty))
        .collect();
    let fields: Vec<Field> = schema
        .columns
        .iter()
        .zip(&types)
        .map(|((name, _), ty)| Field::new(name, ty.clone(), true))
        .collect();
    let table = Arc::new(Schema::new(fields));
    let mut keys: Vec<ArrayRef> = Vec::new();
    let mut largest = 0;
    let mut bytes = 0;
    let mut chunks = Vec::new();
    for batch in rows.chunks() {
        let len = batch.num_rows();
        let mut arrays: Vec<Option<ArrayRef>> = vec![None; schema.columns.len()];
        for (field, array) in batch.schema().fields().iter().zip(batch.columns()) {
            let name = field.name();
            let idx = schema
                .column_of(name)
                .ok_or_else(|| Unfit::NewField(name.clone()))?;
            if arrays[idx].is_some() {
                return Err(Unfit::Other(format!("two fields for column {idx}")));
            }
            let is_json = declared.is_some_and(|d| d.contains(name));
            if is_json && (!json_text[idx] || Some(idx) == key_column) {
                return Err(Unfit::Other(format!(
                    "field {name} is declared JSON, its column is {}",
                    schema.columns[idx].1.sql()
                )));
            }
            let mapped = column(array, &schema.columns[idx].1, is_json).ok_or_else(|| {
                Unfit::Other(format!(
                    "field {name} ({}) does not go into its column as it is ({})",
                    array.data_type(),
                    schema.columns[idx].1.sql()
                ))
            })?;
            if let Some(text) = mapped.as_any().downcast_ref::<StringArray>() {
                largest = largest.max(longest(text));
            }
            if Some(idx) == key_column {
                keys.push(mapped.clone());
            }
            arrays[idx] = Some(mapped);
        }
        if let Some(idx) = key_column
            && arrays[idx].is_none()
        {
            return Err(Unfit::Other("a record has no key".to_owned()));
        }
        let arrays: Vec<ArrayRef> = arrays
            .into_iter()
            .zip(&types)
            .map(|(array, ty)| array.unwrap_or_else(|| new_null_array(ty, len)))
            .collect();
        let whole = RecordBatch::try_new(table.clone(), arrays)
            .map_err(|e| Unfit::Other(format!("cannot build the batch's columns: {e}")))?;
        bytes += whole.get_array_memory_size();
        let mut at = 0;
        while at < len {
            let n = (len - at).min(CHUNK_ROWS);
            chunks.push(whole.slice(at, n));
            at += n;
        }
    }
    let range = if key_column.is_some() {
        key_range(&keys)?
    } else {
        None
    };
    Ok(Decoded {
        chunks,
        rows: rows.len(),
        range,
        largest,
        bytes,
        schema: None,
    })
}

/// `array` as the values of a column of type `ty` (of a field declared JSON:
/// `json`), when the column holds them as the record path stores them.
fn column(array: &ArrayRef, ty: &ColumnType, json: bool) -> Option<ArrayRef> {
    Some(match (array.data_type(), ty) {
        (DataType::Utf8, ColumnType::Json) if json => canonical_json(array)?,
        _ if json => return None,
        (DataType::Utf8, ColumnType::Varchar | ColumnType::Other(_))
        | (DataType::Int64, ColumnType::BigInt)
        | (DataType::Boolean, ColumnType::Boolean)
        | (DataType::Date32, ColumnType::Date)
        | (DataType::Timestamp(TimeUnit::Microsecond, None), ColumnType::Timestamp) => {
            array.clone()
        }
        (DataType::Timestamp(TimeUnit::Microsecond, Some(zone)), ColumnType::TimestampTz)
            if zone.as_ref() == UTC =>
        {
            array.clone()
        }
        (DataType::Float64, ColumnType::Double) => {
            let values = array.as_any().downcast_ref::<Float64Array>()?;
            if values
                .iter()
                .flatten()
                .any(|v| v == 0.0 && v.is_sign_negative())
            {
                let zeros: Float64Array = values
                    .iter()
                    .map(|v| v.map(|v| if v == 0.0 { 0.0 } else { v }))
                    .collect();
                Arc::new(zeros)
            } else {
                array.clone()
            }
        }
        (DataType::Decimal128(p, s), ColumnType::Decimal(q, t)) if s == &(*t as i8) && p <= q => {
            let values = array.as_any().downcast_ref::<Decimal128Array>()?;
            Arc::new(values.clone().with_precision_and_scale(*q, *s).ok()?)
        }
        _ => return None,
    })
}

/// A declared JSON field's texts as the record path stores them (see
/// [`json_text`]); the array as it is when every text is so already.
fn canonical_json(array: &ArrayRef) -> Option<ArrayRef> {
    let texts = array.as_any().downcast_ref::<StringArray>()?;
    let mut stored = Vec::with_capacity(texts.len());
    let mut changed = false;
    for text in texts {
        let text = match text {
            Some(t) => Some(json_text(t)?),
            None => None,
        };
        changed |= matches!(text, Some(std::borrow::Cow::Owned(_)));
        stored.push(text);
    }
    if !changed {
        return Some(array.clone());
    }
    let mut out = StringBuilder::with_capacity(texts.len(), texts.value_data().len());
    for text in stored {
        out.append_option(text);
    }
    Some(Arc::new(out.finish()))
}

/// The longest text of `texts`, in bytes.
fn longest(texts: &StringArray) -> usize {
    texts
        .offsets()
        .windows(2)
        .map(|w| (w[1] - w[0]) as usize)
        .max()
        .unwrap_or(0)
}

/// A batch's keys, chunk by chunk: integers or strings, none null.
enum Keys<'a> {
    Ints(Vec<&'a Int64Array>),
    Texts(Vec<&'a StringArray>),
}

impl<'a> Keys<'a> {
    fn of(arrays: &'a [ArrayRef]) -> Result<Self, Unfit> {
        if arrays.iter().any(|a| a.null_count() > 0) {
            return Err(Unfit::Other("a record has no key".to_owned()));
        }
        let ints: Option<Vec<_>> = arrays
            .iter()
            .map(|a| a.as_any().downcast_ref::<Int64Array>())
            .collect();
        let texts: Option<Vec<_>> = arrays
            .iter()
            .map(|a| a.as_any().downcast_ref::<StringArray>())
            .collect();
        match (ints, texts) {
            (Some(ints), _) => Ok(Keys::Ints(ints)),
            (None, Some(texts)) => Ok(Keys::Texts(texts)),
            (None, None) => Err(Unfit::Other(
                "keys that are not all integers or all strings".to_owned(),
            )),
        }
    }

    /// Whether each key is greater than the one before (compared in place:
    /// no key is copied).
    fn increase(&self) -> bool {
        fn strictly<T: PartialOrd>(mut values: impl Iterator<Item = T>) -> bool {
            let Some(mut last) = values.next() else {
                return true;
            };
            values.all(|v| {
                let up = last < v;
                last = v;
                up
            })
        }
        match self {
            Keys::Ints(arrays) => strictly(arrays.iter().flat_map(|a| a.values().iter())),
            Keys::Texts(arrays) => strictly(arrays.iter().flat_map(|a| a.iter().flatten())),
        }
    }

    fn first(&self) -> Option<Key> {
        match self {
            Keys::Ints(a) => a
                .iter()
                .find_map(|a| a.values().first())
                .map(|v| Key::Int(*v)),
            Keys::Texts(a) => a
                .iter()
                .find(|a| !a.is_empty())
                .map(|a| Key::Text(a.value(0).to_owned())),
        }
    }

    fn last(&self) -> Option<Key> {
        match self {
            Keys::Ints(a) => a
                .iter()
                .rev()
                .find_map(|a| a.values().last())
                .map(|v| Key::Int(*v)),
            Keys::Texts(a) => a
                .iter()
                .rev()
                .find(|a| !a.is_empty())
                .map(|a| Key::Text(a.value(a.len() - 1).to_owned())),
        }
    }

    /// Every key, in order.
    fn all(&self) -> Vec<Key> {
        match self {
            Keys::Ints(arrays) => arrays
                .iter()
                .flat_map(|a| a.values().iter().map(|v| Key::Int(*v)))
                .collect(),
            Keys::Texts(arrays) => arrays
                .iter()
                .flat_map(|a| a.iter().flatten().map(|t| Key::Text(t.to_owned())))
                .collect(),
        }
    }
}

/// The lowest and highest key of a batch's key column (`arrays`, chunk by
/// chunk); `Unfit` when one is missing or there twice, or they are not all
/// integers or all strings. Keys that increase are compared in place; only
/// keys in another order are all copied and sorted.
fn key_range(arrays: &[ArrayRef]) -> Result<Option<(Key, Key)>, Unfit> {
    let keys = Keys::of(arrays)?;
    if keys.increase() {
        return Ok(keys.first().zip(keys.last()));
    }
    any_order_range(keys.all())
}

/// Whether every row of `rows` has the field `key`, an integer or a string,
/// each greater than the one before.
pub(crate) fn keys_increase(rows: &ColumnRows, key: &str) -> bool {
    let Some(arrays) = rows
        .chunks()
        .map(|batch| batch.column_by_name(key).cloned())
        .collect::<Option<Vec<_>>>()
    else {
        return false;
    };
    Keys::of(&arrays).is_ok_and(|keys| keys.increase())
}
