//! Live counters of a run, shared by sources, sinks and the pipeline.
//!
//! Every figure is an atomic counter so it can be read at any time by a progress
//! display or a metrics endpoint while the run is going.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

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
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
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
        }
    }
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
}
