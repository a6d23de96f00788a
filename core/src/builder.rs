//! The one way sources build batches: [`BatchBuilder`] and [`PageLoopGuard`].
//!
//! Every source in the workspace (the HTTP source, the database sources, the
//! re-drive of dead letters, [`paginate`](crate::paginate) and the example
//! adapter) fills its batches through a [`BatchBuilder`]:
//!
//! 1. **lease before reading**: [`BatchBuilder::reserve`] takes the expected size of
//!    the next batch from the run's budget, so a full budget stops the reader
//!    before it fetches anything;
//! 2. **grow as records arrive**: [`BatchBuilder::push`] sizes each record once
//!    and grows the lease ahead of need (waiting here stops the reader too);
//! 3. **flush by rows or bytes**: [`BatchLimits`] says when a batch is full;
//! 4. **count**: [`BatchBuilder::cut`] counts the batch's rows on the run's
//!    counters, [`BatchBuilder::end_page`] also counts a page.
//!
//! A source whose pages are chained by tokens detects a pagination loop with a
//! [`PageLoopGuard`].

use std::collections::VecDeque;
use std::sync::Arc;

use crate::batch::{Batch, Position};
use crate::budget::{MemoryBudget, MemoryLease};
use crate::columns::ColumnRows;
use crate::error::{Error, ErrorKind, Result};
use crate::json_rows::JsonRows;
use crate::record::{Record, approx_record_size};
use crate::source::ReadRequest;
use crate::stats::RunStats;

/// When a batch being built is full: at `rows` records or `bytes` bytes,
/// whichever comes first. `rows` is a maximum; `bytes` is reached by the record
/// that crosses it (a record is never split).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct BatchLimits {
    /// Most records per batch.
    pub rows: usize,
    /// Bytes (as [`approx_record_size`] counts them) at which a batch is full.
    pub bytes: usize,
}

impl BatchLimits {
    /// Limits of `rows` records and `bytes` bytes (each at least 1).
    pub fn new(rows: usize, bytes: usize) -> Self {
        Self {
            rows: rows.max(1),
            bytes: bytes.max(1),
        }
    }

    /// `rows` records, and a quarter of the budget (at least 64 KiB): room for
    /// the batches ahead of this one in the pipeline.
    pub fn for_budget(rows: usize, budget: &MemoryBudget) -> Self {
        Self::new(rows, (budget.capacity() / 4).max(64 * 1024))
    }

    /// Whether a batch of `rows` records and `bytes` bytes is full.
    pub fn is_full(&self, rows: usize, bytes: usize) -> bool {
        rows >= self.rows || bytes >= self.bytes
    }
}

/// Fills one batch at a time under the run's memory budget.
///
/// ```
/// # use sluicegate_core::{BatchBuilder, BatchLimits, MemoryBudget, ReadRequest, into_record, Position};
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let request = ReadRequest::new("orders", MemoryBudget::new(1 << 20));
/// let mut builder = BatchBuilder::new(&request, BatchLimits::for_budget(2, &request.budget));
/// let mut batches = Vec::new();
/// builder.reserve().await?; // before fetching the page
/// for id in 1..=3 {
///     if builder.push(into_record(serde_json::json!({"id": id}))).await? {
///         batches.extend(builder.cut(None).await?); // full: no position mid-page
///     }
/// }
/// batches.push(builder.end_page(Some(Position::new(serde_json::json!({"page": 2})))).await?);
/// assert_eq!(batches.iter().map(|b| b.len()).collect::<Vec<_>>(), [2, 1]);
/// assert_eq!(request.stats.rows_read(), 3);
/// assert_eq!(request.stats.snapshot().pages, 1);
/// # Ok::<(), sluicegate_core::Error>(())
/// # }).unwrap();
/// ```
pub struct BatchBuilder {
    budget: MemoryBudget,
    stats: Arc<RunStats>,
    limits: BatchLimits,
    records: Vec<Record>,
    /// Records added as JSON text ([`BatchBuilder::add_json`]).
    json: Option<JsonRows>,
    /// Records added as columns ([`BatchBuilder::add_columns`]).
    columns: Option<ColumnRows>,
    bytes: usize,
    lease: Option<MemoryLease>,
    /// Bytes to lease for the next batch before its records are known.
    estimate: usize,
    page: Option<u64>,
}

impl BatchBuilder {
    /// A builder accounting on `request`'s budget and counters.
    pub fn new(request: &ReadRequest, limits: BatchLimits) -> Self {
        Self {
            budget: request.budget.clone(),
            stats: request.stats.clone(),
            limits,
            records: Vec::new(),
            json: None,
            columns: None,
            bytes: 0,
            lease: None,
            estimate: 256usize
                .saturating_mul(limits.rows)
                .clamp(1024, limits.bytes.max(1024)),
            page: None,
        }
    }

