//! MySQL and MariaDB: a prepared statement's streaming result set (the binary
//! protocol, so floats arrive as their bits), read row by row as the batcher
//! makes room, so the server (not this process) holds the rest. A statement the
//! server cannot prepare is read through the text protocol instead.
//!
//! The session reads timestamps in UTC (`time_zone = '+00:00'`), uses
//! `utf8mb4`, is read-only, and waits for a slow consumer for up to a day
//! (`net_write_timeout`) instead of the server default of a minute.

use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use mysql_async::consts::{ColumnFlags, ColumnType};
use mysql_async::prelude::Queryable;
use mysql_async::{Column, Conn, Opts};
use serde_json::{Number, Value};
use sluicegate_core::{Error, ErrorKind, FieldType, FieldTypes, Record, Result};

use crate::batcher::{Batcher, TextLayout};
use crate::error::{Origin, query_hint};
use crate::session::{Session, check_unique_columns, quote_with};

/// The binary "character set": the column holds bytes, not text.
const BINARY_CHARSET: u16 = 63;

/// An open MySQL / MariaDB connection.
pub(crate) struct MysqlSession {
    conn: Conn,
    origin: Origin,
    /// Whether `\` is an ordinary character in string literals (sql_mode).
    no_backslash_escapes: bool,
}

/// Connects (15 s timeout) and sets the session up.
pub(crate) async fn connect(opts: &Opts, origin: Origin) -> Result<MysqlSession> {
    let mut conn =
        match tokio::time::timeout(Duration::from_secs(15), Conn::new(opts.clone())).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return Err(my_error(&origin, &e)),
            Err(_) => return Err(origin.unreachable("no answer within 15 s")),
        };
    conn.query_drop(
        "SET NAMES utf8mb4, time_zone = '+00:00', net_write_timeout = 86400, \
         net_read_timeout = 86400",
    )
    .await
    .map_err(|e| my_error(&origin, &e))?;
    conn.query_drop("SET SESSION TRANSACTION READ ONLY")
        .await
        .map_err(|e| my_error(&origin, &e))?;
    let mode: Option<String> = conn
        .query_first("SELECT @@SESSION.sql_mode")
        .await
        .map_err(|e| my_error(&origin, &e))?;
    Ok(MysqlSession {
        conn,
        origin,
        no_backslash_escapes: mode.is_some_and(|m| m.contains("NO_BACKSLASH_ESCAPES")),
    })
}

fn my_error(origin: &Origin, e: &mysql_async::Error) -> sluicegate_core::Error {
    match e {
        mysql_async::Error::Server(s) => {
            let detail = format!("{} [error {}, SQLSTATE {}]", s.message, s.code, s.state);
            match s.code {
                1044 | 1045 | 1698 => origin.rejected_login(detail),
                1049 => origin.error(
                    ErrorKind::Config,
                    format!("{detail}; check the database name in connectionString"),
                ),
                1040 | 1053 | 1203 => origin.unreachable(detail),
                _ => origin.query_failed(&detail, query_hint(&s.message)),
            }
        }
        mysql_async::Error::Url(u) => {
            origin.error(ErrorKind::Config, format!("connectionString: {u}"))
        }
        other => origin.unreachable(other),
    }
}

#[async_trait]
impl Session for MysqlSession {
    fn quote_ident(&self, name: &str) -> String {
        quote_with(name, '`')
    }

    /// MySQL's text protocol has no placeholders: the key becomes a literal.
    fn param(&self, _index: usize, value: &Value) -> Result<String> {
        Ok(match value {
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => u8::from(*b).to_string(),
            Value::String(s) => {
                let mut lit = String::with_capacity(s.len() + 2);
                lit.push('\'');
                for c in s.chars() {
                    match c {
                        '\'' => lit.push_str("''"),
                        '\\' if !self.no_backslash_escapes => lit.push_str("\\\\"),
                        '\0' if !self.no_backslash_escapes => lit.push_str("\\0"),
                        c => lit.push(c),
                    }
                }
                lit.push('\'');
                lit
            }
            other => {
                return Err(self.origin.error(
                    ErrorKind::Checkpoint,
                    format!("the checkpoint key {other} is not a number or string"),
                ));
            }
        })
    }

