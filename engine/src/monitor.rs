//! The memory monitor: samples what the process really uses and acts before the
//! operating system does.
//!
//! The [`MemoryBudget`](sluicegate_core::MemoryBudget) accounts the bytes of records in
//! flight and makes sources wait when it is full; it cannot see what decoding,
//! sink caches, database buffers or the allocator hold. The monitor samples the
//! process's resident set every [`MonitorSettings::check_interval`]. When it
//! passes `flush_threshold` × `limit`, and again each time it has grown by
//! another tenth of the threshold since the monitor last acted, it:
//!
//! 1. asks every running pipeline to **flush**: the partial batch being gathered
//!    is written at once, and the sink's writer drops what it buffers or caches
//!    ([`SinkWriter::relieve_memory`](sluicegate_core::SinkWriter::relieve_memory));
//! 2. **halves the batch size** pipelines gather (down to 1/4); after three
//!    samples in a row below the threshold it doubles again, so batches grow
//!    back once the pressure eases — and also after three samples
//!    in a row above the threshold without growth, since shrinking did not help.
//!
//! On every sample above the threshold it asks the allocator to **return freed
//! pages** to the operating system (the hook given to
//! [`MemoryMonitor::with_allocator_release`]) and measures how much the resident
//! set fell. Memory that stays above the threshold without growing is not
//! escalated further: flushing and shrinking again would cost throughput for
//! nothing (most of such a resident set is the process itself, not data).
//!
//! Each action is logged with the figures and counted ([`MonitorSnapshot`]), so a
//! run report says how often each fired.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;

use crate::process::{MemorySample, MemorySampler};
use sluicegate_core::{MemoryRelief, format_bytes};

/// Most halvings of the batch size (1/4 of the configured size: smaller batches
/// cost a sink like DuckDB far more in transactions than they save in memory).
const MAX_SHIFT: u32 = 2;

/// Samples in a row above the threshold without growth after which a halved
/// batch size is doubled again: shrinking did not bring memory down.
const HOLD_SAMPLES: u64 = 3;

/// Samples in a row below the threshold before batches grow back.
const CALM_SAMPLES: u64 = 3;

/// The monitor acts again above the threshold once the resident set has grown
/// by this fraction of the threshold since it last acted.
const ESCALATION_STEP: u64 = 10;

/// What the monitor watches and when it acts.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct MonitorSettings {
    /// The memory the run aims to stay within, in bytes.
    pub limit_bytes: u64,
    /// Act when the resident set passes this fraction of the limit (0 < f ≤ 1).
    pub flush_threshold: f64,
    /// How often the resident set is sampled.
    pub check_interval: Duration,
}

impl Default for MonitorSettings {
    fn default() -> Self {
        Self {
            limit_bytes: 128 << 20,
            flush_threshold: 0.8,
            check_interval: Duration::from_secs(1),
        }
    }
}

impl MonitorSettings {
    /// Act above `flush_threshold` (0 to 1) of `limit_bytes`, sampling every
    /// `check_interval`.
    pub fn new(limit_bytes: u64, flush_threshold: f64, check_interval: Duration) -> Self {
        Self {
            limit_bytes,
            flush_threshold,
            check_interval,
        }
    }

    /// The resident set size above which the monitor acts.
    pub fn threshold_bytes(&self) -> u64 {
        (self.limit_bytes as f64 * self.flush_threshold.clamp(0.0, 1.0)) as u64
    }
}

/// How often each action fired, for reports and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct MonitorSnapshot {
    /// Whether the monitor samples at all (a platform without process figures,
    /// or a disabled monitor, never acts).
    pub enabled: bool,
    /// The resident set size above which it acts.
    pub threshold_bytes: u64,
    /// Samples taken.
    pub checks: u64,
    /// Samples above the threshold.
    pub over_threshold: u64,
    /// Flush requests sent (when memory passed the threshold, and each time it
    /// grew further while above it).
    pub flush_requests: u64,
    /// Partial batches written early because of a flush request.
    pub batches_flushed: u64,
    /// Records in those batches.
    pub rows_flushed: u64,
    /// Times a sink writer relieved memory, and what it freed in total.
    pub sink_reliefs: u64,
    /// Cached entries sink writers dropped.
    pub cache_entries_dropped: u64,
    /// Buffers sink writers flushed.
    pub buffers_flushed: u64,
    /// Times the batch size was halved.
    pub batch_shrinks: u64,
    /// Times it doubled again after pressure eased.
    pub batch_grows: u64,
    /// The batch size now, as a fraction of the configured one.
    pub batch_scale: f64,
    /// The smallest fraction it reached.
    pub min_batch_scale: f64,
    /// Times the allocator was asked to return freed memory.
    pub allocator_releases: u64,
    /// How far the resident set fell across those releases, in total.
    pub bytes_returned: u64,
    /// The last sample.
    pub last_rss: u64,
}

