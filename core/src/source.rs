//! The source contract: a pull-based, lazy stream of batches.
//!
//! # Contract
//! - [`Source::read`] is not `async` and does no I/O: it returns a lazy `'static`
//!   [`BatchStream`]. Nothing is fetched until the stream is polled.
//! - The stream owns everything it needs (clone `Arc`s into it; never borrow
//!   `&self`). Dropping the stream cancels the read.
//! - Errors are stream items. After an error the stream may end; the pipeline
//!   stops at the first error.
//! - Every batch holds a [`MemoryLease`](crate::MemoryLease) from the request's
//!   budget covering its records; a source acquires it *before* fetching or
//!   decoding, so a full budget stops the source (backpressure).
//! - A batch's [`Position`] is where to resume after it; a source that receives
//!   `resume_from` continues right after that position.
//!
//! Paginated sources usually implement [`PageSource`](crate::PageSource) instead
//! and let [`paginate`](crate::paginate) build the stream. Sources are built from
//! configuration by a [`Factory`](crate::Factory) with `Output = dyn Source`.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;

use crate::batch::{Batch, Position};
use crate::budget::MemoryBudget;
use crate::error::Result;
use crate::stats::RunStats;

/// A lazy stream of batches, owned and cancellable by drop.
pub type BatchStream = Pin<Box<dyn Stream<Item = Result<Batch>> + Send + 'static>>;

/// What the pipeline asks of a source for one read.
#[derive(Clone)]
pub struct ReadRequest {
    /// The sync key, for error context and logs.
    pub sync_key: String,
    /// Where to resume (the position of the last acknowledged batch), if anywhere.
    pub resume_from: Option<Position>,
    /// The run's memory budget; every batch's lease comes from it.
    pub budget: MemoryBudget,
    /// The run's live counters.
    pub stats: Arc<RunStats>,
}

impl ReadRequest {
    /// A request with a fresh budget and counters; convenient in tests and examples.
    pub fn new(sync_key: impl Into<String>, budget: MemoryBudget) -> Self {
        Self {
            sync_key: sync_key.into(),
            resume_from: None,
            budget,
            stats: Arc::new(RunStats::default()),
        }
    }
}

/// A built source, ready to be read.
pub trait Source: Send + Sync + 'static {
    /// Starts a lazy read; see the module's contract.
    fn read(&self, request: ReadRequest) -> BatchStream;

    /// A one-line human description (for example the endpoint), free of secrets.
    fn describe(&self) -> String;
}