    /// Leases `bytes` for the first batch (before its records are known)
    /// instead of an estimate from the limits.
    #[must_use]
    pub fn with_estimate(mut self, bytes: usize) -> Self {
        self.estimate = bytes.max(1);
        self
    }

    /// Stamps the batches built from now on with source page `page` (1-based).
    pub fn set_page(&mut self, page: u64) {
        self.page = Some(page);
    }

    /// The page batches are stamped with, if any.
    pub fn page(&self) -> Option<u64> {
        self.page
    }

    /// The limits batches are cut at.
    pub fn limits(&self) -> BatchLimits {
        self.limits
    }

    /// What the next batch will lease before its records are known: the size of
    /// the last batch cut (at least 4 KiB), or the first estimate.
    pub fn estimate(&self) -> usize {
        self.estimate
    }

    /// Leases memory for the batch about to be read, unless it holds some
    /// already. Waits while the budget is full: call it before fetching.
    pub async fn reserve(&mut self) -> Result<()> {
        if self.lease.is_none() {
            self.lease = Some(self.budget.acquire(self.estimate).await?);
        }
        Ok(())
    }

    /// Adds a record without touching the lease (sizing it once); returns
    /// whether the batch is full. Call [`grow`](Self::grow) (or
    /// [`cut`](Self::cut), which covers the batch exactly) to account it.
    pub fn add(&mut self, record: Record) -> bool {
        self.bytes += approx_record_size(&record);
        self.records.push(record);
        self.is_full()
    }

    /// Adds a record as its JSON text (checked: one JSON object, or another
    /// value wrapped as `{"value": ...}`; see [`JsonRows::push`]), accounting
    /// the bytes the text takes; returns whether the batch is full. A batch
    /// given records both ways ([`add`](Self::add) too) is cut as records.
    pub fn add_json(&mut self, text: &[u8]) -> std::result::Result<bool, String> {
        let rows = self.json.get_or_insert_with(JsonRows::new);
        let before = rows.heap_bytes();
        rows.push(text)?;
        self.bytes = self.bytes + rows.heap_bytes() - before;
        Ok(self.is_full())
    }

    /// Adds a record as JSON text its caller wrote itself as one JSON object,
    /// checked for UTF-8 only (see [`JsonRows::push_trusted`]), accounting
    /// the bytes the text takes; returns whether the batch is full.
    pub fn add_trusted_json(&mut self, text: &[u8]) -> std::result::Result<bool, String> {
        let rows = self.json.get_or_insert_with(JsonRows::new);
        let before = rows.heap_bytes();
        rows.push_trusted(text)?;
        self.bytes = self.bytes + rows.heap_bytes() - before;
        Ok(self.is_full())
    }

    /// Adds records as Arrow columns (see [`ColumnRows`]), accounting the
    /// bytes their arrays take; returns whether the batch is full. A batch
    /// given records in more than one form is cut as records (those added as
    /// columns last): a source that switches forms cuts the batch first.
    pub fn add_columns(&mut self, mut rows: ColumnRows) -> bool {
        self.bytes += rows.heap_bytes();
        match &mut self.columns {
            Some(columns) => columns.append(&mut rows),
            None => self.columns = Some(rows),
        }
        self.is_full()
    }

    /// Adds a record, reserving first and growing the lease ahead of need
    /// (waiting while the budget is full); returns whether the batch is full.
    pub async fn push(&mut self, record: Record) -> Result<bool> {
        self.reserve().await?;
        let full = self.add(record);
        self.grow().await?;
        Ok(full)
    }

    /// Grows the lease to cover the records added so far, with room for half
    /// as many more (waiting while the budget is full).
    pub async fn grow(&mut self) -> Result<()> {
        let lease = match &mut self.lease {
            Some(lease) => lease,
            None => self.lease.insert(self.budget.empty_lease()),
        };
        if self.bytes > lease.bytes() {
            lease.resize(self.bytes + self.bytes / 2).await?;
        }
        Ok(())
    }

    /// Gives the lease's memory back while keeping the records, for a page
    /// fetched ahead of its turn that must not hold memory the page before it
    /// may be waiting for. [`cut`](Self::cut) accounts the records again.
    pub fn release(&mut self) {
        if let Some(lease) = &mut self.lease {
            lease.shrink_to(0);
        }
    }

    /// Whether the batch has reached its limits.
    pub fn is_full(&self) -> bool {
        self.limits.is_full(self.len(), self.bytes)
    }

    /// The records added so far.
    pub fn records(&self) -> &[Record] {
        &self.records
    }

