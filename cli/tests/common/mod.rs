//! Helpers shared by the end-to-end tests: output text, summary rows, and
//! DuckDB files read back as JSON.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Map, Value, json};

pub(crate) fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The cells of the summary row of `key`.
pub(crate) fn summary_row(stdout: &str, key: &str) -> Vec<String> {
    let line = stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(key))
        .unwrap_or_else(|| panic!("no summary row for {key} in {stdout}"));
    line.split_whitespace().map(str::to_owned).collect()
}

pub(crate) fn query(db: &Path, sql: &str) -> Vec<Vec<Value>> {
    let conn = duckdb::Connection::open(db).unwrap();
    let mut stmt = conn.prepare(sql).unwrap();
    let mut rows = stmt.query([]).unwrap();
    let mut out = Vec::new();
    while let Some(row) = rows.next().unwrap() {
        let n = row.as_ref().column_count();
        out.push((0..n).map(|i| cell(row.get_ref(i).unwrap())).collect());
    }
    out
}

fn cell(v: duckdb::types::ValueRef<'_>) -> Value {
    use duckdb::types::ValueRef as V;
    match v {
        V::Null => Value::Null,
        V::Boolean(b) => json!(b),
        V::BigInt(i) => json!(i),
        V::HugeInt(i) => match i64::try_from(i) {
            Ok(v) => json!(v),
            Err(_) => json!(u64::try_from(i).unwrap()),
        },
        V::Double(f) => json!(f),
        V::Text(t) => json!(String::from_utf8_lossy(t)),
        other => panic!("unexpected column value {other:?}"),
    }
}

/// Every row of a table, as the records the API served (JSON columns parsed,
/// typed columns as the text they came as, NULL columns left out), ordered
/// by id.
pub(crate) fn table_records(db: &Path, table: &str) -> Vec<Value> {
    let types: BTreeMap<String, String> = query(
        db,
        &format!("SELECT column_name, data_type FROM information_schema.columns WHERE table_name = '{table}'"),
    )
    .into_iter()
    .map(|r| (r[0].as_str().unwrap().to_owned(), r[1].as_str().unwrap().to_owned()))
    .collect();
    let names: Vec<String> = query(
        db,
        &format!("SELECT column_name FROM information_schema.columns WHERE table_name = '{table}' ORDER BY ordinal_position"),
    )
    .into_iter()
    .map(|r| r[0].as_str().unwrap().to_owned())
    .collect();
    // Typed columns read as the text the source sent (the sink's
    // documented rendering).
    let select: Vec<String> = names
        .iter()
        .map(|name| {
            let q = format!("\"{name}\"");
            match types[name].as_str() {
                "TIMESTAMP" => format!("replace(CAST({q} AS VARCHAR), ' ', 'T')"),
                "TIMESTAMP WITH TIME ZONE" => {
                    format!("replace(CAST(timezone('UTC', {q}) AS VARCHAR), ' ', 'T') || 'Z'")
                }
                t if t == "DATE" || t.starts_with("DECIMAL(") => format!("CAST({q} AS VARCHAR)"),
                _ => q,
            }
        })
        .collect();
    query(
        db,
        &format!("SELECT {} FROM \"{table}\" ORDER BY id", select.join(", ")),
    )
    .into_iter()
    .map(|row| {
        let mut rec = Map::new();
        for (name, value) in names.iter().zip(row) {
            let value = match (&value, types[name].as_str()) {
                (Value::String(s), "JSON") => serde_json::from_str(s).unwrap(),
                _ => value,
            };
            if !value.is_null() {
                rec.insert(name.clone(), value);
            }
        }
        Value::Object(rec)
    })
    .collect()
}

/// The committed checkpoint of `key` in the state database under `dir`
/// (`.sluicegate/state/state.db`), if any. Opened read-only while a run may be
/// committing.
pub(crate) fn checkpoint(dir: &Path, key: &str) -> Option<Value> {
    let path = dir.join(".sluicegate/state/state.db");
    if !path.exists() {
        return None;
    }
    let conn =
        rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .ok()?;
    conn.busy_timeout(std::time::Duration::from_secs(5)).ok()?;
    let text: String = conn
        .query_row(
            "SELECT position FROM checkpoints WHERE sync_key = ?1",
            [key],
            |row| row.get(0),
        )
        .ok()?;
    serde_json::from_str(&text).ok()
}

/// Kills `child` (SIGKILL) once the committed checkpoint of `key` under `dir`
/// has passed `offset`; fails when the run ends first or no checkpoint comes
/// within a minute.
pub(crate) fn kill_after_offset(
    mut child: std::process::Child,
    dir: &Path,
    key: &str,
    offset: u64,
) {
    let started = std::time::Instant::now();
    while checkpoint(dir, key).is_none_or(|p| p["offset"].as_u64() < Some(offset)) {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "no checkpoint past offset {offset}"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before the kill"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

/// The rows of `sql` on the PostgreSQL at `url` as JSON objects (each row
/// `to_jsonb`'d by the server, so values keep their exact text); none while a
/// table it reads does not exist yet.
pub(crate) async fn pg_rows(url: &str, sql: &str) -> Vec<Value> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    match client
        .query(&format!("SELECT to_jsonb(q)::text FROM ({sql}) q"), &[])
        .await
    {
        Ok(found) => found
            .iter()
            .map(|r| serde_json::from_str(&r.get::<_, String>(0)).unwrap())
            .collect(),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => Vec::new(),
        Err(e) => panic!("{e}"),
    }
}
