//! What a run tells machines and logs: Prometheus metrics scraped while it runs,
//! the `--report` JSON with memory snapshots and peak, JSON log lines, and plain
//! line-based progress when stderr is not a terminal.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::text;
use serde_json::Value;
use sluicegate_examples::shop::{ShopConfig, ShopServer};

fn config(dir: &Path, url: &str) -> String {
    let path = dir.join("sluicegate.yaml");
    std::fs::write(
        &path,
        format!(
            "version: 1\nsinks:\n  warehouse: {{ type: duckdb, path: shop.duckdb }}\nsyncs:\n  - key: orders\n    sink: warehouse\n    keyField: id\n    source:\n      type: http\n      endPoint: \"{url}/api/orders\"\n      resultsJsonPath: \"$.data\"\n      pagination: {{ skipKey: offset, limitKey: limit, pageSize: 100, totalPath: \"$.meta.total\" }}\n"
        ),
    )
    .unwrap();
    path.to_str().unwrap().to_owned()
}

/// The example shop API with `orders` orders, each response delayed `latency_ms`.
async fn shop(orders: u64, latency_ms: u64) -> ShopServer {
    ShopServer::start(
        ShopConfig {
            orders,
            latency: Duration::from_millis(latency_ms),
            ..ShopConfig::default()
        },
        "127.0.0.1:0",
    )
    .await
    .unwrap()
}

fn command(config: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluicegate"));
    cmd.args([
        "sync-api",
        "--key",
        "orders",
        "--streaming",
        "--apply",
        "--config",
        config,
    ])
    .args(args)
    .env_remove("SLUICEGATE_MAX_MEMORY_MB")
    .env_remove("SLUICEGATE_CONFIG")
    .env_remove("SLUICEGATE_LOG");
    cmd
}