    async fn run(
        &mut self,
        sql: &str,
        _params: &[Value],
        _fetch: usize,
        out: &mut Batcher,
    ) -> Result<u64> {
        let origin = self.origin.clone();
        let err = |e: mysql_async::Error| my_error(&origin, &e);
        out.reserve().await?;
        out.next_page();
        // The binary protocol (a prepared statement): FLOAT and DOUBLE come as
        // the stored bits, where the text protocol prints FLOAT with six
        // digits. Statements the server cannot prepare are read as text.
        match self.conn.exec_iter(sql, ()).await {
            Ok(result) => read_rows(result, &origin, out).await,
            Err(mysql_async::Error::Server(e)) if e.code == ER_UNSUPPORTED_PS => {
                let result = self.conn.query_iter(sql).await.map_err(err)?;
                read_rows(result, &origin, out).await
            }
            Err(e) => Err(err(e)),
        }
    }
}

/// "This command is not supported in the prepared statement protocol yet".
const ER_UNSUPPORTED_PS: u16 = 1295;

/// Reads a result set row by row into the batcher.
async fn read_rows<P: mysql_async::prelude::Protocol>(
    mut result: mysql_async::QueryResult<'_, 'static, P>,
    origin: &Origin,
    out: &mut Batcher,
) -> Result<u64> {
    let err = |e: mysql_async::Error| my_error(origin, &e);
    let columns = result.columns().unwrap_or_else(|| Vec::new().into());
    check_unique_columns(
        columns
            .iter()
            .map(|c| c.name_ref())
            .map(|n| std::str::from_utf8(n).unwrap_or("?")),
    )
    .map_err(|m| origin.query_failed(m, "rename the column in query"))?;
    let names: Vec<String> = columns.iter().map(|c| c.name_str().into_owned()).collect();
    let json: Vec<bool> = columns
        .iter()
        .map(|c| c.column_type() == ColumnType::MYSQL_TYPE_JSON)
        .collect();
    out.declare_json(&names, &json);
    out.declare_types(FieldTypes::new(
        columns
            .iter()
            .filter_map(|c| field_type(c).map(|t| (c.name_str().into_owned(), t))),
    ));
    // Rows go on as JSON text when the read takes it: each value written
    // after its field name, without a map per row.
    let text_fields = out.text_layout(names.iter().map(String::as_str));
    let mut text = Vec::new();
    let mut total = 0u64;
    while let Some(row) = result.next().await.map_err(err)? {
        let mut values: Vec<Option<Value>> = Vec::with_capacity(names.len());
        let mut failed = None;
        for (((name, column), value), json) in names
            .iter()
            .zip(columns.iter())
            .zip(row.unwrap_raw())
            .zip(&json)
        {
            values.push(match value.and_then(|v| as_text(column, v)) {
                // SQL NULL in a JSON column: left out, apart from JSON `null`.
                None if *json => None,
                None => Some(Value::Null),
                Some(bytes) => match decode(column, bytes) {
                    Ok(value) => Some(value),
                    Err(why) => {
                        failed.get_or_insert((name, why));
                        None
                    }
                },
            });
        }
        total += 1;
        if failed.is_none()
            && let Some(layout) = &text_fields
        {
            TextLayout::begin(&mut text);
            for (i, value) in values.iter().enumerate() {
                if let Some(value) = value {
                    layout.field(i, &mut text);
                    serde_json::to_writer(&mut text, value).map_err(|e| {
                        Error::new(
                            ErrorKind::Decode,
                            format!("cannot write a row as JSON: {e}"),
                        )
                    })?;
                }
            }
            text.push(b'}');
            let tracked: Record = layout
                .tracked
                .iter()
                .map(|(name, i)| (name.clone(), values[*i].clone().unwrap_or(Value::Null)))
                .collect();
            out.push_json(&text, &tracked).await?;
            continue;
        }
        let record: Record = names
            .iter()
            .zip(values)
            .filter_map(|(name, value)| value.map(|v| (name.clone(), v)))
            .collect();
        if let Some((name, why)) = failed {
            return Err(origin.undecodable(name, &out.locate(&record), why));
        }
        if text_fields.is_some() {
            // After the rows before it, in order.
            out.flush().await?;
        }
        out.push(record).await?;
    }
    // Statements after the first one (a multi-statement query) are not read.
    result.drop_result().await.map_err(err)?;
    Ok(total)
}

