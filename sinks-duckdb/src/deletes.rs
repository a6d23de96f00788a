//! Deletions after a complete read: the keys a table holds, page by page, and
//! removing rows by key (`hard`), or marking them (`soft`: the time in a
//! `_deleted_at` column, which an upsert of the same key clears again).

use duckdb::Connection;
use serde_json::Value;
use sluicegate_core::{DeleteMode, Result, StreamTarget, TargetKeys};

use crate::database::duck_error;
use crate::schema::{ColumnType, quote_ident};
use crate::sink::load_table;

/// Keys per page of [`target_keys`].
const KEY_PAGE: usize = 10_000;

/// The column soft deletions mark rows in.
pub(crate) const DELETED_AT: &str = "_deleted_at";

/// The key column of the stream's table, quoted, with its type, and whether
/// the table has soft-deleted rows' column; `None` when there is no such table
/// or column yet (then it holds no keys).
fn key_column(
    conn: &Connection,
    target: &StreamTarget,
) -> Result<Option<(String, ColumnType, bool)>> {
    let Some(field) = target.key_field.as_deref() else {
        return Ok(None);
    };
    let state = load_table(conn, &target.table)?;
    if !state.exists {
        return Ok(None);
    }
    let soft = state.schema.columns.iter().any(|(n, _)| n == DELETED_AT);
    Ok(state.schema.column_of(field).map(|idx| {
        let (name, ty) = &state.schema.columns[idx];
        (quote_ident(name), ty.clone(), soft)
    }))
}

/// One page of the live keys of the stream's table, in key order, after
/// `after` (the last key of the previous page).
pub(crate) fn target_keys(
    conn: &Connection,
    target: &StreamTarget,
    after: Option<&Value>,
) -> Result<TargetKeys> {
    let Some((key, ty, soft)) = key_column(conn, target)? else {
        return Ok(TargetKeys::default());
    };
    let table = quote_ident(&target.table);
    let mut sql =
        format!("SELECT CAST({key} AS VARCHAR) FROM main.{table} WHERE {key} IS NOT NULL");
    if soft {
        sql.push_str(&format!(" AND {} IS NULL", quote_ident(DELETED_AT)));
    }
    let after = after.and_then(Value::as_str);
    if after.is_some() {
        sql.push_str(&format!(" AND {key} > CAST(? AS {})", ty.sql()));
    }
    sql.push_str(&format!(" ORDER BY {key} LIMIT {KEY_PAGE}"));
    let mut statement = conn
        .prepare(&sql)
        .map_err(|e| duck_error("cannot list the table's keys", e))?;
    let params: Vec<&str> = after.into_iter().collect();
    let keys: Vec<String> = statement
        .query_map(duckdb::params_from_iter(params), |row| row.get(0))
        .and_then(|rows| rows.collect())
        .map_err(|e| duck_error("cannot list the table's keys", e))?;
    let next = (keys.len() == KEY_PAGE)
        .then(|| keys.last().cloned().map(Value::String))
        .flatten();
    Ok(TargetKeys::new(keys, next))
}

/// Removes (`Hard`) or marks (`Soft`) the rows with these keys, in one
/// transaction; returns how many rows.
pub(crate) fn delete_keys(
    conn: &Connection,
    target: &StreamTarget,
    keys: &[String],
    mode: DeleteMode,
) -> Result<u64> {
    let Some((key, ty, _)) = key_column(conn, target)? else {
        return Ok(0);
    };
    let table = quote_ident(&target.table);
    let staged = quote_ident("sluicegate_delete_keys");
    conn.execute_batch(&format!(
        "BEGIN; CREATE OR REPLACE TEMP TABLE {staged} (k VARCHAR);"
    ))
    .map_err(|e| duck_error("cannot stage the keys to delete", e))?;
    let outcome = (|| {
        {
            let mut appender = conn
                .appender_to_catalog_and_db("sluicegate_delete_keys", "temp", "main")
                .map_err(|e| duck_error("cannot open an appender", e))?;
            for k in keys {
                appender
                    .append_row([k.as_str()])
                    .map_err(|e| duck_error("cannot stage a key to delete", e))?;
            }
        }
        let matching = format!(
            "{key} IN (SELECT CAST(k AS {}) FROM temp.{staged})",
            ty.sql()
        );
        let sql = match mode {
            DeleteMode::Soft => {
                let column = quote_ident(DELETED_AT);
                conn.execute_batch(&format!(
                    "ALTER TABLE main.{table} ADD COLUMN IF NOT EXISTS {column} TIMESTAMPTZ"
                ))
                .map_err(|e| duck_error("cannot add the _deleted_at column", e))?;
                format!(
                    "UPDATE main.{table} SET {column} = current_timestamp WHERE {matching} AND {column} IS NULL"
                )
            }
            _ => format!("DELETE FROM main.{table} WHERE {matching}"),
        };
        let n = conn
            .execute(&sql, [])
            .map_err(|e| duck_error("cannot delete rows", e))?;
        conn.execute_batch(&format!("DROP TABLE temp.{staged}; COMMIT;"))
            .map_err(|e| duck_error("cannot commit the deletions", e))?;
        Ok(n as u64)
    })();
    if outcome.is_err() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    outcome
}
