//! The upsert bulk action: syncing mapped records into a [`KeyedSink`] through a
//! bounded cache of existing entries, writing only what changed.
//!
//! Per batch, [`UpsertWriter`]:
//! 1. converts each mapped (flat) record to typed fields with the target's
//!    [`ContentModel`]; a record that does not convert, or has no key, is rejected
//!    (reported to the observer) and the batch goes on;
//! 2. merges records with the same key: the last one wins, whole (the same rule
//!    as every sink's), and each merge is counted as a duplicate;
//! 3. consults the cache (key → id, version, digest of the mapped fields): a digest
//!    equal to the record's means unchanged, with no request at all;
//! 4. looks the misses up by key, and the cache hits whose digest differs by id,
//!    in as few requests as the sink's `max_lookup_keys` allows;
//! 5. classifies each record as new, changed (listing changed fields when the
//!    observer wants them) or unchanged;
//! 6. with `--apply`, creates new entries and updates changed ones: the update
//!    body is the existing entry with only the mapped fields replaced, so unmapped
//!    fields, other locales and metadata survive; then publishes what it wrote,
//!    and entries whose fields are unchanged but whose current version is not
//!    live (a draft, or a failed publish). A record refused at publish is a
//!    failed record, reported like a refused write.
//!
//! The cache is bounded by entries and by bytes (and optionally a time-to-live),
//! so memory never grows with the dataset. When the whole target fits the cache,
//! it is prefetched page by page on the first batch: then a cache miss means "new"
//! without any lookup, until the first eviction.

use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Map, Value};
use sluicegate_core::{
    Batch, BatchAck, CacheStats, ContentModel, DeleteMode, EntryFields, Error, ErrorKind,
    ExistingEntry, KeyedSink, Lookup, MemoryRelief, PrepareBatch, Record, Rejected, Result,
    SinkPosition, SinkWriter, Stage, StreamTarget, TargetKeys, WriteOp, WriterExtension,
    WriterSummary, Written,
};

use crate::convert::{comparable, convert};

/// Bounds of the lookup cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheConfig {
    /// Most entries held.
    pub max_entries: u64,
    /// Most bytes held (keys, ids and bookkeeping).
    pub max_bytes: u64,
    /// Forget entries after this long, so long runs do not trust stale versions.
    pub ttl: Option<Duration>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            max_entries: 10_000,
            max_bytes: 4 << 20,
            ttl: None,
        }
    }
}

impl CacheConfig {
    /// At most `max_entries` entries and `max_bytes` bytes, kept until evicted.
    pub fn new(max_entries: u64, max_bytes: u64) -> Self {
        Self {
            max_entries,
            max_bytes,
            ttl: None,
        }
    }

    /// Entries are forgotten after `ttl`.
    pub fn with_ttl(mut self, ttl: Option<Duration>) -> Self {
        self.ttl = ttl;
        self
    }
}

/// Whether to load the whole target into the cache up front.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefetch {
    /// When the target's total fits the cache.
    Auto,
    /// Never; look every miss up.
    Never,
}

/// How the upsert behaves.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct UpsertOptions {
    /// Plan only: look up and compare, write and publish nothing.
    pub dry_run: bool,
    /// Publish what was written (when the sink has a publishing step); a dry
    /// run only counts what it would publish.
    pub publish: bool,
    /// Cache bounds.
    pub cache: CacheConfig,
    /// Prefetching.
    pub prefetch: Prefetch,
}

impl UpsertOptions {
    /// Writing (`dry_run: false`) or planning, publishing or not, with the
    /// default cache and prefetching when the target fits it.
    pub fn new(dry_run: bool, publish: bool) -> Self {
        Self {
            dry_run,
            publish,
            cache: CacheConfig::default(),
            prefetch: Prefetch::Auto,
        }
    }

    /// With these cache bounds.
    pub fn with_cache(mut self, cache: CacheConfig) -> Self {
        self.cache = cache;
        self
    }

    /// With this prefetching.
    pub fn with_prefetch(mut self, prefetch: Prefetch) -> Self {
        self.prefetch = prefetch;
        self
    }
}

