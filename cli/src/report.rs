//! What a run tells machines: memory snapshots taken while it runs, the JSON
//! report of `--report FILE.json`, and the Prometheus metrics of
//! `--metrics-addr HOST:PORT`.
//!
//! [`MemoryWatch`] samples the process's memory every 250 ms for the peak and the
//! average, and keeps snapshots at key points: the start, the first page read,
//! every [`SNAPSHOT_EVERY_BATCHES`] batches written, and the end. When the
//! resident set grows across [`GROWTH_SNAPSHOTS`] batch snapshots in a row by more
//! than a fifth while the budget's peak stays put, it warns: memory that grows
//! with the data is what a flat-memory run must not do.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value, json};
use sluicegate_core::{Error, ErrorKind, LATENCY_BOUNDS_MS, MemoryBudget, Result, RunStats};
use sluicegate_engine::{MemoryMonitor, process_memory};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl MemoryWatch {
    /// Starts sampling; takes the `start` snapshot. Growth is suspected only
    /// beyond the run's memory plan, which ends where `monitor` acts.
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
            tokio::spawn(async move {
                let mut seen_page = false;
                let mut next_batch = SNAPSHOT_EVERY_BATCHES;
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                        _ = stopped.changed() => break,
                    }
                    sample(&state);
                    let snap = stats.snapshot();
                    if !seen_page && snap.pages > 0 {
                        seen_page = true;
                        snapshot(&state, "first page", started, &stats, &budget);
                    }
                    if snap.batches >= next_batch {
                        let point = format!("batch {}", snap.batches);
                        snapshot(&state, &point, started, &stats, &budget);
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
            stop,
            task,
        };
        sample(&watch.state);
        snapshot(&watch.state, "start", started, &watch.stats, &watch.budget);
        watch
    }

    /// Stops sampling; takes the `end` snapshot and returns the figures.
    pub async fn finish(self) -> MemoryFigures {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        sample(&self.state);
        snapshot(&self.state, "end", self.started, &self.stats, &self.budget);
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

fn sample(state: &Mutex<WatchState>) {
    let Some(mem) = process_memory() else {
        return;
    };
    let mut state = state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    state.sum += u128::from(mem.rss);
    state.figures.samples += 1;
    state.figures.peak_rss = state.figures.peak_rss.max(mem.peak_rss);
}

fn snapshot(
    state: &Mutex<WatchState>,
    point: &str,
    started: Instant,
    stats: &RunStats,
    budget: &MemoryBudget,
) {
    let mem = process_memory().unwrap_or_default();
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

/// The Prometheus text of the run's figures now.
pub fn metrics_text(
    stats: &RunStats,
    budget: &MemoryBudget,
    monitor: &MemoryMonitor,
    stream: &str,
) -> String {
    let snap = stats.snapshot();
    let m = monitor.snapshot();
    let b = budget.snapshot();
    let mem = process_memory().unwrap_or_default();
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: String| {
        let _ = writeln!(out, "# HELP sluicegate_{name} {help}");
        let _ = writeln!(out, "# TYPE sluicegate_{name} {kind}");
        let _ = writeln!(out, "sluicegate_{name} {value}");
    };
    metric(
        "rows_read_total",
        "counter",
        "Rows read from sources.",
        snap.rows_read.to_string(),
    );
    metric(
        "rows_written_total",
        "counter",
        "Rows acknowledged by sinks.",
        snap.rows_written.to_string(),
    );
    metric(
        "rows_filtered_total",
        "counter",
        "Rows dropped by filters.",
        snap.rows_filtered.to_string(),
    );
    metric(
        "rows_rejected_total",
        "counter",
        "Rows rejected (dead letters).",
        snap.rows_rejected.to_string(),
    );
    metric(
        "pages_total",
        "counter",
        "Source pages read.",
        snap.pages.to_string(),
    );
    metric(
        "batches_total",
        "counter",
        "Sink batches written.",
        snap.batches.to_string(),
    );
    metric(
        "bytes_received_total",
        "counter",
        "Response bytes received.",
        snap.bytes_received.to_string(),
    );
    metric(
        "retries_total",
        "counter",
        "Requests retried.",
        snap.retries.to_string(),
    );
    metric(
        "memory_rss_bytes",
        "gauge",
        "Resident set size.",
        mem.rss.to_string(),
    );
    metric(
        "memory_peak_rss_bytes",
        "gauge",
        "Highest resident set size.",
        mem.peak_rss.to_string(),
    );
    metric(
        "budget_capacity_bytes",
        "gauge",
        "Record budget size.",
        b.capacity.to_string(),
    );
    metric(
        "budget_in_use_bytes",
        "gauge",
        "Record budget in use.",
        b.in_use.to_string(),
    );
    metric(
        "budget_peak_bytes",
        "gauge",
        "Highest record budget use.",
        b.peak.to_string(),
    );
    metric(
        "budget_waits_total",
        "counter",
        "Times a reader waited for memory (backpressure).",
        b.waits.to_string(),
    );
    metric(
        "memory_virtual_bytes",
        "gauge",
        "Virtual memory size.",
        mem.virtual_size.to_string(),
    );
    metric(
        "memory_threshold_bytes",
        "gauge",
        "Resident set size above which the memory monitor acts.",
        m.threshold_bytes.to_string(),
    );
    metric(
        "memory_pressure_total",
        "counter",
        "Memory samples above the flush threshold (flush requests).",
        m.over_threshold.to_string(),
    );
    metric(
        "memory_flush_requests_total",
        "counter",
        "Flush requests (memory passed the threshold, or grew further above it).",
        m.flush_requests.to_string(),
    );
    metric(
        "memory_batches_flushed_total",
        "counter",
        "Partial batches written early on a flush request.",
        m.batches_flushed.to_string(),
    );
    metric(
        "memory_sink_reliefs_total",
        "counter",
        "Times a sink writer dropped caches or flushed buffers under pressure.",
        m.sink_reliefs.to_string(),
    );
    metric(
        "memory_batch_shrinks_total",
        "counter",
        "Times the batch size was halved under pressure.",
        m.batch_shrinks.to_string(),
    );
    metric(
        "memory_batch_grows_total",
        "counter",
        "Times the batch size doubled again after pressure eased.",
        m.batch_grows.to_string(),
    );
    metric(
        "memory_batch_scale",
        "gauge",
        "Batch size now as a fraction of the configured size.",
        m.batch_scale.to_string(),
    );
    metric(
        "memory_returned_bytes_total",
        "counter",
        "How far the resident set fell when the allocator returned memory.",
        m.bytes_returned.to_string(),
    );
    metric(
        "cache_hits_total",
        "counter",
        "Records a sink's lookup cache answered.",
        snap.cache_hits.to_string(),
    );
    metric(
        "cache_misses_total",
        "counter",
        "Records a sink's lookup cache did not know.",
        snap.cache_misses.to_string(),
    );
    metric(
        "cache_evictions_total",
        "counter",
        "Entries evicted from lookup caches to stay within bounds.",
        snap.cache_evictions.to_string(),
    );
    metric(
        "cache_entries",
        "gauge",
        "Entries in the lookup cache of the stream being written.",
        snap.cache_entries.to_string(),
    );
    metric(
        "cache_bytes",
        "gauge",
        "Bytes in that cache, as weighed.",
        snap.cache_bytes.to_string(),
    );
    metric(
        "rate_limited_total",
        "counter",
        "\"Too many requests\" answers that paused requests.",
        snap.rate_limited.to_string(),
    );
    metric(
        "rate_limit_wait_seconds_total",
        "counter",
        "Time requests waited for a slot under a rate limit.",
        format!("{:.3}", snap.rate_limit_wait_ms as f64 / 1000.0),
    );
    metric(
        "requests_in_flight",
        "gauge",
        "Requests sent and not answered yet (concurrency).",
        snap.in_flight.to_string(),
    );
    metric(
        "requests_in_flight_peak",
        "gauge",
        "The most requests in flight at once.",
        snap.peak_in_flight.to_string(),
    );
    if let Some(expected) = stats.expected_rows() {
        metric(
            "stream_expected_rows",
            "gauge",
            "Records the running stream's source expects to read (its API's total).",
            expected.to_string(),
        );
    }
    let _ = writeln!(
        out,
        "# HELP sluicegate_http_request_duration_seconds Time from sending a request to its response headers."
    );
    let _ = writeln!(
        out,
        "# TYPE sluicegate_http_request_duration_seconds histogram"
    );
    for (bound, n) in LATENCY_BOUNDS_MS.iter().zip(&snap.latency_buckets) {
        let _ = writeln!(
            out,
            "sluicegate_http_request_duration_seconds_bucket{{le=\"{}\"}} {n}",
            *bound as f64 / 1000.0
        );
    }
    let _ = writeln!(
        out,
        "sluicegate_http_request_duration_seconds_bucket{{le=\"+Inf\"}} {}",
        snap.latency_count
    );
    let _ = writeln!(
        out,
        "sluicegate_http_request_duration_seconds_sum {:.6}",
        snap.latency_total_us as f64 / 1e6
    );
    let _ = writeln!(
        out,
        "sluicegate_http_request_duration_seconds_count {}",
        snap.latency_count
    );
    let _ = writeln!(
        out,
        "# HELP sluicegate_http_requests_total Requests sent, by response status (0: no response)."
    );
    let _ = writeln!(out, "# TYPE sluicegate_http_requests_total counter");
    let mut answered = 0;
    for (status, n) in &snap.statuses {
        answered += n;
        let _ = writeln!(
            out,
            "sluicegate_http_requests_total{{status=\"{status}\"}} {n}"
        );
    }
    let _ = writeln!(
        out,
        "sluicegate_http_requests_total{{status=\"0\"}} {}",
        snap.requests.saturating_sub(answered)
    );
    let _ = writeln!(out, "# HELP sluicegate_stream_info The stream running now.");
    let _ = writeln!(out, "# TYPE sluicegate_stream_info gauge");
    let _ = writeln!(
        out,
        "sluicegate_stream_info{{key=\"{}\"}} 1",
        stream.replace(['"', '\\', '\n'], "_")
    );
    out
}

/// Serves `GET /metrics` on `addr` until dropped.
pub struct MetricsServer {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl MetricsServer {
    /// Binds `addr` (`HOST:PORT`; port 0 for a free one) and serves the run's
    /// figures; `stream` names the stream running now.
    pub async fn start(
        addr: &str,
        stats: Arc<RunStats>,
        budget: MemoryBudget,
        monitor: MemoryMonitor,
        stream: Arc<Mutex<String>>,
    ) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            Error::config(format!("--metrics-addr {addr}: cannot listen there ({e})"))
        })?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::new(ErrorKind::Io, "metrics listener").with_source(e))?;
        let task = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let (stats, budget, monitor, stream) = (
                    stats.clone(),
                    budget.clone(),
                    monitor.clone(),
                    stream.clone(),
                );
                tokio::spawn(async move {
                    // The request head (the first line is all that matters).
                    let mut buf = Vec::with_capacity(1024);
                    let mut chunk = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let request = String::from_utf8_lossy(&buf);
                    let (status, body) = if request.starts_with("GET /metrics") {
                        let name = stream
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .clone();
                        ("200 OK", metrics_text(&stats, &budget, &monitor, &name))
                    } else {
                        ("404 Not Found", "only /metrics is served here\n".to_owned())
                    };
                    let answer = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(answer.as_bytes()).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        Ok(Self { addr, task })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_name_every_series_with_its_type() {
        let stats = RunStats::default();
        stats.add_rows_read(7);
        stats.add_request();
        stats.add_status(200);
        stats.add_request();
        stats.observe_latency(std::time::Duration::from_millis(30));
        stats.add_cache_lookups(3, 1);
        let text = metrics_text(
            &stats,
            &MemoryBudget::new(1 << 20),
            &MemoryMonitor::disabled(),
            "orders",
        );
        assert!(text.contains("sluicegate_cache_hits_total 3\n"), "{text}");
        assert!(text.contains("sluicegate_http_request_duration_seconds_bucket{le=\"0.025\"} 0\n"));
        assert!(text.contains("sluicegate_http_request_duration_seconds_bucket{le=\"0.05\"} 1\n"));
        assert!(text.contains("sluicegate_http_request_duration_seconds_count 1\n"));
        assert!(text.contains("sluicegate_memory_batch_scale 1\n"));
        assert!(text.contains("sluicegate_rows_read_total 7\n"), "{text}");
        assert!(text.contains("sluicegate_http_requests_total{status=\"200\"} 1\n"));
        assert!(text.contains("sluicegate_http_requests_total{status=\"0\"} 1\n"));
        assert!(text.contains("sluicegate_budget_capacity_bytes 1048576\n"));
        assert!(text.contains("sluicegate_stream_info{key=\"orders\"} 1\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            let name = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|base| text.contains(&format!("# TYPE {base} histogram")))
                .unwrap_or(name);
            assert!(
                text.contains(&format!("# TYPE {name} ")),
                "{name} has a TYPE line"
            );
        }
    }
}
