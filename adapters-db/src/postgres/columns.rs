//! PostgreSQL rows straight into Arrow columns, for a read whose sink takes
//! them ([`ReadRequest::columns`](sluicegate_core::ReadRequest::columns)):
//! no JSON text is written for the sink to parse again.
//!
//! A query goes into columns when every column it returns has one of these
//! types; any other query's rows travel as JSON text, as before:
//!
//! | PostgreSQL | Arrow |
//! |---|---|
//! | `boolean` | `Boolean` |
//! | `smallint`, `integer`, `bigint` | `Int64` |
//! | `text`, `varchar`, `char(n)`, `name` | `Utf8` |
//! | `numeric(p,s)` that a sink stores as `DECIMAL` (see [`FieldType`]) | `Decimal128(p,s)` |
//! | any other `numeric` | `Utf8`: its text |
//! | `date` | `Date32` |
//! | `timestamp`, `timestamptz` | `Timestamp(µs)`, `Timestamp(µs, UTC)` |
//! | `uuid` | `Utf8`: its text |
//! | `double precision` | `Float64` |
//! | `json`, `jsonb` | `Utf8`: the JSON text without whitespace (declared JSON) |
//!
//! A row with a value that its column's Arrow type does not hold as the JSON
//! text would carry it (a NaN or infinite double or numeric, an infinite date
//! or timestamp, a year outside 1 to 9999, a numeric of another scale than its
//! column's) goes on as a record, after the columns before it. The records
//! made from the columns ([`PgDecoder`], for a sink that needs records after
//! all) are exactly those [`decode_row`](super::decode_row) makes from the same
//! rows.

use std::sync::Arc;