#[derive(Debug, Clone)]
struct Cached {
    id: Arc<str>,
    version: u64,
    digest: u64,
    /// The entry's current version is not live (see [`ExistingEntry::publish_pending`]).
    publish_pending: bool,
}

struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
}

/// One record on its way through the action.
struct Candidate {
    key: String,
    id: Option<String>,
    fields: EntryFields,
    digest: u64,
    record: Record,
}

/// What happened to a candidate.
enum Plan {
    Unchanged,
    Create,
    Update(ExistingEntry),
    /// Fields unchanged, but the current version is not live: publish it.
    Publish {
        id: String,
        version: u64,
    },
}

/// The writes of a batch, and the entries to publish that need no write.
#[derive(Default)]
struct Pending {
    ops: Vec<WriteOp>,
    /// The candidate of each write, and whether it is an update.
    op_cands: Vec<(Candidate, bool)>,
    publish: Vec<ToPublish>,
}

/// An entry to publish, with what its record was counted as.
struct ToPublish {
    key: String,
    record: Record,
    counted: Counted,
    written: Written,
}

/// How a written record was counted, so a failed publish can take it back.
#[derive(Clone, Copy)]
enum Counted {
    Inserted,
    Updated,
}

/// Syncs batches of mapped records into a [`KeyedSink`]; see the module docs.
///
/// bounded cache of existing entries, writing only what changed.
///
/// Per batch, [`UpsertWriter`]:
/// 1. converts each mapped (flat) record to typed fields with the target's
///    [`ContentModel`]; a record that does not convert, or has no key, is rejected
///    (reported to the observer) and the batch goes on;
/// 2. merges records with the same key: the last one wins, whole (the same rule
///    as every sink's), and each merge is counted as a duplicate;
/// 3. consults the cache (key → id, version, digest of the mapped fields): a digest
///    equal to the record's means unchanged, with no request at all;
/// 4. looks the misses up by key, and the cache hits whose digest differs by id,
///    in as few requests as the sink's `max_lookup_keys` allows;
/// 5. classifies each record as new, changed (listing changed fields when the
///    observer wants them) or unchanged;
/// 6. with `--apply`, creates new entries and updates changed ones: the update
///    body is the existing entry with only the mapped fields replaced, so unmapped
///    fields, other locales and metadata survive; then publishes what it wrote,
///    and entries whose fields are unchanged but whose current version is not
///    live (a draft, or a failed publish). A record refused at publish is a
///    failed record, reported like a refused write.
///
/// The cache is bounded by entries and by bytes (and optionally a time-to-live),
/// so memory never grows with the dataset. When the whole target fits the cache,
/// it is prefetched page by page on the first batch: then a cache miss means "new"
/// without any lookup, until the first eviction.
pub struct UpsertWriter<K: KeyedSink> {
    sink: Arc<K>,
    target: StreamTarget,
    options: UpsertOptions,
    key_field: String,
    model: Option<Arc<ContentModel>>,
    cache: moka::sync::Cache<String, Cached>,
    counters: Arc<Counters>,
    /// The cache holds every existing entry (prefetched, nothing evicted since).
    complete: Arc<AtomicBool>,
    prefetched: bool,
    /// The prefetch loaded the target.
    prefetch_loaded: bool,
    published: u64,
}

impl<K: KeyedSink> UpsertWriter<K> {
    /// A writer for one stream. The target's key field may carry `cute`'s locale
    /// suffix (`id.en`); it is ignored.
    pub fn new(sink: Arc<K>, target: StreamTarget, options: UpsertOptions) -> Result<Self> {
        let key_field = target.key_field.as_deref().ok_or_else(|| {
            Error::config(format!(
                "sync '{}' needs a keyField to sync into {}",
                target.sync_key,
                sink.describe()
            ))
        })?;
        let key_field = key_field.split('.').next().unwrap_or(key_field).to_owned();
        let counters = Arc::new(Counters {
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        });
        let complete = Arc::new(AtomicBool::new(false));
        let cfg = options.cache;
        let floor = u32::try_from(cfg.max_bytes / cfg.max_entries.max(1))
            .unwrap_or(u32::MAX)
            .max(1);
        let mut builder = moka::sync::Cache::builder()
            .max_capacity(cfg.max_bytes.max(1))
            .weigher(move |k: &String, v: &Cached| -> u32 {
                let bytes = u32::try_from(k.len() + v.id.len() + 96).unwrap_or(u32::MAX);
                bytes.max(floor)
            })
            .eviction_listener({
                let counters = counters.clone();
                let stats = target.stats.clone();
                let complete = complete.clone();
                move |_k, _v, cause| {
                    if cause.was_evicted() {
                        counters.evictions.fetch_add(1, Ordering::Relaxed);
                        stats.add_cache_eviction();
                        complete.store(false, Ordering::Relaxed);
                    }
                }
            });
        if let Some(ttl) = cfg.ttl {
            builder = builder.time_to_live(ttl);
        }
        Ok(Self {
            sink,
            target,
            options,
            key_field,
            model: None,
            cache: builder.build(),
            counters,
            complete,
            prefetched: false,
            prefetch_loaded: false,
            published: 0,
        })
    }

