//! Observing a run: rejected records (for dead-letter output) and change notes
//! (for `--verbosity detailed`), streamed as they happen so nothing accumulates.

use serde::Serialize;

use crate::record::Record;

/// Where in the flow a record was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// Reading: the record as read breaks a rule of the sync (an incremental
    /// sync's record without a usable cursor).
    Read,
    /// Rendering the mapping templates.
    Map,
    /// Converting mapped values to the target's field types.
    Convert,
    /// The sink refused the write.
    Write,
    /// The sink refused to publish.
    Publish,
}

/// A record that could not be synced, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Rejected {
    /// Where it failed.
    pub stage: Stage,
    /// Its key, when known.
    pub key: Option<String>,
    /// Why, as the failing component said it.
    pub reason: String,
    /// The record (as read from the source, or as mapped).
    pub record: Record,
}

/// Receives what a run wants to tell beyond counts.
///
/// # Contract
/// - Methods are called from the pipeline's tasks, possibly from several
///   streams at once: implementations are cheap, thread-safe and never block
///   for long (write to a buffered file or a channel, not over the network).
/// - `change` is called only when `wants_changes` returns `true`.
/// - `rejected` receives every record a stage rejected; the run goes on without
///   it and counts it as failed. Secrets never appear in what is passed.
pub trait RunObserver: Send + Sync {
    /// Whether [`RunObserver::change`] lines are wanted (they cost a comparison
    /// per changed field to produce).
    fn wants_changes(&self) -> bool {
        false
    }

    /// One line describing a change that is (or, in a dry run, would be) made.
    fn change(&self, sync_key: &str, line: &str) {
        let _ = (sync_key, line);
    }

    /// A record that was rejected; the run goes on without it.
    fn rejected(&self, sync_key: &str, rejected: Rejected) {
        let _ = (sync_key, rejected);
    }
}

/// An observer that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoObserver;

impl RunObserver for NoObserver {}
