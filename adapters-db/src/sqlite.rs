//! SQLite: the file opened read-only on a blocking thread, rows stepped one at
//! a time and handed over in small chunks as the batcher makes room.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};
use serde_json::{Map, Number, Value};
use sluicegate_core::{ErrorKind, Record, Result};
use tokio::sync::mpsc;

use crate::batcher::Batcher;
use crate::error::{Origin, query_hint};
use crate::session::{Session, check_unique_columns, quote_with};

/// Rows per hand-over from the reading thread.
const CHUNK_ROWS: usize = 256;

/// A SQLite database file to read.
pub(crate) struct SqliteSession {
    path: PathBuf,
    origin: Origin,
}

/// Checks that the file exists; every query opens it read-only.
pub(crate) fn connect(path: &Path, origin: Origin) -> Result<SqliteSession> {
    if !path.is_file() {
        return Err(origin.error(
            ErrorKind::Config,
            format!(
                "no SQLite file at {}; check connectionString (a relative path is relative to the configuration file)",
                path.display()
            ),
        ));
    }
    Ok(SqliteSession {
        path: path.to_owned(),
        origin,
    })
}

#[async_trait]
impl Session for SqliteSession {
    fn quote_ident(&self, name: &str) -> String {
        quote_with(name, '"')
    }

    fn param(&self, index: usize, _value: &Value) -> Result<String> {
        Ok(format!("?{index}"))
    }

    async fn run(
        &mut self,
        sql: &str,
        params: &[Value],
        _fetch: usize,
        out: &mut Batcher,
    ) -> Result<u64> {
        out.reserve().await?;
        out.next_page();
        let (tx, mut rx) = mpsc::channel::<std::result::Result<Read, Failure>>(1);
        let path = self.path.clone();
        let sql = sql.to_owned();
        let key: Vec<rusqlite::types::Value> = params.iter().map(to_sqlite).collect();
        let reader = tokio::task::spawn_blocking(move || {
            if let Err(e) = read(&path, &sql, key, &tx) {
                let _ = tx.blocking_send(Err(e));
            }
        });
        let mut total = 0u64;
        while let Some(chunk) = rx.recv().await {
            let chunk = match chunk.map_err(|f| f.into_error(&self.origin, out))? {
                Read::Columns { names, json } => {
                    out.declare_json(&names, &json);
                    continue;
                }
                Read::Rows(chunk) => chunk,
            };
            for record in chunk {
                out.push(record).await?;
                total += 1;
            }
        }
        reader.await.map_err(|e| {
            self.origin
                .error(ErrorKind::Io, format!("the reader stopped: {e}"))
        })?;
        Ok(total)
    }
}

/// What the reading thread sends: first the columns (and which are declared
/// `JSON`), then rows.
enum Read {
    Columns { names: Vec<String>, json: Vec<bool> },
    Rows(Vec<Record>),
}

/// What went wrong on the reading thread.
enum Failure {
    Open(rusqlite::Error),
    Query(rusqlite::Error),
    /// A value that cannot be decoded: column, why, and the rest of its row.
    Column(String, String, Record),
    Duplicate(String),
}

impl Failure {
    fn into_error(self, origin: &Origin, out: &Batcher) -> sluicegate_core::Error {
        match self {
            Failure::Open(e) => origin.error(
                ErrorKind::Config,
                format!(
                    "cannot open the database: {e}; check that connectionString names a SQLite file"
                ),
            ),
            Failure::Query(e) => {
                let detail = e.to_string();
                origin.query_failed(&detail, query_hint(&detail))
            }
            Failure::Column(column, why, row) => {
                origin.undecodable(&column, &out.locate(&row), why)
            }
            Failure::Duplicate(m) => origin.query_failed(m, "rename the column in query"),
        }
    }
}

fn to_sqlite(v: &Value) -> rusqlite::types::Value {
    use rusqlite::types::Value as V;
    match v {
        Value::Number(n) => n
            .as_i64()
            .map(V::Integer)
            .or_else(|| n.as_f64().map(V::Real))
            .unwrap_or(V::Null),
        Value::String(s) => V::Text(s.clone()),
        Value::Bool(b) => V::Integer(i64::from(*b)),
        other => V::Text(other.to_string()),
    }
}