    fn reject(&self, stage: Stage, key: Option<String>, reason: String, record: Record) {
        tracing::warn!(sync = %self.target.sync_key, ?stage, key = key.as_deref().unwrap_or("-"), %reason, "record rejected");
        self.target.observer.rejected(
            &self.target.sync_key,
            Rejected {
                stage,
                key,
                reason,
                record,
            },
        );
    }

    async fn model(&mut self) -> Result<Arc<ContentModel>> {
        if let Some(model) = &self.model {
            return Ok(model.clone());
        }
        let model = Arc::new(self.sink.model(&self.target).await?);
        if model.field(&self.key_field).is_none() {
            let known: Vec<&str> = model.fields.iter().map(|f| f.id.as_str()).collect();
            return Err(Error::config(format!(
                "keyField '{}' is not a field of '{}' (fields: {})",
                self.key_field,
                model.name,
                known.join(", ")
            )));
        }
        self.model = Some(model.clone());
        Ok(model)
    }

    /// The key of a mapped record that did not convert, read from its flat
    /// fields (`sku` or `sku.<locale>`, the default locale first), so its dead
    /// letter still says which record it is.
    fn raw_key(&self, model: &ContentModel, record: &Record) -> Option<String> {
        let default = format!("{}.{}", self.key_field, model.default_locale());
        let prefix = format!("{}.", self.key_field);
        let value = record
            .get(&self.key_field)
            .or_else(|| record.get(&default))
            .or_else(|| {
                record
                    .iter()
                    .find(|(k, _)| k.starts_with(&prefix))
                    .map(|(_, v)| v)
            })?;
        match value {
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }

    fn key_of(&self, model: &ContentModel, fields: &EntryFields) -> Option<String> {
        let value = fields.get(&self.key_field)?.get(model.default_locale())?;
        match value {
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Object(_) => value
                .pointer("/sys/id")
                .and_then(Value::as_str)
                .map(str::to_owned),
            _ => None,
        }
    }

    /// Loads the whole target into the cache when it fits (see module docs).
    async fn prefetch(
        &mut self,
        model: &ContentModel,
        pairs: &BTreeSet<(String, String)>,
    ) -> Result<()> {
        self.prefetched = true;
        if self.options.prefetch == Prefetch::Never || self.options.cache.ttl.is_some() {
            return Ok(());
        }
        let caps = self.sink.capabilities();
        let first = self
            .sink
            .lookup(&self.target, Lookup::Page { skip: 0, limit: 1 })
            .await?;
        let Some(total) = first.total else {
            return Ok(());
        };
        if total > self.options.cache.max_entries {
            tracing::debug!(sync = %self.target.sync_key, total, "target larger than the cache; not prefetching");
            return Ok(());
        }
        let mut skip = 0;
        while skip < total {
            let page = self
                .sink
                .lookup(
                    &self.target,
                    Lookup::Page {
                        skip,
                        limit: caps.max_page_size,
                    },
                )
                .await?;
            if page.entries.is_empty() {
                break;
            }
            skip += page.entries.len() as u64;
            for entry in page.entries {
                if let Some(key) = self.key_of(model, &entry.fields) {
                    let digest = digest_of(model, pairs.iter(), |f, l| {
                        entry.fields.get(f).and_then(|m| m.get(l))
                    });
                    self.cache.insert(
                        key,
                        Cached {
                            id: entry.id.as_str().into(),
                            version: entry.version,
                            digest,
                            publish_pending: entry.publish_pending,
                        },
                    );
                }
            }
        }
        self.cache.run_pending_tasks();
        self.prefetch_loaded = true;
        // Complete unless something was evicted while loading.
        self.complete.store(
            self.counters.evictions.load(Ordering::Relaxed) == 0,
            Ordering::Relaxed,
        );
        tracing::info!(sync = %self.target.sync_key, total, "prefetched the target into the cache");
        Ok(())
    }

    /// Converts and merges the batch's records. A mapping that does not fit the
    /// target (a locale or field it lacks, a key of the wrong form) is an error
    /// for the stream, before anything is written, not a rejection per record.
    fn candidates(
        &self,
        model: &ContentModel,
        records: Vec<Record>,
    ) -> Result<(Vec<Candidate>, u64, u64)> {
        let mut out: Vec<Candidate> = Vec::with_capacity(records.len());
        let mut index: HashMap<String, usize> = HashMap::with_capacity(records.len());
        let (mut failed, mut duplicates) = (0, 0);
        for record in records {
            let converted = match convert(model, &record) {
                Ok(c) => c,
                Err(e) if e.kind() == ErrorKind::Config => {
                    return Err(e.with_context("target", &model.name));
                }
                Err(e) => {
                    failed += 1;
                    let key = self.raw_key(model, &record);
                    self.reject(Stage::Convert, key, e.to_string(), record);
                    continue;
                }
            };
            let Some(key) = self.key_of(model, &converted.fields) else {
                failed += 1;
                let reason = format!(
                    "no value for the key field '{}' ({})",
                    self.key_field,
                    model.default_locale()
                );
                self.reject(Stage::Convert, None, reason, record);
                continue;
            };
            let pairs = pairs_of(&converted.fields);
            let digest = digest_of(model, pairs.iter(), |f, l| {
                converted.fields.get(f).and_then(|m| m.get(l))
            });
            match index.get(&key) {
                Some(&at) => {
                    // The last record of a key wins, whole (as in every sink).
                    duplicates += 1;
                    let earlier = &mut out[at];
                    if earlier.digest != digest {
                        tracing::warn!(sync = %self.target.sync_key, %key, "duplicate key with different values; the last record wins");
                    }
                    *earlier = Candidate {
                        key,
                        id: converted.id,
                        fields: converted.fields,
                        digest,
                        record,
                    };
                }
                None => {
                    index.insert(key.clone(), out.len());
                    out.push(Candidate {
                        key,
                        id: converted.id,
                        fields: converted.fields,
                        digest,
                        record,
                    });
                }
            }
        }
        Ok((out, failed, duplicates))
    }

    /// Looks entries up by keys or ids, chunked to the sink's limit.
    async fn lookup_all(&self, by_ids: bool, values: Vec<String>) -> Result<Vec<ExistingEntry>> {
        let chunk = self.sink.capabilities().max_lookup_keys.max(1);
        let mut found = Vec::new();
        for part in values.chunks(chunk) {
            let lookup = if by_ids {
                Lookup::Ids(part)
            } else {
                Lookup::Keys(part)
            };
            found.extend(self.sink.lookup(&self.target, lookup).await?.entries);
        }
        Ok(found)
    }

    fn note_changes(&self, model: &ContentModel, cand: &Candidate, plan: &Plan) {
        let observer = &self.target.observer;
        if !observer.wants_changes() {
            return;
        }
        let verb = if self.options.dry_run {
            "will be"
        } else {
            "is"
        };
        match plan {
            Plan::Create => observer.change(
                &self.target.sync_key,
                &format!("'{}' '{}' {verb} created", model.name, cand.key),
            ),
            Plan::Update(existing) => {
                observer.change(
                    &self.target.sync_key,
                    &format!("'{}' '{}' {verb} updated", model.name, cand.key),
                );
                for (field, locale, old, new) in diff(model, &cand.fields, existing) {
                    observer.change(
                        &self.target.sync_key,
                        &format!(
                            "  field '{field}.{locale}' changed from '{}' to '{}'",
                            snip(&old),
                            snip(&new)
                        ),
                    );
                }
            }
            Plan::Publish { .. } => observer.change(
                &self.target.sync_key,
                &format!(
                    "'{}' '{}' {verb} published (its fields are unchanged; its current version is not live)",
                    model.name, cand.key
                ),
            ),
            Plan::Unchanged => {}
        }
    }

    /// The keyed-sink contract: one result per operation.
    fn one_result_each(&self, what: &str, got: usize, sent: usize) -> Result<()> {
        if got == sent {
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::Contract,
            format!(
                "{} returned {got} results for {sent} {what}",
                self.sink.describe()
            ),
        ))
    }