type Release = Box<dyn Fn() + Send + Sync>;

struct Inner {
    settings: MonitorSettings,
    enabled: bool,
    sampler: MemorySampler,
    release: Option<Release>,
    shift: AtomicU32,
    max_shift_seen: AtomicU32,
    calm: AtomicU64,
    /// Whether the last sample was over the threshold (a pressure episode).
    pressed: std::sync::atomic::AtomicBool,
    /// The resident set when the monitor last flushed and shrank.
    acted_at: AtomicU64,
    /// Samples in a row above the threshold without growth.
    held: AtomicU64,
    flushes: AtomicU64,
    flush_requests: watch::Sender<u64>,
    checks: AtomicU64,
    over_threshold: AtomicU64,
    batches_flushed: AtomicU64,
    rows_flushed: AtomicU64,
    sink_reliefs: AtomicU64,
    cache_entries_dropped: AtomicU64,
    buffers_flushed: AtomicU64,
    batch_shrinks: AtomicU64,
    batch_grows: AtomicU64,
    allocator_releases: AtomicU64,
    bytes_returned: AtomicU64,
    last_rss: AtomicU64,
    /// The resident set above which the monitor acts (from the settings, or
    /// set by the run's memory plan).
    threshold: AtomicU64,
    /// Serialises actions so two flushes do not interleave their figures.
    acting: Mutex<()>,
}

/// Samples process memory and relieves pressure; see the module docs. Cheap to
/// clone; every clone is the same monitor.
///
/// operating system does.
///
/// The [`MemoryBudget`](sluicegate_core::MemoryBudget) accounts the bytes of records in
/// flight and makes sources wait when it is full; it cannot see what decoding,
/// sink caches, database buffers or the allocator hold. The monitor samples the
/// process's resident set every [`MonitorSettings::check_interval`]. When it
/// passes `flush_threshold` × `limit`, and again each time it has grown by
/// another tenth of the threshold since the monitor last acted, it:
///
/// 1. asks every running pipeline to **flush**: the partial batch being gathered
///    is written at once, and the sink's writer drops what it buffers or caches
///    ([`WriterExtension::relieve_memory`](sluicegate_core::WriterExtension::relieve_memory));
/// 2. **halves the batch size** pipelines gather (down to 1/4); after three
///    samples in a row below the threshold it doubles again, so batches grow
///    back once the pressure eases — and also after three samples
///    in a row above the threshold without growth, since shrinking did not help.
///
/// On every sample above the threshold it asks the allocator to **return freed
/// pages** to the operating system (the hook given to
/// [`MemoryMonitor::with_allocator_release`]) and measures how much the resident
/// set fell. Memory that stays above the threshold without growing is not
/// escalated further: flushing and shrinking again would cost throughput for
/// nothing (most of such a resident set is the process itself, not data).
///
/// Each action is logged with the figures and counted ([`MonitorSnapshot`]), so a
/// run report says how often each fired.
#[derive(Clone)]
pub struct MemoryMonitor {
    inner: Arc<Inner>,
}

/// What one sample did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pressure {
    /// The resident set could not be read.
    Unknown,
    /// Below the threshold; nothing to do.
    Normal,
    /// Above the threshold, newly or grown further: a flush was requested,
    /// batches halved (unless at their smallest) and the allocator asked to
    /// return memory.
    High,
    /// Still above the threshold but not grown since the last flush: only the
    /// allocator was asked to return memory.
    Holding,
    /// Eased long enough: batches doubled again.
    Eased,
}

