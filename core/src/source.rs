//! The source contract: a pull-based, lazy stream of batches.
//!
//! The rules a source follows are in [`Source`]'s contract.
//!
//! Paginated sources usually implement [`PageSource`](crate::PageSource) instead
//! and let [`paginate`](crate::paginate()) build the stream. Sources are built from
//! configuration by a [`Factory`](crate::Factory) with `Output = dyn Source`.

use std::pin::Pin;
use std::sync::Arc;

use futures::{FutureExt, Stream, StreamExt};
use tokio::sync::mpsc;

use crate::batch::{Batch, Position};
use crate::budget::MemoryBudget;
use crate::error::{Error, ErrorKind, Result};
use crate::stats::RunStats;

/// A lazy stream of batches, owned and cancellable by drop.
pub type BatchStream = Pin<Box<dyn Stream<Item = Result<Batch>> + Send + 'static>>;

/// What the pipeline asks of a source for one read.
#[derive(Clone)]
#[non_exhaustive]
pub struct ReadRequest {
    /// The sync key, for error context and logs.
    pub sync_key: String,
    /// Where to resume (the position of the last acknowledged batch), if anywhere.
    pub resume_from: Option<Position>,
    /// The run's memory budget; every batch's lease comes from it.
    pub budget: MemoryBudget,
    /// The run's live counters.
    pub stats: Arc<RunStats>,
    /// The reader of these batches takes records as JSON text
    /// ([`Batch::from_json`]): a source that receives JSON may hand its records
    /// on undecoded. A source that cannot, or that needs the decoded records
    /// itself, sends records as usual; either form is correct.
    pub json_rows: bool,
    /// The reader of these batches takes records as Arrow columns
    /// ([`Batch::from_columns`]): a source whose rows arrive typed may hand
    /// them on as columns. Either form, or records, is correct.
    pub columns: bool,
}

impl ReadRequest {
    /// A request with a fresh budget and counters; convenient in tests and examples.
    pub fn new(sync_key: impl Into<String>, budget: MemoryBudget) -> Self {
        Self {
            sync_key: sync_key.into(),
            resume_from: None,
            budget,
            stats: Arc::new(RunStats::default()),
            json_rows: false,
            columns: false,
        }
    }

    /// Asking for records as JSON text where the source can (see
    /// [`ReadRequest::json_rows`]).
    pub fn with_json_rows(mut self, json_rows: bool) -> Self {
        self.json_rows = json_rows;
        self
    }

    /// Asking for records as Arrow columns where the source can (see
    /// [`ReadRequest::columns`]).
    pub fn with_columns(mut self, columns: bool) -> Self {
        self.columns = columns;
        self
    }

    /// Resuming after `position` (`None`: from the beginning).
    pub fn with_resume_from(mut self, position: Option<Position>) -> Self {
        self.resume_from = position;
        self
    }

    /// Counting requests, pages and rows into `stats`.
    pub fn with_stats(mut self, stats: Arc<RunStats>) -> Self {
        self.stats = stats;
        self
    }
}

/// A built source, ready to be read.
///
/// # Contract
/// - [`Source::read`] is not `async` and does no I/O: it returns a lazy `'static`
///   [`BatchStream`]. Nothing is fetched until the stream is polled.
/// - The stream owns everything it needs (clone `Arc`s into it; never borrow
///   `&self`). Dropping the stream cancels the read.
/// - Errors are stream items. After an error the stream may end; the pipeline
///   stops at the first error.
/// - Every batch holds a [`MemoryLease`](crate::MemoryLease) from the request's
///   budget covering its records; a source acquires it *before* fetching or
///   decoding, so a full budget stops the source (backpressure).
/// - A batch's [`Position`] is where to resume after it; a source that receives
///   `resume_from` continues right after that position.
///
/// The rules a source follows are in [`Source`]'s contract.
///
/// Paginated sources usually implement [`PageSource`](crate::PageSource) instead
/// and let [`paginate`](crate::paginate()) build the stream. Sources are built from
/// configuration by a [`Factory`](crate::Factory) with `Output = dyn Source`.
pub trait Source: Send + Sync + 'static {
    /// Starts a lazy read; see the trait's contract.
    fn read(&self, request: ReadRequest) -> BatchStream;

    /// A one-line human description (for example the endpoint), free of secrets.
    fn describe(&self) -> String;

    /// Whether the source, built with a [`Shard`](crate::Shard) in its
    /// [`BuildContext`](crate::BuildContext), reads only that shard's part (and
    /// the shards' parts together are everything once). A source that cannot
    /// split answers `false`, and a runner gives it to one shard whole.
    /// Required, so a wrapper says what it passes on.
    fn splits(&self) -> bool;
}

/// Sends batches from a producing task into a [`channel_stream`].
#[derive(Clone)]
pub struct BatchSender(mpsc::Sender<Result<Batch>>);