    /// Whether written entries are published.
    fn publishing(&self) -> bool {
        self.options.publish && self.sink.capabilities().publish
    }

    /// What to do with each candidate: the cache answers first (an equal
    /// digest is unchanged with no request); then one lookup pass finds the
    /// misses by key and the changed hits by id, and compares their fields.
    async fn plan(&self, model: &ContentModel, cands: &[Candidate]) -> Result<Vec<Plan>> {
        let complete = self.complete.load(Ordering::Relaxed);
        let publishing = self.publishing();
        let mut plans: Vec<Option<Plan>> = Vec::with_capacity(cands.len());
        let (mut miss_keys, mut hit_ids) = (Vec::new(), Vec::new());
        for cand in cands {
            match self.cache.get(&cand.key) {
                Some(c) => {
                    self.counters.hits.fetch_add(1, Ordering::Relaxed);
                    self.target.stats.add_cache_lookups(1, 0);
                    if c.digest == cand.digest && c.publish_pending && publishing {
                        plans.push(Some(Plan::Publish {
                            id: c.id.to_string(),
                            version: c.version,
                        }));
                    } else if c.digest == cand.digest {
                        plans.push(Some(Plan::Unchanged));
                    } else {
                        hit_ids.push(c.id.to_string());
                        plans.push(None);
                    }
                }
                None => {
                    self.counters.misses.fetch_add(1, Ordering::Relaxed);
                    self.target.stats.add_cache_lookups(0, 1);
                    if complete {
                        plans.push(Some(Plan::Create));
                    } else {
                        miss_keys.push(cand.key.clone());
                        plans.push(None);
                    }
                }
            }
        }
        let mut existing: HashMap<String, ExistingEntry> = HashMap::new();
        if !miss_keys.is_empty() {
            for entry in self.lookup_all(false, miss_keys).await? {
                if let Some(key) = self.key_of(model, &entry.fields) {
                    existing.entry(key).or_insert(entry);
                }
            }
        }
        if !hit_ids.is_empty() {
            for entry in self.lookup_all(true, hit_ids).await? {
                if let Some(key) = self.key_of(model, &entry.fields) {
                    existing.insert(key, entry);
                }
            }
        }
        Ok(cands
            .iter()
            .zip(plans)
            .map(|(cand, plan)| {
                plan.unwrap_or_else(|| {
                    self.compared(model, cand, existing.remove(&cand.key), publishing)
                })
            })
            .collect())
    }

