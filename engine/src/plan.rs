//! The run's memory plan: `--max-memory-mb` split between the process itself,
//! the sinks' own working memory and the records in flight.
//!
//! ```text
//! free      = target − process at start − sinks' working memory
//! records   = flush threshold × free ÷ k          (the budget sources lease from)
//! monitored = process + sinks + flush threshold × free
//! ```
//!
//! - *process at start*: the resident set once the sinks are open (code pages
//!   of the binary and its libraries, the runtime), measured;
//! - *sinks' working memory*: what each sink says it works with besides the
//!   batches it is handed ([`SinkCapabilities::working_memory`](sluicegate_core::SinkCapabilities::working_memory); for DuckDB its
//!   memory limit plus what it allocates outside it);
//! - *records*: the bytes of records in flight, each costing about
//!   `k` = [`RESIDENT_PER_BUDGET_BYTE`] resident bytes;
//! - the rest of `free` is headroom for what nothing plans.
//!
//! The memory monitor acts above `monitored`, so it reacts to memory beyond
//! the plan, not to the sinks' planned working memory. When a sink's working
//! memory grows while the run goes on (a wider table, a longer value), the
//! monitor's threshold moves with the plan ([`follow_sink_growth`]), and the
//! run says when the plan no longer fits the target.
//! When the target cannot hold the process, its sinks and the smallest
//! budget, the run says so at the start, with the figures; records then get
//! an eighth of the target (at least the smallest budget) and the monitor acts
//! at the flush threshold of the target, as asked.

use std::sync::Arc;
use std::time::Duration;

use crate::MemoryMonitor;
use sluicegate_core::{Sink, format_bytes};

/// Resident bytes one byte of records budget costs once decoding, the sink's
/// copies of a batch and the allocator are counted. Measured on the bundled
/// example: what Rust's allocator held grew by 0.9 bytes per budget byte
/// between budgets of 6 and 35 MiB; a quarter more for peaks.
pub const RESIDENT_PER_BUDGET_BYTE: f64 = 1.25;

/// The smallest budget for records in flight.
pub const MIN_BUDGET: usize = 2 << 20;

/// How the run's memory target is divided.
///
/// the sinks' own working memory and the records in flight.
///
/// ```text
/// free      = target − process at start − sinks' working memory
/// records   = flush threshold × free ÷ k          (the budget sources lease from)
/// monitored = process + sinks + flush threshold × free
/// ```
///
/// - *process at start*: the resident set once the sinks are open (code pages
///   of the binary and its libraries, the runtime), measured;
/// - *sinks' working memory*: what each sink says it works with besides the
///   batches it is handed ([`SinkCapabilities::working_memory`](sluicegate_core::SinkCapabilities::working_memory); for DuckDB its
///   memory limit plus what it allocates outside it);
/// - *records*: the bytes of records in flight, each costing about
///   `k` = [`RESIDENT_PER_BUDGET_BYTE`] resident bytes;
/// - the rest of `free` is headroom for what nothing plans.
///
/// The memory monitor acts above `monitored`, so it reacts to memory beyond
/// the plan, not to the sinks' planned working memory. When a sink's working
/// memory grows while the run goes on (a wider table, a longer value), the
/// monitor's threshold moves with the plan ([`follow_sink_growth`]), and the
/// run says when the plan no longer fits the target.
/// When the target cannot hold the process, its sinks and the smallest
/// budget, the run says so at the start, with the figures; records then get
/// an eighth of the target (at least the smallest budget) and the monitor acts
/// at the flush threshold of the target, as asked.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemoryPlan {
    /// `--max-memory-mb`, in bytes.
    pub target: u64,
    /// The share of what is free that the plan uses (the flush threshold).
    pub fill: f64,
    /// The process's resident set once the sinks were open, when known.
    pub process: Option<u64>,
    /// The sinks' working memory.
    pub sinks: u64,
    /// The budget for records in flight, in bytes.
    pub records: usize,
}