impl MemoryMonitor {
    /// A monitor of this process's resident set, with a sampler of its own.
    pub fn new(settings: MonitorSettings) -> Self {
        Self::with_sampler(settings, MemorySampler::new())
    }

    /// A monitor reading memory through `sampler`, the run's one reader of
    /// memory figures (the progress display, metrics and report share it).
    pub fn with_sampler(settings: MonitorSettings, sampler: MemorySampler) -> Self {
        Self::build(settings, true, sampler)
    }

    /// A monitor reading the resident set from `probe` (tests, or a
    /// container's own figure).
    pub fn with_probe(
        settings: MonitorSettings,
        probe: impl Fn() -> Option<u64> + Send + Sync + 'static,
    ) -> Self {
        let sampler = MemorySampler::with_probe(move || probe().map(MemorySample::of_rss));
        Self::build(settings, true, sampler)
    }

    /// A monitor that never acts: batches keep their size, nothing is flushed
    /// early. Its sampler still reads this process's figures for the run's
    /// displays.
    pub fn disabled() -> Self {
        Self::build(MonitorSettings::default(), false, MemorySampler::new())
    }

    /// The run's memory sampler.
    pub fn sampler(&self) -> &MemorySampler {
        &self.inner.sampler
    }

    /// The latest memory figures (see [`MemorySampler::latest`]).
    pub fn memory(&self) -> Option<MemorySample> {
        self.inner.sampler.latest()
    }

    fn rss_now(&self) -> Option<u64> {
        self.inner.sampler.sample().map(|m| m.process.rss)
    }

    fn build(settings: MonitorSettings, enabled: bool, sampler: MemorySampler) -> Self {
        Self {
            inner: Arc::new(Inner {
                settings,
                enabled,
                sampler,
                release: None,
                shift: AtomicU32::new(0),
                max_shift_seen: AtomicU32::new(0),
                calm: AtomicU64::new(0),
                pressed: std::sync::atomic::AtomicBool::new(false),
                acted_at: AtomicU64::new(0),
                held: AtomicU64::new(0),
                flushes: AtomicU64::new(0),
                flush_requests: watch::channel(0).0,
                checks: AtomicU64::new(0),
                over_threshold: AtomicU64::new(0),
                batches_flushed: AtomicU64::new(0),
                rows_flushed: AtomicU64::new(0),
                sink_reliefs: AtomicU64::new(0),
                cache_entries_dropped: AtomicU64::new(0),
                buffers_flushed: AtomicU64::new(0),
                batch_shrinks: AtomicU64::new(0),
                batch_grows: AtomicU64::new(0),
                allocator_releases: AtomicU64::new(0),
                bytes_returned: AtomicU64::new(0),
                last_rss: AtomicU64::new(0),
                threshold: AtomicU64::new(settings.threshold_bytes()),
                acting: Mutex::new(()),
            }),
        }
    }

    /// Calls `release` to make the allocator return freed pages to the operating
    /// system whenever pressure is high (call before sharing the monitor).
    ///
    /// # Panics
    /// When the monitor was already cloned.
    #[must_use]
    pub fn with_allocator_release(mut self, release: impl Fn() + Send + Sync + 'static) -> Self {
        Arc::get_mut(&mut self.inner)
            .expect("set the allocator release before cloning the monitor")
            .release = Some(Box::new(release));
        self
    }

    /// The settings.
    pub fn settings(&self) -> MonitorSettings {
        self.inner.settings
    }

    /// The resident set size above which the monitor acts now.
    pub fn threshold_bytes(&self) -> u64 {
        self.inner.threshold.load(Ordering::Relaxed)
    }

    /// Moves the threshold to `bytes`: a run that plans its memory (the
    /// process, its sinks' working memory and the records in flight) sets it
    /// where the plan ends, so the monitor reacts only to memory beyond the
    /// plan, and moves it when the plan changes.
    pub fn set_threshold_bytes(&self, bytes: u64) {
        self.inner.threshold.store(bytes, Ordering::Relaxed);
    }