/// A value of either protocol as the text protocol sends it (`None`: NULL),
/// so one conversion serves both. FLOAT is written as the shortest decimal
/// that reads back as the same 32-bit float (`123456.79`, not the server's
/// six-digit `123457`), DOUBLE as the shortest that reads back as the same
/// double.
fn as_text(column: &Column, value: mysql_async::Value) -> Option<Vec<u8>> {
    use mysql_async::Value as V;
    Some(match value {
        V::NULL => return None,
        V::Bytes(bytes) => bytes,
        V::Int(i) => i.to_string().into_bytes(),
        V::UInt(u) => u.to_string().into_bytes(),
        V::Float(f) => f.to_string().into_bytes(),
        V::Double(d) => d.to_string().into_bytes(),
        V::Date(y, mo, d, h, mi, s, us) => {
            let date = format!("{y:04}-{mo:02}-{d:02}");
            if matches!(
                column.column_type(),
                ColumnType::MYSQL_TYPE_DATE | ColumnType::MYSQL_TYPE_NEWDATE
            ) {
                date.into_bytes()
            } else {
                format!("{date} {h:02}:{mi:02}:{s:02}.{us:06}").into_bytes()
            }
        }
        V::Time(negative, days, h, mi, s, us) => {
            let hours = u64::from(days) * 24 + u64::from(h);
            let sign = if negative { "-" } else { "" };
            format!("{sign}{hours:02}:{mi:02}:{s:02}.{us:06}").into_bytes()
        }
    })
}

/// Converts one value of `column`, in the text protocol's form ([`as_text`]):
///
/// | MySQL / MariaDB | JSON |
/// |---|---|
/// | `TINYINT` … `BIGINT` (signed or unsigned), `YEAR` | number (exact) |
/// | `FLOAT`, `DOUBLE` | number |
/// | `DECIMAL` | string with every digit |
/// | `BIT(n)` | number |
/// | `CHAR`, `VARCHAR`, `TEXT`, `ENUM`, `SET` | string |
/// | `JSON` (MySQL) | the JSON value itself, the field declared JSON (SQL NULL: left out); MariaDB's `JSON` is `LONGTEXT`, a string (name it in `jsonColumns`) |
/// | `BINARY`, `VARBINARY`, `BLOB`, `GEOMETRY` | base64 string |
/// | `DATE` | `"2024-02-29"` |
/// | `DATETIME` | `"2024-02-29T13:45:00.5"` (no zone) |
/// | `TIMESTAMP` | `"2024-02-29T12:45:00.5Z"` (UTC) |
/// | `TIME` | `"-838:59:59"` … as the server prints it |
fn decode(column: &Column, bytes: Vec<u8>) -> std::result::Result<Value, String> {
    let binary = column.character_set() == BINARY_CHARSET;
    let text =
        |bytes: Vec<u8>| String::from_utf8(bytes).map_err(|_| "is not valid UTF-8 text".to_owned());
    use ColumnType::*;
    Ok(match column.column_type() {
        MYSQL_TYPE_TINY | MYSQL_TYPE_SHORT | MYSQL_TYPE_INT24 | MYSQL_TYPE_LONG
        | MYSQL_TYPE_LONGLONG | MYSQL_TYPE_YEAR => {
            let s = text(bytes)?;
            let n = if column.flags().contains(ColumnFlags::UNSIGNED_FLAG) {
                s.parse::<u64>().map(Number::from).ok()
            } else {
                s.parse::<i64>().map(Number::from).ok()
            };
            Value::Number(n.ok_or_else(|| format!("'{s}' is not an integer"))?)
        }
        MYSQL_TYPE_FLOAT | MYSQL_TYPE_DOUBLE => {
            let s = text(bytes)?;
            let f: f64 = s.parse().map_err(|_| format!("'{s}' is not a number"))?;
            Number::from_f64(f).map_or(Value::String(s), Value::Number)
        }
        MYSQL_TYPE_DECIMAL | MYSQL_TYPE_NEWDECIMAL => Value::String(text(bytes)?),
        MYSQL_TYPE_BIT => {
            if bytes.len() > 8 {
                return Err("BIT wider than 64 bits".into());
            }
            Value::from(bytes.iter().fold(0u64, |acc, b| acc << 8 | u64::from(*b)))
        }
        MYSQL_TYPE_DATE | MYSQL_TYPE_NEWDATE | MYSQL_TYPE_TIME | MYSQL_TYPE_TIME2 => {
            Value::String(trim_fraction(text(bytes)?))
        }
        MYSQL_TYPE_DATETIME | MYSQL_TYPE_DATETIME2 => {
            Value::String(trim_fraction(text(bytes)?).replacen(' ', "T", 1))
        }
        MYSQL_TYPE_TIMESTAMP | MYSQL_TYPE_TIMESTAMP2 => {
            let s = trim_fraction(text(bytes)?);
            if s.starts_with("0000-00-00") {
                Value::String(s)
            } else {
                Value::String(format!("{}Z", s.replacen(' ', "T", 1)))
            }
        }
        MYSQL_TYPE_JSON => {
            let s = text(bytes)?;
            serde_json::from_str(&s).unwrap_or(Value::String(s))
        }
        MYSQL_TYPE_GEOMETRY | MYSQL_TYPE_VECTOR => base64_value(&bytes),
        MYSQL_TYPE_NULL => Value::Null,
        _ if binary => base64_value(&bytes),
        _ => Value::String(text(bytes)?),
    })
}

