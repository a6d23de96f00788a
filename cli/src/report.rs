//! What a run tells machines: memory snapshots taken while it runs and the
//! JSON report of `--report FILE.json` (the Prometheus endpoint is
//! [`crate::metrics`]).
//!
//! [`MemoryWatch`] reads the run's memory sampler (shared with the monitor, the
//! progress display and the metrics) every 250 ms for the peak and the average, and
//! keeps snapshots at key points: the start, the first page read, every
//! [`SNAPSHOT_EVERY_BATCHES`] batches written, and the end. When the resident set grows
//! across [`GROWTH_SNAPSHOTS`] batch snapshots in a row by more than a fifth while the
//! budget's peak stays put, it warns: memory that grows with the data is what a
//! flat-memory run must not do.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value, json};
use sluicegate_core::{Error, ErrorKind, MemoryBudget, Result, RunStats};
use sluicegate_engine::{MemoryMonitor, MemorySampler};
use tokio::sync::watch;

/// A snapshot is taken every this many batches written.
pub const SNAPSHOT_EVERY_BATCHES: u64 = 20;
/// Batch snapshots in a row that must all grow before growth is suspected.
pub const GROWTH_SNAPSHOTS: usize = 4;

/// The process's memory at one point of the run.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MemorySnapshot {
    /// Where in the run (`start`, `first page`, `batch 40`, `end`).
    pub point: String,
    /// Seconds since the run started.
    pub at_secs: f64,
    /// Resident set size, bytes.
    pub rss: u64,
    /// Virtual size, bytes.
    pub virtual_size: u64,
    /// The resident set as a percentage of `--max-memory-mb`.
    pub percent_of_limit: f64,
    /// Bytes of the record budget in use.
    pub budget_in_use: usize,
    /// Rows written so far.
    pub rows_written: u64,
    /// Bytes charged to the run's container (cgroup), when it has a memory
    /// limit.
    pub cgroup_usage: Option<u64>,
}

/// The memory figures of a run, as the report holds them.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MemoryFigures {
    /// `--max-memory-mb` in bytes.
    pub limit: u64,
    /// Highest resident set size (the kernel's high-water mark).
    pub peak_rss: u64,
    /// Average of the samples (every 250 ms).
    pub average_rss: u64,
    /// Samples taken.
    pub samples: u64,
    /// The snapshots at key points.
    pub snapshots: Vec<MemorySnapshot>,
    /// Whether memory kept growing across batches while the budget was steady.
    pub growth_suspected: bool,
    /// The memory limit of the run's container (cgroup), if it has one.
    pub cgroup_limit: Option<u64>,
    /// The most bytes charged to that container at a sample.
    pub cgroup_peak_usage: Option<u64>,
}

struct WatchState {
    figures: MemoryFigures,
    sum: u128,
}

/// Samples memory while a run goes on (see the module docs).
pub struct MemoryWatch {
    state: Arc<Mutex<WatchState>>,
    started: Instant,
    stats: Arc<RunStats>,
    budget: MemoryBudget,
    monitor: MemoryMonitor,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// What a snapshot is taken with.
#[derive(Clone, Copy)]
struct Taken<'a> {
    started: Instant,
    stats: &'a RunStats,
    budget: &'a MemoryBudget,
    sampler: &'a MemorySampler,
}

impl MemoryWatch {
    /// Starts sampling (through `monitor`'s sampler); takes the `start`
    /// snapshot. Growth is suspected only beyond the run's memory plan, which
    /// ends where `monitor` acts.
    pub fn start(
        stats: Arc<RunStats>,
        budget: MemoryBudget,
        limit: u64,
        monitor: MemoryMonitor,
    ) -> Self {
        let state = Arc::new(Mutex::new(WatchState {
            figures: MemoryFigures {
                limit,
                ..MemoryFigures::default()
            },
            sum: 0,
        }));
        let started = Instant::now();
        let (stop, mut stopped) = watch::channel(false);
        let task = {
            let (state, stats, budget) = (state.clone(), stats.clone(), budget.clone());
            let monitor = monitor.clone();
            tokio::spawn(async move {
                let sampler = monitor.sampler();
                let at = Taken {
                    started,
                    stats: &stats,
                    budget: &budget,
                    sampler,
                };
                let mut seen_page = false;
                let mut next_batch = SNAPSHOT_EVERY_BATCHES;
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                        _ = stopped.changed() => break,
                    }
                    sample(&state, sampler);
                    let snap = stats.snapshot();
                    if !seen_page && snap.pages > 0 {
                        seen_page = true;
                        snapshot(&state, "first page", at);
                    }
                    if snap.batches >= next_batch {
                        let point = format!("batch {}", snap.batches);
                        snapshot(&state, &point, at);
                        next_batch =
                            (snap.batches / SNAPSHOT_EVERY_BATCHES + 1) * SNAPSHOT_EVERY_BATCHES;
                        check_growth(&state, monitor.threshold_bytes());
                    }
                }
            })
        };
        let watch = Self {
            state,
            started,
            stats,
            budget,
            monitor,
            stop,
            task,
        };
        sample(&watch.state, watch.monitor.sampler());
        snapshot(&watch.state, "start", watch.taken());
        watch
    }

    fn taken(&self) -> Taken<'_> {
        Taken {
            started: self.started,
            stats: &self.stats,
            budget: &self.budget,
            sampler: self.monitor.sampler(),
        }
    }

    /// Stops sampling; takes the `end` snapshot and returns the figures.
    pub async fn finish(mut self) -> MemoryFigures {
        let _ = self.stop.send(true);
        let _ = (&mut self.task).await;
        // The end's figures are read now, not shared from before.
        self.monitor.sampler().sample();
        sample(&self.state, self.monitor.sampler());
        snapshot(&self.state, "end", self.taken());
        let state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut figures = state.figures.clone();
        figures.average_rss =
            u64::try_from(state.sum / u128::from(figures.samples.max(1))).unwrap_or(u64::MAX);
        figures
    }
}

