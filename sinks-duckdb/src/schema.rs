//! Column types inferred from records, how they widen, and identifier quoting.

use std::borrow::Cow;
use std::collections::HashMap;

use duckdb::types::{ToSql, ToSqlOutput, ValueRef};
use serde_json::Value;
use sluicegate_core::{FieldTypes, JsonFields};

use crate::typed::{self, Typed};

/// The column types the sink creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ColumnType {
    Boolean,
    BigInt,
    HugeInt,
    Double,
    Varchar,
    /// Objects and lists, stored as JSON text.
    Json,
    /// `DECIMAL(precision, scale)`: a field declared decimal (see `typed`).
    Decimal(u8, u8),
    /// `DATE`: a field declared a date.
    Date,
    /// `TIMESTAMP`: a field declared a date and time without a zone.
    Timestamp,
    /// `TIMESTAMPTZ`: a field declared an instant.
    TimestampTz,
    /// A type the sink did not create (a table made by someone else); values are
    /// sent as text and DuckDB casts them.
    Other(String),
}

impl ColumnType {
    pub(crate) fn sql(&self) -> Cow<'_, str> {
        Cow::Borrowed(match self {
            ColumnType::Boolean => "BOOLEAN",
            ColumnType::BigInt => "BIGINT",
            ColumnType::HugeInt => "HUGEINT",
            ColumnType::Double => "DOUBLE",
            ColumnType::Varchar => "VARCHAR",
            ColumnType::Json => "JSON",
            ColumnType::Decimal(p, s) => return Cow::Owned(format!("DECIMAL({p},{s})")),
            ColumnType::Date => "DATE",
            ColumnType::Timestamp => "TIMESTAMP",
            ColumnType::TimestampTz => "TIMESTAMP WITH TIME ZONE",
            ColumnType::Other(t) => t,
        })
    }

    /// The type of a column as `information_schema.columns` names it.
    /// `DECIMAL`, `DATE` and the timestamps are [`ColumnType::Other`] here:
    /// they are typed only for fields a source declares so
    /// ([`TableSchema::adopt_declared`]).
    pub(crate) fn from_sql(name: &str) -> ColumnType {
        match name.to_ascii_uppercase().as_str() {
            "BOOLEAN" => ColumnType::Boolean,
            "BIGINT" => ColumnType::BigInt,
            "HUGEINT" => ColumnType::HugeInt,
            "DOUBLE" => ColumnType::Double,
            "VARCHAR" => ColumnType::Varchar,
            "JSON" => ColumnType::Json,
            _ => ColumnType::Other(name.to_owned()),
        }
    }

    /// The typed column a type name is (see `typed`), if any.
    fn typed_from_sql(name: &str) -> Option<ColumnType> {
        let upper = name.to_ascii_uppercase();
        match upper.as_str() {
            "DATE" => Some(ColumnType::Date),
            "TIMESTAMP" => Some(ColumnType::Timestamp),
            "TIMESTAMP WITH TIME ZONE" => Some(ColumnType::TimestampTz),
            other => {
                let (p, s) = other
                    .strip_prefix("DECIMAL(")?
                    .strip_suffix(')')?
                    .split_once(',')?;
                Some(ColumnType::Decimal(
                    p.trim().parse().ok()?,
                    s.trim().parse().ok()?,
                ))
            }
        }
    }

    /// Whether values go in only when they parse as the type (see `typed`).
    pub(crate) fn is_typed(&self) -> bool {
        matches!(
            self,
            ColumnType::Decimal(..)
                | ColumnType::Date
                | ColumnType::Timestamp
                | ColumnType::TimestampTz
        )
    }

    /// The type a JSON value asks for; `None` for null (no information).
    ///
    /// Numbers keep the exact text they had in the source (`serde_json`'s
    /// `arbitrary_precision`): an integer is `BIGINT` (64 bits), `HUGEINT` (128
    /// bits) or, beyond that, `VARCHAR` holding its digits; a number with a
    /// fraction or an exponent is `DOUBLE` (the correctly rounded double of its
    /// text), or `VARCHAR` holding its text when no double holds it (`1e400`).
    pub(crate) fn of(value: &Value) -> Option<ColumnType> {
        Some(match value {
            Value::Null => return None,
            Value::Bool(_) => ColumnType::Boolean,
            Value::Number(n) => number_kind(n).column_type(),
            Value::String(_) => ColumnType::Varchar,
            Value::Array(_) | Value::Object(_) => ColumnType::Json,
        })
    }

    /// The narrowest type holding both without loss.
    pub(crate) fn widen(&self, other: &ColumnType) -> ColumnType {
        use ColumnType::*;
        match (self, other) {
            (a, b) if a == b => a.clone(),
            (Other(t), _) | (_, Other(t)) => Other(t.clone()),
            // A value a typed column does not hold: its text (see `typed`).
            (a, b) if a.is_typed() || b.is_typed() => Varchar,
            (BigInt, HugeInt) | (HugeInt, BigInt) => HugeInt,
            (BigInt | HugeInt, Double) | (Double, BigInt | HugeInt) => Double,
            (Json, Boolean | BigInt | HugeInt | Double)
            | (Boolean | BigInt | HugeInt | Double, Json) => Json,
            _ => Varchar,
        }
    }
}