use arrow_array::builder::{
    BooleanBuilder, Date32Builder, Decimal128Builder, Float64Builder, Int64Builder, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow_array::{
    Array, ArrayRef, BooleanArray, Date32Array, Decimal128Array, Float64Array, Int64Array,
    RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use postgres_protocol::types as wire;
use serde_json::{Map, Number, Value};
use sluicegate_core::{ColumnDecoder, ColumnRows, Error, ErrorKind, FieldType, Record, Result};
use tokio_postgres::types::{Kind, Type};
use tokio_postgres::{Column, Row};

use super::values::{
    Raw, civil, compact_json, field_type, text, write_date, write_numeric, write_timestamp,
    write_uuid,
};

/// Days from 1970-01-01 to 2000-01-01, PostgreSQL's epoch.
const EPOCH_DAYS: i32 = 10_957;
/// Microseconds from 1970-01-01 to 2000-01-01.
const EPOCH_MICROS: i64 = 946_684_800_000_000;
const DAY_MICROS: i64 = 86_400_000_000;
/// Bytes of values gathered before the columns are handed on, whatever the
/// rows and the batch's limit: the arrays being filled are held besides the
/// budget's lease.
const MAX_BYTES: usize = 1 << 20;

/// How a column's values are held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ColumnKind {
    Bool,
    Int2,
    Int4,
    Int8,
    Text,
    Decimal { precision: u8, scale: u8 },
    NumericText,
    Date,
    Timestamp,
    TimestampTz,
    Uuid,
    Float8,
    Json,
    Jsonb,
}

impl ColumnKind {
    /// The kind for a column of type `ty` with type modifier `modifier`, if
    /// it has one (see the module docs).
    fn of(ty: &Type, modifier: i32) -> Option<Self> {
        if !matches!(ty.kind(), Kind::Simple) {
            return None;
        }
        Some(match *ty {
            Type::BOOL => Self::Bool,
            Type::INT2 => Self::Int2,
            Type::INT4 => Self::Int4,
            Type::INT8 => Self::Int8,
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => Self::Text,
            // The sink's DECIMAL columns (`typed::column_type`): scale below
            // the precision up to 38 digits, or equal to it below 38.
            Type::NUMERIC => match field_type(ty, modifier) {
                Some(FieldType::Decimal { precision, scale })
                    if (scale < precision && precision <= 38)
                        || (scale == precision && precision < 38) =>
                {
                    Self::Decimal {
                        precision: precision as u8,
                        scale: scale as u8,
                    }
                }
                _ => Self::NumericText,
            },
            Type::DATE => Self::Date,
            Type::TIMESTAMP => Self::Timestamp,
            Type::TIMESTAMPTZ => Self::TimestampTz,
            Type::UUID => Self::Uuid,
            Type::FLOAT8 => Self::Float8,
            Type::JSON => Self::Json,
            Type::JSONB => Self::Jsonb,
            _ => return None,
        })
    }

    fn data_type(self) -> DataType {
        match self {
            Self::Bool => DataType::Boolean,
            Self::Int2 | Self::Int4 | Self::Int8 => DataType::Int64,
            Self::Text | Self::NumericText | Self::Uuid | Self::Json | Self::Jsonb => {
                DataType::Utf8
            }
            Self::Decimal { precision, scale } => DataType::Decimal128(precision, scale as i8),
            Self::Date => DataType::Date32,
            Self::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
            Self::TimestampTz => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            Self::Float8 => DataType::Float64,
        }
    }

    fn is_json(self) -> bool {
        matches!(self, Self::Json | Self::Jsonb)
    }

    fn builder(self, rows: usize) -> Builder {
        match self {
            Self::Bool => Builder::Bool(BooleanBuilder::with_capacity(rows)),
            Self::Int2 | Self::Int4 | Self::Int8 => Builder::Int(Int64Builder::with_capacity(rows)),
            Self::Text | Self::NumericText | Self::Uuid | Self::Json | Self::Jsonb => {
                Builder::Text(StringBuilder::with_capacity(rows, rows * 16))
            }
            Self::Decimal { precision, scale } => Builder::Decimal(
                Decimal128Builder::with_capacity(rows)
                    .with_precision_and_scale(precision, scale as i8)
                    .expect("precision 1..=38, scale at most the precision"),
            ),
            Self::Date => Builder::Date(Date32Builder::with_capacity(rows)),
            Self::Timestamp => Builder::Micros(TimestampMicrosecondBuilder::with_capacity(rows)),
            Self::TimestampTz => Builder::Micros(
                TimestampMicrosecondBuilder::with_capacity(rows).with_timezone("UTC"),
            ),
            Self::Float8 => Builder::Double(Float64Builder::with_capacity(rows)),
        }
    }
}

/// One column being filled.
enum Builder {
    Bool(BooleanBuilder),
    Int(Int64Builder),
    Text(StringBuilder),
    Decimal(Decimal128Builder),
    Date(Date32Builder),
    Micros(TimestampMicrosecondBuilder),
    Double(Float64Builder),
}

impl Builder {
    fn finish(&mut self) -> ArrayRef {
        match self {
            Builder::Bool(b) => Arc::new(b.finish()),
            Builder::Int(b) => Arc::new(b.finish()),
            Builder::Text(b) => Arc::new(b.finish()),
            Builder::Decimal(b) => Arc::new(b.finish()),
            Builder::Date(b) => Arc::new(b.finish()),
            Builder::Micros(b) => Arc::new(b.finish()),
            Builder::Double(b) => Arc::new(b.finish()),
        }
    }
}

/// One value converted, before it is appended (a row goes in whole or not).
#[derive(Clone, Copy)]
enum Val {
    Null,
    Bool(bool),
    Int(i64),
    Decimal(i128),
    Days(i32),
    Micros(i64),
    Double(f64),
    /// Text in the row's scratch buffer.
    Text(usize, usize),
}

/// A query's rows gathered into Arrow columns.
pub(crate) struct PgColumns {
    kinds: Vec<ColumnKind>,
    schema: SchemaRef,
    decoder: Arc<PgDecoder>,
    /// Columns whose values the positions record: never NULL in a row that
    /// goes into columns (the record path reports that).
    tracked: Vec<usize>,
    builders: Vec<Builder>,
    rows: usize,
    bytes: usize,
    capacity: usize,
    max_bytes: usize,
    vals: Vec<Val>,
    scratch: String,
    buf: Vec<u8>,
}

impl PgColumns {
    /// Columns for a query returning `columns` (with their names), when every
    /// column has a type that goes into columns; `tracked` are the indexes of
    /// the columns the positions record. `capacity`: rows per array;
    /// `batch_bytes`: the bytes a batch may hold (the arrays are handed on at
    /// half of it, or 1 MiB: a growing array's buffers are up to twice its
    /// values).
    pub(crate) fn new(
        columns: &[Column],
        names: &[String],
        tracked: Vec<usize>,
        (capacity, batch_bytes): (usize, usize),
    ) -> Option<Self> {
        let kinds = columns
            .iter()
            .map(|c| ColumnKind::of(c.type_(), c.type_modifier()))
            .collect::<Option<Vec<_>>>()?;
        let fields: Vec<Field> = names
            .iter()
            .zip(&kinds)
            .map(|(name, kind)| Field::new(name, kind.data_type(), true))
            .collect();
        let capacity = capacity.clamp(1, 4096);
        Some(Self {
            builders: kinds.iter().map(|k| k.builder(capacity)).collect(),
            schema: Arc::new(Schema::new(fields)),
            decoder: Arc::new(PgDecoder {
                names: names.to_vec(),
                kinds: kinds.clone(),
            }),
            kinds,
            tracked,
            rows: 0,
            bytes: 0,
            capacity,
            max_bytes: (batch_bytes / 2).clamp(1, MAX_BYTES),
            vals: Vec::new(),
            scratch: String::new(),
            buf: Vec::new(),
        })
    }

    /// Adds `row`; `false` (nothing added) when a value does not go into its
    /// column (see the module docs), a tracked column is NULL, or a value
    /// does not decode: the row then takes the record path, which reports
    /// what it must.
    pub(crate) fn push(&mut self, row: &Row) -> bool {
        self.vals.clear();
        self.scratch.clear();
        let mut bytes = 0;
        for (i, kind) in self.kinds.iter().enumerate() {
            let Ok(raw) = row.try_get::<_, Option<Raw<'_>>>(i) else {
                return false;
            };
            let val = match raw {
                None if self.tracked.contains(&i) => return false,
                None => Val::Null,
                Some(Raw(raw)) => {
                    bytes += raw.len();
                    match convert(*kind, raw, &mut self.scratch, &mut self.buf) {
                        Some(val) => val,
                        None => return false,
                    }
                }
            };
            self.vals.push(val);
        }
        for (builder, val) in self.builders.iter_mut().zip(&self.vals) {
            append(builder, *val, &self.scratch);
        }
        self.rows += 1;
        self.bytes += bytes + 8 * self.kinds.len();
        true
    }

    /// Whether the rows gathered are as many as an array holds, or their
    /// values' bytes are over the most held besides the lease.
    pub(crate) fn is_full(&self) -> bool {
        self.rows >= self.capacity || self.bytes >= self.max_bytes
    }

    /// The rows gathered, as columns (`None`: there are none); the builders
    /// start over.
    pub(crate) fn take(&mut self) -> Result<Option<ColumnRows>> {
        if self.rows == 0 {
            return Ok(None);
        }
        let arrays: Vec<ArrayRef> = self.builders.iter_mut().map(Builder::finish).collect();
        self.rows = 0;
        self.bytes = 0;
        let batch = RecordBatch::try_new(self.schema.clone(), arrays).map_err(|e| {
            Error::new(
                ErrorKind::Decode,
                format!("cannot build the rows' columns: {e}"),
            )
        })?;
        Ok(Some(ColumnRows::new(batch, self.decoder.clone())))
    }
}

