//! Deletions after a complete read: the keys a table holds, page by page, and
//! removing rows by key (`hard`), or marking them (`soft`: the time in a
//! `_deleted_at` column, which an upsert of the same key clears again).

use duckdb::Connection;
use serde_json::Value;
use sluicegate_core::{DeleteMode, Result, StreamTarget, TargetKeys};

use crate::database::duck_error;
use crate::schema::{ColumnType, quote_ident};

use crate::sink::load_table;

/// Row ids per page of [`target_keys`].
const KEY_PAGE: usize = 20_000;

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
    let state = load_table(conn, target, None)?;
    if !state.exists {
        return Ok(None);
    }
    let soft = state.schema.columns.iter().any(|(n, _)| n == DELETED_AT);
    Ok(state.schema.column_of(field).map(|idx| {
        let (name, ty) = &state.schema.columns[idx];
        (quote_ident(name), ty.clone(), soft)
    }))
}

/// One page of the live keys of the stream's table: the rows whose `rowid`
/// is in the page's range (the token is where the next range starts). Ranges
/// of row ids are read from the row groups that hold them, without sorting or
/// scanning the table per page; the rows do not change while the pages are
/// read (the stream's writes are done, and nothing is removed yet).
pub(crate) fn target_keys(
    conn: &Connection,
    target: &StreamTarget,
    page: Option<&Value>,
) -> Result<TargetKeys> {
    target_keys_in(conn, target, page, KEY_PAGE)
}

fn target_keys_in(
    conn: &Connection,
    target: &StreamTarget,
    page: Option<&Value>,
    rows: usize,
) -> Result<TargetKeys> {
    let Some((key, _, soft)) = key_column(conn, target)? else {
        return Ok(TargetKeys::default());
    };
    let table = quote_ident(&target.table);
    let start = page.and_then(Value::as_i64).unwrap_or(0);
    let end_of_table: Option<i64> = conn
        .query_row(&format!("SELECT max(rowid) FROM main.{table}"), [], |r| {
            r.get(0)
        })
        .map_err(|e| duck_error("cannot list the table's keys", e))?;
    let Some(last) = end_of_table.filter(|last| *last >= start) else {
        return Ok(TargetKeys::default());
    };
    let end = start.saturating_add(i64::try_from(rows).unwrap_or(i64::MAX));
    let mut sql = format!(
        "SELECT CAST({key} AS VARCHAR) FROM main.{table} \
         WHERE rowid >= {start} AND rowid < {end} AND {key} IS NOT NULL"
    );
    if soft {
        sql.push_str(&format!(" AND {} IS NULL", quote_ident(DELETED_AT)));
    }
    let mut statement = conn
        .prepare(&sql)
        .map_err(|e| duck_error("cannot list the table's keys", e))?;
    let keys: Vec<String> = statement
        .query_map([], |row| row.get(0))
        .and_then(|rows| rows.collect())
        .map_err(|e| duck_error("cannot list the table's keys", e))?;
    Ok(TargetKeys::new(
        keys,
        (end <= last).then(|| Value::from(end)),
    ))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_of_row_ids_list_every_live_key_once() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE items (id BIGINT, v VARCHAR);
             INSERT INTO items SELECT (i * 7919) % 2500, 'x' FROM range(2500) t(i);
             INSERT INTO items VALUES (NULL, 'no key');",
        )
        .unwrap();
        let target = StreamTarget::new("items", "items", Some("id".into()));
        let list = |conn: &Connection| {
            let (mut keys, mut pages, mut page) = (Vec::new(), 0, None);
            loop {
                let listed = target_keys_in(conn, &target, page.as_ref(), 300).unwrap();
                pages += 1;
                keys.extend(listed.keys);
                match listed.next {
                    Some(next) => page = Some(next),
                    None => return (keys, pages),
                }
            }
        };
        let (mut keys, pages) = list(&conn);
        assert_eq!(pages, 9, "2,501 row ids in pages of 300");
        keys.sort_by_key(|k| k.parse::<u64>().unwrap());
        let expected: Vec<String> = (0..2500).map(|i: u64| i.to_string()).collect();
        assert_eq!(keys, expected);
        let gone: Vec<String> = (0..1000).map(|i: u64| i.to_string()).collect();
        assert_eq!(
            delete_keys(&conn, &target, &gone, DeleteMode::Soft).unwrap(),
            1000
        );
        let (keys, _) = list(&conn);
        assert_eq!(keys.len(), 1500, "soft-deleted rows are not listed");
        assert_eq!(
            delete_keys(&conn, &target, &gone, DeleteMode::Hard).unwrap(),
            1000
        );
        let (keys, _) = list(&conn);
        assert_eq!(keys.len(), 1500);
    }
}
