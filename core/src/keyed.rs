//! The keyed-sink contract: what a content platform (Contentful, Directus, ...)
//! implements so that `sluicegate-upsert`'s `UpsertWriter` can sync into it.
//!
//! The rules are in [`KeyedSink`]'s contract.

use async_trait::async_trait;
use serde_json::Value;

use crate::content::{ContentModel, EntryFields};
use crate::error::Result;
use crate::sink::{DeleteMode, StreamTarget};

/// An entry as the sink holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct ExistingEntry {
    /// The sink's id of the entry.
    pub id: String,
    /// Its current version (0 for sinks without versions).
    pub version: u64,
    /// Every field, every locale: `{field: {locale: value}}`.
    pub fields: EntryFields,
    /// Metadata (tags, ...) to keep on update.
    pub metadata: Option<Value>,
    /// Its current version is not live: a draft, or changed since it was last
    /// published (or its last publish failed). A sink with a publishing step
    /// sets it, so an unchanged record still gets published; others leave it
    /// `false`.
    pub publish_pending: bool,
}

/// How to look entries up.
#[derive(Debug, Clone, Copy)]
pub enum Lookup<'a> {
    /// By values of the stream's key field.
    Keys(&'a [String]),
    /// By the sink's ids.
    Ids(&'a [String]),
    /// One page of all entries of the target, in a stable order.
    Page {
        /// Entries to skip.
        skip: u64,
        /// Entries to return at most.
        limit: u64,
    },
}

/// Entries found, and the target's total when the sink knows it.
#[derive(Debug, Clone, Default)]
pub struct LookupPage {
    /// The entries.
    pub entries: Vec<ExistingEntry>,
    /// Total entries of the target (for [`Lookup::Page`]).
    pub total: Option<u64>,
}

/// One write.
#[derive(Debug, Clone)]
pub enum WriteOp {
    /// Create an entry (with this id, if given).
    Create {
        /// An explicit id (from a `sys.id` mapping).
        id: Option<String>,
        /// Its fields.
        fields: EntryFields,
    },
    /// Replace an entry's fields and metadata (the full body; nothing is merged).
    Update {
        /// The entry as it was read (id and version).
        existing: ExistingEntry,
        /// The complete new fields.
        fields: EntryFields,
    },
}

/// A successful write or publish: the entry and its version afterwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The entry's id.
    pub id: String,
    /// Its version after the operation.
    pub version: u64,
}

/// What a keyed sink can do, declared rather than guessed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyedCapabilities {
    /// Most keys or ids per lookup request.
    pub max_lookup_keys: usize,
    /// Most entries per page of [`Lookup::Page`].
    pub max_page_size: u64,
    /// Whether written entries must be published to go live.
    pub publish: bool,
    /// How [`KeyedSink::remove`] can take entries out (empty: it cannot).
    pub delete_modes: &'static [DeleteMode],
}

/// A sink addressed by record keys.
///
/// # Contract
/// - [`KeyedSink::model`] describes the target's fields and locales; it is read
///   once per stream.
/// - [`KeyedSink::lookup`] finds existing entries by key (the stream's key field,
///   default locale), by id, or page by page. Lookups by key or id receive at most
///   [`KeyedCapabilities::max_lookup_keys`] values; pages at most
///   [`KeyedCapabilities::max_page_size`] entries. Entries come back whole: every
///   field, every locale, and their metadata, so updates can keep what the mapping
///   does not touch.
/// - [`KeyedSink::write`] applies creates and full-body updates and returns one
///   result per operation, in order. A rejected record (validation) is an `Err`
///   for that operation only; the others still apply. A version conflict should be
///   resolved inside the sink (re-read, merge the same mapped fields, retry once).
/// - [`KeyedSink::publish`] publishes what was written, when the sink has a
///   publishing step ([`KeyedCapabilities::publish`]); one result per item. An
///   item counts as published only when the sink saw that version (or a later
///   one) published: a conflict is checked by reading the entry again, never
///   assumed. Entries whose current version is not live are looked up with
///   [`ExistingEntry::publish_pending`] set, and are published again even when
///   their fields are unchanged.
/// - Requests count into the [`RunStats`](crate::RunStats) of the
///   [`StreamTarget`].
///
/// implements so that `sluicegate-upsert`'s `UpsertWriter` can sync into it.
///
/// The rules are in [`KeyedSink`]'s contract.
#[async_trait]
pub trait KeyedSink: Send + Sync + 'static {
    /// What the sink can do.
    fn capabilities(&self) -> KeyedCapabilities;

    /// The target's fields and locales.
    async fn model(&self, target: &StreamTarget) -> Result<ContentModel>;

    /// Finds existing entries.
    async fn lookup(&self, target: &StreamTarget, lookup: Lookup<'_>) -> Result<LookupPage>;

    /// Applies writes; one result per operation, in order.
    async fn write(&self, target: &StreamTarget, ops: Vec<WriteOp>) -> Vec<Result<Written>>;

    /// Publishes written entries; one result per item, in order.
    async fn publish(&self, target: &StreamTarget, items: Vec<Written>) -> Vec<Result<Written>>;

    /// Takes entries out of the target in `mode` (one of
    /// [`KeyedCapabilities::delete_modes`]): `Hard` deletes them, `Archive`
    /// takes them offline and archives them (both unpublish a published entry
    /// first). One result per entry, in order; an entry already gone counts
    /// as removed.
    async fn remove(
        &self,
        target: &StreamTarget,
        entries: Vec<ExistingEntry>,
        mode: DeleteMode,
    ) -> Vec<Result<()>>;

    /// A one-line human description, free of secrets.
    fn describe(&self) -> String;
}
