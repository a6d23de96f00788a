//! Records into columns: each write becomes Arrow record batches of
//! [`CHUNK_ROWS`] records, a column per table column typed by the table's
//! schema, which DuckDB's appender takes whole instead of value by value.

use std::sync::Arc;

use duckdb::arrow::array::{
    ArrayRef, BooleanBuilder, Date32Builder, Decimal128Builder, Float64Builder, Int64Builder,
    StringBuilder, TimestampMicrosecondBuilder,
};
use duckdb::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use duckdb::arrow::record_batch::RecordBatch;
use serde_json::{Map, Value};
use sluicegate_core::{Error, ErrorKind, JsonFields, Record, Result};

use crate::schema::{Cell, ColumnType, FieldCache, TableSchema, cell};
use crate::typed::Typed;

/// The zone of `TIMESTAMPTZ` columns' Arrow type.
pub(crate) const UTC: &str = "UTC";

/// Records per record batch: DuckDB's vector size, so each batch is one of
/// the appender's chunks and the columns never hold more than that beside the
/// records.
pub(crate) const CHUNK_ROWS: usize = 2048;

/// The Arrow type of the columns [`Column::for_type`] fills for a table
/// column of type `ty`.
pub(crate) fn arrow_type(ty: &ColumnType) -> DataType {
    match ty {
        ColumnType::Boolean => DataType::Boolean,
        ColumnType::BigInt => DataType::Int64,
        ColumnType::Double => DataType::Float64,
        ColumnType::Decimal(p, s) => DataType::Decimal128(*p, *s as i8),
        ColumnType::Date => DataType::Date32,
        ColumnType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
        ColumnType::TimestampTz => DataType::Timestamp(TimeUnit::Microsecond, Some(UTC.into())),
        ColumnType::HugeInt | ColumnType::Varchar | ColumnType::Json | ColumnType::Other(_) => {
            DataType::Utf8
        }
    }
}

/// One column being filled.
pub(crate) enum Column {
    Bool(BooleanBuilder),
    Int(Int64Builder),
    Double(Float64Builder),
    /// Text, JSON text, `HUGEINT` digits (Arrow has no 128-bit integer; DuckDB
    /// casts the digits exactly) and columns of types the sink did not create.
    Text(StringBuilder),
    /// `DECIMAL(p,s)`: the digits scaled by `s`.
    Decimal(Decimal128Builder),
    Date(Date32Builder),
    /// `TIMESTAMP`, or `TIMESTAMPTZ` (with the UTC zone).
    Micros(TimestampMicrosecondBuilder),
}

impl Column {
    pub(crate) fn for_type(ty: &ColumnType, rows: usize) -> Self {
        match ty {
            ColumnType::Boolean => Column::Bool(BooleanBuilder::with_capacity(rows)),
            ColumnType::BigInt => Column::Int(Int64Builder::with_capacity(rows)),
            ColumnType::Double => Column::Double(Float64Builder::with_capacity(rows)),
            ColumnType::Decimal(p, s) => Column::Decimal(
                Decimal128Builder::with_capacity(rows)
                    .with_precision_and_scale(*p, *s as i8)
                    .expect("precision 1..=38, scale at most the precision"),
            ),
            ColumnType::Date => Column::Date(Date32Builder::with_capacity(rows)),
            ColumnType::Timestamp => {
                Column::Micros(TimestampMicrosecondBuilder::with_capacity(rows))
            }
            ColumnType::TimestampTz => {
                Column::Micros(TimestampMicrosecondBuilder::with_capacity(rows).with_timezone(UTC))
            }
            ColumnType::HugeInt | ColumnType::Varchar | ColumnType::Json | ColumnType::Other(_) => {
                // No room for text ahead: a sparse column holds only offsets.
                Column::Text(StringBuilder::with_capacity(rows, 0))
            }
        }
    }

