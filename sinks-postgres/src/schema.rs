//! Column types from the data, and how values travel as text.
//!
//! Every value is staged as text (binary `COPY` of `text` columns) and cast
//! by PostgreSQL into its column's type, so numbers arrive with the exact text
//! the source wrote: an integer within 64 bits is `bigint`, any other number
//! (a larger integer, a fraction, an exponent) is `numeric`, which holds it
//! exactly; strings are `text`, objects and lists `jsonb` (whose numbers are
//! `numeric` too; object keys are stored in `jsonb`'s own order).

use serde_json::Value;

/// A column's type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PgType {
    Boolean,
    BigInt,
    Numeric,
    Text,
    Jsonb,
    /// A type the sink did not create (a table made by someone else): values
    /// are cast from text by PostgreSQL.
    Other(String),
}

impl PgType {
    /// The SQL name.
    pub(crate) fn sql(&self) -> &str {
        match self {
            PgType::Boolean => "boolean",
            PgType::BigInt => "bigint",
            PgType::Numeric => "numeric",
            PgType::Text => "text",
            PgType::Jsonb => "jsonb",
            PgType::Other(t) => t,
        }
    }

    /// From `format_type()`'s name of a column's type.
    pub(crate) fn from_sql(name: &str) -> PgType {
        match name {
            "boolean" => PgType::Boolean,
            "bigint" => PgType::BigInt,
            "numeric" => PgType::Numeric,
            "text" => PgType::Text,
            "jsonb" => PgType::Jsonb,
            other => PgType::Other(other.to_owned()),
        }
    }

    /// The type a value asks for; `None` for null.
    pub(crate) fn of(value: &Value) -> Option<PgType> {
        Some(match value {
            Value::Null => return None,
            Value::Bool(_) => PgType::Boolean,
            Value::Number(n) if n.as_i64().is_some() => PgType::BigInt,
            Value::Number(_) => PgType::Numeric,
            Value::String(_) => PgType::Text,
            Value::Array(_) | Value::Object(_) => PgType::Jsonb,
        })
    }

    /// The narrowest type holding both without loss.
    pub(crate) fn widen(&self, other: &PgType) -> PgType {
        use PgType::*;
        match (self, other) {
            (a, b) if a == b => a.clone(),
            (Other(t), _) | (_, Other(t)) => Other(t.clone()),
            (BigInt, Numeric) | (Numeric, BigInt) => Numeric,
            (Jsonb, Boolean | BigInt | Numeric) | (Boolean | BigInt | Numeric, Jsonb) => Jsonb,
            _ => Text,
        }
    }

    /// How a column of this type becomes `to` (`ALTER COLUMN … USING`).
    pub(crate) fn conversion(&self, column: &str, to: &PgType) -> String {
        match to {
            PgType::Jsonb => format!("to_jsonb({column})"),
            PgType::Text if *self == PgType::Jsonb => format!("{column} #>> '{{}}'"),
            _ => format!("{column}::{}", to.sql()),
        }
    }
}

/// A value as the text PostgreSQL casts into a column of type `ty`; `None`
/// for SQL NULL.
pub(crate) fn cell_text(value: &Value, ty: &PgType) -> Option<String> {
    match (value, ty) {
        (Value::Null, _) => None,
        (_, PgType::Jsonb) => Some(value.to_string()),
        (Value::String(s), _) => Some(s.clone()),
        (other, _) => Some(other.to_string()),
    }
}

/// Why PostgreSQL cannot store a value as it is, if it cannot: text (in
/// `text` or inside `jsonb`) may not hold the NUL character.
pub(crate) fn unstorable(value: &Value) -> Option<&'static str> {
    match value {
        Value::String(s) if s.contains('\0') => Some("text with a NUL character (\\u0000)"),
        Value::Array(items) => items.iter().find_map(unstorable),
        Value::Object(map) => map.iter().find_map(|(k, v)| {
            if k.contains('\0') {
                Some("a key with a NUL character")
            } else {
                unstorable(v)
            }
        }),
        _ => None,
    }
}

/// PostgreSQL's longest identifier, in bytes; longer names are cut silently.
pub(crate) const MAX_IDENTIFIER_BYTES: usize = 63;

/// Quotes an identifier: `"name"` with inner quotes doubled. Every table and
/// column name that reaches SQL goes through this.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A quoted string literal (for names passed to catalog functions).
pub(crate) fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn types_follow_the_values_and_widen_without_loss() {
        let big: Value = serde_json::from_str("123456789012345678901234567890").unwrap();
        let frac: Value = serde_json::from_str("0.30000000000000004").unwrap();
        assert_eq!(PgType::of(&json!(5)), Some(PgType::BigInt));
        assert_eq!(PgType::of(&big), Some(PgType::Numeric));
        assert_eq!(PgType::of(&frac), Some(PgType::Numeric));
        assert_eq!(PgType::of(&json!({"a": 1})), Some(PgType::Jsonb));
        assert_eq!(PgType::of(&json!(null)), None);
        assert_eq!(PgType::BigInt.widen(&PgType::Numeric), PgType::Numeric);
        assert_eq!(PgType::BigInt.widen(&PgType::Text), PgType::Text);
        assert_eq!(PgType::Boolean.widen(&PgType::Jsonb), PgType::Jsonb);
        assert_eq!(PgType::Jsonb.widen(&PgType::Text), PgType::Text);
        assert_eq!(
            cell_text(&frac, &PgType::Numeric).unwrap(),
            "0.30000000000000004"
        );
        assert_eq!(
            cell_text(&json!("a\"b"), &PgType::Jsonb).unwrap(),
            "\"a\\\"b\""
        );
        assert_eq!(cell_text(&json!("x"), &PgType::Text).unwrap(), "x");
        assert_eq!(cell_text(&json!([1]), &PgType::Text).unwrap(), "[1]");
        assert_eq!(
            PgType::Jsonb.conversion("\"c\"", &PgType::Text),
            "\"c\" #>> '{}'"
        );
        assert!(unstorable(&json!({"a": ["ok", "n\u{0}ul"]})).is_some());
        assert!(unstorable(&json!({"a": "fine"})).is_none());
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