    /// The plan for a candidate the cache could not answer, from the entry the
    /// lookup found (if any); an unchanged entry goes into the cache.
    fn compared(
        &self,
        model: &ContentModel,
        cand: &Candidate,
        found: Option<ExistingEntry>,
        publishing: bool,
    ) -> Plan {
        match found {
            None => Plan::Create,
            Some(entry) if diff(model, &cand.fields, &entry).is_empty() => {
                self.cache.insert(
                    cand.key.clone(),
                    Cached {
                        id: entry.id.as_str().into(),
                        version: entry.version,
                        digest: cand.digest,
                        publish_pending: entry.publish_pending,
                    },
                );
                if entry.publish_pending && publishing {
                    Plan::Publish {
                        id: entry.id,
                        version: entry.version,
                    }
                } else {
                    Plan::Unchanged
                }
            }
            Some(entry) => Plan::Update(entry),
        }
    }

    /// Counts what needs no request (and, in a dry run, what would be
    /// written) and turns the rest into writes and publishes.
    fn to_write(
        &self,
        model: &ContentModel,
        cands: Vec<Candidate>,
        plans: Vec<Plan>,
        ack: &mut BatchAck,
    ) -> Pending {
        let mut pending = Pending::default();
        for (cand, plan) in cands.into_iter().zip(plans) {
            self.note_changes(model, &cand, &plan);
            match plan {
                Plan::Unchanged => ack.unchanged += 1,
                Plan::Create if self.options.dry_run => ack.inserted += 1,
                Plan::Update(_) | Plan::Publish { .. } if self.options.dry_run => ack.updated += 1,
                Plan::Publish { id, version } => {
                    ack.updated += 1;
                    pending.publish.push(ToPublish {
                        key: cand.key,
                        record: cand.record,
                        counted: Counted::Updated,
                        written: Written { id, version },
                    });
                }
                Plan::Create => {
                    pending.ops.push(WriteOp::Create {
                        id: cand.id.clone(),
                        fields: created(&cand.fields),
                    });
                    pending.op_cands.push((cand, false));
                }
                Plan::Update(entry) => {
                    let fields = merged(&entry, &cand.fields);
                    pending.ops.push(WriteOp::Update {
                        existing: entry,
                        fields,
                    });
                    pending.op_cands.push((cand, true));
                }
            }
        }
        pending
    }