/// `GET http://ADDR/metrics` over a plain socket; the body.
fn scrape(url: &str) -> String {
    use std::io::{Read, Write};
    let addr = url
        .strip_prefix("http://")
        .and_then(|rest| rest.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("unexpected metrics URL {url}"));
    let mut socket = std::net::TcpStream::connect(addr).unwrap();
    let request = format!("GET /metrics HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
    socket.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    socket.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    answer.split_once("\r\n\r\n").unwrap().1.to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_scraped_while_running_and_the_report_holds_every_figure() {
    // Slow pages keep the run going while it is scraped.
    let shop = shop(3000, 60).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &shop.url());
    let report = dir.path().join("run.json");
    let mut child = command(
        &config,
        &[
            "--metrics-addr",
            "127.0.0.1:0",
            "--report",
            report.to_str().unwrap(),
            "--batch-size",
            "100",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let url = loop {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "no metrics line");
        if let Some(url) = line.trim().strip_prefix("metrics: ") {
            break url.to_owned();
        }
    };
    // The rest of stderr is drained (and kept) by a thread.
    let rest = std::thread::spawn(move || {
        let mut all = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut all);
        all
    });
    let mut scrapes = Vec::new();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let url = url.clone();
        scrapes.push(
            tokio::task::spawn_blocking(move || scrape(&url))
                .await
                .unwrap(),
        );
    }
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    let progress = rest.join().unwrap();
    assert!(status.success(), "{progress}");

    let value = |body: &str, series: &str| -> f64 {
        body.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in {body}"))
    };
    for series in [
        "sluicegate_rows_read_total",
        "sluicegate_rows_written_total",
        "sluicegate_pages_total",
        "sluicegate_batches_total",
        "sluicegate_bytes_received_total",
        "sluicegate_retries_total",
        "sluicegate_memory_rss_bytes",
        "sluicegate_memory_peak_rss_bytes",
        "sluicegate_budget_in_use_bytes",
        "sluicegate_budget_capacity_bytes",
        "sluicegate_http_requests_total{status=\"200\"}",
        "sluicegate_stream_info{key=\"orders\"}",
        "sluicegate_cache_hits_total",
        "sluicegate_cache_misses_total",
        "sluicegate_cache_evictions_total",
        "sluicegate_cache_entries",
        "sluicegate_rate_limited_total",
        "sluicegate_rate_limit_wait_seconds_total",
        "sluicegate_requests_in_flight",
        "sluicegate_memory_pressure_total",
        "sluicegate_memory_batch_scale",
        "sluicegate_http_request_duration_seconds_bucket{le=\"+Inf\"}",
    ] {
        value(&scrapes[2], series);
    }
    // Latency and concurrency of the requests so far (each page waits 60 ms).
    assert!(
        value(
            &scrapes[2],
            "sluicegate_http_request_duration_seconds_count"
        ) >= 3.0
    );
    assert!(
        value(
            &scrapes[2],
            "sluicegate_http_request_duration_seconds_bucket{le=\"0.05\"}"
        ) < value(
            &scrapes[2],
            "sluicegate_http_request_duration_seconds_count"
        )
    );
    assert!(value(&scrapes[2], "sluicegate_requests_in_flight_peak") >= 1.0);
    let rows: Vec<f64> = scrapes
        .iter()
        .map(|b| value(b, "sluicegate_rows_read_total"))
        .collect();
    assert!(
        rows[0] < rows[2] && rows[2] < 3000.0,
        "scraped while running: {rows:?}"
    );
    assert!(value(&scrapes[2], "sluicegate_memory_rss_bytes") > 1e6);

    let report: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(report["streams"][0]["ack"]["rows"], 3000, "{report}");
    assert_eq!(report["stats"]["rowsRead"], 3000, "{report}");
    // One naming style: every key the report defines is camelCase (map keys
    // that are data, like status codes, aside).
    fn snake_keys(value: &Value, at: &str, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (k, v) in map {
                    if k.contains('_') {
                        out.push(format!("{at}.{k}"));
                    }
                    snake_keys(v, &format!("{at}.{k}"), out);
                }
            }
            Value::Array(items) => items
                .iter()
                .enumerate()
                .for_each(|(i, v)| snake_keys(v, &format!("{at}[{i}]"), out)),
            _ => {}
        }
    }
    let mut snake = Vec::new();
    snake_keys(&report, "report", &mut snake);
    assert!(snake.is_empty(), "keys not in camelCase: {snake:?}");
    assert!(report["stats"]["statuses"]["200"].as_u64().unwrap() >= 30);
    let memory = &report["memory"];
    assert!(memory["peakRss"].as_u64().unwrap() > 1 << 20, "{memory}");
    assert!(memory["averageRss"].as_u64().unwrap() <= memory["peakRss"].as_u64().unwrap());
    let points: Vec<&str> = memory["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["point"].as_str().unwrap())
        .collect();
    assert_eq!(points.first(), Some(&"start"), "{points:?}");
    assert_eq!(points.last(), Some(&"end"), "{points:?}");
    assert!(points.contains(&"first page"), "{points:?}");
    assert!(points.iter().any(|p| p.starts_with("batch ")), "{points:?}");
    let end = memory["snapshots"].as_array().unwrap().last().unwrap();
    assert_eq!(end["rowsWritten"], 3000);
    assert!(end["percentOfLimit"].as_f64().unwrap() > 0.0);
    assert!(report["budget"]["peak"].as_u64().unwrap() > 0);

    // Not a terminal: progress is plain lines, no control characters.
    assert!(
        progress.contains("progress: [orders]") || progress.is_empty() || !progress.contains('\r')
    );
    assert!(
        !progress.contains('\r') && !progress.contains('\x1b'),
        "{progress:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_lines_are_one_object_each() {
    let shop = shop(500, 0).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &shop.url());
    let mut cmd = command(&config, &["--quiet", "--log-format", "json"]);
    cmd.env("SLUICEGATE_LOG", "info");
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(!lines.is_empty(), "{stderr}");
    for line in lines {
        let object: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            object["timestamp"].is_string() && object["level"].is_string(),
            "{line}"
        );
    }
    assert!(stderr.contains("\"message\":\"memory plan\""), "{stderr}");

    // `--verbosity debug` turns debug log lines on.
    let mut cmd = command(&config, &["--verbosity", "debug", "--log-format", "json"]);
    cmd.stdout(Stdio::null());
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("\"level\":\"DEBUG\""), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_terminal_each_stream_has_a_bar_that_ends_cleanly() {
    // Slow pages: the run lasts long enough for several redraws.
    let shop = shop(2000, 80).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &shop.url());
    // A second stream: the example's customers.
    let yaml = std::fs::read_to_string(&config).unwrap();
    let customers = yaml
        .split_once("  - key: orders")
        .unwrap()
        .1
        .replace("/api/orders", "/api/customers");
    std::fs::write(&config, format!("{yaml}  - key: customers{customers}")).unwrap();
    let line = format!(
        "stty cols 160 rows 40; {} sync-api --key orders --key customers --streaming --apply --config {config}",
        env!("CARGO_BIN_EXE_sluicegate")
    );
    // `script` runs the command on a pseudo-terminal and copies what it drew.
    let mut cmd = Command::new("script");
    cmd.args(["-qec", &line, "/dev/null"])
        .env_remove("SLUICEGATE_MAX_MEMORY_MB")
        .env_remove("SLUICEGATE_LOG");
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let raw = text(&out.stdout);
    assert!(out.status.success(), "{raw}");
    assert!(!raw.contains("progress: "), "no log lines on a terminal");
    assert!(
        raw.matches("\r\x1b[2Korders ").count() >= 2,
        "the bar is redrawn in place: {raw:?}"
    );
    // What a terminal shows at the end: one finished bar per stream, then the summary.
    let mut terminal = vt100::Parser::new(40, 160, 0);
    terminal.process(&out.stdout);
    let screen = terminal.screen().contents();
    // Row by row (a full-width row is not joined with the next).
    let all: Vec<String> = terminal.screen().rows(0, 160).collect();
    let rows: Vec<&str> = all
        .iter()
        .map(|r| r.trim_end())
        .filter(|r| !r.is_empty())
        .collect();
    let orders = rows
        .iter()
        .position(|r| r.starts_with("orders "))
        .unwrap_or_else(|| panic!("no orders bar on\n{screen}"));
    assert!(
        rows[orders].contains("100% 2,000/2,000 rows") && rows[orders].contains("pages · memory"),
        "finished with the total (the API announces it): {}",
        rows[orders]
    );
    let customers = rows[orders + 1];
    assert!(customers.starts_with("customers "), "{screen}");
    assert!(customers.contains("100%"), "{customers}");
    assert!(
        rows[orders + 2].starts_with("sync-api: applied"),
        "the summary starts below the bars:\n{screen}"
    );
    assert_eq!(
        rows.iter()
            .filter(|r| r.starts_with("orders ") && r.contains(" rows · "))
            .count(),
        1,
        "each bar drawn once on the final screen:\n{screen}"
    );
    let summary = raw.find("sync-api: applied").expect("summary");
    assert!(
        !raw[summary..].contains('\x1b'),
        "the summary is plain text: {raw:?}"
    );
}