/// A value's binary form converted for a column of `kind` (text into
/// `scratch`, through `buf`); `None` when the column's type does not hold it
/// or it does not decode.
fn convert(kind: ColumnKind, raw: &[u8], scratch: &mut String, buf: &mut Vec<u8>) -> Option<Val> {
    let text = |scratch: &mut String, s: &str| {
        let start = scratch.len();
        scratch.push_str(s);
        Val::Text(start, scratch.len())
    };
    Some(match kind {
        ColumnKind::Bool => Val::Bool(wire::bool_from_sql(raw).ok()?),
        ColumnKind::Int2 => Val::Int(i64::from(wire::int2_from_sql(raw).ok()?)),
        ColumnKind::Int4 => Val::Int(i64::from(wire::int4_from_sql(raw).ok()?)),
        ColumnKind::Int8 => Val::Int(wire::int8_from_sql(raw).ok()?),
        ColumnKind::Text => text(scratch, wire::text_from_sql(raw).ok()?),
        ColumnKind::Decimal { precision, scale } => {
            Val::Decimal(decimal_of(raw, precision, scale)?)
        }
        ColumnKind::NumericText | ColumnKind::Uuid | ColumnKind::Json | ColumnKind::Jsonb => {
            buf.clear();
            match kind {
                ColumnKind::NumericText => write_numeric(raw, buf).ok()?,
                ColumnKind::Uuid => write_uuid(wire::uuid_from_sql(raw).ok()?, buf),
                ColumnKind::Json => compact_json(raw, buf),
                _ => match raw.split_first() {
                    Some((1, body)) => compact_json(body, buf),
                    _ => return None,
                },
            }
            text(scratch, std::str::from_utf8(buf).ok()?)
        }
        ColumnKind::Date => {
            let days = wire::date_from_sql(raw).ok()?;
            if !(1..=9999).contains(&civil(i64::from(days)).0) {
                return None;
            }
            Val::Days(days.checked_add(EPOCH_DAYS)?)
        }
        ColumnKind::Timestamp | ColumnKind::TimestampTz => {
            let micros = wire::timestamp_from_sql(raw).ok()?;
            if matches!(micros, i64::MIN | i64::MAX)
                || !(1..=9999).contains(&civil(micros.div_euclid(DAY_MICROS)).0)
            {
                return None;
            }
            Val::Micros(micros.checked_add(EPOCH_MICROS)?)
        }
        ColumnKind::Float8 => {
            let v = wire::float8_from_sql(raw).ok()?;
            if !v.is_finite() {
                return None;
            }
            Val::Double(v)
        }
    })
}

