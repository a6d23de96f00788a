//! Stream positions kept in the database, committed in the same transaction as
//! the batch they cover: after a stop between that commit and the checkpoint
//! store's, the database says where the stream stands, so a resumed run writes
//! every record exactly once — appends without a key included.
//!
//! Rows of `main."_sluicegate_positions"`: per sync key and stream, the row
//! with the highest `seq` says where the stream stands — after a position
//! (JSON text), or `complete` once the stream's run finished (the next run
//! starts from the beginning). Each batch appends its row (DuckDB's cheapest
//! write; an `INSERT OR REPLACE` on a keyed table made the quickstart 40%
//! slower) and deletes the stream's rows before it, so the table keeps one row
//! per stream. The rows used to stay until the stream finished; with the sink's
//! appends no longer merging row groups at checkpoints (see `vacuum_setting`
//! in `sink.rs`) they spread over a row group per checkpoint, and deleting them
//! at the end of 10M PostgreSQL rows (2,002 rows in 144 row groups) ran out of
//! DuckDB's memory. Updating the one row in place instead cost 4 MiB more peak
//! at 1M rows (DuckDB keeps each update's versions until a checkpoint);
//! deleting the row before cost 1.6 MiB (medians of five paired runs).

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
    seq: u64,
    position: Option<&str>,
    complete: bool,
) -> Result<()> {
    if seq <= 1 {
        conn.execute_batch(&format!(
            "CREATE TABLE IF NOT EXISTS main.\"{TABLE}\" (sync_key VARCHAR, stream VARCHAR, seq UBIGINT, position VARCHAR, complete BOOLEAN)"
        ))
        .map_err(|e| failed("create the table of", e))?;
    }
    // Both statements are prepared once per connection: parsing and planning
    // them again for every batch was 38% of this function's CPU.
    conn.prepare_cached(&format!(
        "INSERT INTO main.\"{TABLE}\" VALUES (?, ?, ?, ?, ?)"
    ))
    .and_then(|mut insert| {
        insert.execute(params![
            target.sync_key,
            target.table,
            seq,
            position,
            complete
        ])
    })
    .map_err(|e| failed("record", e))?;
    // The stream's rows before this one go (the one before it, and any an
    // older version left per batch).
    conn.prepare_cached(&format!(
        "DELETE FROM main.\"{TABLE}\" WHERE sync_key = ? AND stream = ? AND seq < ?"
    ))
    .and_then(|mut delete| delete.execute(params![target.sync_key, target.table, seq]))
    .map_err(|e| failed("compact", e))?;
    Ok(())
}

/// Where `target`'s stream stands, as the database says, and the `seq` of
/// that row (0 when there is none).
pub(crate) fn read(conn: &Connection, target: &StreamTarget) -> Result<(SinkPosition, u64)> {
    if !exists(conn)? {
        return Ok((SinkPosition::NotYet, 0));
    }
    let row: Option<(Option<String>, bool, u64)> = conn
        .query_row(
            &format!(
                "SELECT position, complete, seq FROM main.\"{TABLE}\" WHERE sync_key = ? AND stream = ? ORDER BY seq DESC LIMIT 1"
            ),
            params![target.sync_key, target.table],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()
        .map_err(|e| failed("read", e))?;
    let seq = row.as_ref().map_or(0, |r| r.2);
    let row = row.map(|(p, c, _)| (p, c));
    Ok((
        match row {
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
        },
        seq,
    ))
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
