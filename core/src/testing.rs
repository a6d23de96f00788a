//! In-memory test doubles: a paginated source over a vector of records and a
//! keyed in-memory sink. They implement the real contracts, so they are useful
//! for testing pipelines, transforms and adapters against each other.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde_json::{Value, json};

use crate::batch::{Batch, Position};
use crate::error::{Error, Result};
use crate::paginate::{Page, PageContext, PageSource, paginate};
use crate::record::Record;
use crate::sink::{BatchAck, Sink, SinkWriter, StreamTarget, WriterSummary};
use crate::source::{BatchStream, ReadRequest, Source};

/// Serves a fixed list of records in pages of `page_size`, with offset
/// positions; can be told to fail at one page.
#[derive(Debug, Clone)]
pub struct VecSource {
    records: Arc<Vec<Record>>,
    page_size: usize,
    fail_at_page: Option<u64>,
}

impl VecSource {
    /// A source over `records`, `page_size` records per page.
    pub fn new(records: Vec<Record>, page_size: usize) -> Self {
        Self {
            records: Arc::new(records),
            page_size: page_size.max(1),
            fail_at_page: None,
        }
    }

    /// Makes the read fail when it reaches this 1-based page.
    #[must_use]
    pub fn failing_at_page(mut self, page: u64) -> Self {
        self.fail_at_page = Some(page);
        self
    }
}

#[async_trait]
impl PageSource for VecSource {
    async fn fetch_page(&self, token: Option<&Position>, ctx: &PageContext) -> Result<Page> {
        if self.fail_at_page == Some(ctx.page) {
            return Err(Error::decode("injected failure"));
        }
        let offset = token
            .and_then(|t| t.as_value()["offset"].as_u64())
            .unwrap_or(0) as usize;
        let end = (offset + self.page_size).min(self.records.len());
        let records = self.records.get(offset..end).unwrap_or_default().to_vec();
        let next = (end < self.records.len()).then(|| Position::new(json!({ "offset": end })));
        Ok(Page { records, next })
    }

    fn page_bytes_hint(&self) -> usize {
        64 * 1024
    }
}

impl Source for VecSource {
    fn read(&self, request: ReadRequest) -> BatchStream {
        paginate(Arc::new(self.clone()), request)
    }

    fn describe(&self) -> String {
        format!("{} records in memory", self.records.len())
    }
}

/// The contents of a [`MemorySink`]: table → key → record.
pub type Tables = BTreeMap<String, BTreeMap<String, Record>>;

/// A keyed sink in memory. Records without a key field get their arrival index
/// as key. Can be told to fail on the nth write.
#[derive(Debug, Clone, Default)]
pub struct MemorySink {
    tables: Arc<Mutex<Tables>>,
    writes: Arc<Mutex<u64>>,
    fail_on_write: Option<u64>,
}

impl MemorySink {
    /// An empty sink.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the nth call of `write` (1-based, across all writers) fail.
    #[must_use]
    pub fn failing_on_write(mut self, n: u64) -> Self {
        self.fail_on_write = Some(n);
        self
    }

    /// A copy of everything written so far.
    pub fn tables(&self) -> Tables {
        self.tables
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

#[async_trait]
impl Sink for MemorySink {
    async fn open(&self, target: StreamTarget) -> Result<Box<dyn SinkWriter>> {
        Ok(Box::new(MemoryWriter {
            sink: self.clone(),
            target,
        }))
    }

    fn describe(&self) -> String {
        "in-memory sink".to_owned()
    }
}

struct MemoryWriter {
    sink: MemorySink,
    target: StreamTarget,
}

fn key_of(record: &Record, field: Option<&str>, fallback: usize) -> String {
    match field.and_then(|f| record.get(f)) {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => format!("#{fallback}"),
    }
}

#[async_trait]
impl SinkWriter for MemoryWriter {
    async fn write(&mut self, batch: Batch) -> Result<BatchAck> {
        {
            let mut writes = self
                .sink
                .writes
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            *writes += 1;
            if self.sink.fail_on_write == Some(*writes) {
                return Err(Error::sink("injected write failure"));
            }
        }
        let mut tables = self
            .sink
            .tables
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let table = tables.entry(self.target.table.clone()).or_default();
        let mut ack = BatchAck::default();
        let mut seen = std::collections::BTreeSet::new();
        for record in batch.records() {
            let key = key_of(record, self.target.key_field.as_deref(), table.len());
            if !seen.insert(key.clone()) {
                ack.duplicates += 1;
            }
            match table.insert(key, record.clone()) {
                None => ack.inserted += 1,
                Some(old) if &old == record => ack.unchanged += 1,
                Some(_) => ack.updated += 1,
            }
        }
        ack.rows = batch.len() as u64;
        Ok(ack)
    }

    async fn finish(self: Box<Self>) -> Result<WriterSummary> {
        let tables = self
            .sink
            .tables
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(WriterSummary {
            total_rows: Some(tables.get(&self.target.table).map_or(0, |t| t.len() as u64)),
        })
    }
}

/// `n` records `{"id": i, "name": "record i"}` for `i` in `0..n`.
pub fn numbered_records(n: usize) -> Vec<Record> {
    (0..n)
        .map(|i| crate::record::into_record(json!({"id": i, "name": format!("record {i}")})))
        .collect()
}