fn append(builder: &mut Builder, val: Val, scratch: &str) {
    match (builder, val) {
        (Builder::Bool(b), Val::Null) => b.append_null(),
        (Builder::Int(b), Val::Null) => b.append_null(),
        (Builder::Text(b), Val::Null) => b.append_null(),
        (Builder::Decimal(b), Val::Null) => b.append_null(),
        (Builder::Date(b), Val::Null) => b.append_null(),
        (Builder::Micros(b), Val::Null) => b.append_null(),
        (Builder::Double(b), Val::Null) => b.append_null(),
        (Builder::Bool(b), Val::Bool(v)) => b.append_value(v),
        (Builder::Int(b), Val::Int(v)) => b.append_value(v),
        (Builder::Text(b), Val::Text(start, end)) => b.append_value(&scratch[start..end]),
        (Builder::Decimal(b), Val::Decimal(v)) => b.append_value(v),
        (Builder::Date(b), Val::Days(v)) => b.append_value(v),
        (Builder::Micros(b), Val::Micros(v)) => b.append_value(v),
        (Builder::Double(b), Val::Double(v)) => b.append_value(v),
        _ => unreachable!("each kind converts into its builder's values"),
    }
}

/// A `numeric`'s binary form as the digits of a `DECIMAL(precision, scale)`
/// (its value times 10^scale), when it is a number of exactly that scale
/// whose digits fit the precision and not a negative zero (whose text,
/// `-0.00`, no `DECIMAL` keeps).
fn decimal_of(raw: &[u8], precision: u8, scale: u8) -> Option<i128> {
    let word = |i: usize| raw.get(i..i + 2).map(|b| i16::from_be_bytes([b[0], b[1]]));
    let ndigits = usize::try_from(word(0)?).ok()?;
    let weight = i32::from(word(2)?);
    let sign = word(4)? as u16;
    let dscale = word(6)? as u16;
    if !matches!(sign, 0x0000 | 0x4000) || dscale != u16::from(scale) {
        return None;
    }
    let mut value: i128 = 0;
    for k in 0..ndigits {
        let at = 8 + 2 * k;
        let d = raw
            .get(at..at + 2)
            .map(|b| i16::from_be_bytes([b[0], b[1]]))?;
        if !(0..10_000).contains(&d) {
            return None;
        }
        let d = i128::from(d);
        let exponent = 4 * (weight - k as i32) + i32::from(scale);
        if exponent >= 0 {
            let place = 10i128.checked_pow(u32::try_from(exponent).ok()?)?;
            value = value.checked_add(d.checked_mul(place)?)?;
        } else if exponent > -4 {
            let place = 10i128.pow(exponent.unsigned_abs());
            if d % place != 0 {
                return None;
            }
            value += d / place;
        } else if d != 0 {
            return None;
        }
    }
    if value >= 10i128.pow(u32::from(precision)) {
        return None;
    }
    match sign {
        0x4000 if value == 0 => None,
        0x4000 => Some(-value),
        _ => Some(value),
    }
}

