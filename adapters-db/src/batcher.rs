//! Turns rows into budgeted batches with resume positions.
//!
//! Every provider pushes its rows, one at a time, into a [`Batcher`]: the
//! contract crate's [`BatchBuilder`] plus what a database read adds (the resume
//! position, JSON columns, where a row is for an error). The builder leases
//! memory for the batch being filled from the run's budget *before* rows arrive
//! and grows it as they do: a full budget stops the reader, and the database
//! (through its cursor or the TCP window) waits.

use std::sync::Arc;

use serde_json::{Value, json};
use sluicegate_core::{
    BatchBuilder, BatchLimits, BatchSender, ColumnRows, Error, ErrorKind, FieldTypes, JsonFields,
    Position, ReadRequest, Record, Result, RunStats,
};

/// What a batch's position records.
#[derive(Debug, Clone)]
pub(crate) enum Tracker {
    /// Nothing: the read cannot resume.
    None,
    /// Keyset paging: the value of `column` in the last row (`{"after": v}`),
    /// after the incremental cursor's value when the read is ordered by it
    /// first (`{"cursor": c, "after": v}`).
    Keyset {
        /// The ordering column.
        column: String,
        /// Its value in the last row pushed.
        last: Option<Value>,
        /// The cursor column ordered by before `column`, and its value in the
        /// last row pushed.
        cursor: Option<(String, Option<Value>)>,
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
            Tracker::Keyset {
                last, cursor: None, ..
            } => last.as_ref().map(|v| Position::new(json!({"after": v}))),
            Tracker::Keyset {
                last,
                cursor: Some((_, at)),
                ..
            } => last
                .as_ref()
                .zip(at.as_ref())
                .map(|(v, c)| Position::new(json!({"cursor": c, "after": v}))),
            Tracker::Offset { next } => Some(Position::new(json!({"skip": next}))),
        }
    }
}

/// How a query's rows are written as JSON text (see [`Batcher::text_layout`]).
pub(crate) struct TextLayout {
    /// Each column's field name as JSON text, with its colon (`"id":`).
    fields: Vec<Vec<u8>>,
    /// `(name, index)` of each column the positions record.
    pub(crate) tracked: Vec<(String, usize)>,
}

impl TextLayout {
    /// Starts a row's object in `out` (cleared first); [`TextLayout::field`]
    /// adds each value's field name, and the caller closes it with `}`.
    pub(crate) fn begin(out: &mut Vec<u8>) {
        out.clear();
        out.push(b'{');
    }

    /// Writes column `i`'s field name (after a comma unless it is the
    /// object's first), for its value to follow.
    pub(crate) fn field(&self, i: usize, out: &mut Vec<u8>) {
        if out.len() > 1 {
            out.push(b',');
        }
        out.extend_from_slice(&self.fields[i]);
    }
}

/// Collects rows into batches of at most `max_rows` rows and a quarter of the
/// budget in bytes, through the contract crate's [`BatchBuilder`], and sends
/// them with the position the [`Tracker`] records.
pub(crate) struct Batcher {
    tx: BatchSender,
    builder: BatchBuilder,
    stats: Arc<RunStats>,
    tracker: Tracker,
    page: u64,
    total: u64,
    json_columns: Vec<String>,
    /// The `jsonColumns` whose text is parsed: those the provider did not
    /// already read with a JSON type.
    parsed_json: Vec<String>,
    json_fields: Option<Arc<JsonFields>>,
    field_types: Option<Arc<FieldTypes>>,
    /// The read takes rows as JSON text ([`ReadRequest::json_rows`]).
    json_rows: bool,
    /// The read takes rows as columns ([`ReadRequest::columns`]).
    columns: bool,
}

impl Batcher {
    /// A batcher sending into `tx`, accounting on the request's budget.
    pub(crate) fn new(
        request: &ReadRequest,
        tx: BatchSender,
        max_rows: usize,
        tracker: Tracker,
    ) -> Self {
        let mut builder =
            BatchBuilder::new(request, BatchLimits::for_budget(max_rows, &request.budget));
        builder.set_page(1);
        Self {
            tx,
            builder,
            stats: request.stats.clone(),
            tracker,
            page: 0,
            total: 0,
            json_columns: Vec::new(),
            parsed_json: Vec::new(),
            json_fields: None,
            field_types: None,
            json_rows: request.json_rows,
            columns: request.columns,
        }
    }

    /// Whether rows may be pushed as JSON text ([`Batcher::push_json`]): the
    /// read asks for it and no `jsonColumns` text needs parsing here.
    pub(crate) fn takes_json(&self) -> bool {
        self.json_rows && self.parsed_json.is_empty()
    }