/// What a JSON number is, by its exact text.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum NumberKind {
    /// An integer within 64 bits.
    Int64(i64),
    /// An integer within 128 bits (beyond 64).
    Int128(i128),
    /// A number with a fraction or an exponent that a double holds.
    Float(f64),
    /// An integer beyond 128 bits, or a number beyond a double's range.
    Text,
}

/// The largest integer magnitude every neighbour of which a double holds
/// exactly (2^53): integers within it survive a column's widening to `DOUBLE`.
pub(crate) const DOUBLE_EXACT_INT: i128 = 1 << 53;

pub(crate) fn number_kind(n: &serde_json::Number) -> NumberKind {
    number_kind_text(n.as_str())
}

/// What a JSON number is, from its text (as `serde_json::Number` with
/// `arbitrary_precision` parses it: `as_i64`, `as_u64`, `as_f64`).
pub(crate) fn number_kind_text(text: &str) -> NumberKind {
    if let Ok(i) = text.parse::<i64>() {
        return NumberKind::Int64(i);
    }
    if let Ok(u) = text.parse::<u64>() {
        return NumberKind::Int128(i128::from(u));
    }
    if !text.contains(['.', 'e', 'E']) {
        return match text.parse::<i128>() {
            Ok(i) => NumberKind::Int128(i),
            Err(_) => NumberKind::Text,
        };
    }
    match text.parse::<f64>() {
        Ok(f) if f.is_finite() => NumberKind::Float(f),
        _ => NumberKind::Text,
    }
}

impl NumberKind {
    /// The column type a number of this kind asks for.
    pub(crate) fn column_type(self) -> ColumnType {
        match self {
            NumberKind::Int64(_) => ColumnType::BigInt,
            NumberKind::Int128(_) => ColumnType::HugeInt,
            NumberKind::Float(_) => ColumnType::Double,
            NumberKind::Text => ColumnType::Varchar,
        }
    }

    /// Whether a double holds this number exactly as the source wrote it, as
    /// far as a column's widening is concerned: floats (by rule) and integers
    /// within ±2^53.
    pub(crate) fn fits_double(self) -> bool {
        match self {
            NumberKind::Int64(i) => i.unsigned_abs() <= DOUBLE_EXACT_INT as u64,
            NumberKind::Int128(i) => i.unsigned_abs() <= DOUBLE_EXACT_INT as u128,
            NumberKind::Float(_) => true,
            NumberKind::Text => false,
        }
    }
}

/// Quotes an identifier for SQL: `"name"` with inner quotes doubled. Every table
/// and column name that reaches SQL goes through this.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The `JSON` column holding, as one object per row, the fields that arrived
/// after the table had its most columns (see [`TableSchema::set_max_columns`]).
pub(crate) const EXTRA: &str = "_extra";

/// A table's columns and how record fields map onto them.
///
/// DuckDB identifiers are case-insensitive even when quoted, so two fields that
/// differ only in case (`Id`, `id`) cannot both be columns named after them: the
/// second one gets a `_2` suffix (then `_3`, ...) instead of overwriting the first.
///
/// A table has at most `max_columns` columns of fields (the sink's
/// `maxColumns`; the key field's always counts among them): a field that
/// arrives once the table has them all gets no column, and its values go into
/// the [`EXTRA`] column instead, a JSON object of such fields per row.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct TableSchema {
    pub(crate) columns: Vec<(String, ColumnType)>,
    by_field: HashMap<String, usize>,
    lower_names: HashMap<String, usize>,
    /// The [`EXTRA`] column, once the table has it.
    extra: Option<usize>,
    /// The most columns of fields (`None`: no limit).
    max_columns: Option<usize>,
    /// The key field: it gets a column whatever the limit.
    key: Option<String>,
}