/// A `DECIMAL`'s digits as `numeric`'s text with `scale` fractional digits
/// (what [`write_numeric`] writes for the same number).
fn decimal_text(value: i128, scale: u8) -> String {
    let digits = value.unsigned_abs().to_string();
    let scale = usize::from(scale);
    let mut out = String::with_capacity(digits.len() + 3);
    if value < 0 {
        out.push('-');
    }
    if scale == 0 {
        out.push_str(&digits);
    } else if digits.len() > scale {
        let (whole, fraction) = digits.split_at(digits.len() - scale);
        out.push_str(whole);
        out.push('.');
        out.push_str(fraction);
    } else {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', scale - digits.len()));
        out.push_str(&digits);
    }
    out
}

/// The records of a query's columns, as [`decode_row`](super::decode_row)
/// makes them from the same rows.
#[derive(Debug)]
pub(crate) struct PgDecoder {
    names: Vec<String>,
    kinds: Vec<ColumnKind>,
}

impl ColumnDecoder for PgDecoder {
    fn records(&self, batch: &RecordBatch) -> Result<Vec<Record>> {
        let mut records = vec![Map::with_capacity(self.names.len()); batch.num_rows()];
        for (i, (name, kind)) in self.names.iter().zip(&self.kinds).enumerate() {
            let column = batch.column(i);
            for (row, record) in records.iter_mut().enumerate() {
                if column.is_null(row) {
                    // SQL NULL in a JSON column is a field left out.
                    if !kind.is_json() {
                        record.insert(name.clone(), Value::Null);
                    }
                    continue;
                }
                let value = value_at(*kind, column.as_ref(), row).ok_or_else(|| {
                    Error::new(
                        ErrorKind::Decode,
                        format!("column {name} of row {} does not decode", row + 1),
                    )
                })?;
                record.insert(name.clone(), value);
            }
        }
        Ok(records)
    }
}