    /// The records added as JSON text so far, if any.
    pub fn json_rows(&self) -> Option<&JsonRows> {
        self.json.as_ref()
    }

    /// Number of records added so far.
    pub fn len(&self) -> usize {
        self.records.len()
            + self.json.as_ref().map_or(0, JsonRows::len)
            + self.columns.as_ref().map_or(0, ColumnRows::len)
    }

    /// Whether no record was added since the last cut.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of the records added so far.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The batch of the records added so far, its lease fitted to their size
    /// (waiting if it must grow), with `position` after it; `None` when there
    /// are no records. Counts the rows as read.
    pub async fn cut(&mut self, position: Option<Position>) -> Result<Option<Batch>> {
        if self.is_empty() {
            return Ok(None);
        }
        self.take(position).await.map(Some)
    }

    /// Ends a page: the batch of its (remaining) records with `position`
    /// after it, even when empty (an empty page still moves the position on).
    /// Counts the rows as read and the page.
    pub async fn end_page(&mut self, position: Option<Position>) -> Result<Batch> {
        let batch = self.take(position).await?;
        self.stats.add_page();
        Ok(batch)
    }

    async fn take(&mut self, position: Option<Position>) -> Result<Batch> {
        let mut lease = match self.lease.take() {
            Some(lease) => lease,
            None => self.budget.empty_lease(),
        };
        if self.bytes > lease.bytes() {
            lease.resize(self.bytes).await?;
        } else {
            lease.shrink_to(self.bytes);
        }
        let rows = self.len();
        self.stats.add_rows_read(rows as u64);
        if rows > 0 {
            self.estimate = self.bytes.max(4096);
        }
        self.bytes = 0;
        let records = std::mem::take(&mut self.records);
        let mut batch = match (self.json.take(), self.columns.take()) {
            (Some(json), None) if records.is_empty() => Batch::from_json(json, lease),
            (None, Some(columns)) if records.is_empty() => Batch::from_columns(columns, lease),
            (None, None) => Batch::new(records, lease),
            (json, columns) => {
                // More than one form was added: records, in the order they
                // came (JSON text, then columns, last).
                let mut records = records;
                if let Some(json) = json {
                    records.extend(json.decode()?);
                }
                if let Some(columns) = columns {
                    records.extend(columns.decode()?);
                }
                Batch::new(records, lease)
            }
        }
        .with_position(position);
        if let Some(page) = self.page {
            batch = batch.with_page(page);
        }
        Ok(batch)
    }
}

/// How many recent tokens a [`PageLoopGuard`] remembers.
const LOOP_WINDOW: usize = 4;

/// Detects a pagination loop: a next token equal to the current one or to one
/// of the last few used.
#[derive(Debug, Default)]
pub struct PageLoopGuard {
    current: Option<Position>,
    recent: VecDeque<Position>,
}

impl PageLoopGuard {
    /// A guard for a read starting at `start` (`None`: the first page).
    pub fn new(start: Option<Position>) -> Self {
        Self {
            current: start,
            recent: VecDeque::new(),
        }
    }

    /// The token of the page being read.
    pub fn current(&self) -> Option<&Position> {
        self.current.as_ref()
    }

    /// Checks the token page `page` returned: an error naming the page when
    /// it was used already.
    pub fn check(&self, page: u64, next: &Position) -> Result<()> {
        if self.current.as_ref() == Some(next) || self.recent.contains(next) {
            return Err(Error::new(
                ErrorKind::Decode,
                format!(
                    "pagination loop: page {page} returned next token {next}, which was already used; \
                     check the pagination settings"
                ),
            )
            .with_context("page", page));
        }
        Ok(())
    }

