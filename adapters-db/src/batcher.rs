//! Turns rows into budgeted batches with resume positions.
//!
//! Every provider pushes its rows, one at a time, into a [`Batcher`]. The
//! batcher holds a [`MemoryLease`] for the batch being filled, taken from the
//! run's budget *before* rows arrive and grown as they do: a full budget stops
//! the reader, and the database (through its cursor or the TCP window) waits.

use std::sync::Arc;

use serde_json::{Value, json};
use sluicegate_core::{
    Batch, BatchSender, Error, ErrorKind, MemoryBudget, MemoryLease, Position, ReadRequest, Record,
    Result, RunStats, approx_record_size,
};

/// What a batch's position records.
#[derive(Debug, Clone)]
pub(crate) enum Tracker {
    /// Nothing: the read cannot resume.
    None,
    /// Keyset paging: the value of `column` in the last row (`{"after": v}`).
    Keyset {
        /// The ordering column.
        column: String,
        /// Its value in the last row pushed.
        last: Option<Value>,
    },
    /// Templated pages: the offset of the next row (`{"skip": n}`).
    Offset {
        /// Rows before the next one to read.
        next: u64,
    },
}

impl Tracker {
    /// The position after the rows pushed so far.
    fn position(&self) -> Option<Position> {
        match self {
            Tracker::None => None,
            Tracker::Keyset { last, .. } => {
                last.as_ref().map(|v| Position::new(json!({"after": v})))
            }
            Tracker::Offset { next } => Some(Position::new(json!({"skip": next}))),
        }
    }
}

/// Collects rows into batches of at most `max_rows` rows and `max_bytes` bytes.
pub(crate) struct Batcher {
    tx: BatchSender,
    budget: MemoryBudget,
    stats: Arc<RunStats>,
    max_rows: usize,
    max_bytes: usize,
    rows: Vec<Record>,
    bytes: usize,
    lease: Option<MemoryLease>,
    avg_row: usize,
    tracker: Tracker,
    page: u64,
    total: u64,
    json_columns: Vec<String>,
}

impl Batcher {
    /// A batcher sending into `tx`, accounting on the request's budget.
    pub(crate) fn new(
        request: &ReadRequest,
        tx: BatchSender,
        max_rows: usize,
        tracker: Tracker,
    ) -> Self {
        let capacity = request.budget.capacity();
        Self {
            tx,
            budget: request.budget.clone(),
            stats: request.stats.clone(),
            max_rows,
            // A quarter of the budget per batch leaves room for the batches
            // ahead of it in the pipeline.
            max_bytes: (capacity / 4).max(64 * 1024),
            rows: Vec::new(),
            bytes: 0,
            lease: None,
            avg_row: 256,
            tracker,
            page: 0,
            total: 0,
            json_columns: Vec::new(),
        }
    }

    /// Parses the text in these columns as JSON.
    pub(crate) fn with_json_columns(mut self, columns: Vec<String>) -> Self {
        self.json_columns = columns;
        self
    }

    /// Counts a new fetch or page: batches after it carry its number.
    pub(crate) fn next_page(&mut self) {
        self.page += 1;
        self.stats.add_page();
        self.stats.add_request();
    }

    /// Sets the offset the next row has (templated pages).
    pub(crate) fn set_offset(&mut self, offset: u64) {
        if let Tracker::Offset { next } = &mut self.tracker {
            *next = offset;
        }
    }

    /// Leases memory for the next batch before its rows are fetched (waits
    /// while the budget is full).
    pub(crate) async fn reserve(&mut self) -> Result<()> {
        if self.lease.is_none() {
            let estimate = (self.avg_row * self.max_rows).clamp(1024, self.max_bytes);
            self.lease = Some(self.budget.acquire(estimate).await?);
        }
        Ok(())
    }

    /// Where `row`, the next row to be pushed (perhaps decoded only in part),
    /// is, for an error about one of its values: its number in the read and,
    /// with keyset paging, its key, or the key of the row before it.
    pub(crate) fn locate(&self, row: &Record) -> String {
        let n = self.total + 1;
        match &self.tracker {
            Tracker::Keyset { column, last } => match (row.get(column.as_str()), last) {
                (Some(v), _) if !v.is_null() => format!("row {n} of the read ({column} = {v})"),
                (_, Some(v)) => format!("row {n} of the read (the row after {column} = {v})"),
                _ => format!("row {n} of the read"),
            },
            _ => format!("row {n} of the read"),
        }
    }