impl MemoryPlan {
    /// Plans `target` bytes for a process using `process` bytes now (when
    /// known) and sinks working with `sinks` bytes, using `fill` (the flush
    /// threshold) of what they leave. Without a process figure a sixth of what
    /// the sinks leave goes to records.
    pub fn new(target: u64, fill: f64, process: Option<u64>, sinks: u64) -> Self {
        let fill = fill.clamp(0.0, 1.0);
        let mut plan = Self {
            target,
            fill,
            process,
            sinks,
            records: 0,
        };
        let records = match process {
            Some(_) => (plan.filled() as f64 / RESIDENT_PER_BUDGET_BYTE) as usize,
            None => usize::try_from(target.saturating_sub(sinks) / 6).unwrap_or(usize::MAX),
        };
        plan.records = records.max(MIN_BUDGET);
        if !plan.fits() {
            // The target cannot be met: records get an eighth of it (at least
            // the smallest budget), so the run still moves at a fair pace.
            plan.records = usize::try_from(target / 8)
                .unwrap_or(usize::MAX)
                .max(MIN_BUDGET);
        }
        plan
    }

    /// What the target leaves once the process and the sinks are counted.
    fn free(&self) -> u64 {
        self.target
            .saturating_sub(self.process.unwrap_or(0))
            .saturating_sub(self.sinks)
    }

    /// The share of `free` the records may fill.
    fn filled(&self) -> u64 {
        (self.free() as f64 * self.fill) as u64
    }

    /// The resident set the plan expects at its fullest.
    pub fn expected(&self) -> u64 {
        self.process.unwrap_or(0)
            + self.sinks
            + (self.records as f64 * RESIDENT_PER_BUDGET_BYTE) as u64
    }

    /// Where the memory monitor acts: above the plan, but not above the
    /// target (and never below the flush threshold of the whole target). When
    /// the plan does not fit, at the flush threshold of the target, as asked.
    pub fn monitor_threshold(&self) -> u64 {
        let plain = (self.target as f64 * self.fill) as u64;
        match self.process {
            Some(process) if self.fits() => (process + self.sinks + self.filled())
                .max(self.expected())
                .min(self.target)
                .max(plain),
            _ => plain,
        }
    }

    /// Where the memory monitor acts once the sinks work with `sinks` bytes
    /// (their working memory grew while the run goes on): as
    /// [`Self::monitor_threshold`] of the moved plan while it fits, and when
    /// this plan did not fit from the start (the target asked for stays the
    /// monitor's). When the growth alone takes the plan beyond the target, above
    /// what the plan now expects: the run passes the target, and says so. What
    /// grew is the sinks' own need (DuckDB's memory for the columns of a wider
    /// table), which the monitor's measures cannot shrink: held at the target,
    /// it halved the batches of a table of 601 columns again and again, and
    /// batches a quarter as large made that load four times slower (each
    /// commit costs about the same whatever its rows) for no less memory.
    pub fn threshold_with_sinks(&self, sinks: u64) -> u64 {
        let moved = self.with_sinks(sinks);
        if moved.fits() || !self.fits() {
            moved.monitor_threshold()
        } else {
            moved
                .expected()
                .max((self.target as f64 * self.fill) as u64)
        }
    }

    /// Whether the plan fits the target: the process, its sinks and the
    /// smallest budget fit in it.
    pub fn fits(&self) -> bool {
        self.process.unwrap_or(0)
            + self.sinks
            + (MIN_BUDGET as f64 * RESIDENT_PER_BUDGET_BYTE) as u64
            <= self.target
    }

    /// The same plan with the sinks working with `sinks` bytes now.
    pub fn with_sinks(&self, sinks: u64) -> Self {
        Self { sinks, ..*self }
    }

    /// One line with the figures, for logs.
    pub fn describe(&self) -> String {
        self.describe_at(self.monitor_threshold())
    }