    /// Sends the writes; each written entry goes into the cache (its version
    /// not live yet) and is to be published; each refused one is a failed
    /// record.
    async fn apply(&mut self, pending: Pending, ack: &mut BatchAck) -> Result<Vec<ToPublish>> {
        let Pending {
            ops,
            op_cands,
            mut publish,
        } = pending;
        let results = if ops.is_empty() {
            Vec::new()
        } else {
            self.sink.write(&self.target, ops).await
        };
        self.one_result_each("writes", results.len(), op_cands.len())?;
        for ((cand, was_update), result) in op_cands.into_iter().zip(results) {
            match result {
                Ok(written) => {
                    let counted = if was_update {
                        ack.updated += 1;
                        Counted::Updated
                    } else {
                        ack.inserted += 1;
                        Counted::Inserted
                    };
                    self.cache.insert(
                        cand.key.clone(),
                        Cached {
                            id: written.id.as_str().into(),
                            version: written.version,
                            digest: cand.digest,
                            publish_pending: true,
                        },
                    );
                    publish.push(ToPublish {
                        key: cand.key,
                        record: cand.record,
                        counted,
                        written,
                    });
                }
                Err(e) => {
                    ack.failed += 1;
                    self.reject(Stage::Write, Some(cand.key), e.to_string(), cand.record);
                }
            }
        }
        Ok(publish)
    }

    /// Publishes what was written (when the sink has a publishing step and the
    /// run publishes). A record written but refused at publish is a failed
    /// record: the cache forgets its entry (its version may have moved on), so
    /// a repeat of the record in this run looks it up and publishes it again,
    /// and the next run finds it pending.
    async fn publish_written(&mut self, items: Vec<ToPublish>, ack: &mut BatchAck) -> Result<()> {
        if !self.publishing() || items.is_empty() {
            return Ok(());
        }
        let sent = items.len();
        let (items, written): (Vec<_>, Vec<_>) = items
            .into_iter()
            .map(|item| ((item.key, item.record, item.counted), item.written))
            .unzip();
        let results = self.sink.publish(&self.target, written).await;
        self.one_result_each("publishes", results.len(), sent)?;
        for ((key, record, counted), result) in items.into_iter().zip(results) {
            match result {
                Ok(published) => {
                    self.published += 1;
                    if let Some(mut c) = self.cache.get(&key) {
                        c.version = published.version;
                        c.publish_pending = false;
                        self.cache.insert(key, c);
                    }
                }
                Err(e) => {
                    self.cache.invalidate(&key);
                    self.complete.store(false, Ordering::Relaxed);
                    match counted {
                        Counted::Inserted => ack.inserted -= 1,
                        Counted::Updated => ack.updated -= 1,
                    }
                    ack.failed += 1;
                    self.reject(Stage::Publish, Some(key), e.to_string(), record);
                }
            }
        }
        Ok(())
    }
}