    /// Moves on to the page `next` points to.
    pub fn advance(&mut self, next: Position) {
        if let Some(previous) = self.current.replace(next) {
            self.recent.push_back(previous);
            if self.recent.len() > LOOP_WINDOW {
                self.recent.pop_front();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::into_record;
    use serde_json::json;

    fn record(i: u64) -> Record {
        into_record(json!({"id": i, "name": "x".repeat(20)}))
    }

    #[tokio::test]
    async fn batches_are_cut_at_the_row_limit_and_hold_exactly_their_bytes() {
        let request = ReadRequest::new("k", MemoryBudget::new(1 << 20));
        let mut b = BatchBuilder::new(&request, BatchLimits::new(2, 1 << 20));
        let mut out = Vec::new();
        for i in 0..5 {
            if b.push(record(i)).await.unwrap() {
                out.extend(b.cut(None).await.unwrap());
            }
        }
        out.extend(b.cut(Some(Position::new(json!(5)))).await.unwrap());
        assert_eq!(out.iter().map(Batch::len).collect::<Vec<_>>(), [2, 2, 1]);
        for batch in &out {
            let size: usize = batch.records().iter().map(approx_record_size).sum();
            assert_eq!(batch.bytes(), size, "the lease is the records' size");
        }
        assert_eq!(out[2].position(), Some(&Position::new(json!(5))));
        assert_eq!(
            request.budget.in_use(),
            out.iter().map(Batch::bytes).sum::<usize>()
        );
        assert_eq!(request.stats.rows_read(), 5);
        assert_eq!(
            request.stats.snapshot().pages,
            0,
            "cut does not count pages"
        );
        drop(out);
        assert_eq!(request.budget.in_use(), 0);
    }

    #[tokio::test]
    async fn the_byte_limit_cuts_too_and_a_cut_of_nothing_is_none() {
        let request = ReadRequest::new("k", MemoryBudget::new(1 << 20));
        let size = approx_record_size(&record(0));
        let mut b = BatchBuilder::new(&request, BatchLimits::new(1000, size * 3));
        assert!(!b.push(record(0)).await.unwrap());
        assert!(!b.push(record(1)).await.unwrap());
        assert!(
            b.push(record(2)).await.unwrap(),
            "three records reach the bytes"
        );
        assert_eq!(b.cut(None).await.unwrap().unwrap().len(), 3);
        assert!(b.cut(None).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn an_empty_page_is_a_batch_with_its_position_and_counts_a_page() {
        let request = ReadRequest::new("k", MemoryBudget::new(1 << 20));
        let mut b = BatchBuilder::new(&request, BatchLimits::new(10, 1 << 20));
        b.set_page(7);
        b.reserve().await.unwrap();
        let batch = b.end_page(Some(Position::new(json!(8)))).await.unwrap();
        assert!(batch.is_empty());
        assert_eq!(batch.pages(), Some((7, 7)));
        assert_eq!(batch.position(), Some(&Position::new(json!(8))));
        assert_eq!(batch.bytes(), 0);
        assert_eq!(request.stats.snapshot().pages, 1);
        assert_eq!(request.budget.in_use(), 0);
    }

    #[tokio::test]
    async fn reserving_waits_while_the_budget_is_full() {
        let request = ReadRequest::new("k", MemoryBudget::new(64 * 1024));
        let mut b =
            BatchBuilder::new(&request, BatchLimits::new(10, 1 << 20)).with_estimate(48 * 1024);
        b.reserve().await.unwrap();
        b.push(record(1)).await.unwrap();
        let held = b.cut(None).await.unwrap().unwrap();
        let held_bytes = held.bytes();
        // The next estimate is what the last batch needed (at least 4 KiB).
        assert_eq!(b.estimate(), held_bytes.max(4096));
        drop(held);
        let hog = request.budget.acquire(64 * 1024).await.unwrap();
        let blocked =
            tokio::time::timeout(std::time::Duration::from_millis(100), b.reserve()).await;
        assert!(
            blocked.is_err(),
            "no memory: the reader waits before fetching"
        );
        drop(hog);
        tokio::time::timeout(std::time::Duration::from_secs(5), b.reserve())
            .await
            .expect("released memory unblocks the reader")
            .unwrap();
    }

    #[tokio::test]
    async fn a_released_page_holds_no_memory_until_it_is_cut() {
        let request = ReadRequest::new("k", MemoryBudget::new(1 << 20));
        let mut b = BatchBuilder::new(&request, BatchLimits::new(100, 1 << 20));
        b.reserve().await.unwrap();
        for i in 0..10 {
            b.add(record(i));
        }
        b.release();
        assert_eq!(request.budget.in_use(), 0);
        let batch = b.end_page(None).await.unwrap();
        assert_eq!(batch.len(), 10);
        assert_eq!(request.budget.in_use(), batch.bytes());
        assert!(batch.bytes() > 0);
    }

    #[test]
    fn the_loop_guard_refuses_a_token_used_in_the_last_pages() {
        let t = |i: u64| Position::new(json!(i));
        let mut guard = PageLoopGuard::new(None);
        guard.check(1, &t(1)).unwrap();
        guard.advance(t(1));
        let err = guard.check(2, &t(1)).unwrap_err();
        assert!(
            err.to_string()
                .contains("pagination loop: page 2 returned next token 1"),
            "{err}"
        );
        for i in 2..=6 {
            guard.check(i, &t(i)).unwrap();
            guard.advance(t(i));
        }
        assert!(guard.check(7, &t(3)).is_err(), "remembered");
        guard.check(7, &t(1)).expect("forgotten after the window");
        assert_eq!(guard.current(), Some(&t(6)));
    }
}
