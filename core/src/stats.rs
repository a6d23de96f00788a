//! Live counters of a run, shared by sources, sinks and the pipeline.
//!
//! Every figure is an atomic counter so it can be read at any time by a progress
//! display or a metrics endpoint while the run is going.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

/// Counters of one run. Share it as `Arc<RunStats>`.
#[derive(Debug, Default)]
pub struct RunStats {
    rows_read: AtomicU64,
    rows_written: AtomicU64,
    rows_filtered: AtomicU64,
    rows_rejected: AtomicU64,
    pages: AtomicU64,
    batches: AtomicU64,
    bytes_received: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
    statuses: Mutex<BTreeMap<u16, u64>>,
    rate_limited: AtomicU64,
    pacing_wait_nanos: AtomicU64,
    in_flight: AtomicU64,
    peak_in_flight: AtomicU64,
    latency_buckets: [AtomicU64; LATENCY_BOUNDS_MS.len()],
    latency_count: AtomicU64,
    latency_nanos: AtomicU64,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    cache_evictions: AtomicU64,
    cache_entries: AtomicU64,
    cache_bytes: AtomicU64,
    entries_written: AtomicU64,
    entries_published: AtomicU64,
    expected_rows: AtomicU64,
}

/// Upper bounds (milliseconds) of the request latency histogram's buckets; the
/// last, unbounded bucket is the count of all requests.
pub const LATENCY_BOUNDS_MS: [u64; 11] = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000];

/// Counts a request as in flight until dropped ([`RunStats::request_started`]).
#[derive(Debug)]
pub struct InFlight<'a> {
    stats: &'a RunStats,
    started: std::time::Instant,
}

impl InFlight<'_> {
    /// Ends the request (answered or failed) and records its latency.
    pub fn finish(self) {}
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.stats.observe_latency(self.started.elapsed());
    }
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatsSnapshot {
    /// Records produced by sources.
    pub rows_read: u64,
    /// Records acknowledged by sinks (written, or planned in a dry run).
    pub rows_written: u64,
    /// Records a mapping's filter dropped.
    pub rows_filtered: u64,
    /// Records rejected (mapping, conversion or the sink refused them).
    pub rows_rejected: u64,
    /// Source pages read.
    pub pages: u64,
    /// Batches acknowledged by sinks.
    pub batches: u64,
    /// Raw bytes received from sources (response bodies, result sets).
    pub bytes_received: u64,
    /// Requests sent to remote services, retries included.
    pub requests: u64,
    /// Requests that were retries of an earlier failed attempt.
    pub retries: u64,
    /// Responses per HTTP status code.
    pub statuses: BTreeMap<u16, u64>,
    /// "Too many requests" answers that paused requests.
    pub rate_limited: u64,
    /// Time requests waited for a slot under a rate limit (pacing and pauses).
    pub rate_limit_wait_ms: u64,
    /// Requests being sent or awaiting their answer now.
    pub in_flight: u64,
    /// The most requests in flight at once.
    pub peak_in_flight: u64,
    /// Requests whose answer (status and headers) took at most each bound of
    /// [`LATENCY_BOUNDS_MS`], cumulative.
    pub latency_buckets: Vec<u64>,
    /// Requests timed.
    pub latency_count: u64,
    /// Their summed latency, in microseconds.
    pub latency_total_us: u64,
    /// Records a sink's lookup cache answered.
    pub cache_hits: u64,
    /// Records it did not know.
    pub cache_misses: u64,
    /// Entries evicted to stay within its bounds.
    pub cache_evictions: u64,
    /// Entries it holds now (the stream being written).
    pub cache_entries: u64,
    /// Bytes it holds now, as weighed.
    pub cache_bytes: u64,
    /// Entries a keyed sink created or updated, counted as each write succeeds
    /// (before its batch is acknowledged).
    pub entries_written: u64,
    /// Entries a keyed sink published, counted as each publish succeeds.
    pub entries_published: u64,
}

impl StatsSnapshot {
    /// Mean request latency, if any request was timed.
    pub fn mean_latency(&self) -> Option<Duration> {
        (self.latency_count > 0)
            .then(|| Duration::from_micros(self.latency_total_us / self.latency_count))
    }