fn snip(v: &Value) -> String {
    let text = match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if text.chars().count() > 40 {
        format!("{}…", text.chars().take(40).collect::<String>())
    } else {
        text
    }
}

/// The (field, locale) pairs a record sets.
fn pairs_of(fields: &EntryFields) -> BTreeSet<(String, String)> {
    fields
        .iter()
        .flat_map(|(f, locales)| {
            locales
                .as_object()
                .into_iter()
                .flat_map(move |m| m.keys().map(move |l| (f.clone(), l.clone())))
        })
        .collect()
}

/// A digest of the comparable values of `pairs`, read through `get`.
fn digest_of<'a>(
    model: &ContentModel,
    pairs: impl Iterator<Item = &'a (String, String)>,
    get: impl Fn(&str, &str) -> Option<&'a Value>,
) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for (field, locale) in pairs {
        let kind = model.field(field).map(|f| f.kind);
        let value = get(field, locale).unwrap_or(&Value::Null);
        let value = kind.map_or_else(|| value.clone(), |k| comparable(k, value));
        field.hash(&mut hasher);
        locale.hash(&mut hasher);
        value.to_string().hash(&mut hasher);
    }
    hasher.finish()
}

/// The mapped values that differ from the existing entry: (field, locale, old, new).
fn diff(
    model: &ContentModel,
    new: &EntryFields,
    existing: &ExistingEntry,
) -> Vec<(String, String, Value, Value)> {
    let mut out = Vec::new();
    for (field, locale) in pairs_of(new) {
        let kind = model.field(&field).map(|f| f.kind);
        let new_value = new
            .get(&field)
            .and_then(|m| m.get(&locale))
            .unwrap_or(&Value::Null);
        let old_value = existing
            .fields
            .get(&field)
            .and_then(|m| m.get(&locale))
            .unwrap_or(&Value::Null);
        let (n, o) = match kind {
            Some(k) => (comparable(k, new_value), comparable(k, old_value)),
            None => (new_value.clone(), old_value.clone()),
        };
        if n != o {
            out.push((field, locale, o, n));
        }
    }
    out
}

/// The existing entry's fields with the mapped ones replaced (null clears).
fn merged(existing: &ExistingEntry, new: &EntryFields) -> EntryFields {
    let mut fields = existing.fields.clone();
    for (field, locales) in new {
        let Value::Object(locales) = locales else {
            continue;
        };
        let slot = fields
            .entry(field.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(target) = slot {
            for (locale, v) in locales {
                if v.is_null() {
                    target.remove(locale);
                } else {
                    target.insert(locale.clone(), v.clone());
                }
            }
        }
        if slot.as_object().is_some_and(Map::is_empty) {
            fields.remove(field);
        }
    }
    fields
}

/// A new entry's fields: nulls and empty fields left out.
fn created(new: &EntryFields) -> EntryFields {
    new.iter()
        .filter_map(|(field, locales)| {
            let kept: Map<String, Value> = locales
                .as_object()?
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(l, v)| (l.clone(), v.clone()))
                .collect();
            (!kept.is_empty()).then(|| (field.clone(), Value::Object(kept)))
        })
        .collect()
}

#[async_trait]
impl<K: KeyedSink> SinkWriter for UpsertWriter<K> {
    async fn write(&mut self, batch: Batch) -> Result<BatchAck> {
        let model = self.model().await?;
        let (records, _position, _lease) = batch.into_parts();
        let (cands, failed_convert, duplicates) = self.candidates(&model, records)?;
        if !self.prefetched {
            let pairs: BTreeSet<(String, String)> =
                cands.iter().flat_map(|c| pairs_of(&c.fields)).collect();
            self.prefetch(&model, &pairs).await?;
        }
        let mut ack = BatchAck::new(cands.len() as u64)
            .with_failed(failed_convert)
            .with_duplicates(duplicates);
        let plans = self.plan(&model, &cands).await?;
        let pending = self.to_write(&model, cands, plans, &mut ack);
        let written = self.apply(pending, &mut ack).await?;
        self.publish_written(written, &mut ack).await?;
        self.target
            .stats
            .set_cache_size(self.cache.entry_count(), self.cache.weighted_size());
        Ok(ack)
    }