    /// Takes one sample and acts on it.
    pub fn check(&self) -> Pressure {
        let inner = &self.inner;
        if !inner.enabled {
            return Pressure::Unknown;
        }
        let Some(rss) = self.rss_now() else {
            return Pressure::Unknown;
        };
        inner.checks.fetch_add(1, Ordering::Relaxed);
        inner.last_rss.store(rss, Ordering::Relaxed);
        let threshold = inner.threshold.load(Ordering::Relaxed);
        if rss >= threshold {
            inner.calm.store(0, Ordering::Relaxed);
            inner.over_threshold.fetch_add(1, Ordering::Relaxed);
            let entering = !inner.pressed.swap(true, Ordering::Relaxed);
            let step = (threshold / ESCALATION_STEP).max(1);
            let grew = rss >= inner.acted_at.load(Ordering::Relaxed).saturating_add(step);
            if !(entering || grew) {
                // Above the threshold but not growing: only the allocator's share,
                // and smaller batches that did not help grow back.
                let held = inner.held.fetch_add(1, Ordering::Relaxed) + 1;
                if held >= HOLD_SAMPLES
                    && self.grow_back(rss, "smaller batches did not lower memory")
                {
                    inner.held.store(0, Ordering::Relaxed);
                }
                let returned = self.release_allocator();
                tracing::debug!(
                    rss = %format_bytes(to_usize(rss)),
                    returned_to_os = %bytes_text(returned),
                    "memory still over the flush threshold, not growing"
                );
                return Pressure::Holding;
            }
            inner.held.store(0, Ordering::Relaxed);
            let shift = inner.shift.load(Ordering::Relaxed);
            let shrunk = shift < MAX_SHIFT;
            if shrunk {
                inner.shift.store(shift + 1, Ordering::Relaxed);
                inner.max_shift_seen.fetch_max(shift + 1, Ordering::Relaxed);
                inner.batch_shrinks.fetch_add(1, Ordering::Relaxed);
            }
            inner.flushes.fetch_add(1, Ordering::Relaxed);
            inner.flush_requests.send_modify(|n| *n += 1);
            let returned = self.release_allocator();
            inner
                .acted_at
                .store(self.rss_now().unwrap_or(rss), Ordering::Relaxed);
            let what = if shrunk {
                ", halving the batch size"
            } else {
                " (batch size at its smallest)"
            };
            tracing::warn!(
                rss = %format_bytes(to_usize(rss)),
                threshold = %format_bytes(to_usize(threshold)),
                limit = %format_bytes(to_usize(inner.settings.limit_bytes)),
                batch_scale = %scale_text(self.shift()),
                returned_to_os = %bytes_text(returned),
                "memory {} the flush threshold: flushing pending batches and sink caches{what}",
                if entering { "over" } else { "still growing over" }
            );
            return Pressure::High;
        }
        inner.pressed.store(false, Ordering::Relaxed);
        inner.held.store(0, Ordering::Relaxed);
        if self.shift() > 0 {
            let calm = inner.calm.fetch_add(1, Ordering::Relaxed) + 1;
            if calm >= CALM_SAMPLES && self.grow_back(rss, "memory pressure eased") {
                inner.calm.store(0, Ordering::Relaxed);
                return Pressure::Eased;
            }
        } else {
            inner.calm.store(0, Ordering::Relaxed);
        }
        Pressure::Normal
    }