impl TableSchema {
    /// The schema of an existing table (fields map to their same-named
    /// columns; a `JSON` column named [`EXTRA`] holds the fields without one).
    pub(crate) fn from_columns(columns: Vec<(String, ColumnType)>) -> Self {
        let mut schema = TableSchema::default();
        for (name, ty) in columns {
            let idx = schema.columns.len();
            schema.lower_names.insert(name.to_lowercase(), idx);
            if name == EXTRA && ty == ColumnType::Json {
                schema.extra = Some(idx);
            } else {
                schema.by_field.insert(name.clone(), idx);
            }
            schema.columns.push((name, ty));
        }
        schema
    }

    /// Limits the table to `max` columns of fields (`None`: no limit); the
    /// field `key` gets its column whatever the limit.
    pub(crate) fn set_max_columns(&mut self, max: Option<usize>, key: Option<&str>) {
        self.max_columns = max;
        self.key = key.map(str::to_owned);
    }

    pub(crate) fn column_of(&self, field: &str) -> Option<usize> {
        self.by_field.get(field).copied()
    }

    /// The [`EXTRA`] column, when the table has it.
    pub(crate) fn extra(&self) -> Option<usize> {
        self.extra
    }

    /// Whether a field without a column gets one: the table has fewer
    /// columns of fields than its limit, or it is the key field. A field
    /// named [`EXTRA`] (in any case) never does: the name is the sink's.
    pub(crate) fn takes_column(&self, field: &str) -> bool {
        if field.eq_ignore_ascii_case(EXTRA) {
            return false;
        }
        let fields = self.columns.len() - usize::from(self.extra.is_some());
        self.max_columns.is_none_or(|max| fields < max) || self.key.as_deref() == Some(field)
    }

    /// Where a field without a column goes once the table has its most
    /// columns: the [`EXTRA`] column, added (as the last column) the first
    /// time; its index.
    pub(crate) fn extra_column(&mut self) -> usize {
        if let Some(idx) = self.extra {
            return idx;
        }
        let idx = self.push_column(EXTRA, ColumnType::Json);
        self.extra = Some(idx);
        idx
    }

    /// A column named [`EXTRA`] (in any case) that is not the extra column:
    /// someone else's (of another type, or the name in another case). A table
    /// with one has no room for the sink's: a suffixed name (`_extra_2`) would
    /// read back as a field's column, and every run would add another.
    pub(crate) fn foreign_extra(&self) -> Option<&(String, ColumnType)> {
        self.lower_names
            .get(EXTRA)
            .filter(|&&idx| Some(idx) != self.extra)
            .map(|&idx| &self.columns[idx])
    }

    /// Which columns store a null as the JSON text `null`: `JSON` columns of
    /// fields the source declared JSON (where SQL NULL is a field left out).
    pub(crate) fn json_nulls(&self, json: Option<&JsonFields>) -> Vec<bool> {
        let mut nulls = vec![false; self.columns.len()];
        for field in json.into_iter().flat_map(JsonFields::iter) {
            if let Some(idx) = self.column_of(field)
                && self.columns[idx].1 == ColumnType::Json
            {
                nulls[idx] = true;
            }
        }
        nulls
    }

    /// Makes the columns of fields the source declared typed ([`FieldTypes`])
    /// typed here too, when the table's column has that very type (a column
    /// the sink made so, or one made by someone else): then the values that
    /// fit go in as the type, and another value makes the column the text
    /// its values came as (see `typed`). Columns of such types whose fields
    /// are not declared stay [`ColumnType::Other`]: values go in as text and
    /// DuckDB casts them.
    pub(crate) fn adopt_declared(&mut self, types: Option<&FieldTypes>) {
        for (field, declared) in types.into_iter().flat_map(FieldTypes::iter) {
            if let Some(idx) = self.column_of(field)
                && let ColumnType::Other(name) = &self.columns[idx].1
                && let Some(ty) = typed::column_type(declared)
                && ColumnType::typed_from_sql(name).as_ref() == Some(&ty)
            {
                self.columns[idx].1 = ty;
            }
        }
    }