    /// Adds a cell; `false` when it does not fit the column (the schema was
    /// widened for every value of the batch, so this is a bug).
    pub(crate) fn push(&mut self, cell: &Cell<'_>) -> bool {
        match (self, cell) {
            (Column::Bool(b), Cell::Null) => b.append_null(),
            (Column::Int(b), Cell::Null) => b.append_null(),
            (Column::Double(b), Cell::Null) => b.append_null(),
            (Column::Text(b), Cell::Null) => b.append_null(),
            (Column::Decimal(b), Cell::Null) => b.append_null(),
            (Column::Date(b), Cell::Null) => b.append_null(),
            (Column::Micros(b), Cell::Null) => b.append_null(),
            (Column::Decimal(b), Cell::Typed(Typed::Decimal(v), _)) => b.append_value(*v),
            (Column::Date(b), Cell::Typed(Typed::Date(v), _)) => b.append_value(*v),
            (Column::Micros(b), Cell::Typed(Typed::Micros(v), _)) => b.append_value(*v),
            (Column::Bool(b), Cell::Bool(v)) => b.append_value(*v),
            (Column::Int(b), Cell::Int(v)) => b.append_value(*v),
            (Column::Double(b), Cell::Double(v)) => b.append_value(*v),
            (Column::Text(b), Cell::Text(s)) => b.append_value(s),
            (Column::Text(b), Cell::Owned(s)) => b.append_value(s),
            (Column::Text(b), Cell::Huge(v)) => b.append_value(v.to_string()),
            (Column::Text(b), Cell::Int(v)) => b.append_value(v.to_string()),
            _ => return false,
        }
        true
    }

    fn finish(self) -> ArrayRef {
        match self {
            Column::Bool(mut b) => Arc::new(b.finish()),
            Column::Int(mut b) => Arc::new(b.finish()),
            Column::Double(mut b) => Arc::new(b.finish()),
            Column::Text(mut b) => Arc::new(b.finish()),
            Column::Decimal(mut b) => Arc::new(b.finish()),
            Column::Date(mut b) => Arc::new(b.finish()),
            Column::Micros(mut b) => Arc::new(b.finish()),
        }
    }
}

/// The records as one record batch with a column per column of `schema` (in
/// its order; fields a record lacks are nulls). `json_nulls` marks the columns
/// where a null is the JSON text `null`; `declared` are the fields the source
/// declared JSON. Fields without a column go into the extra column, when the
/// table has one, as one JSON object per record (a null only when the field
/// is declared JSON).
pub(crate) fn record_batch(
    schema: &TableSchema,
    (json_nulls, declared): (&[bool], Option<&JsonFields>),
    records: &[Record],
) -> Result<RecordBatch> {
    let width = schema.columns.len();
    let mut columns: Vec<Column> = schema
        .columns
        .iter()
        .map(|(_, ty)| Column::for_type(ty, records.len()))
        .collect();
    let mut row: Vec<Cell<'_>> = Vec::with_capacity(width);
    let mut cache = FieldCache::default();
    let mut extra = Map::new();
    for record in records {
        row.clear();
        row.resize_with(width, || Cell::Null);
        for ((field, value), column) in record.iter().zip(cache.resolve(schema, record)) {
            if let Some(idx) = *column {
                row[idx] = if value.is_null() && json_nulls[idx] {
                    Cell::Text("null")
                } else {
                    cell(value, &schema.columns[idx].1)
                };
            } else if schema.extra().is_some()
                && (!value.is_null() || declared.is_some_and(|d| d.contains(field)))
            {
                extra.insert(field.clone(), value.clone());
            }
        }
        if let Some(idx) = schema.extra()
            && !extra.is_empty()
        {
            row[idx] = Cell::Owned(Value::Object(std::mem::take(&mut extra)).to_string());
        }
        for (idx, (value, column)) in row.iter().zip(&mut columns).enumerate() {
            if !column.push(value) {
                let (name, ty) = &schema.columns[idx];
                return Err(Error::new(
                    ErrorKind::Sink,
                    format!(
                        "a value of column {name} does not fit its type {} (a bug: the column was not widened)",
                        ty.sql()
                    ),
                ));
            }
        }
    }
    finish_batch(schema, columns)
}

/// The filled columns of `schema` as one record batch.
pub(crate) fn finish_batch(schema: &TableSchema, columns: Vec<Column>) -> Result<RecordBatch> {
    let arrays: Vec<ArrayRef> = columns.into_iter().map(Column::finish).collect();
    let fields: Vec<Field> = schema
        .columns
        .iter()
        .zip(&arrays)
        .map(|((name, _), array)| Field::new(name, array.data_type().clone(), true))
        .collect();
    RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).map_err(|e| {
        Error::new(
            ErrorKind::Sink,
            format!("cannot build the batch's columns: {e}"),
        )
    })
}
