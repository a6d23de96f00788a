//! Stream positions kept in the database, committed in the same transaction as
//! the batch they cover: after a stop between that commit and the checkpoint
//! store's, the database says where the stream stands, so a resumed run writes
//! every record exactly once — appends without a key included.
//!
//! One row per sync key and stream in `main."_sluicegate_positions"`: the
//! position after the last batch written (JSON text), or `complete` once the
//! stream's run finished (the next run starts from the beginning).

use duckdb::{Connection, OptionalExt, params};
use sluicegate_core::{Error, ErrorKind, Position, Result, SinkPosition, StreamTarget};

/// The table holding the positions.
pub(crate) const TABLE: &str = "_sluicegate_positions";

fn failed(what: &str, err: duckdb::Error) -> Error {
    Error::new(
        ErrorKind::Sink,
        format!("cannot {what} the stream position in {TABLE}"),
    )
    .with_source(err)
}

fn exists(conn: &Connection) -> Result<bool> {
    let n: i64 = conn
        .query_row(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'main' AND table_name = ?",
            [TABLE],
            |r| r.get(0),
        )
        .map_err(|e| failed("look up", e))?;
    Ok(n > 0)
}

/// Records where `target`'s stream stands: after `position`, or complete.
/// Inside the caller's transaction when there is one.
pub(crate) fn record(
    conn: &Connection,
    target: &StreamTarget,
    position: Option<&str>,
    complete: bool,
) -> Result<()> {
    conn.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS main.\"{TABLE}\" (sync_key VARCHAR, stream VARCHAR, position VARCHAR, complete BOOLEAN, PRIMARY KEY (sync_key, stream))"
    ))
    .map_err(|e| failed("create the table of", e))?;
    conn.execute(
        &format!("INSERT OR REPLACE INTO main.\"{TABLE}\" VALUES (?, ?, ?, ?)"),
        params![target.sync_key, target.table, position, complete],
    )
    .map_err(|e| failed("record", e))?;
    Ok(())
}

/// Where `target`'s stream stands, as the database says.
pub(crate) fn read(conn: &Connection, target: &StreamTarget) -> Result<SinkPosition> {
    if !exists(conn)? {
        return Ok(SinkPosition::NotYet);
    }
    let row: Option<(Option<String>, bool)> = conn
        .query_row(
            &format!(
                "SELECT position, complete FROM main.\"{TABLE}\" WHERE sync_key = ? AND stream = ?"
            ),
            params![target.sync_key, target.table],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(|e| failed("read", e))?;
    Ok(match row {
        None => SinkPosition::NotYet,
        Some((_, true)) => SinkPosition::Complete,
        Some((Some(text), false)) => {
            let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
                Error::new(
                    ErrorKind::Checkpoint,
                    format!(
                        "the position of '{}' in {TABLE} is not JSON ({e}); run with --full-refresh to start over",
                        target.sync_key
                    ),
                )
            })?;
            SinkPosition::After(Position::new(value))
        }
        Some((None, false)) => SinkPosition::NotYet,
    })
}

/// Forgets where `target`'s stream stands (a full refresh).
pub(crate) fn forget(conn: &Connection, target: &StreamTarget) -> Result<()> {
    if exists(conn)? {
        conn.execute(
            &format!("DELETE FROM main.\"{TABLE}\" WHERE sync_key = ? AND stream = ?"),
            params![target.sync_key, target.table],
        )
        .map_err(|e| failed("forget", e))?;
    }
    Ok(())
}