    /// Adds a column for a new field and returns its index.
    pub(crate) fn add_field(&mut self, field: &str, ty: ColumnType) -> usize {
        let idx = self.push_column(field, ty);
        self.by_field.insert(field.to_owned(), idx);
        idx
    }

    /// Adds a column named `name`, or `name_2`, `name_3`, ... when a column's
    /// name already differs from it only in case; its index.
    fn push_column(&mut self, name: &str, ty: ColumnType) -> usize {
        let mut unique = name.to_owned();
        let mut n = 1;
        while self.lower_names.contains_key(&unique.to_lowercase()) {
            n += 1;
            unique = format!("{name}_{n}");
        }
        let idx = self.columns.len();
        self.lower_names.insert(unique.to_lowercase(), idx);
        self.columns.push((unique, ty));
        idx
    }
}

/// Maps a record's fields to column indices, reusing the previous record's
/// mapping when the field names come in the same order (the usual case), so
/// most records cost a few string comparisons instead of hash lookups.
#[derive(Debug, Default)]
pub(crate) struct FieldCache {
    names: Vec<String>,
    columns: Vec<Option<usize>>,
}

impl FieldCache {
    /// The column of each field of `record`, in field order.
    pub(crate) fn resolve(
        &mut self,
        schema: &TableSchema,
        record: &serde_json::Map<String, Value>,
    ) -> &[Option<usize>] {
        let same = self.names.len() == record.len()
            && self.names.iter().zip(record.keys()).all(|(a, b)| a == b);
        if !same {
            self.names.clear();
            self.columns.clear();
            for field in record.keys() {
                self.names.push(field.clone());
                self.columns.push(schema.column_of(field));
            }
        }
        &self.columns
    }

    /// Forgets the mapping (after the schema gained columns).
    pub(crate) fn clear(&mut self) {
        self.names.clear();
        self.columns.clear();
    }
}

/// One value on its way into the appender, borrowing from the record when it can.
pub(crate) enum Cell<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Huge(i128),
    Double(f64),
    Text(&'a str),
    Owned(String),
    /// A typed column's value, with the text it came as.
    Typed(Typed, &'a str),
}

impl ToSql for Cell<'_> {
    fn to_sql(&self) -> duckdb::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self {
            Cell::Null => ValueRef::Null,
            Cell::Bool(b) => ValueRef::Boolean(*b),
            Cell::Int(i) => ValueRef::BigInt(*i),
            Cell::Huge(i) => ValueRef::HugeInt(*i),
            Cell::Double(f) => ValueRef::Double(*f),
            Cell::Text(s) => ValueRef::Text(s.as_bytes()),
            Cell::Owned(s) => ValueRef::Text(s.as_bytes()),
            // DuckDB casts the text to the column's type, exactly (it fits).
            Cell::Typed(_, s) => ValueRef::Text(s.as_bytes()),
        }))
    }
}