    /// Doubles a halved batch size (`false` when it is not halved) and says why.
    fn grow_back(&self, rss: u64, why: &str) -> bool {
        let inner = &self.inner;
        let shift = self.shift();
        if shift == 0 {
            return false;
        }
        inner.shift.store(shift - 1, Ordering::Relaxed);
        inner.batch_grows.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            rss = %format_bytes(to_usize(rss)),
            batch_scale = %scale_text(shift - 1),
            "{why}: batch size grows back"
        );
        true
    }

    /// Samples every `check_interval` until the returned task is dropped.
    pub fn spawn(&self) -> MonitorTask {
        let monitor = self.clone();
        let interval = self
            .inner
            .settings
            .check_interval
            .max(Duration::from_millis(10));
        let handle = tokio::spawn(async move {
            if !monitor.inner.enabled {
                return;
            }
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                monitor.check();
            }
        });
        MonitorTask(handle)
    }

    /// The batch size to gather now, for a configured size of `configured` records.
    pub fn batch_rows(&self, configured: usize) -> usize {
        (configured >> self.shift()).max(1)
    }

    /// The byte size to gather now, for a configured size of `configured` bytes.
    pub fn batch_bytes(&self, configured: usize) -> usize {
        (configured >> self.shift()).max(1)
    }

    fn shift(&self) -> u32 {
        self.inner.shift.load(Ordering::Relaxed)
    }

    /// Flush requests: the value grows by one with each; wait on `changed()`.
    pub fn flush_requests(&self) -> watch::Receiver<u64> {
        self.inner.flush_requests.subscribe()
    }

    /// Counts a partial batch of `rows` records written early on a flush request.
    pub fn note_batch_flushed(&self, rows: usize) {
        self.inner.batches_flushed.fetch_add(1, Ordering::Relaxed);
        self.inner
            .rows_flushed
            .fetch_add(rows as u64, Ordering::Relaxed);
    }

    /// Counts what a sink writer freed, returns freed pages to the operating
    /// system and logs the whole flush with how far the resident set fell.
    pub fn note_relief(&self, sync_key: &str, relief: MemoryRelief) {
        let inner = &self.inner;
        if !relief.is_empty() {
            inner.sink_reliefs.fetch_add(1, Ordering::Relaxed);
            inner
                .cache_entries_dropped
                .fetch_add(relief.cache_entries, Ordering::Relaxed);
            inner
                .buffers_flushed
                .fetch_add(relief.buffers_flushed, Ordering::Relaxed);
        }
        let before = self.rss_now();
        let returned = self.release_allocator();
        let after = self.rss_now();
        tracing::info!(
            sync = %sync_key,
            cache_entries_dropped = relief.cache_entries,
            cache_bytes = %format_bytes(to_usize(relief.cache_bytes)),
            buffers_flushed = relief.buffers_flushed,
            returned_to_os = %bytes_text(returned),
            rss_before = %bytes_text(before),
            rss_after = %bytes_text(after),
            "flushed under memory pressure"
        );
    }

    /// Asks the allocator to return freed memory; the resident set's fall, when
    /// there is a release hook and a probe.
    fn release_allocator(&self) -> Option<u64> {
        let inner = &self.inner;
        let release = inner.release.as_ref()?;
        let _acting = inner
            .acting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let before = self.rss_now();
        release();
        let after = self.rss_now();
        inner.allocator_releases.fetch_add(1, Ordering::Relaxed);
        let fell = before?.saturating_sub(after?);
        inner.bytes_returned.fetch_add(fell, Ordering::Relaxed);
        Some(fell)
    }

    /// Every figure so far.
    pub fn snapshot(&self) -> MonitorSnapshot {
        let inner = &self.inner;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        MonitorSnapshot {
            enabled: inner.enabled,
            threshold_bytes: inner.threshold.load(Ordering::Relaxed),
            checks: load(&inner.checks),
            over_threshold: load(&inner.over_threshold),
            flush_requests: load(&inner.flushes),
            batches_flushed: load(&inner.batches_flushed),
            rows_flushed: load(&inner.rows_flushed),
            sink_reliefs: load(&inner.sink_reliefs),
            cache_entries_dropped: load(&inner.cache_entries_dropped),
            buffers_flushed: load(&inner.buffers_flushed),
            batch_shrinks: load(&inner.batch_shrinks),
            batch_grows: load(&inner.batch_grows),
            batch_scale: 1.0 / f64::from(1u32 << self.shift()),
            min_batch_scale: 1.0 / f64::from(1u32 << inner.max_shift_seen.load(Ordering::Relaxed)),
            allocator_releases: load(&inner.allocator_releases),
            bytes_returned: load(&inner.bytes_returned),
            last_rss: load(&inner.last_rss),
        }
    }
}

impl std::fmt::Debug for MemoryMonitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryMonitor")
            .field("settings", &self.inner.settings)
            .field("enabled", &self.inner.enabled)
            .finish()
    }
}

/// The sampling task of [`MemoryMonitor::spawn`]; sampling stops when dropped.
#[derive(Debug)]
pub struct MonitorTask(tokio::task::JoinHandle<()>);

