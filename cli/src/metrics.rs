//! The Prometheus endpoint (`--metrics-addr`): the run's figures, collected on
//! each scrape by a `prometheus-client` collector and served by axum in the
//! OpenMetrics text format.

use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use sluicegate_core::{
    Error, ErrorKind, LATENCY_BOUNDS_MS, MemoryBudget, Result, RunStats, StatsSnapshot,
};
use sluicegate_engine::MemoryMonitor;

/// What a scrape reads: the run's counters, budget and memory monitor, and
/// the stream running now.
#[derive(Clone)]
pub struct RunCollector {
    stats: Arc<RunStats>,
    budget: MemoryBudget,
    monitor: MemoryMonitor,
    stream: Arc<Mutex<String>>,
}

impl fmt::Debug for RunCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RunCollector")
    }
}

/// A value of one series, as `prometheus-client` encodes it.
enum Sample {
    Counter(u64),
    Seconds(f64),
    Gauge(u64),
    Fraction(f64),
}

impl Collector for RunCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        use Sample::{Counter, Fraction, Gauge, Seconds};
        for (name, help, sample) in self.series() {
            let kind = match sample {
                Counter(_) | Seconds(_) => MetricType::Counter,
                Gauge(_) | Fraction(_) => MetricType::Gauge,
            };
            let metric = encoder.encode_descriptor(name, help, None, kind)?;
            match sample {
                Counter(n) => ConstCounter::new(n).encode(metric)?,
                Seconds(s) => ConstCounter::new(s).encode(metric)?,
                Gauge(n) => ConstGauge::new(n).encode(metric)?,
                Fraction(f) => ConstGauge::new(f).encode(metric)?,
            }
        }

        let snap = self.stats.snapshot();
        // Request latency: the counters hold cumulative buckets; the encoder
        // wants each bucket's own count (it adds them up again).
        let mut buckets = Vec::with_capacity(LATENCY_BOUNDS_MS.len() + 1);
        let mut below = 0;
        for (bound, cumulative) in LATENCY_BOUNDS_MS.iter().zip(&snap.latency_buckets) {
            buckets.push((*bound as f64 / 1000.0, cumulative.saturating_sub(below)));
            below = *cumulative;
        }
        buckets.push((f64::INFINITY, snap.latency_count.saturating_sub(below)));
        encoder
            .encode_descriptor(
                "http_request_duration_seconds",
                "Time from sending a request to its response headers.",
                None,
                MetricType::Histogram,
            )?
            .encode_histogram::<NoLabelSet>(
                snap.latency_total_us as f64 / 1e6,
                snap.latency_count,
                &buckets,
                None,
            )?;

        let mut requests = encoder.encode_descriptor(
            "http_requests",
            "Requests sent, by response status (0: no response).",
            None,
            MetricType::Counter,
        )?;
        let mut answered = 0;
        for (status, n) in &snap.statuses {
            answered += n;
            let status = status.to_string();
            ConstCounter::new(*n)
                .encode(requests.encode_family(&[("status", status.as_str())])?)?;
        }
        ConstCounter::new(snap.requests.saturating_sub(answered))
            .encode(requests.encode_family(&[("status", "0")])?)?;

        let stream = self
            .stream
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let mut info = encoder.encode_descriptor(
            "stream_info",
            "The stream running now.",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(1).encode(info.encode_family(&[("key", stream.as_str())])?)?;
        Ok(())
    }
}

impl RunCollector {
    /// A collector of these figures; `stream` names the stream running now.
    pub fn new(
        stats: Arc<RunStats>,
        budget: MemoryBudget,
        monitor: MemoryMonitor,
        stream: Arc<Mutex<String>>,
    ) -> Self {
        Self {
            stats,
            budget,
            monitor,
            stream,
        }
    }

    /// The plain series (counters and gauges): name, help, value.
    fn series(&self) -> Vec<Series> {
        let mut series = run_series(&self.stats.snapshot());
        series.extend(self.memory_series());
        if let Some(expected) = self.stats.expected_rows() {
            series.push((
                "stream_expected_rows",
                "Records the running stream's source expects to read (its API's total).",
                Sample::Gauge(expected),
            ));
        }
        series
    }