/// Converts a JSON value for a column of type `ty` (which the value's own type
/// has already been widened into).
pub(crate) fn cell<'a>(value: &'a Value, ty: &ColumnType) -> Cell<'a> {
    if ty.is_typed() {
        let typed = match value {
            Value::String(s) => typed::parse_str(ty, s).map(|t| Cell::Typed(t, s)),
            Value::Number(n) => {
                typed::parse_number(ty, n.as_str()).map(|t| Cell::Typed(t, n.as_str()))
            }
            _ => None,
        };
        if let Some(cell) = typed {
            return cell;
        }
    }
    match (value, ty) {
        (Value::Null, _) => Cell::Null,
        (Value::Bool(b), ColumnType::Boolean) => Cell::Bool(*b),
        (Value::Number(n), ColumnType::BigInt | ColumnType::HugeInt | ColumnType::Double) => {
            match (number_kind(n), ty) {
                (NumberKind::Int64(i), ColumnType::BigInt) => Cell::Int(i),
                (NumberKind::Int64(i), ColumnType::HugeInt) => Cell::Huge(i128::from(i)),
                (NumberKind::Int128(i), ColumnType::HugeInt) => Cell::Huge(i),
                // DuckDB's storage compresses runs of equal values, and -0.0 ==
                // 0.0, so a stored zero's sign would depend on its neighbours:
                // every zero is stored as 0.0 (a documented rule), every other
                // double bit for bit.
                (NumberKind::Float(x), ColumnType::Double) => {
                    Cell::Double(if x == 0.0 { 0.0 } else { x })
                }
                // Integers widened into DOUBLE: the sink widens to VARCHAR
                // instead when one is beyond ±2^53, so this is exact.
                (NumberKind::Int64(i), ColumnType::Double) => Cell::Double(i as f64),
                (NumberKind::Int128(i), ColumnType::Double) => Cell::Double(i as f64),
                _ => Cell::Owned(n.to_string()),
            }
        }
        (Value::String(s), ColumnType::Varchar | ColumnType::Other(_)) => Cell::Text(s),
        (Value::Array(_) | Value::Object(_), _) | (_, ColumnType::Json) => {
            Cell::Owned(value.to_string())
        }
        (Value::Bool(b), _) => Cell::Text(if *b { "true" } else { "false" }),
        (Value::Number(n), _) => Cell::Owned(n.to_string()),
        (Value::String(s), _) => Cell::Text(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ColumnType::*;
    use serde_json::json;

    #[test]
    fn inference_and_widening() {
        assert_eq!(ColumnType::of(&json!(1)), Some(BigInt));
        assert_eq!(ColumnType::of(&json!(u64::MAX)), Some(HugeInt));
        assert_eq!(ColumnType::of(&json!(1.5)), Some(Double));
        assert_eq!(ColumnType::of(&json!({"a": 1})), Some(Json));
        assert_eq!(ColumnType::of(&json!(null)), None);
        assert_eq!(BigInt.widen(&Double), Double);
        assert_eq!(BigInt.widen(&HugeInt), HugeInt);
        assert_eq!(Json.widen(&BigInt), Json);
        assert_eq!(Json.widen(&Varchar), Varchar);
        assert_eq!(Boolean.widen(&BigInt), Varchar);
        assert_eq!(Varchar.widen(&Double), Varchar);
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("we\"ird name"), "\"we\"\"ird name\"");
    }

    #[test]
    fn case_colliding_fields_get_their_own_columns() {
        let mut s = TableSchema::from_columns(vec![("id".into(), BigInt)]);
        assert_eq!(s.column_of("id"), Some(0));
        let i = s.add_field("ID", Varchar);
        assert_eq!(s.columns[i].0, "ID_2");
        assert_eq!(s.column_of("ID"), Some(1));
    }

    #[test]
    fn past_its_most_columns_a_table_sends_fields_to_extra_but_never_the_key() {
        let mut s = TableSchema::from_columns(vec![("a".into(), BigInt)]);
        s.set_max_columns(Some(2), Some("id"));
        assert!(s.takes_column("b"));
        s.add_field("b", Varchar);
        assert!(!s.takes_column("c"));
        assert!(s.takes_column("id"), "the key always gets its column");
        assert!(!s.takes_column("_EXTRA"), "the sink's name");
        assert_eq!(s.extra(), None);
        let extra = s.extra_column();
        assert_eq!(s.columns[extra], (EXTRA.to_owned(), Json));
        assert_eq!(s.extra_column(), extra, "added once");
        assert_eq!(s.column_of(EXTRA), None, "no field maps to it");
        assert!(!s.takes_column("c"), "the extra column does not count");
        // Read back: a JSON column of that name is the extra column; a
        // column of that name of another type is a field's.
        let loaded = TableSchema::from_columns(s.columns.clone());
        assert_eq!(loaded.extra(), Some(extra));
        let other = TableSchema::from_columns(vec![(EXTRA.into(), Varchar)]);
        assert_eq!((other.extra(), other.column_of(EXTRA)), (None, Some(0)));
    }

    #[test]
    fn cells_follow_the_column_type() {
        assert!(matches!(cell(&json!(3), &Double), Cell::Double(f) if f == 3.0));
        assert!(matches!(cell(&json!(true), &Varchar), Cell::Text("true")));
        assert!(matches!(cell(&json!("x"), &Json), Cell::Owned(ref s) if s == "\"x\""));
        assert!(matches!(cell(&json!([1]), &Varchar), Cell::Owned(ref s) if s == "[1]"));
    }
}