    /// [`Self::describe`] with the monitor acting above `threshold`.
    fn describe_at(&self, threshold: u64) -> String {
        format!(
            "{} target: process {} + sinks' working memory {} + records {} (×{RESIDENT_PER_BUDGET_BYTE}); memory monitor above {}",
            fmt(self.target),
            self.process.map_or_else(|| "unknown".to_owned(), fmt),
            fmt(self.sinks),
            format_bytes(self.records),
            fmt(threshold),
        )
    }
}

fn fmt(bytes: u64) -> String {
    format_bytes(usize::try_from(bytes).unwrap_or(usize::MAX))
}

/// Follows the sinks' working memory while the run goes on: every `interval`
/// it reads the sinks' figures and, when they grew (DuckDB's limit raised for a
/// wider table or a longer value), moves the monitor's threshold with the plan,
/// so the monitor keeps reacting only to memory beyond it. When the target can
/// no longer hold the process, its sinks and the smallest budget, it says so,
/// once. (The records budget keeps its
/// size: a budget shrunk under sources that wait for it could leave a request
/// larger than what is left waiting for ever.) Ends when the returned guard
/// is dropped.
pub fn follow_sink_growth(
    plan: MemoryPlan,
    sinks: Vec<Arc<dyn Sink>>,
    monitor: MemoryMonitor,
    interval: Duration,
) -> GrowthGuard {
    let gauges: Vec<_> = sinks
        .iter()
        .filter_map(|s| s.capabilities().working_memory)
        .collect();
    GrowthGuard(tokio::spawn(async move {
        let mut seen = plan.sinks;
        // A plan that did not fit was announced at the start.
        let mut warned = !plan.fits();
        loop {
            tokio::time::sleep(interval).await;
            let now: u64 = gauges.iter().map(|g| g.bytes()).sum();
            if now <= seen {
                continue;
            }
            seen = now;
            let moved = plan.with_sinks(now);
            let threshold = plan.threshold_with_sinks(now);
            monitor.set_threshold_bytes(threshold);
            tracing::info!(
                sinks = %fmt(now),
                monitor_threshold = %fmt(threshold),
                "the sinks' working memory grew: the memory monitor's threshold follows"
            );
            if !moved.fits() && !warned {
                warned = true;
                tracing::warn!(
                    plan = %moved.describe_at(threshold),
                    "the sinks now need more working memory than the memory target leaves: the run will pass it, and the memory monitor acts only beyond what the plan now expects (raise --max-memory-mb; docs/tuning.md)"
                );
            }
        }
    }))
}

/// The growth task of [`follow_sink_growth`]; aborted when dropped (at the
/// run's end).
pub struct GrowthGuard(tokio::task::JoinHandle<()>);

