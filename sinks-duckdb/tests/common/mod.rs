//! Helpers shared by the property suites of this crate.

#![allow(dead_code)]

use std::path::Path;

use sluicegate_core::BuildContext;
use sluicegate_sinks_duckdb::{DuckDbSink, DuckDbSinkConfig};

/// A sink writing `file` under `dir`, DuckDB on one thread.
pub(crate) fn sink(dir: &Path, file: &str) -> DuckDbSink {
    sink_with(dir, file, DuckDbSinkConfig::new(file).max_columns)
}

/// A sink writing `file` under `dir`, DuckDB on one thread, tables of at
/// most `max_columns` columns of fields.
pub(crate) fn sink_with(dir: &Path, file: &str, max_columns: usize) -> DuckDbSink {
    let config = DuckDbSinkConfig {
        threads: Some(1),
        max_columns,
        ..DuckDbSinkConfig::new(file)
    };
    let ctx = BuildContext::new("", false)
        .with_template_scope(serde_json::json!({}))
        .with_base_dir(dir.to_path_buf());
    DuckDbSink::open(&config, &ctx).unwrap()
}

/// The number in the environment variable `name`, or `default`.
pub(crate) fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// The columns of table `t` (name, DuckDB type), in order.
pub(crate) fn columns(conn: &duckdb::Connection) -> Vec<(String, String)> {
    let mut stmt = conn
        .prepare("SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 't' ORDER BY ordinal_position")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// A table's columns (name, type) and its rows as text, sorted.
pub(crate) type Table = (Vec<(String, String)>, Vec<Vec<Option<String>>>);

/// Table `t` of the database file `db`: its columns with their types, and
/// its rows as text, sorted (nothing when there is no such table).
pub(crate) fn table(db: &Path) -> Table {
    let conn = duckdb::Connection::open(db).unwrap();
    let exists: i64 = conn
        .query_row(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 't'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    if exists == 0 {
        return (Vec::new(), Vec::new());
    }
    let columns = columns(&conn);
    let mut stmt = conn
        .prepare("SELECT COLUMNS(*)::VARCHAR FROM t ORDER BY ALL")
        .unwrap();
    let n = columns.len();
    let rows = stmt
        .query_map([], |r| {
            (0..n).map(|i| r.get::<_, Option<String>>(i)).collect()
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    (columns, rows)
}
