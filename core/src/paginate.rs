//! "Fetch the page after this token": the helper that turns a paginated adapter
//! into a [`BatchStream`].
//!
//! An adapter implements [`PageSource::fetch_page`]; [`paginate`] does the rest
//! with a [`BatchBuilder`] and a [`PageLoopGuard`]: it leases memory before each
//! fetch (estimated from the previous page) and fits the lease to the decoded
//! size, stamps each batch with its page number and resume position, counts
//! pages and rows, stops when a page has no next token, and refuses a pagination
//! loop (a next token equal to one of the last tokens) with an error naming the
//! page. The re-drive of dead letters and the example file adapter are built on
//! it; sources that fetch pages concurrently or stream rows (the HTTP and
//! database sources) use the [`BatchBuilder`] directly.

use std::sync::Arc;

use async_trait::async_trait;
use futures::stream;

use crate::batch::Position;
use crate::builder::{BatchBuilder, BatchLimits, PageLoopGuard};
use crate::error::{Error, Result, ResultExt};
use crate::record::Record;
use crate::source::{BatchStream, ReadRequest};
use crate::stats::RunStats;

/// One fetched page.
#[derive(Debug, Default)]
pub struct Page {
    /// The page's records, in source order.
    pub records: Vec<Record>,
    /// The token that fetches the following page; `None` when this was the last.
    pub next: Option<Position>,
}

/// What [`PageSource::fetch_page`] knows about the page being fetched.
#[derive(Clone)]
pub struct PageContext {
    /// The sync key, for errors and logs.
    pub sync_key: String,
    /// 1-based number of this page within this read (a resumed read starts at 1).
    pub page: u64,
    /// The run's counters (requests, retries, bytes).
    pub stats: Arc<RunStats>,
}

/// A paginated source: fetches one page given the previous page's next token.
///
/// # Contract
/// - `token` is `None` for the first page, otherwise a token this source returned
///   as [`Page::next`] (possibly in an earlier run, restored from a checkpoint).
/// - Return `next: None` on the last page. An empty page with a next token is
///   allowed (it yields an empty batch).
/// - Errors should carry context; [`paginate`] adds the sync key and page number.
#[async_trait]
pub trait PageSource: Send + Sync + 'static {
    /// Fetches the page that `token` points to.
    async fn fetch_page(&self, token: Option<&Position>, ctx: &PageContext) -> Result<Page>;

    /// Estimated decoded size of one page in bytes, used to lease memory for the
    /// first page before anything is known.
    fn page_bytes_hint(&self) -> usize;
}

struct State<P> {
    source: Arc<P>,
    request: ReadRequest,
    guard: PageLoopGuard,
    builder: BatchBuilder,
    page: u64,
    done: bool,
    /// A pagination loop found on the page just passed on.
    failed: Option<Error>,
}