/// The type a sink may store a column's values as (see [`FieldType`]):
/// `DECIMAL(M,D)`, `DATE`, `DATETIME`, `TIMESTAMP`, written in the forms
/// [`FieldType`] documents (see [`decode`]; zero dates are values a typed
/// column does not hold, which the sink keeps as text).
fn field_type(column: &Column) -> Option<FieldType> {
    use ColumnType::*;
    match column.column_type() {
        MYSQL_TYPE_NEWDECIMAL => {
            // The display length: the digits, a point when there are
            // decimals, a sign unless unsigned.
            let scale = u16::from(column.decimals());
            let point = u32::from(scale > 0);
            let sign = u32::from(!column.flags().contains(ColumnFlags::UNSIGNED_FLAG));
            let precision = column.column_length().checked_sub(point + sign)?;
            let precision = u16::try_from(precision).ok()?;
            (precision > 0 && scale <= precision).then_some(FieldType::Decimal { precision, scale })
        }
        MYSQL_TYPE_DATE | MYSQL_TYPE_NEWDATE => Some(FieldType::Date),
        MYSQL_TYPE_DATETIME | MYSQL_TYPE_DATETIME2 => Some(FieldType::Timestamp),
        MYSQL_TYPE_TIMESTAMP | MYSQL_TYPE_TIMESTAMP2 => Some(FieldType::TimestampUtc),
        _ => None,
    }
}

fn base64_value(bytes: &[u8]) -> Value {
    Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// `12:00:00.500000` → `12:00:00.5`; `12:00:00.000000` → `12:00:00`.
fn trim_fraction(s: String) -> String {
    match s.rsplit_once('.') {
        Some((head, frac)) if frac.bytes().all(|b| b.is_ascii_digit()) => {
            let frac = frac.trim_end_matches('0');
            if frac.is_empty() {
                head.to_owned()
            } else {
                format!("{head}.{frac}")
            }
        }
        _ => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fractions_lose_only_trailing_zeros() {
        assert_eq!(
            trim_fraction("2024-01-01 10:00:00.500000".into()),
            "2024-01-01 10:00:00.5"
        );
        assert_eq!(trim_fraction("10:00:00.000000".into()), "10:00:00");
        assert_eq!(trim_fraction("2024-01-01".into()), "2024-01-01");
    }
}
