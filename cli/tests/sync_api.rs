//! End-to-end: the real `sluicegate` binary against the example shop API served
//! on 127.0.0.1, checking the DuckDB file it writes.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::{query, summary_row, table_records, text};
use serde_json::json;
use sluicegate_examples::shop::{Dataset, Fault, Resource, ShopConfig, ShopServer};

const ORDERS: u64 = 3000;

/// The example configuration with the server's URL, written into `dir`.
fn write_config(dir: &Path, url: &str, extra_source: &str) -> PathBuf {
    let mut text = String::from(
        "version: 1\nsinks:\n  warehouse: { type: duckdb, path: shop.duckdb }\nsyncs:\n",
    );
    for r in Resource::ALL {
        text.push_str(&format!(
            "  - key: {name}\n    sink: warehouse\n    keyField: id\n    source:\n      type: http\n      endPoint: \"{url}/api/{name}\"\n      resultsJsonPath: \"$.data\"\n      pagination: {{ skipKey: offset, limitKey: limit, pageSize: 500, totalPath: \"$.meta.total\" }}\n      retry: {{ initialBackoffMs: 10, maxBackoffMs: 100 }}\n{extra_source}",
            name = r.name()
        ));
    }
    let path = dir.join("sluicegate.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

async fn sluicegate(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluicegate"));
    cmd.args(args)
        .env_remove("SLUICEGATE_MAX_MEMORY_MB")
        .env_remove("SLUICEGATE_CONFIG");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

fn assert_tables_match_dataset(db: &Path, dataset: Dataset) {
    for r in Resource::ALL {
        let got = table_records(db, r.name());
        assert_eq!(
            got.len() as u64,
            dataset.total(r),
            "row count of {}",
            r.name()
        );
        for (i, record) in got.iter().enumerate() {
            let want = dataset.record_value(r, i as u64);
            assert_eq!(record, &want, "{} row {i}", r.name());
        }
    }
}

/// A shop API on 127.0.0.1, a configuration pointing at it, and the DuckDB
/// file that configuration writes, all in a temporary directory.
struct Fixture {
    dir: tempfile::TempDir,
    server: ShopServer,
    config: String,
}

impl Fixture {
    async fn new(faults: Vec<Fault>, token: Option<&str>, extra_source: &str) -> Self {
        Self::with_orders(ORDERS, faults, token, extra_source).await
    }

    async fn with_orders(
        orders: u64,
        faults: Vec<Fault>,
        token: Option<&str>,
        extra_source: &str,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = ShopConfig {
            orders,
            faults,
            token: token.map(str::to_owned),
            ..ShopConfig::default()
        };
        let server = ShopServer::start(config, "127.0.0.1:0").await.unwrap();
        let config = write_config(dir.path(), &server.url(), extra_source);
        let config = config.to_str().unwrap().to_owned();
        Self {
            dir,
            server,
            config,
        }
    }

    fn db(&self) -> PathBuf {
        self.dir.path().join("shop.duckdb")
    }

    /// Runs `sluicegate sync-api --config <this config> <args>`.
    async fn sync(&self, args: &[&str], envs: &[(&str, &str)]) -> Output {
        let mut all = vec!["sync-api", "--config", &self.config];
        all.extend_from_slice(args);
        sluicegate(&all, envs).await
    }

    /// Runs a sync that must succeed; returns its stdout.
    async fn sync_ok(&self, args: &[&str]) -> String {
        let out = self.sync(args, &[]).await;
        assert!(out.status.success(), "stderr: {}", text(&out.stderr));
        text(&out.stdout)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_loads_every_row_of_all_six_resources_and_a_rerun_updates_in_place() {
    // One 503 in the middle of orders, retried after the Retry-After delay.
    let fault = Fault {
        resource: Resource::Orders,
        offset: 1500,
        status: 503,
        times: 1,
        retry_after: Some(0),
    };
    let fx = Fixture::new(vec![fault], None, "").await;
    let stdout = fx
        .sync_ok(&["--all", "--streaming", "--apply", "--batch-size", "700"])
        .await;
    assert!(stdout.contains("retries 1"), "{stdout}");
    assert!(stdout.contains("503×1"), "{stdout}");
    assert!(
        stdout.starts_with("sync-api: applied (streaming mode)"),
        "{stdout}"
    );
    assert_tables_match_dataset(&fx.db(), fx.server.dataset());

    // Fields that only appear in later pages became columns, null before.
    let late = query(
        &fx.db(),
        "SELECT count(*) FILTER (loyalty_tier IS NULL), count(loyalty_tier) FROM customers",
    );
    let half = fx.server.dataset().total(Resource::Customers) as i64 / 2;
    assert_eq!(late, vec![vec![json!(half), json!(half)]]);
    let coupons = query(
        &fx.db(),
        "SELECT min(id) FROM orders WHERE coupon IS NOT NULL",
    );
    assert_eq!(
        coupons,
        vec![vec![json!(ORDERS as i64 - ORDERS as i64 / 10 + 1)]]
    );

    // A second run updates the same rows: no duplicates, same content.
    let stdout = fx.sync_ok(&["--all", "--streaming", "--apply"]).await;
    assert_eq!(
        summary_row(&stdout, "orders")[2..5],
        ["3,000", "0", "3,000"],
        "{stdout}"
    );
    assert_tables_match_dataset(&fx.db(), fx.server.dataset());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_reads_everything_and_writes_nothing() {
    let fx = Fixture::new(Vec::new(), None, "").await;
    let stdout = fx.sync_ok(&["--key", "orders", "--streaming"]).await;
    assert!(stdout.contains("dry run"), "{stdout}");
    assert_eq!(
        summary_row(&stdout, "orders")[2..5],
        ["3,000", "3,000", "0"],
        "{stdout}"
    );
    assert!(!fx.db().exists(), "a dry run must not create the database");
    assert!(
        !fx.dir.path().join(".sluicegate").exists(),
        "a dry run must not write checkpoints"
    );

    fx.sync_ok(&["--key", "orders", "--streaming", "--apply"])
        .await;
    let before = std::fs::read(fx.db()).unwrap();
    let stdout = fx.sync_ok(&["--key", "orders", "--key", "stores"]).await;
    assert_eq!(
        summary_row(&stdout, "orders")[2..5],
        ["3,000", "0", "3,000"],
        "{stdout}"
    );
    assert_eq!(
        summary_row(&stdout, "stores")[2..5],
        ["4", "4", "0"],
        "{stdout}"
    );
    assert_eq!(
        std::fs::read(fx.db()).unwrap(),
        before,
        "a dry run leaves the file unchanged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_mistakes_fail_before_any_request_with_one_line() {
    let fx = Fixture::new(Vec::new(), None, "").await;
    let good = std::fs::read_to_string(&fx.config).unwrap();
    let cases = [
        (
            good.replacen("skipKey", "skipKye", 1),
            "syncs[customers].source.pagination: unknown field `skipKye`",
        ),
        (
            good.replacen("sink: warehouse", "sink: lake", 1),
            "syncs[customers].sink: no sink named 'lake'",
        ),
        (
            good.replacen("\"$.data\"", "\"$.data[?\"", 1),
            "syncs[customers].source.resultsJsonPath: invalid JSONPath",
        ),
        (
            good.replacen("type: duckdb", "type: duckbd", 1),
            "sinks.warehouse.type: unknown sink type 'duckbd' (known types: contentful, directus, duckdb, postgres)",
        ),
        (
            good.replacen("type: http", "type: htp", 1),
            "unknown source type 'htp' (known types: http, mysql, postgres, sqlite)",
        ),
    ];
    for (i, (text_, expected)) in cases.iter().enumerate() {
        let path = fx.dir.path().join(format!("bad{i}.yaml"));
        std::fs::write(&path, text_).unwrap();
        let out = sluicegate(
            &[
                "sync-api",
                "--config",
                path.to_str().unwrap(),
                "--all",
                "--apply",
            ],
            &[],
        )
        .await;
        assert_eq!(out.status.code(), Some(2), "case {i}");
        let stderr = text(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(stderr.starts_with("error: "), "{stderr}");
        assert!(
            stderr.contains(expected),
            "case {i}: expected {expected:?} in {stderr}"
        );
        // `file:line:`, and the line is the one with the mistake.
        let line: usize = stderr
            .split(&format!("bad{i}.yaml:"))
            .nth(1)
            .and_then(|rest| rest.split(':').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("names the file and line: {stderr}"));
        let bad = ["skipKye", "sink: lake", "$.data[?", "duckbd", "htp"][i];
        assert!(
            text_.lines().nth(line - 1).is_some_and(|l| l.contains(bad)),
            "case {i}: line {line} is not the one with {bad:?}: {stderr}"
        );
    }
    let out = fx.sync(&["--key", "refunds"], &[]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains(
        "no sync entry with key 'refunds' (keys: customers, orders, items, products, supplies, stores)"
    ));
    assert_eq!(fx.server.requests(), 0, "no request was made");
    assert!(!fx.db().exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_mode_stops_with_a_clear_memory_error_and_streaming_succeeds() {
    // 75,000 items: about 11 MB of JSON text, far more than 1 MiB holds even
    // as text (the DuckDB sink takes records as JSON text).
    let fx = Fixture::with_orders(30_000, Vec::new(), None, "").await;
    let out = fx
        .sync(&["--key", "items", "--apply", "--max-memory-mb", "1"], &[])
        .await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("classic mode reads the whole source before writing and it does not fit"),
        "{stderr}"
    );
    assert!(
        stderr.contains("hint: classic mode holds a whole source in memory; add --streaming"),
        "{stderr}"
    );

    fx.sync_ok(&[
        "--key",
        "items",
        "--apply",
        "--max-memory-mb",
        "1",
        "--streaming",
    ])
    .await;
    let items = fx.server.dataset().total(Resource::Items) as i64;
    assert_eq!(
        query(&fx.db(), "SELECT count(*) FROM items"),
        vec![vec![json!(items)]]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_stream_resumes_from_its_last_checkpoint() {
    // The items page at offset 4000 fails with a non-retryable 404 once.
    let fault = Fault {
        resource: Resource::Items,
        offset: 4000,
        status: 404,
        times: 1,
        retry_after: None,
    };
    let fx = Fixture::new(vec![fault], None, "").await;
    let args = ["--all", "--streaming", "--apply", "--batch-size", "1000"];

    let out = fx.sync(&args, &[]).await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("answered 404"), "{stderr}");
    assert!(stderr.contains("sync=items"), "{stderr}");
    let stdout = text(&out.stdout);
    assert_eq!(summary_row(&stdout, "items")[1], "FAILED", "{stdout}");
    summary_row(&stdout, "stores"); // later streams still ran
    let written = query(&fx.db(), "SELECT count(*) FROM items")[0][0]
        .as_i64()
        .unwrap();
    assert_eq!(
        written, 4000,
        "everything before the failing page was committed"
    );

    let out = fx.sync(&args, &[]).await;
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("items: resuming after checkpoint {\"offset\":4000}"),
        "{stderr}"
    );
    assert_tables_match_dataset(&fx.db(), fx.server.dataset());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_auth_reads_the_token_from_the_environment() {
    let fx = Fixture::new(
        Vec::new(),
        Some("t0ken-value"),
        "      auth: { type: bearer, tokenEnv: SHOP_TOKEN }\n",
    )
    .await;
    let args = ["--key", "stores", "--streaming", "--apply"];

    let out = fx.sync(&args, &[]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains(
        "syncs[stores].source.auth.tokenEnv: environment variable SHOP_TOKEN is not set"
    ));

    let out = fx.sync(&args, &[("SHOP_TOKEN", "wrong")]).await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("answered 401"), "{stderr}");
    assert!(
        !stderr.contains("wrong"),
        "the token never appears in output: {stderr}"
    );

    let out = fx.sync(&args, &[("SHOP_TOKEN", "t0ken-value")]).await;
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert!(
        !text(&out.stdout).contains("t0ken-value") && !text(&out.stderr).contains("t0ken-value")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_of_a_key_that_is_running_is_refused_and_the_first_finishes() {
    let dir = tempfile::tempdir().unwrap();
    // Slow pages keep the first run going for a few seconds.
    let config = ShopConfig {
        orders: ORDERS,
        latency: Duration::from_millis(150),
        ..ShopConfig::default()
    };
    let server = ShopServer::start(config, "127.0.0.1:0").await.unwrap();
    let config = write_config(dir.path(), &server.url(), "");
    let args = [
        "sync-api",
        "--config",
        config.to_str().unwrap(),
        "--key",
        "orders",
        "--streaming",
        "--apply",
    ];
    let first = Command::new(env!("CARGO_BIN_EXE_sluicegate"))
        .args(args)
        .env_remove("SLUICEGATE_MAX_MEMORY_MB")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lock = dir.path().join(".sluicegate/state/orders.lock");
    for _ in 0..200 {
        if std::fs::read_to_string(&lock).is_ok_and(|pid| pid == first.id().to_string()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let second = sluicegate(&args, &[]).await;
    let stderr = text(&second.stderr);
    assert!(!second.status.success(), "the second run must be refused");
    assert!(
        stderr.contains("sync 'orders' is already running")
            && stderr.contains(&format!("process {}", first.id())),
        "{stderr}"
    );
    let first = tokio::task::spawn_blocking(move || first.wait_with_output().unwrap())
        .await
        .unwrap();
    assert!(first.status.success(), "stderr: {}", text(&first.stderr));
    assert_eq!(
        table_records(&dir.path().join("shop.duckdb"), "orders").len() as u64,
        server.dataset().total(Resource::Orders),
        "the first run was not disturbed"
    );
    // Released: the next run goes ahead (and finds everything unchanged).
    let third = sluicegate(&args, &[]).await;
    assert!(third.status.success(), "stderr: {}", text(&third.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_checks_every_entry_without_writing_anything() {
    let fx = Fixture::new(Vec::new(), None, "").await;
    let out = sluicegate(&["validate", "--config", &fx.config], &[]).await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout} {}", text(&out.stderr));
    assert!(stdout.contains("configuration ok"), "{stdout}");
    for r in Resource::ALL {
        assert!(
            stdout.contains(&format!("\n{}: ok\n", r.name())),
            "{stdout}"
        );
    }
    assert!(
        stdout.contains("/api/orders — reachable, first batch 500 records"),
        "{stdout}"
    );
    assert!(
        stdout.contains("target 'orders' accepted a dry-run write of the first batch: 500 new"),
        "{stdout}"
    );
    assert!(!fx.db().exists(), "validate creates no database");
    assert!(!fx.dir.path().join(".sluicegate").exists(), "nor state");

    // One entry whose source is unreachable fails; the others are still checked.
    let text_config = std::fs::read_to_string(&fx.config).unwrap();
    let broken = text_config.replacen(
        &format!("{}/api/stores", fx.server.url()),
        "http://127.0.0.1:9/api/stores",
        1,
    );
    std::fs::write(&fx.config, broken).unwrap();
    let out = sluicegate(&["validate", "--config", &fx.config], &[]).await;
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("stores: FAILED"), "{stdout}");
    assert!(stdout.contains("orders: ok"), "{stdout}");
    assert!(text(&out.stderr).contains("1 entry failed validation"));

    // A configuration mistake is found before any connection.
    std::fs::write(
        &fx.config,
        "version: 1\nsinks: {}\nsyncs:\n  - key: a\n    sink: nowhere\n    surprise: 1\n",
    )
    .unwrap();
    let out = sluicegate(&["validate", "--config", &fx.config], &[]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("surprise"),
        "{}",
        text(&out.stderr)
    );
}

/// `state reset`, of one key or of the whole state, is refused while a run of
/// that key holds its lock (its next commit would undo the reset), and works
/// once the run is gone.
#[test]
fn state_reset_is_refused_while_a_sync_of_the_key_runs() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sluicegate.yaml");
    std::fs::write(&config, "version: 1\nsinks: {}\nsyncs: []\n").unwrap();
    let state = dir.path().join(".sluicegate/state");
    std::fs::create_dir_all(&state).unwrap();
    // What a running `sync-api --apply --key orders` holds.
    let lock = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(state.join("orders.lock"))
        .unwrap();
    lock.try_lock().unwrap();
    let reset = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_sluicegate"))
            .args(["state", "reset", "--config", config.to_str().unwrap()])
            .args(args)
            .env_remove("SLUICEGATE_CONFIG")
            .output()
            .unwrap()
    };
    for args in [&["--key", "orders"][..], &[][..]] {
        let out = reset(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains("is already running"), "{args:?}: {stderr}");
    }
    drop(lock);
    let out = reset(&["--key", "orders"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = reset(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
