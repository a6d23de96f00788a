//! In-memory test doubles: a paginated source over a vector of records and a
//! keyed in-memory sink. They implement the real contracts, so they are useful
//! for testing pipelines, transforms and adapters against each other.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde_json::{Value, json};

use sluicegate_core::{
    Batch, BatchAck, BatchStream, Error, Page, PageContext, PageSource, Position, ReadRequest,
    Record, Result, Sink, SinkCapabilities, SinkWriter, Source, StreamTarget, WriterExtension,
    WriterSummary, paginate,
};

/// Serves a fixed list of records in pages of `page_size`, with offset
/// positions; can be told to fail, or to panic (a broken source), at one page,
/// and to read on a task of its own ([`channel_stream`](sluicegate_core::channel_stream)).
#[derive(Debug, Clone)]
pub struct VecSource {
    records: Arc<Vec<Record>>,
    page_size: usize,
    fail_at_page: Option<u64>,
    panic_at_page: Option<u64>,
    on_a_task: bool,
}

impl VecSource {
    /// A source over `records`, `page_size` records per page.
    pub fn new(records: Vec<Record>, page_size: usize) -> Self {
        Self {
            records: Arc::new(records),
            page_size: page_size.max(1),
            fail_at_page: None,
            panic_at_page: None,
            on_a_task: false,
        }
    }

    /// Makes the read panic when it reaches this 1-based page: a broken
    /// source, which must end the run with an error, never as the end of the data.
    #[must_use]
    pub fn panicking_at_page(mut self, page: u64) -> Self {
        self.panic_at_page = Some(page);
        self
    }