impl Drop for MonitorTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// A byte count for a log line, `-` when unknown.
fn bytes_text(bytes: Option<u64>) -> String {
    bytes.map_or_else(|| "-".to_owned(), |b| format_bytes(to_usize(b)))
}

fn scale_text(shift: u32) -> String {
    if shift == 0 {
        "1".to_owned()
    } else {
        format!("1/{}", 1u32 << shift)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    const MIB: u64 = 1 << 20;

    fn settings() -> MonitorSettings {
        MonitorSettings {
            limit_bytes: 100 * MIB,
            flush_threshold: 0.8,
            check_interval: Duration::from_millis(10),
        }
    }

    /// A monitor whose "resident set" is whatever the test stores, and whose
    /// allocator release takes 5 MiB off it.
    fn fake() -> (MemoryMonitor, Arc<AtomicU64>, Arc<AtomicBool>) {
        let rss = Arc::new(AtomicU64::new(10 * MIB));
        let released = Arc::new(AtomicBool::new(false));
        let probe = rss.clone();
        let release_rss = rss.clone();
        let flag = released.clone();
        let monitor =
            MemoryMonitor::with_probe(settings(), move || Some(probe.load(Ordering::Relaxed)))
                .with_allocator_release(move || {
                    flag.store(true, Ordering::Relaxed);
                    let now = release_rss.load(Ordering::Relaxed);
                    release_rss.store(now.saturating_sub(5 * MIB), Ordering::Relaxed);
                });
        (monitor, rss, released)
    }

    #[test]
    fn every_check_reads_the_sampler_and_displays_share_its_reading() {
        let (monitor, rss, _) = fake();
        rss.store(42 * MIB, Ordering::Relaxed);
        monitor.check();
        let reads = monitor.sampler().reads();
        rss.store(43 * MIB, Ordering::Relaxed);
        // A display asking right after a check gets the check's reading.
        assert_eq!(monitor.memory().unwrap().process.rss, 42 * MIB);
        assert_eq!(monitor.sampler().reads(), reads, "no second read");
        monitor.check();
        assert_eq!(monitor.memory().unwrap().process.rss, 43 * MIB);
        assert_eq!(monitor.snapshot().last_rss, 43 * MIB);
    }

    #[test]
    fn below_the_threshold_nothing_happens() {
        let (monitor, rss, released) = fake();
        rss.store(79 * MIB, Ordering::Relaxed);
        assert_eq!(monitor.check(), Pressure::Normal);
        assert_eq!(monitor.batch_rows(1000), 1000);
        assert!(!released.load(Ordering::Relaxed));
        let snap = monitor.snapshot();
        assert_eq!((snap.checks, snap.over_threshold), (1, 0));
        assert_eq!(snap.threshold_bytes, 80 * MIB);
    }

    #[test]
    fn pressure_flushes_halves_batches_and_returns_memory() {
        let (monitor, rss, released) = fake();
        let mut flushes = monitor.flush_requests();
        rss.store(90 * MIB, Ordering::Relaxed);
        assert_eq!(monitor.check(), Pressure::High);
        assert!(flushes.has_changed().unwrap(), "a flush was requested");
        assert_eq!(*flushes.borrow_and_update(), 1);
        assert_eq!(monitor.batch_rows(1000), 500);
        assert!(released.load(Ordering::Relaxed));
        let snap = monitor.snapshot();
        assert_eq!(snap.bytes_returned, 5 * MIB, "the fall of the resident set");
        assert_eq!((snap.over_threshold, snap.batch_shrinks), (1, 1));
        // Memory keeps growing: batches shrink to 1/4 and no further.
        for i in 0..10 {
            rss.store((95 + 10 * i) * MIB, Ordering::Relaxed);
            assert_eq!(monitor.check(), Pressure::High);
        }
        assert_eq!(monitor.batch_rows(1000), 250);
        assert_eq!(monitor.batch_rows(2), 1, "never below one record");
        let snap = monitor.snapshot();
        assert_eq!(
            (snap.over_threshold, snap.flush_requests, snap.batch_shrinks),
            (11, 11, 2)
        );
        assert!((snap.min_batch_scale - 0.25).abs() < 1e-9);
    }

    #[test]
    fn memory_that_stays_over_the_threshold_without_growing_is_not_escalated() {
        let (monitor, rss, _) = fake();
        let mut flushes = monitor.flush_requests();
        rss.store(90 * MIB, Ordering::Relaxed);
        assert_eq!(monitor.check(), Pressure::High);
        flushes.mark_unchanged();
        // The release took 5 MiB off (85 MiB); hovering around 86-90 MiB stays
        // within a tenth of the threshold (8 MiB) of it.
        for mib in [86, 90] {
            rss.store(mib * MIB, Ordering::Relaxed);
            assert_eq!(monitor.check(), Pressure::Holding);
        }
        assert!(!flushes.has_changed().unwrap(), "no further flush request");
        assert_eq!(monitor.batch_rows(1000), 500, "no further halving");
        // Growing past the step escalates again.
        rss.store(94 * MIB, Ordering::Relaxed);
        assert_eq!(monitor.check(), Pressure::High);
        assert_eq!(monitor.batch_rows(1000), 250);
        let snap = monitor.snapshot();
        assert_eq!((snap.over_threshold, snap.flush_requests), (4, 2));
        assert_eq!(snap.allocator_releases, 4, "the allocator on every sample");

        // Three samples holding steady: the smaller batches did not help, one
        // halving is undone.
        for _ in 0..3 {
            rss.store(90 * MIB, Ordering::Relaxed);
            assert_eq!(monitor.check(), Pressure::Holding);
        }
        assert_eq!(monitor.batch_rows(1000), 500);
        assert_eq!(monitor.snapshot().batch_grows, 1);
    }

    #[test]
    fn batches_grow_back_after_calm_samples_only() {
        let (monitor, rss, _) = fake();
        rss.store(90 * MIB, Ordering::Relaxed);
        monitor.check();
        rss.store(99 * MIB, Ordering::Relaxed);
        monitor.check();
        assert_eq!(monitor.batch_rows(1000), 250);
        // Below the threshold: the third sample in a row grows batches back.
        rss.store(70 * MIB, Ordering::Relaxed);
        assert_eq!(monitor.check(), Pressure::Normal);
        assert_eq!(monitor.batch_rows(1000), 250);
        assert_eq!(monitor.check(), Pressure::Normal);
        assert_eq!(monitor.check(), Pressure::Eased);
        assert_eq!(monitor.batch_rows(1000), 500);
        for _ in 0..3 {
            monitor.check();
        }
        assert_eq!(monitor.batch_rows(1000), 1000);
        let snap = monitor.snapshot();
        assert_eq!((snap.batch_shrinks, snap.batch_grows), (2, 2));
        assert!((snap.batch_scale - 1.0).abs() < 1e-9);
        assert!((snap.min_batch_scale - 0.25).abs() < 1e-9);
    }

    #[test]
    fn reliefs_are_counted() {
        let (monitor, _, _) = fake();
        monitor.note_batch_flushed(120);
        monitor.note_relief("products", MemoryRelief::default().with_cache(300, 30_000));
        monitor.note_relief("products", MemoryRelief::default());
        let snap = monitor.snapshot();
        assert_eq!((snap.batches_flushed, snap.rows_flushed), (1, 120));
        assert_eq!((snap.sink_reliefs, snap.cache_entries_dropped), (1, 300));
        assert_eq!(snap.allocator_releases, 2);
    }

    #[test]
    fn a_disabled_monitor_never_acts() {
        let monitor = MemoryMonitor::disabled();
        assert_eq!(monitor.check(), Pressure::Unknown);
        assert_eq!(monitor.batch_rows(1000), 1000);
        assert!(!monitor.snapshot().enabled);
    }

    #[tokio::test]
    async fn the_task_samples_on_its_interval() {
        let (monitor, rss, _) = fake();
        rss.store(90 * MIB, Ordering::Relaxed);
        let mut flushes = monitor.flush_requests();
        let task = monitor.spawn();
        tokio::time::timeout(Duration::from_secs(5), flushes.changed())
            .await
            .expect("a flush request within the interval")
            .unwrap();
        drop(task);
        assert!(monitor.snapshot().checks >= 1);
    }
}