    /// The latency below which `q` (0..1) of the requests answered: the bound of
    /// the first bucket holding that share (`None` when nothing was timed; the
    /// largest bound when beyond it).
    pub fn latency_quantile(&self, q: f64) -> Option<Duration> {
        if self.latency_count == 0 {
            return None;
        }
        let want = (self.latency_count as f64 * q).ceil() as u64;
        let ms = LATENCY_BOUNDS_MS
            .iter()
            .zip(&self.latency_buckets)
            .find(|(_, n)| **n >= want)
            .map_or(LATENCY_BOUNDS_MS[LATENCY_BOUNDS_MS.len() - 1], |(b, _)| *b);
        Some(Duration::from_millis(ms))
    }
}

impl RunStats {
    /// Counts records read from a source.
    pub fn add_rows_read(&self, n: u64) {
        self.rows_read.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts records acknowledged by a sink.
    pub fn add_rows_written(&self, n: u64) {
        self.rows_written.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts records a filter dropped.
    pub fn add_rows_filtered(&self, n: u64) {
        self.rows_filtered.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts rejected records.
    pub fn add_rows_rejected(&self, n: u64) {
        self.rows_rejected.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts one source page.
    pub fn add_page(&self) {
        self.pages.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one acknowledged batch.
    pub fn add_batch(&self) {
        self.batches.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts raw bytes received.
    pub fn add_bytes_received(&self, n: u64) {
        self.bytes_received.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts one request sent.
    pub fn add_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one retry (the retried request itself is counted by `add_request`).
    pub fn add_retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one response with the given HTTP status.
    pub fn add_status(&self, status: u16) {
        let mut statuses = self
            .statuses
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *statuses.entry(status).or_default() += 1;
    }

    /// Counts a "too many requests" answer.
    pub fn add_rate_limited(&self) {
        self.rate_limited.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts time spent waiting for a rate limit's slot.
    pub fn add_rate_limit_wait(&self, waited: Duration) {
        self.pacing_wait_nanos.fetch_add(
            u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Counts a request in flight until the returned guard is dropped, then
    /// records its latency.
    pub fn request_started(&self) -> InFlight<'_> {
        let now = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak_in_flight.fetch_max(now, Ordering::Relaxed);
        InFlight {
            stats: self,
            started: std::time::Instant::now(),
        }
    }

    /// Records one request's latency.
    pub fn observe_latency(&self, latency: Duration) {
        let ms = latency.as_millis();
        for (bound, bucket) in LATENCY_BOUNDS_MS.iter().zip(&self.latency_buckets) {
            if ms <= u128::from(*bound) {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_nanos.fetch_add(
            u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Counts lookups a sink's cache answered (`hits`) or did not (`misses`).
    pub fn add_cache_lookups(&self, hits: u64, misses: u64) {
        self.cache_hits.fetch_add(hits, Ordering::Relaxed);
        self.cache_misses.fetch_add(misses, Ordering::Relaxed);
    }

    /// Counts entries a keyed sink wrote, as the writes succeed.
    pub fn add_entries_written(&self, n: u64) {
        self.entries_written.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts entries a keyed sink published, as the publishes succeed.
    pub fn add_entries_published(&self, n: u64) {
        self.entries_published.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts one cache eviction.
    pub fn add_cache_eviction(&self) {
        self.cache_evictions.fetch_add(1, Ordering::Relaxed);
    }

    /// Sets the size of the cache of the stream being written.
    pub fn set_cache_size(&self, entries: u64, bytes: u64) {
        self.cache_entries.store(entries, Ordering::Relaxed);
        self.cache_bytes.store(bytes, Ordering::Relaxed);
    }

    /// Says how many records the stream being read will yield in this run (a
    /// source that knows the API's total; progress shows an ETA from it).
    pub fn set_expected_rows(&self, rows: u64) {
        self.expected_rows
            .store(rows.saturating_add(1), Ordering::Relaxed);
    }

    /// Forgets the expected count (a new stream starts).
    pub fn clear_expected_rows(&self) {
        self.expected_rows.store(0, Ordering::Relaxed);
    }

    /// The records the running stream is expected to yield, if its source said.
    pub fn expected_rows(&self) -> Option<u64> {
        self.expected_rows.load(Ordering::Relaxed).checked_sub(1)
    }

    /// Records read so far.
    pub fn rows_read(&self) -> u64 {
        self.rows_read.load(Ordering::Relaxed)
    }

    /// Records acknowledged so far.
    pub fn rows_written(&self) -> u64 {
        self.rows_written.load(Ordering::Relaxed)
    }

    /// A copy of every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            rows_read: self.rows_read.load(Ordering::Relaxed),
            rows_written: self.rows_written.load(Ordering::Relaxed),
            rows_filtered: self.rows_filtered.load(Ordering::Relaxed),
            rows_rejected: self.rows_rejected.load(Ordering::Relaxed),
            pages: self.pages.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            bytes_received: self.bytes_received.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            statuses: self
                .statuses
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
            rate_limited: self.rate_limited.load(Ordering::Relaxed),
            rate_limit_wait_ms: self.pacing_wait_nanos.load(Ordering::Relaxed) / 1_000_000,
            in_flight: self.in_flight.load(Ordering::Relaxed),
            peak_in_flight: self.peak_in_flight.load(Ordering::Relaxed),
            latency_buckets: self
                .latency_buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
            latency_count: self.latency_count.load(Ordering::Relaxed),
            latency_total_us: self.latency_nanos.load(Ordering::Relaxed) / 1000,
            cache_hits: self.cache_hits.load(Ordering::Relaxed),
            cache_misses: self.cache_misses.load(Ordering::Relaxed),
            cache_evictions: self.cache_evictions.load(Ordering::Relaxed),
            cache_entries: self.cache_entries.load(Ordering::Relaxed),
            cache_bytes: self.cache_bytes.load(Ordering::Relaxed),
            entries_written: self.entries_written.load(Ordering::Relaxed),
            entries_published: self.entries_published.load(Ordering::Relaxed),
        }
    }
}

/// Figures of a writer's lookup cache (keyed sinks look existing entries up
/// through one), for the run summary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct CacheStats {
    /// Records answered by the cache.
    pub hits: u64,
    /// Records the cache did not know.
    pub misses: u64,
    /// Entries evicted to stay within bounds.
    pub evictions: u64,
    /// Entries held at the end.
    pub entries: u64,
    /// Bytes held at the end (as weighed).
    pub bytes: u64,
    /// Whether the target was prefetched.
    pub prefetched: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_accumulate() {
        let stats = RunStats::default();
        stats.add_rows_read(5);
        stats.add_request();
        stats.add_request();
        stats.add_retry();
        stats.add_status(503);
        stats.add_status(200);
        stats.add_status(200);
        let snap = stats.snapshot();
        assert_eq!(snap.rows_read, 5);
        assert_eq!(snap.requests, 2);
        assert_eq!(snap.retries, 1);
        assert_eq!(snap.statuses.get(&200), Some(&2));
        assert_eq!(snap.statuses.get(&503), Some(&1));
    }

    #[test]
    fn latency_and_in_flight() {
        let stats = RunStats::default();
        let first = stats.request_started();
        let second = stats.request_started();
        assert_eq!(stats.snapshot().in_flight, 2);
        first.finish();
        drop(second);
        stats.observe_latency(Duration::from_millis(40));
        stats.observe_latency(Duration::from_millis(700));
        let snap = stats.snapshot();
        assert_eq!((snap.in_flight, snap.peak_in_flight), (0, 2));
        assert_eq!(snap.latency_count, 4);
        // 5 ms bucket: the two instant requests; 50 ms: plus the 40 ms one.
        assert_eq!(snap.latency_buckets[0], 2);
        assert_eq!(snap.latency_buckets[3], 3);
        assert_eq!(snap.latency_buckets[7], 4);
        assert_eq!(snap.latency_quantile(0.5), Some(Duration::from_millis(5)));
        assert_eq!(
            snap.latency_quantile(0.99),
            Some(Duration::from_millis(1000))
        );
        assert!(snap.mean_latency().unwrap() >= Duration::from_millis(185));
    }

    #[test]
    fn cache_figures() {
        let stats = RunStats::default();
        stats.add_cache_lookups(7, 3);
        stats.add_cache_eviction();
        stats.set_cache_size(40, 4096);
        let snap = stats.snapshot();
        assert_eq!(
            (
                snap.cache_hits,
                snap.cache_misses,
                snap.cache_evictions,
                snap.cache_entries,
                snap.cache_bytes
            ),
            (7, 3, 1, 40, 4096)
        );
    }
}