    /// The memory series: the process (and its container), the record budget
    /// and the memory monitor.
    fn memory_series(&self) -> Vec<Series> {
        let m = self.monitor.snapshot();
        let b = self.budget.snapshot();
        let now = self.monitor.memory().unwrap_or_default();
        let mem = now.process;
        let to_u64 = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        use Sample::{Counter, Fraction, Gauge};
        let mut series = vec![
            ("memory_rss_bytes", "Resident set size.", Gauge(mem.rss)),
            (
                "memory_peak_rss_bytes",
                "Highest resident set size.",
                Gauge(mem.peak_rss),
            ),
            (
                "memory_virtual_bytes",
                "Virtual memory size.",
                Gauge(mem.virtual_size),
            ),
            (
                "budget_capacity_bytes",
                "Record budget size.",
                Gauge(to_u64(b.capacity)),
            ),
            (
                "budget_in_use_bytes",
                "Record budget in use.",
                Gauge(to_u64(b.in_use)),
            ),
            (
                "budget_peak_bytes",
                "Highest record budget use.",
                Gauge(to_u64(b.peak)),
            ),
            (
                "budget_waits",
                "Times a reader waited for memory (backpressure).",
                Counter(b.waits),
            ),
            (
                "memory_threshold_bytes",
                "Resident set size above which the memory monitor acts.",
                Gauge(m.threshold_bytes),
            ),
            (
                "memory_pressure",
                "Memory samples above the flush threshold.",
                Counter(m.over_threshold),
            ),
            (
                "memory_flush_requests",
                "Flush requests (memory passed the threshold, or grew further above it).",
                Counter(m.flush_requests),
            ),
            (
                "memory_batches_flushed",
                "Partial batches written early on a flush request.",
                Counter(m.batches_flushed),
            ),
            (
                "memory_sink_reliefs",
                "Times a sink writer dropped caches or flushed buffers under pressure.",
                Counter(m.sink_reliefs),
            ),
            (
                "memory_batch_shrinks",
                "Times the batch size was halved under pressure.",
                Counter(m.batch_shrinks),
            ),
            (
                "memory_batch_grows",
                "Times the batch size doubled again after pressure eased.",
                Counter(m.batch_grows),
            ),
            (
                "memory_batch_scale",
                "Batch size now as a fraction of the configured size.",
                Fraction(m.batch_scale),
            ),
            (
                "memory_returned_bytes",
                "How far the resident set fell when the allocator returned memory.",
                Counter(m.bytes_returned),
            ),
        ];
        if let Some(cgroup) = now.cgroup {
            series.push((
                "memory_cgroup_usage_bytes",
                "Bytes charged to the run's container (cgroup), page cache included.",
                Gauge(cgroup.usage),
            ));
            series.push((
                "memory_cgroup_limit_bytes",
                "The memory limit of the run's container (cgroup).",
                Gauge(cgroup.limit),
            ));
        }
        series
    }