#[test]
fn the_grafana_dashboard_queries_only_series_the_endpoint_serves() {
    // A source that knows its total (the expected-rows gauge is served then).
    let stats = std::sync::Arc::new(sluicegate_core::RunStats::default());
    stats.set_expected_rows(100);
    let served = sluicegate_cli::metrics::RunCollector::new(
        stats,
        sluicegate_core::MemoryBudget::new(1 << 20),
        sluicegate_engine::MemoryMonitor::disabled(),
        std::sync::Arc::new(std::sync::Mutex::new("orders".to_owned())),
    )
    .text();
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../observability/grafana-dashboard.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut checked = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for name in expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("sluicegate_"))
            {
                // A counter's samples end in `_total` and a histogram's in
                // `_bucket`, `_sum` or `_count`; the TYPE line names the family.
                let typed = ["", "_total", "_bucket", "_sum", "_count"]
                    .iter()
                    .any(|suffix| {
                        name.strip_suffix(suffix)
                            .is_some_and(|family| served.contains(&format!("# TYPE {family} ")))
                    });
                assert!(
                    typed,
                    "panel '{}' queries {name}, which /metrics does not serve",
                    panel["title"]
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 10, "only {checked} series checked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_memory_pressure_the_monitor_flushes_shrinks_batches_and_keeps_every_row() {
    let shop = shop(5000, 5).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &shop.url());
    // The file's tuning section sets the page size (the source's own is 100).
    let yaml = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{yaml}tuning:\n  pageSize: 50\n")).unwrap();
    let report = dir.path().join("run.json");
    let mut cmd = command(
        &config,
        &["--report", report.to_str().unwrap(), "--batch-size", "1000"],
    );
    // A target the process and its sink cannot fit, and a threshold far below
    // what the process uses: the monitor acts on every sample.
    cmd.env("SLUICEGATE_MAX_MEMORY_MB", "20")
        .env("SLUICEGATE_FLUSH_THRESHOLD_PERCENT", "0.05")
        .env("SLUICEGATE_MEMORY_CHECK_INTERVAL", "0.05");
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("memory over the flush threshold"),
        "{stderr}"
    );
    assert!(stdout.contains("memory monitor: "), "{stdout}");

    let report: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let monitor = &report["memoryMonitor"];
    let n = |k: &str| {
        monitor[k]
            .as_u64()
            .unwrap_or_else(|| panic!("{k} in {monitor}"))
    };
    assert!(n("overThreshold") >= 1, "{monitor}");
    assert!(n("batchShrinks") >= 1, "{monitor}");
    assert!(
        n("sinkReliefs") >= 1 && n("buffersFlushed") >= 1,
        "DuckDB checkpointed: {monitor}"
    );
    assert!(n("allocatorReleases") >= 1, "{monitor}");
    assert!(
        monitor["minBatchScale"].as_f64().unwrap() < 1.0,
        "{monitor}"
    );
    assert_eq!(report["tuning"]["origins"]["pageSize"], "file");
    assert_eq!(report["tuning"]["origins"]["flushThresholdPercent"], "flag");
    assert_eq!(report["stats"]["pages"], 100, "pages of 50: {report}");
    let batches = report["streams"][0]["batches"].as_u64().unwrap();
    assert!(batches > 5, "batches shrank below 1000 rows: {batches}");

    let db = dir.path().join("shop.duckdb");
    let counts = common::query(&db, "SELECT count(*), count(DISTINCT id) FROM orders");
    assert_eq!(counts[0], vec![Value::from(5000), Value::from(5000)]);
}