impl BatchSender {
    /// Sends a batch, waiting while the consumer is busy; fails with
    /// [`ErrorKind::Cancelled`] when the stream was dropped.
    pub async fn send(&self, batch: Batch) -> Result<()> {
        self.0
            .send(Ok(batch))
            .await
            .map_err(|_| Error::new(ErrorKind::Cancelled, "the reader stopped"))
    }
}

/// Aborts the producing task when the stream is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A lazy [`BatchStream`] fed by a task: `produce` is spawned on the first poll
/// with a [`BatchSender`]; its error (if any) is the stream's last item; dropping
/// the stream aborts the task. A panic in `produce` is an error too (kind
/// [`ErrorKind::Contract`], with the panic's message), never a quiet end of the
/// data: the stream only ends cleanly when `produce` returned `Ok`. For sources whose reading does not fit
/// [`paginate`](crate::paginate()) (several batches per response, concurrent
/// fetches), so they still never hand-write a `Stream`.
pub fn channel_stream<F, Fut>(produce: F) -> BatchStream
where
    F: FnOnce(BatchSender) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send + 'static,
{
    let start = futures::stream::once(async move {
        let (tx, rx) = mpsc::channel::<Result<Batch>>(1);
        let errors = tx.clone();
        let task = tokio::spawn(async move {
            let outcome = std::panic::AssertUnwindSafe(produce(BatchSender(tx)))
                .catch_unwind()
                .await
                .unwrap_or_else(|panic| Err(panicked(panic.as_ref())));
            if let Err(e) = outcome
                && e.kind() != ErrorKind::Cancelled
            {
                let _ = errors.send(Err(e)).await;
            }
        });
        futures::stream::unfold((rx, AbortOnDrop(task)), |(mut rx, guard)| async move {
            rx.recv().await.map(|item| (item, (rx, guard)))
        })
    });
    Box::pin(start.flatten())
}

/// The error for a source task that panicked, with the panic's message (for
/// runners and sources that read a stream on a task of their own).
pub fn panicked(payload: &(dyn std::any::Any + Send)) -> Error {
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".to_owned());
    Error::new(
        ErrorKind::Contract,
        format!(
            "the source panicked ({message}); the read stopped there and the checkpoint stays \
             at the last batch the sink acknowledged. This is a bug in the source: please report it"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::MemoryBudget;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

    #[tokio::test]
    async fn channel_streams_are_lazy_ordered_and_end_with_the_error() {
        let started = Arc::new(AtomicBool::new(false));
        let flag = started.clone();
        let budget = MemoryBudget::unlimited();
        let stream = channel_stream(move |tx| async move {
            flag.store(true, Ordering::SeqCst);
            for i in 0..3 {
                let batch = Batch::new(Vec::new(), budget.acquire(1).await?).with_page(i);
                tx.send(batch).await?;
            }
            Err(Error::decode("page 4 is broken"))
        });
        tokio::task::yield_now().await;
        assert!(
            !started.load(Ordering::SeqCst),
            "nothing runs before the first poll"
        );
        let items: Vec<Result<Batch>> = stream.collect().await;
        assert_eq!(items.len(), 4);
        assert_eq!(items[2].as_ref().unwrap().pages(), Some((2, 2)));
        assert_eq!(
            items[3].as_ref().unwrap_err().to_string(),
            "page 4 is broken"
        );
    }

    #[tokio::test]
    async fn a_panicking_producer_ends_the_stream_with_an_error_not_quietly() {
        let budget = MemoryBudget::unlimited();
        let stream = channel_stream(move |tx| async move {
            tx.send(Batch::new(Vec::new(), budget.acquire(1).await?).with_page(1))
                .await?;
            let year: i32 = "262143".parse().unwrap_or_default();
            if year > 262_142 {
                panic!("year {year} is out of range");
            }
            Ok(())
        });
        let items: Vec<Result<Batch>> = stream.collect().await;
        assert_eq!(items.len(), 2, "the batch, then the error");
        let err = items[1].as_ref().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Contract);
        assert!(
            err.to_string()
                .contains("the source panicked (year 262143 is out of range)"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn dropping_the_stream_stops_the_task() {
        let sent = Arc::new(AtomicU32::new(0));
        let count = sent.clone();
        let budget = MemoryBudget::unlimited();
        let mut stream = channel_stream(move |tx| async move {
            loop {
                tx.send(Batch::new(Vec::new(), budget.acquire(1).await?))
                    .await?;
                count.fetch_add(1, Ordering::SeqCst);
            }
        });
        stream.next().await.unwrap().unwrap();
        drop(stream);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let after_drop = sent.load(Ordering::SeqCst);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(
            sent.load(Ordering::SeqCst),
            after_drop,
            "no more sends after the drop"
        );
        assert!(after_drop <= 2);
    }
}