    /// Adds one row; sends the batch when it is full.
    pub(crate) async fn push(&mut self, mut record: Record) -> Result<()> {
        self.reserve().await?;
        for column in &self.json_columns {
            if let Some(value) = record.get_mut(column.as_str())
                && let Value::String(text) = value
            {
                *value = serde_json::from_str(text).map_err(|e| {
                    Error::new(
                        ErrorKind::Decode,
                        format!(
                            "row {}: column '{column}' (in jsonColumns) is not valid JSON: {e}",
                            self.total + 1
                        ),
                    )
                })?;
            }
        }
        match &mut self.tracker {
            Tracker::None => {}
            Tracker::Keyset { column, last } => match record.get(column.as_str()) {
                Some(v) if !v.is_null() => *last = Some(v.clone()),
                Some(_) => {
                    return Err(Error::new(
                        ErrorKind::Decode,
                        format!(
                            "row {} has NULL in orderBy column '{column}'; keyset paging needs a unique, non-null column",
                            self.total + 1
                        ),
                    ));
                }
                None => {
                    return Err(Error::config(format!(
                        "orderBy column '{column}' is not among the columns read ({}); \
                         name a column of the table or query",
                        record
                            .keys()
                            .take(12)
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
            },
            Tracker::Offset { next } => *next += 1,
        }
        self.bytes += approx_record_size(&record);
        self.rows.push(record);
        self.total += 1;
        let lease = self.lease.as_mut().expect("reserved above");
        if self.bytes > lease.bytes() {
            // Grow ahead of need; waiting here stops the reader.
            lease.resize(self.bytes + self.bytes / 2).await?;
        }
        if self.rows.len() >= self.max_rows || self.bytes >= self.max_bytes {
            self.flush().await?;
        }
        Ok(())
    }

    /// Sends the rows collected so far, if any.
    pub(crate) async fn flush(&mut self) -> Result<()> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let mut lease = self.lease.take().expect("a batch with rows holds a lease");
        lease.shrink_to(self.bytes);
        let rows = std::mem::take(&mut self.rows);
        self.avg_row = (self.bytes / rows.len()).max(32);
        self.bytes = 0;
        self.stats.add_rows_read(rows.len() as u64);
        let batch = Batch::new(rows, lease)
            .with_position(self.tracker.position())
            .with_page(self.page.max(1));
        self.tx.send(batch).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use sluicegate_core::{channel_stream, into_record};

    #[tokio::test]
    async fn batches_close_at_the_row_limit_and_carry_the_last_key() {
        let request = ReadRequest::new("k", MemoryBudget::new(1 << 20));
        let req = request.clone();
        let stream = channel_stream(move |tx| async move {
            let tracker = Tracker::Keyset {
                column: "id".into(),
                last: None,
            };
            let mut b = Batcher::new(&req, tx, 2, tracker);
            for id in 1..=5 {
                b.push(into_record(json!({"id": id, "name": "x"}))).await?;
            }
            b.flush().await
        });
        let batches: Vec<Batch> = stream.map(|b| b.unwrap()).collect().await;
        let sizes: Vec<usize> = batches.iter().map(Batch::len).collect();
        assert_eq!(sizes, [2, 2, 1]);
        let last: Vec<_> = batches
            .iter()
            .map(|b| b.position().unwrap().to_string())
            .collect();
        assert_eq!(last, [r#"{"after":2}"#, r#"{"after":4}"#, r#"{"after":5}"#]);
        assert!(batches.iter().all(|b| b.bytes() > 0));
        drop(batches);
        assert_eq!(request.budget.in_use(), 0);
    }

    #[tokio::test]
    async fn a_null_key_is_an_error_naming_the_row() {
        let request = ReadRequest::new("k", MemoryBudget::new(1 << 20));
        let req = request.clone();
        let mut stream = channel_stream(move |tx| async move {
            let tracker = Tracker::Keyset {
                column: "id".into(),
                last: None,
            };
            let mut b = Batcher::new(&req, tx, 10, tracker);
            b.push(into_record(json!({"id": 1}))).await?;
            b.push(into_record(json!({"id": null}))).await
        });
        let err = stream.next().await.unwrap().unwrap_err();
        assert!(
            err.message()
                .starts_with("row 2 has NULL in orderBy column 'id'"),
            "{err}"
        );
    }
}