    /// The figures now, in the OpenMetrics text format, every series named
    /// `sluicegate_...`.
    pub fn text(&self) -> String {
        let mut registry = Registry::with_prefix("sluicegate");
        registry.register_collector(Box::new(self.clone()));
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

/// Serves `GET /metrics` on `addr` until dropped.
pub struct MetricsServer {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl MetricsServer {
    /// Binds `addr` (`HOST:PORT`; port 0 for a free one) and serves what
    /// `collector` collects.
    pub async fn start(addr: &str, collector: RunCollector) -> Result<Self> {
        use axum::http::{StatusCode, header};
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            Error::config(format!("--metrics-addr {addr}: cannot listen there ({e})"))
        })?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::new(ErrorKind::Io, "metrics listener").with_source(e))?;
        let router = axum::Router::new()
            .route(
                "/metrics",
                axum::routing::get(move || {
                    let text = collector.text();
                    async move {
                        (
                            [(
                                header::CONTENT_TYPE,
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            )],
                            text,
                        )
                    }
                }),
            )
            .fallback(|| async { (StatusCode::NOT_FOUND, "only /metrics is served here\n") });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
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

/// One plain series: name, help, value.
type Series = (&'static str, &'static str, Sample);

/// The run's counters: rows, pages, batches, requests, lookup caches and rate
/// limits.
fn run_series(snap: &StatsSnapshot) -> Vec<Series> {
    use Sample::{Counter, Gauge, Seconds};
    vec![
        (
            "rows_read",
            "Rows read from sources.",
            Counter(snap.rows_read),
        ),
        (
            "rows_written",
            "Rows acknowledged by sinks.",
            Counter(snap.rows_written),
        ),
        (
            "rows_filtered",
            "Rows dropped by filters.",
            Counter(snap.rows_filtered),
        ),
        (
            "rows_rejected",
            "Rows rejected (dead letters).",
            Counter(snap.rows_rejected),
        ),
        ("pages", "Source pages read.", Counter(snap.pages)),
        ("batches", "Sink batches written.", Counter(snap.batches)),
        (
            "bytes_received",
            "Response bytes received.",
            Counter(snap.bytes_received),
        ),
        ("retries", "Requests retried.", Counter(snap.retries)),
        (
            "cache_hits",
            "Records a sink's lookup cache answered.",
            Counter(snap.cache_hits),
        ),
        (
            "cache_misses",
            "Records a sink's lookup cache did not know.",
            Counter(snap.cache_misses),
        ),
        (
            "cache_evictions",
            "Entries evicted from lookup caches to stay within bounds.",
            Counter(snap.cache_evictions),
        ),
        (
            "cache_entries",
            "Entries in the lookup cache of the stream being written.",
            Gauge(snap.cache_entries),
        ),
        (
            "cache_bytes",
            "Bytes in that cache, as weighed.",
            Gauge(snap.cache_bytes),
        ),
        (
            "rate_limited",
            "\"Too many requests\" answers that paused requests.",
            Counter(snap.rate_limited),
        ),
        (
            "rate_limit_wait_seconds",
            "Time requests waited for a slot under a rate limit.",
            Seconds(snap.rate_limit_wait_ms as f64 / 1000.0),
        ),
        (
            "requests_in_flight",
            "Requests sent and not answered yet (concurrency).",
            Gauge(snap.in_flight),
        ),
        (
            "requests_in_flight_peak",
            "The most requests in flight at once.",
            Gauge(snap.peak_in_flight),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_name_every_series_with_its_type() {
        let stats = Arc::new(RunStats::default());
        stats.add_rows_read(7);
        stats.add_request();
        stats.add_status(200);
        stats.add_request();
        stats.observe_latency(std::time::Duration::from_millis(30));
        stats.add_cache_lookups(3, 1);
        let text = RunCollector::new(
            stats,
            MemoryBudget::new(1 << 20),
            MemoryMonitor::disabled(),
            Arc::new(Mutex::new("orders".to_owned())),
        )
        .text();
        assert!(text.contains("sluicegate_cache_hits_total 3\n"), "{text}");
        assert!(text.contains("sluicegate_http_request_duration_seconds_bucket{le=\"0.025\"} 0\n"));
        assert!(text.contains("sluicegate_http_request_duration_seconds_bucket{le=\"0.05\"} 1\n"));
        assert!(text.contains("sluicegate_http_request_duration_seconds_bucket{le=\"+Inf\"} 1\n"));
        assert!(text.contains("sluicegate_http_request_duration_seconds_count 1\n"));
        assert!(
            text.contains("sluicegate_memory_batch_scale 1.0\n"),
            "{text}"
        );
        assert!(text.contains("sluicegate_rows_read_total 7\n"), "{text}");
        assert!(text.contains("sluicegate_http_requests_total{status=\"200\"} 1\n"));
        assert!(text.contains("sluicegate_http_requests_total{status=\"0\"} 1\n"));
        assert!(text.contains("sluicegate_budget_capacity_bytes 1048576\n"));
        assert!(text.contains("sluicegate_stream_info{key=\"orders\"} 1\n"));
        assert!(text.ends_with("# EOF\n"), "{text}");
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let sample = line.split(['{', ' ']).next().unwrap();
            assert!(
                has_type(&text, sample),
                "{sample} belongs to a family with a TYPE line"
            );
        }
    }

    /// Whether a sample's family has a `# TYPE` line (a counter's samples end
    /// in `_total`, a histogram's in `_bucket`, `_sum`, `_count`).
    fn has_type(text: &str, sample: &str) -> bool {
        ["", "_total", "_bucket", "_sum", "_count"]
            .iter()
            .any(|suffix| {
                sample
                    .strip_suffix(suffix)
                    .is_some_and(|family| text.contains(&format!("# TYPE {family} ")))
            })
    }
}