/// Turns a [`PageSource`] into a lazy, budget-aware [`BatchStream`] that starts
/// after `request.resume_from` when set.
///
/// Each page becomes one batch, built by a [`BatchBuilder`]: memory is leased
/// before the fetch (the previous page's size, or
/// [`PageSource::page_bytes_hint`] for the first) and fitted to the page's
/// records after it; a [`PageLoopGuard`] refuses a pagination loop.
pub fn paginate<P: PageSource>(source: Arc<P>, request: ReadRequest) -> BatchStream {
    let estimate = source.page_bytes_hint().max(1);
    let builder = BatchBuilder::new(
        &request,
        BatchLimits::for_budget(usize::MAX, &request.budget),
    )
    .with_estimate(estimate);
    let state = State {
        guard: PageLoopGuard::new(request.resume_from.clone()),
        source,
        request,
        builder,
        page: 0,
        done: false,
        failed: None,
    };
    Box::pin(stream::try_unfold(state, |mut st| async move {
        if let Some(e) = st.failed.take() {
            return Err(e);
        }
        if st.done {
            return Ok(None);
        }
        st.page += 1;
        let ctx = PageContext {
            sync_key: st.request.sync_key.clone(),
            page: st.page,
            stats: st.request.stats.clone(),
        };
        st.builder.set_page(st.page);
        st.builder.reserve().await?;
        let page = st
            .source
            .fetch_page(st.guard.current(), &ctx)
            .await
            .context("page", st.page)
            .context("sync", &st.request.sync_key)?;
        let mut next = page.next;
        if let Some(token) = &next
            && let Err(e) = st.guard.check(st.page, token)
        {
            // The page itself is new: pass its records on without a position
            // (the checkpoint stays before it), then stop with the error.
            st.failed = Some(e.with_context("sync", &st.request.sync_key));
            next = None;
        }
        for record in page.records {
            st.builder.add(record);
        }
        let batch = st
            .builder
            .end_page(next.clone())
            .await
            .context("page", st.page)
            .context("sync", &st.request.sync_key)?;
        st.done = next.is_none();
        if let Some(next) = next {
            st.guard.advance(next);
        }
        Ok(Some((batch, st)))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::Batch;
    use crate::budget::MemoryBudget;
    use crate::record::into_record;
    use futures::StreamExt;
    use serde_json::json;
    use std::sync::Mutex;

    /// Serves `total` numbered records in pages of `size`; optionally loops.
    struct Numbers {
        total: u64,
        size: u64,
        loop_at: Option<u64>,
        fetched: Mutex<Vec<Option<u64>>>,
    }

    #[async_trait]
    impl PageSource for Numbers {
        async fn fetch_page(&self, token: Option<&Position>, _ctx: &PageContext) -> Result<Page> {
            let offset = token.map_or(0, |t| t.as_value()["offset"].as_u64().unwrap_or(0));
            self.fetched.lock().unwrap().push(token.map(|_| offset));
            let end = (offset + self.size).min(self.total);
            let records = (offset..end)
                .map(|i| into_record(json!({"id": i})))
                .collect();
            let next_offset = match self.loop_at {
                Some(at) if end >= at => 0,
                _ => end,
            };
            let next = (end < self.total).then(|| Position::new(json!({"offset": next_offset})));
            Ok(Page { records, next })
        }

        fn page_bytes_hint(&self) -> usize {
            1024
        }
    }

    fn numbers(total: u64, size: u64) -> Numbers {
        Numbers {
            total,
            size,
            loop_at: None,
            fetched: Mutex::new(Vec::new()),
        }
    }

    #[tokio::test]
    async fn yields_every_page_lazily_with_positions() {
        let source = Arc::new(numbers(25, 10));
        let request = ReadRequest::new("k", MemoryBudget::new(1 << 20));
        let stats = request.stats.clone();
        let stream = paginate(source.clone(), request);
        assert!(
            source.fetched.lock().unwrap().is_empty(),
            "read must be lazy"
        );
        let batches: Vec<Batch> = stream.map(|b| b.unwrap()).collect().await;
        assert_eq!(
            batches.iter().map(Batch::len).collect::<Vec<_>>(),
            [10, 10, 5]
        );
        assert_eq!(batches[0].pages(), Some((1, 1)));
        assert_eq!(
            batches[0].position(),
            Some(&Position::new(json!({"offset": 10})))
        );
        assert_eq!(batches[2].position(), None);
        assert_eq!(stats.snapshot().pages, 3);
        assert_eq!(stats.rows_read(), 25);
    }

    #[tokio::test]
    async fn resumes_after_a_position() {
        let source = Arc::new(numbers(25, 10));
        let mut request = ReadRequest::new("k", MemoryBudget::new(1 << 20));
        request.resume_from = Some(Position::new(json!({"offset": 20})));
        let batches: Vec<Batch> = paginate(source, request)
            .map(|b| b.unwrap())
            .collect()
            .await;
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].records()[0]["id"], json!(20));
    }

    #[tokio::test]
    async fn a_repeated_token_is_an_error_naming_the_page() {
        let mut source = numbers(100, 10);
        source.loop_at = Some(30);
        let request = ReadRequest::new("orders", MemoryBudget::new(1 << 20));
        let items: Vec<Result<Batch>> = paginate(Arc::new(source), request).collect().await;
        let err = items
            .into_iter()
            .find_map(Result::err)
            .expect("loop must be detected");
        // Page 3 points back to offset 0 (the first page had no token), page 4
        // re-reads it and points to offset 10 again: that token was used already.
        assert!(err.to_string().contains("pagination loop: page 4"), "{err}");
        assert_eq!(err.context_value("sync"), Some("orders"));
    }

    #[tokio::test]
    async fn batches_hold_their_memory_until_dropped() {
        let budget = MemoryBudget::new(1 << 20);
        let request = ReadRequest::new("k", budget.clone());
        let mut stream = paginate(Arc::new(numbers(30, 10)), request);
        let first = stream.next().await.unwrap().unwrap();
        assert!(first.bytes() > 0);
        assert_eq!(budget.in_use(), first.bytes());
        drop(first);
        assert_eq!(budget.in_use(), 0);
    }

    #[tokio::test]
    async fn a_full_budget_stops_the_source_until_memory_is_released() {
        // Each page of 10 small records takes well over 1 KiB; a 4 KiB budget holds
        // about one page, so the second fetch must wait for the first batch.
        let budget = MemoryBudget::new(4096);
        let source = Arc::new(numbers(1000, 10));
        let request = ReadRequest::new("k", budget.clone());
        let mut stream = paginate(source.clone(), request);
        let first = stream.next().await.unwrap().unwrap();
        let pending =
            tokio::time::timeout(std::time::Duration::from_millis(100), stream.next()).await;
        assert!(
            pending.is_err(),
            "the source must wait while the budget is full"
        );
        assert_eq!(
            source.fetched.lock().unwrap().len(),
            1,
            "no fetch while blocked"
        );
        drop(first);
        let second = tokio::time::timeout(std::time::Duration::from_secs(5), stream.next())
            .await
            .expect("released memory unblocks the source");
        assert!(second.unwrap().is_ok());
    }
}