    /// Reads on a task of its own that feeds the stream, as sources built on
    /// [`channel_stream`](sluicegate_core::channel_stream) do.
    #[must_use]
    pub fn on_a_task(mut self) -> Self {
        self.on_a_task = true;
        self
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
        if self.panic_at_page == Some(ctx.page) {
            panic!("injected panic at page {}", ctx.page);
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
        let pages = paginate(Arc::new(self.clone()), request);
        if !self.on_a_task {
            return pages;
        }
        sluicegate_core::channel_stream(move |tx| async move {
            let mut pages = pages;
            while let Some(batch) = futures::StreamExt::next(&mut pages).await {
                tx.send(batch?).await?;
            }
            Ok(())
        })
    }

    fn describe(&self) -> String {
        format!("{} records in memory", self.records.len())
    }

    /// Read whole, by one shard.
    fn splits(&self) -> bool {
        false
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

    fn capabilities(&self) -> SinkCapabilities {
        SinkCapabilities::none()
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
        // Duplicate keys within the batch are merged: the last record wins.
        let mut latest: Vec<(String, &Record)> = Vec::new();
        let mut index = std::collections::BTreeMap::new();
        for record in batch.records() {
            let key = key_of(
                record,
                self.target.key_field.as_deref(),
                table.len() + latest.len(),
            );
            match index.get(&key) {
                Some(&i) => {
                    ack.duplicates += 1;
                    latest[i] = (key, record);
                }
                None => {
                    index.insert(key.clone(), latest.len());
                    latest.push((key, record));
                }
            }
        }
        for (key, record) in latest {
            ack.rows += 1;
            match table.insert(key, record.clone()) {
                None => ack.inserted += 1,
                Some(old) if &old == record => ack.unchanged += 1,
                Some(_) => ack.updated += 1,
            }
        }
        Ok(ack)
    }

    async fn finish(self: Box<Self>) -> Result<WriterSummary> {
        let tables = self
            .sink
            .tables
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(WriterSummary::default()
            .with_total_rows(tables.get(&self.target.table).map_or(0, |t| t.len() as u64)))
    }

    fn extension(&mut self) -> Option<&mut dyn WriterExtension> {
        None
    }
}

/// `n` records `{"id": i, "name": "record i"}` for `i` in `0..n`.
pub fn numbered_records(n: usize) -> Vec<Record> {
    (0..n)
        .map(|i| sluicegate_core::into_record(json!({"id": i, "name": format!("record {i}")})))
        .collect()
}

/// A keyed sink in memory with request counters: the reference implementation
/// of the [`KeyedSink`](sluicegate_core::KeyedSink) contract used to test the upsert action.
///
/// Entries get ids `e1`, `e2`, ... and versions like Contentful's (create 1,
/// each update +1, publish +1). A write whose fields hold the text `INVALID` in
/// any locale is rejected, like a validation error; while
/// [`refuse_publishing`](Self::refuse_publishing) is on, every publish is refused.
pub struct MemoryKeyedSink {
    model: sluicegate_core::ContentModel,
    key_field: String,
    state: Mutex<KeyedState>,
    max_lookup_keys: usize,
}

#[derive(Default)]
struct KeyedState {
    entries: BTreeMap<String, sluicegate_core::ExistingEntry>,
    archived: BTreeMap<String, sluicegate_core::ExistingEntry>,
    next_id: u64,
    refuse_publishing: bool,
    counts: KeyedCounts,
}

/// Requests a [`MemoryKeyedSink`] has served.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct KeyedCounts {
    /// Lookup requests by key.
    pub key_lookups: u64,
    /// Lookup requests by id.
    pub id_lookups: u64,
    /// Page requests.
    pub pages: u64,
    /// Entries created.
    pub creates: u64,
    /// Entries updated.
    pub updates: u64,
    /// Entries published.
    pub publishes: u64,
    /// Entries deleted or archived.
    pub removes: u64,
}

impl MemoryKeyedSink {
    /// An empty sink for `model`, matching records on `key_field`.
    pub fn new(model: sluicegate_core::ContentModel, key_field: &str) -> Self {
        Self {
            model,
            key_field: key_field.to_owned(),
            state: Mutex::new(KeyedState::default()),
            max_lookup_keys: 50,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, KeyedState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Requests served so far.
    pub fn counts(&self) -> KeyedCounts {
        self.state().counts
    }

    /// Refuses every publish while `on` (a validation error), as a platform does
    /// for an entry that may not go live.
    pub fn refuse_publishing(&self, on: bool) {
        self.state().refuse_publishing = on;
    }

    /// Every live entry, by id.
    pub fn entries(&self) -> BTreeMap<String, sluicegate_core::ExistingEntry> {
        self.state().entries.clone()
    }

    /// Every archived entry, by id (out of lookups, as a platform lists them).
    pub fn archived(&self) -> BTreeMap<String, sluicegate_core::ExistingEntry> {
        self.state().archived.clone()
    }

    /// Puts an entry in directly (as if made by someone else); returns its id.
    pub fn seed(&self, fields: sluicegate_core::EntryFields, metadata: Option<Value>) -> String {
        let mut st = self.state();
        st.next_id += 1;
        let id = format!("e{}", st.next_id);
        st.entries.insert(
            id.clone(),
            sluicegate_core::ExistingEntry {
                id: id.clone(),
                version: 1,
                fields,
                metadata,
                publish_pending: false,
            },
        );
        id
    }

    fn key_of(&self, entry: &sluicegate_core::ExistingEntry) -> Option<String> {
        match entry
            .fields
            .get(&self.key_field)?
            .get(self.model.default_locale())?
        {
            Value::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        }
    }
}

fn is_invalid(fields: &sluicegate_core::EntryFields) -> bool {
    fields
        .values()
        .filter_map(Value::as_object)
        .flat_map(|m| m.values())
        .any(|v| v.as_str() == Some("INVALID"))
}

#[async_trait]
impl sluicegate_core::KeyedSink for MemoryKeyedSink {
    fn capabilities(&self) -> sluicegate_core::KeyedCapabilities {
        sluicegate_core::KeyedCapabilities {
            max_lookup_keys: self.max_lookup_keys,
            max_page_size: 100,
            publish: true,
            delete_modes: &[
                sluicegate_core::DeleteMode::Hard,
                sluicegate_core::DeleteMode::Archive,
            ],
        }
    }

    async fn remove(
        &self,
        _target: &StreamTarget,
        entries: Vec<sluicegate_core::ExistingEntry>,
        mode: sluicegate_core::DeleteMode,
    ) -> Vec<Result<()>> {
        let mut st = self.state();
        entries
            .into_iter()
            .map(|entry| {
                st.counts.removes += 1;
                if let Some(gone) = st.entries.remove(&entry.id)
                    && mode == sluicegate_core::DeleteMode::Archive
                {
                    st.archived.insert(gone.id.clone(), gone);
                }
                Ok(())
            })
            .collect()
    }

    async fn model(&self, _target: &StreamTarget) -> Result<sluicegate_core::ContentModel> {
        Ok(self.model.clone())
    }

    async fn lookup(
        &self,
        _target: &StreamTarget,
        lookup: sluicegate_core::Lookup<'_>,
    ) -> Result<sluicegate_core::LookupPage> {
        use sluicegate_core::{Lookup, LookupPage};
        let mut st = self.state();
        let page = match lookup {
            Lookup::Keys(keys) => {
                st.counts.key_lookups += 1;
                let entries = st
                    .entries
                    .values()
                    .filter(|e| self.key_of(e).is_some_and(|k| keys.contains(&k)))
                    .cloned()
                    .collect();
                LookupPage {
                    entries,
                    total: None,
                }
            }
            Lookup::Ids(ids) => {
                st.counts.id_lookups += 1;
                let entries = ids
                    .iter()
                    .filter_map(|id| st.entries.get(id).cloned())
                    .collect();
                LookupPage {
                    entries,
                    total: None,
                }
            }
            Lookup::Page { skip, limit } => {
                st.counts.pages += 1;
                let entries = st
                    .entries
                    .values()
                    .skip(skip as usize)
                    .take(limit as usize)
                    .cloned()
                    .collect();
                LookupPage {
                    entries,
                    total: Some(st.entries.len() as u64),
                }
            }
        };
        Ok(page)
    }

    async fn write(
        &self,
        _target: &StreamTarget,
        ops: Vec<sluicegate_core::WriteOp>,
    ) -> Vec<Result<sluicegate_core::Written>> {
        use sluicegate_core::{ExistingEntry, WriteOp, Written};
        let mut st = self.state();
        ops.into_iter()
            .map(|op| match op {
                WriteOp::Create { fields, .. } | WriteOp::Update { fields, .. }
                    if is_invalid(&fields) =>
                {
                    Err(Error::sink("validation failed: INVALID is not allowed"))
                }
                WriteOp::Create { id, fields } => {
                    st.counts.creates += 1;
                    st.next_id += 1;
                    let id = id.unwrap_or_else(|| format!("e{}", st.next_id));
                    st.entries.insert(
                        id.clone(),
                        ExistingEntry {
                            id: id.clone(),
                            version: 1,
                            fields,
                            metadata: None,
                            publish_pending: true,
                        },
                    );
                    Ok(Written { id, version: 1 })
                }
                WriteOp::Update { existing, fields } => {
                    st.counts.updates += 1;
                    let Some(entry) = st.entries.get_mut(&existing.id) else {
                        return Err(Error::sink(format!("entry {} does not exist", existing.id)));
                    };
                    if entry.version != existing.version {
                        return Err(Error::sink(format!("version mismatch on {}", existing.id)));
                    }
                    entry.version += 1;
                    entry.fields = fields;
                    entry.publish_pending = true;
                    Ok(Written {
                        id: entry.id.clone(),
                        version: entry.version,
                    })
                }
            })
            .collect()
    }

    async fn publish(
        &self,
        _target: &StreamTarget,
        items: Vec<sluicegate_core::Written>,
    ) -> Vec<Result<sluicegate_core::Written>> {
        let mut st = self.state();
        let refuse = st.refuse_publishing;
        items
            .into_iter()
            .map(|w| {
                st.counts.publishes += 1;
                let entry = st
                    .entries
                    .get_mut(&w.id)
                    .ok_or_else(|| Error::sink(format!("entry {} does not exist", w.id)))?;
                if refuse {
                    return Err(Error::sink("validation failed: publishing is refused"));
                }
                entry.version += 1;
                entry.publish_pending = false;
                Ok(sluicegate_core::Written {
                    id: w.id,
                    version: entry.version,
                })
            })
            .collect()
    }

    fn describe(&self) -> String {
        "in-memory keyed sink".to_owned()
    }
}