/// The value at `row` (not null) of a column of `kind`.
fn value_at(kind: ColumnKind, column: &dyn Array, row: usize) -> Option<Value> {
    let any = column.as_any();
    Some(match kind {
        ColumnKind::Bool => Value::Bool(any.downcast_ref::<BooleanArray>()?.value(row)),
        ColumnKind::Int2 | ColumnKind::Int4 | ColumnKind::Int8 => {
            Value::from(any.downcast_ref::<Int64Array>()?.value(row))
        }
        ColumnKind::Text | ColumnKind::NumericText | ColumnKind::Uuid => {
            Value::String(any.downcast_ref::<StringArray>()?.value(row).to_owned())
        }
        ColumnKind::Json | ColumnKind::Jsonb => {
            serde_json::from_str(any.downcast_ref::<StringArray>()?.value(row)).ok()?
        }
        ColumnKind::Decimal { scale, .. } => Value::String(decimal_text(
            any.downcast_ref::<Decimal128Array>()?.value(row),
            scale,
        )),
        ColumnKind::Date => {
            let days = any.downcast_ref::<Date32Array>()?.value(row) - EPOCH_DAYS;
            Value::String(text(|out| write_date(days, out)))
        }
        ColumnKind::Timestamp | ColumnKind::TimestampTz => {
            let micros = any.downcast_ref::<TimestampMicrosecondArray>()?.value(row) - EPOCH_MICROS;
            let zone: &[u8] = if kind == ColumnKind::TimestampTz {
                b"Z"
            } else {
                b""
            };
            Value::String(text(|out| write_timestamp(micros, zone, out)))
        }
        ColumnKind::Float8 => Value::Number(Number::from_f64(
            any.downcast_ref::<Float64Array>()?.value(row),
        )?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric_bytes(weight: i16, negative: bool, dscale: u16, digits: &[i16]) -> Vec<u8> {
        let mut b = Vec::new();
        let sign: u16 = if negative { 0x4000 } else { 0 };
        for w in [digits.len() as i16, weight, sign as i16, dscale as i16] {
            b.extend_from_slice(&w.to_be_bytes());
        }
        for d in digits {
            b.extend_from_slice(&d.to_be_bytes());
        }
        b
    }

    fn written(raw: &[u8]) -> String {
        let mut out = Vec::new();
        write_numeric(raw, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn decimals_are_the_numbers_numeric_text_writes() {
        let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let mut checked = 0;
        for _ in 0..20_000 {
            let scale = next(12) as u8;
            let precision = (scale + 1 + next(20) as u8).min(38);
            let ndigits = next(8) as usize;
            let mut weight = next(8) as i16 - 4;
            let mut digits: Vec<i16> = (0..ndigits).map(|_| next(10_000) as i16).collect();
            // PostgreSQL sends no zero digit first or last, and zero as no
            // digits of weight 0.
            if digits.first() == Some(&0) || digits.last() == Some(&0) {
                digits.retain(|d| *d != 0);
            }
            if digits.is_empty() {
                weight = 0;
            }
            let negative = next(2) == 1;
            let raw = numeric_bytes(weight, negative, u16::from(scale), &digits);
            let text = written(&raw);
            match decimal_of(&raw, precision, scale) {
                Some(v) => {
                    checked += 1;
                    assert_eq!(decimal_text(v, scale), text, "{digits:?} weight {weight}");
                    let whole = text.trim_start_matches('-').replace('.', "");
                    assert!(whole.trim_start_matches('0').len() <= usize::from(precision));
                }
                None => {
                    // Refused only for too many digits, digits past the
                    // scale, or a negative zero.
                    let fraction = text.split('.').nth(1).unwrap_or("");
                    let whole = text.trim_start_matches('-').split('.').next().unwrap();
                    let significant = whole.trim_start_matches('0').len() + fraction.len();
                    let past_scale = digits.iter().enumerate().any(|(k, d)| {
                        let e = 4 * (i32::from(weight) - k as i32) + i32::from(scale);
                        e < 0 && *d as i32 % 10i32.pow(e.unsigned_abs().min(4)) != 0
                    });
                    assert!(
                        significant > usize::from(precision)
                            || past_scale
                            || text.starts_with("-0")
                                && text.trim_matches(['-', '0', '.']).is_empty(),
                        "{text} refused for DECIMAL({precision},{scale})"
                    );
                }
            }
        }
        assert!(checked > 3_000, "{checked}");
        // Special values and another scale are refused.
        assert_eq!(decimal_of(&[0, 0, 0, 0, 0xC0, 0, 0, 2], 10, 2), None);
        assert_eq!(decimal_of(&numeric_bytes(0, false, 3, &[5]), 10, 2), None);
        assert_eq!(decimal_text(-5, 2), "-0.05");
        assert_eq!(decimal_text(0, 0), "0");
    }
}