/// Declared column types that change how values are read.
#[derive(Clone, Copy, PartialEq)]
enum Declared {
    Other,
    Boolean,
    Json,
}

fn read(
    path: &Path,
    sql: &str,
    key: Vec<rusqlite::types::Value>,
    tx: &mpsc::Sender<std::result::Result<Read, Failure>>,
) -> std::result::Result<(), Failure> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(Failure::Open)?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(Failure::Open)?;
    let mut statement = conn.prepare(sql).map_err(Failure::Query)?;
    let names: Vec<String> = statement
        .column_names()
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    check_unique_columns(names.iter().map(String::as_str)).map_err(Failure::Duplicate)?;
    let declared: Vec<Declared> = statement
        .columns()
        .iter()
        .map(
            |c| match c.decl_type().map(str::to_ascii_uppercase).as_deref() {
                Some("BOOLEAN" | "BOOL") => Declared::Boolean,
                Some("JSON" | "JSONB") => Declared::Json,
                _ => Declared::Other,
            },
        )
        .collect();
    let columns = Read::Columns {
        names: names.clone(),
        json: declared.iter().map(|d| *d == Declared::Json).collect(),
    };
    if tx.blocking_send(Ok(columns)).is_err() {
        return Ok(()); // the reader was dropped
    }
    let mut rows = statement
        .query(rusqlite::params_from_iter(key))
        .map_err(Failure::Query)?;
    let mut chunk = Vec::with_capacity(CHUNK_ROWS);
    while let Some(row) = rows.next().map_err(Failure::Query)? {
        let mut record = Map::with_capacity(names.len());
        let mut failed = None;
        for (i, name) in names.iter().enumerate() {
            let value = row.get_ref(i).map_err(Failure::Query)?;
            if declared[i] == Declared::Json && value == ValueRef::Null {
                continue; // SQL NULL stays apart from the JSON `null`
            }
            match decode(value, declared[i]) {
                Ok(value) => {
                    record.insert(name.clone(), value);
                }
                Err(why) => {
                    failed.get_or_insert((name.clone(), why));
                }
            }
        }
        if let Some((name, why)) = failed {
            // The rows before it go first, so the error can say which row it is.
            if !chunk.is_empty() {
                let _ = tx.blocking_send(Ok(Read::Rows(std::mem::take(&mut chunk))));
            }
            return Err(Failure::Column(name, why, record));
        }
        chunk.push(record);
        if chunk.len() == CHUNK_ROWS
            && tx
                .blocking_send(Ok(Read::Rows(std::mem::replace(
                    &mut chunk,
                    Vec::with_capacity(CHUNK_ROWS),
                ))))
                .is_err()
        {
            return Ok(()); // the reader was dropped
        }
    }
    if !chunk.is_empty() {
        let _ = tx.blocking_send(Ok(Read::Rows(chunk)));
    }
    Ok(())
}

/// Converts one stored value:
///
/// | SQLite storage class | JSON |
/// |---|---|
/// | `INTEGER` | number; `true`/`false` in a column declared `BOOLEAN` |
/// | `REAL` | number (`±Infinity` as strings) |
/// | `TEXT` | string; the JSON value itself in a column declared `JSON` (text that is not JSON: a string), the field declared JSON |
/// | `BLOB` | base64 string |
/// | `NULL` | null; in a column declared `JSON`, the field is left out |
fn decode(value: ValueRef<'_>, declared: Declared) -> std::result::Result<Value, String> {
    Ok(match value {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) if declared == Declared::Boolean && (i == 0 || i == 1) => {
            Value::Bool(i == 1)
        }
        ValueRef::Integer(i) => Value::from(i),
        ValueRef::Real(f) => Number::from_f64(f).map_or_else(
            || Value::String(if f > 0.0 { "Infinity" } else { "-Infinity" }.into()),
            Value::Number,
        ),
        ValueRef::Text(bytes) => {
            let s = std::str::from_utf8(bytes).map_err(|_| "is not valid UTF-8 text".to_owned())?;
            match declared {
                Declared::Json => {
                    serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.to_owned()))
                }
                _ => Value::String(s.to_owned()),
            }
        }
        ValueRef::Blob(bytes) => {
            Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
        }
    })
}