impl Drop for GrowthGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn records_get_their_share_of_what_the_process_and_sinks_leave() {
        let plan = MemoryPlan::new(96 * MIB, 0.8, Some(40 * MIB), 40 * MIB);
        // 16 MiB free, 80% of it for records at 1.25 resident bytes each.
        assert_eq!(plan.records / 1024, (12.8 * 1024.0 / 1.25) as usize);
        assert!(plan.fits());
        // The monitor acts beyond the plan: above process + sinks + 12.8 MiB.
        let want = 80 * MIB + (12.8 * MIB as f64) as u64;
        assert!(
            plan.monitor_threshold().abs_diff(want) < 16,
            "{} vs {want}",
            plan.monitor_threshold()
        );
        assert!(plan.expected() <= plan.monitor_threshold());
    }

    #[test]
    fn a_target_too_small_says_it_does_not_fit_and_the_monitor_acts_as_asked() {
        let plan = MemoryPlan::new(64 * MIB, 0.7, Some(43 * MIB), 40 * MIB);
        assert!(!plan.fits());
        assert_eq!(plan.records, (8 * MIB) as usize, "an eighth of the target");
        assert_eq!(plan.monitor_threshold(), (64.0 * 0.7 * MIB as f64) as u64);
        assert!(
            plan.describe().contains("64.0 MiB target"),
            "{}",
            plan.describe()
        );
        let tiny = MemoryPlan::new(8 * MIB, 0.8, Some(43 * MIB), 0);
        assert_eq!(tiny.records, MIN_BUDGET);
    }

    #[test]
    fn without_a_process_figure_a_sixth_of_what_the_sinks_leave() {
        let plan = MemoryPlan::new(96 * MIB, 0.8, None, 0);
        assert_eq!(plan.records, (16 * MIB) as usize);
        assert_eq!(plan.monitor_threshold(), (96.0 * 0.8 * MIB as f64) as u64);
    }

    /// A sink whose working memory grows by 30 MiB.
    struct Growing(Arc<std::sync::atomic::AtomicU64>);

    #[async_trait::async_trait]
    impl Sink for Growing {
        async fn open(
            &self,
            _: sluicegate_core::StreamTarget,
        ) -> sluicegate_core::Result<Box<dyn sluicegate_core::SinkWriter>> {
            unreachable!()
        }
        fn describe(&self) -> String {
            "growing".into()
        }
        fn capabilities(&self) -> sluicegate_core::SinkCapabilities {
            let bytes = self.0.clone();
            sluicegate_core::SinkCapabilities::none()
                .with_working_memory(move || bytes.load(std::sync::atomic::Ordering::Relaxed))
        }
    }

    #[tokio::test]
    async fn the_monitor_threshold_follows_the_sinks_growth() {
        let sink = Arc::new(Growing(Arc::new(std::sync::atomic::AtomicU64::new(
            16 * MIB,
        ))));
        let plan = MemoryPlan::new(256 * MIB, 0.8, Some(40 * MIB), 16 * MIB);
        let monitor = MemoryMonitor::disabled();
        monitor.set_threshold_bytes(plan.monitor_threshold());
        let _guard = follow_sink_growth(
            plan,
            vec![sink.clone() as Arc<dyn Sink>],
            monitor.clone(),
            Duration::from_millis(5),
        );
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(monitor.threshold_bytes(), plan.monitor_threshold());
        sink.0.store(46 * MIB, std::sync::atomic::Ordering::Relaxed);
        let want = plan.with_sinks(46 * MIB).monitor_threshold();
        assert!(want > plan.monitor_threshold());
        assert_eq!(plan.threshold_with_sinks(46 * MIB), want);
        wait_for_threshold(&monitor, want).await;
        // Grown beyond the target: the monitor acts above what the plan now
        // expects, not at the target's flush threshold.
        sink.0
            .store(300 * MIB, std::sync::atomic::Ordering::Relaxed);
        let beyond = plan.with_sinks(300 * MIB);
        assert!(!beyond.fits());
        assert_eq!(plan.threshold_with_sinks(300 * MIB), beyond.expected());
        assert!(beyond.expected() > 300 * MIB);
        wait_for_threshold(&monitor, beyond.expected()).await;
    }

    async fn wait_for_threshold(monitor: &MemoryMonitor, want: u64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while monitor.threshold_bytes() != want {
            assert!(
                std::time::Instant::now() < deadline,
                "{} instead of {want}",
                monitor.threshold_bytes()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[test]
    fn a_plan_that_did_not_fit_from_the_start_keeps_the_threshold_asked() {
        let small = MemoryPlan::new(64 * MIB, 0.7, Some(47 * MIB), 40 * MIB);
        assert!(!small.fits());
        // Growth or not, a target too small for the process and its sinks from
        // the start keeps the monitor at its flush threshold (the low-memory
        // preset in a 64 MiB cgroup relies on it).
        let asked = (64.0 * 0.7 * MIB as f64) as u64;
        assert_eq!(small.monitor_threshold(), asked);
        assert_eq!(small.threshold_with_sinks(80 * MIB), asked);
    }
}