    /// The columns the positions record, as `(name, index)` among a query's
    /// columns named `names`, when the read takes rows as Arrow columns
    /// ([`Batcher::push_columns`]): it asks for them and no `jsonColumns`
    /// text needs parsing here. `None` when it does not, or a recorded column
    /// is not among the query's (the record path reports that).
    pub(crate) fn column_layout<'n>(
        &self,
        names: impl IntoIterator<Item = &'n str>,
    ) -> Option<Vec<(String, usize)>> {
        if !self.columns || !self.parsed_json.is_empty() {
            return None;
        }
        let names: Vec<&str> = names.into_iter().collect();
        self.tracked_at(&names)
    }

    /// The columns the positions record as `(name, index)` among `names`;
    /// `None` when one is not among them.
    fn tracked_at(&self, names: &[&str]) -> Option<Vec<(String, usize)>> {
        self.tracked_columns()
            .iter()
            .map(|t| {
                names
                    .iter()
                    .position(|n| n == t)
                    .map(|i| (t.to_string(), i))
            })
            .collect()
    }

    /// The columns whose values the batch positions record (the keyset
    /// column, the incremental cursor's).
    fn tracked_columns(&self) -> Vec<&str> {
        match &self.tracker {
            Tracker::Keyset { column, cursor, .. } => std::iter::once(column.as_str())
                .chain(cursor.as_ref().map(|(c, _)| c.as_str()))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// How rows of a query with these column names are pushed as JSON text,
    /// when they may be ([`Batcher::takes_json`]): each column's field name
    /// (escaped, with its colon) and the indexes of the columns the positions
    /// record. `None` when they may not, or a recorded column is not among
    /// the query's (the record path reports that).
    pub(crate) fn text_layout<'n>(
        &self,
        names: impl IntoIterator<Item = &'n str>,
    ) -> Option<TextLayout> {
        if !self.takes_json() {
            return None;
        }
        let names: Vec<&str> = names.into_iter().collect();
        let tracked = self.tracked_at(&names)?;
        let fields = names
            .iter()
            .map(|n| {
                let mut field = serde_json::to_vec(n).unwrap_or_default();
                field.push(b':');
                field
            })
            .collect();
        Some(TextLayout { fields, tracked })
    }

    /// Parses the text in these columns as JSON (`jsonColumns`); they are
    /// declared JSON on the batches, and SQL NULL in them is a field left out.
    pub(crate) fn with_json_columns(mut self, columns: Vec<String>) -> Self {
        self.json_columns = columns;
        self.declare_json(&[], &[]);
        self
    }

    /// Declares the columns a query returns with a JSON type (`names[i]` where
    /// `json[i]`; the provider leaves SQL NULL in them out of the record),
    /// together with `jsonColumns`, on every batch sent from now on.
    pub(crate) fn declare_json(&mut self, names: &[String], json: &[bool]) {
        let typed: Vec<String> = names
            .iter()
            .zip(json)
            .filter(|(_, j)| **j)
            .map(|(n, _)| n.clone())
            .collect();
        let fields = JsonFields::new(self.json_columns.iter().chain(&typed).cloned());
        self.json_fields = (!fields.is_empty()).then(|| Arc::new(fields));
        // A column the provider read as JSON already holds its value (a JSON
        // string stays a string, `null` is JSON's): `jsonColumns` leaves it.
        self.parsed_json = self
            .json_columns
            .iter()
            .filter(|c| !typed.contains(c))
            .cloned()
            .collect();
    }

    /// Declares the types of the query's typed columns (see [`FieldTypes`])
    /// on every batch sent from now on; `jsonColumns` are JSON, not typed.
    pub(crate) fn declare_types(&mut self, mut types: FieldTypes) {
        for column in &self.json_columns {
            types.remove(column);
        }
        self.field_types = (!types.is_empty()).then(|| Arc::new(types));
    }

    /// Counts a new fetch or page: batches after it carry its number.
    pub(crate) fn next_page(&mut self) {
        self.page += 1;
        self.builder.set_page(self.page);
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
        self.builder.reserve().await
    }

    /// Where `row`, the next row to be pushed (perhaps decoded only in part),
    /// is, for an error about one of its values: its number in the read and,
    /// with keyset paging, its key, or the key of the row before it.
    pub(crate) fn locate(&self, row: &Record) -> String {
        let n = self.total + 1;
        match &self.tracker {
            Tracker::Keyset { column, last, .. } => match (row.get(column.as_str()), last) {
                (Some(v), _) if !v.is_null() => format!("row {n} of the read ({column} = {v})"),
                (_, Some(v)) => format!("row {n} of the read (the row after {column} = {v})"),
                _ => format!("row {n} of the read"),
            },
            _ => format!("row {n} of the read"),
        }
    }

    /// Adds one row; sends the batch when it is full.
    pub(crate) async fn push(&mut self, mut record: Record) -> Result<()> {
        for column in &self.parsed_json {
            // SQL NULL stays apart from the JSON `null` a text may hold.
            if record.get(column.as_str()).is_some_and(Value::is_null) {
                record.shift_remove(column.as_str());
            }
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
        self.track(&record)?;
        if self.builder.push(record).await? {
            self.flush().await?;
        }
        Ok(())
    }

    /// Adds one row as its JSON text (see [`Batcher::text_layout`]), with the
    /// values of the columns the positions record in `tracked`; sends the
    /// batch when it is full. The text is the source's own writing (one JSON
    /// object from the binary values), so its syntax goes unchecked
    /// ([`BatchBuilder::add_trusted_json`](sluicegate_core::BatchBuilder::add_trusted_json)):
    /// checking it again cost 4% of a PostgreSQL read's CPU. Text that is not
    /// UTF-8 (a database's text values need not be) is an error naming the row.
    pub(crate) async fn push_json(&mut self, text: &[u8], tracked: &Record) -> Result<()> {
        self.builder.reserve().await?;
        let full = self
            .builder
            .add_trusted_json(text)
            .map_err(|e| Error::new(ErrorKind::Decode, format!("{}: {e}", self.locate(tracked))))?;
        self.track(tracked)?;
        self.builder.grow().await?;
        if full {
            self.flush().await?;
        }
        Ok(())
    }

    /// The most bytes a batch holds (a quarter of the budget).
    pub(crate) fn batch_bytes(&self) -> usize {
        self.builder.limits().bytes
    }

    /// Adds rows as Arrow columns (see [`Batcher::column_layout`]), with the
    /// values of the columns the positions record in their last row in
    /// `tracked` (none of the rows has NULL there); sends the batch when it
    /// is full. The columns' bytes are accounted exactly, growing the lease.
    pub(crate) async fn push_columns(&mut self, rows: ColumnRows, tracked: &Record) -> Result<()> {
        let n = rows.len() as u64;
        if n == 0 {
            return Ok(());
        }
        self.builder.reserve().await?;
        self.track(tracked)?;
        self.total += n - 1;
        if let Tracker::Offset { next } = &mut self.tracker {
            *next += n - 1;
        }
        let full = self.builder.add_columns(rows);
        self.builder.grow().await?;
        if full {
            self.flush().await?;
        }
        Ok(())
    }

    /// Follows the values the positions record (or the offset) past `record`.
    fn track(&mut self, record: &Record) -> Result<()> {
        if let Tracker::Keyset {
            cursor: Some((column, at)),
            ..
        } = &mut self.tracker
        {
            match record.get(column.as_str()) {
                Some(v) if !v.is_null() => *at = Some(v.clone()),
                _ => {
                    return Err(Error::config(format!(
                        "incremental.cursorField '{column}' is not among the columns read, or \
                         NULL in row {}; name a column of the table or query",
                        self.total + 1
                    )));
                }
            }
        }
        match &mut self.tracker {
            Tracker::None => {}
            Tracker::Keyset { column, last, .. } => match record.get(column.as_str()) {
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
        self.total += 1;
        Ok(())
    }

    /// Sends the rows collected so far, if any.
    pub(crate) async fn flush(&mut self) -> Result<()> {
        match self.builder.cut(self.tracker.position()).await? {
            Some(batch) => {
                self.tx
                    .send(
                        batch
                            .with_json_fields(self.json_fields.clone())
                            .with_field_types(self.field_types.clone()),
                    )
                    .await
            }
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use sluicegate_core::{Batch, MemoryBudget, channel_stream, into_record};

    #[tokio::test]
    async fn batches_close_at_the_row_limit_and_carry_the_last_key() {
        let request = ReadRequest::new("k", MemoryBudget::new(1 << 20));
        let req = request.clone();
        let stream = channel_stream(move |tx| async move {
            let tracker = Tracker::Keyset {
                column: "id".into(),
                last: None,
                cursor: None,
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

    /// A read keyed by `id` in batches of 10 rows, its rows pushed by `push`.
    fn read_by_id<F, Fut>(push: F) -> sluicegate_core::BatchStream
    where
        F: FnOnce(Batcher) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<()>> + Send + 'static,
    {
        let request = ReadRequest::new("k", MemoryBudget::new(1 << 20));
        channel_stream(move |tx| {
            let tracker = Tracker::Keyset {
                column: "id".into(),
                last: None,
                cursor: None,
            };
            push(Batcher::new(&request, tx, 10, tracker))
        })
    }

    #[tokio::test]
    async fn a_null_key_is_an_error_naming_the_row() {
        let mut stream = read_by_id(|mut b| async move {
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

    #[tokio::test]
    async fn row_text_that_is_not_utf8_is_an_error_naming_the_row() {
        let mut stream = read_by_id(|mut b| async move {
            b.push_json(
                br#"{"id":1,"name":"caf\u00e9"}"#,
                &into_record(json!({"id": 1})),
            )
            .await?;
            // A database's text value in Latin-1, written as it came.
            b.push_json(
                b"{\"id\":2,\"name\":\"caf\xe9\"}",
                &into_record(json!({"id": 2})),
            )
            .await?;
            b.flush().await
        });
        let err = stream.next().await.unwrap().unwrap_err();
        assert_eq!(err.kind(), sluicegate_core::ErrorKind::Decode);
        assert!(
            err.message().starts_with(
                "row 2 of the read (id = 2): a record is not valid JSON: its text is not UTF-8"
            ),
            "{err}"
        );
    }
}