fn sample(state: &Mutex<WatchState>, sampler: &MemorySampler) {
    let Some(now) = sampler.latest() else {
        return;
    };
    let mem = now.process;
    let mut state = state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    state.sum += u128::from(mem.rss);
    state.figures.samples += 1;
    state.figures.peak_rss = state.figures.peak_rss.max(mem.peak_rss);
    if let Some(cgroup) = now.cgroup {
        let figures = &mut state.figures;
        figures.cgroup_limit = Some(cgroup.limit);
        figures.cgroup_peak_usage = Some(figures.cgroup_peak_usage.unwrap_or(0).max(cgroup.usage));
    }
}

fn snapshot(state: &Mutex<WatchState>, point: &str, at: Taken<'_>) {
    let Taken {
        started,
        stats,
        budget,
        sampler,
    } = at;
    let now = sampler.latest().unwrap_or_default();
    let mem = now.process;
    let mut state = state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let limit = state.figures.limit.max(1);
    state.figures.snapshots.push(MemorySnapshot {
        point: point.to_owned(),
        at_secs: started.elapsed().as_secs_f64(),
        rss: mem.rss,
        virtual_size: mem.virtual_size,
        percent_of_limit: mem.rss as f64 * 100.0 / limit as f64,
        budget_in_use: budget.snapshot().in_use,
        rows_written: stats.rows_written(),
        cgroup_usage: now.cgroup.map(|c| c.usage),
    });
}

/// Warns once when the last batch snapshots all grew, by more than a fifth in
/// all, to beyond `planned` (growth within the plan is the sinks' planned
/// working memory filling up).
fn check_growth(state: &Mutex<WatchState>, planned: u64) {
    let mut state = state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if state.figures.growth_suspected {
        return;
    }
    let batches: Vec<&MemorySnapshot> = state
        .figures
        .snapshots
        .iter()
        .filter(|s| s.point.starts_with("batch "))
        .collect();
    if batches.len() < GROWTH_SNAPSHOTS {
        return;
    }
    let last = &batches[batches.len() - GROWTH_SNAPSHOTS..];
    let growing = last.windows(2).all(|w| w[1].rss > w[0].rss);
    let (first, latest) = (last[0].rss, last[GROWTH_SNAPSHOTS - 1].rss);
    if growing && latest > first + first / 5 && latest > planned {
        tracing::warn!(
            from_mib = first >> 20,
            to_mib = latest >> 20,
            over = %format!("{} .. {}", last[0].point, last[GROWTH_SNAPSHOTS - 1].point),
            "memory keeps growing across batches while the record budget is bounded (leak suspected)"
        );
        state.figures.growth_suspected = true;
    }
}

/// Writes `report` to `path` as pretty JSON (replaced atomically).
pub fn write_report(path: &std::path::Path, report: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(report)
        .map_err(|e| Error::new(ErrorKind::Io, "cannot encode the report").with_source(e))?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| {
            Error::new(
                ErrorKind::Io,
                format!("cannot write the report {}", path.display()),
            )
            .with_source(e)
        })
}

/// The JSON of a budget snapshot.
pub fn budget_json(budget: &MemoryBudget) -> Value {
    let b = budget.snapshot();
    json!({
        "capacity": b.capacity,
        "inUse": b.in_use,
        "peak": b.peak,
        "waits": b.waits,
        "waitSecs": b.wait_time.as_secs_f64(),
    })
}