    async fn finish(self: Box<Self>) -> Result<WriterSummary> {
        self.cache.run_pending_tasks();
        let mut cache = CacheStats::default();
        cache.hits = self.counters.hits.load(Ordering::Relaxed);
        cache.misses = self.counters.misses.load(Ordering::Relaxed);
        cache.evictions = self.counters.evictions.load(Ordering::Relaxed);
        cache.entries = self.cache.entry_count();
        cache.bytes = self.cache.weighted_size();
        cache.prefetched = self.prefetch_loaded;
        Ok(WriterSummary::default()
            .with_cache(cache)
            .with_published(self.published)
            .comparing_content())
    }

    fn extension(&mut self) -> Option<&mut dyn WriterExtension> {
        Some(self)
    }
}

#[async_trait]
impl<K: KeyedSink> WriterExtension for UpsertWriter<K> {
    /// Empties the lookup cache: its entries are looked up again when needed
    /// (and a prefetched cache no longer counts as holding every entry).
    async fn relieve_memory(&mut self) -> Result<MemoryRelief> {
        self.cache.run_pending_tasks();
        let relief = MemoryRelief::default()
            .with_cache(self.cache.entry_count(), self.cache.weighted_size());
        self.complete.store(false, Ordering::Relaxed);
        self.cache.invalidate_all();
        self.cache.run_pending_tasks();
        self.target
            .stats
            .set_cache_size(self.cache.entry_count(), self.cache.weighted_size());
        Ok(relief)
    }

    /// Keyed sinks keep no positions: the checkpoint store's are used.
    async fn committed_position(&mut self) -> Result<SinkPosition> {
        Ok(SinkPosition::Unknown)
    }

    async fn forget_position(&mut self) -> Result<()> {
        Ok(())
    }

    fn delete_modes(&self) -> &'static [DeleteMode] {
        self.sink.capabilities().delete_modes
    }

    /// The keys of the target's live entries, a page at a time (the page
    /// token is the number of entries listed before it).
    async fn target_keys(&mut self, page: Option<Value>) -> Result<TargetKeys> {
        let model = self.model().await?;
        let skip = page.as_ref().and_then(Value::as_u64).unwrap_or(0);
        let limit = self.sink.capabilities().max_page_size.max(1);
        let found = self
            .sink
            .lookup(&self.target, Lookup::Page { skip, limit })
            .await?;
        let listed = found.entries.len() as u64;
        let keys = found
            .entries
            .iter()
            .filter_map(|e| self.key_of(&model, &e.fields))
            .collect();
        let done = listed == 0 || found.total.is_some_and(|total| skip + listed >= total);
        Ok(TargetKeys::new(
            keys,
            (!done).then(|| Value::from(skip + listed)),
        ))
    }

    /// Looks the entries up by key and removes them; an entry that fails to
    /// go fails the call, naming its key.
    async fn delete_keys(&mut self, keys: &[String], mode: DeleteMode) -> Result<u64> {
        let model = self.model().await?;
        let mut removed = 0;
        for chunk in keys.chunks(self.sink.capabilities().max_lookup_keys.max(1)) {
            let found = self.sink.lookup(&self.target, Lookup::Keys(chunk)).await?;
            let named: Vec<(Option<String>, ExistingEntry)> = found
                .entries
                .into_iter()
                .map(|e| (self.key_of(&model, &e.fields), e))
                .filter(|(k, _)| k.as_ref().is_some_and(|k| chunk.contains(k)))
                .collect();
            let (names, entries): (Vec<_>, Vec<_>) = named.into_iter().unzip();
            let results = self.sink.remove(&self.target, entries, mode).await;
            for (key, result) in names.into_iter().zip(results) {
                result.map_err(|e| e.with_context("key", key.unwrap_or_default()))?;
                removed += 1;
            }
            for key in chunk {
                self.cache.invalidate(key);
            }
        }
        Ok(removed)
    }

    fn accepts_json_rows(&self) -> bool {
        // Records only: lookups and changes compare decoded fields.
        false
    }

    fn preparer(&self) -> Option<Arc<dyn PrepareBatch>> {
        None
    }
}
