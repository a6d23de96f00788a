//! `kill -9` at several points of a sync (100,000 records into DuckDB, 20,000
//! into the Contentful emulator), then re-runs of the same command: the sink ends
//! holding exactly the source's records — none missing, none twice, every value
//! as served.
//!
//! Each run is killed once its committed checkpoint passed a point (early, middle,
//! late; the first one only a moment after start, before or around the first
//! commit); the next run resumes from that checkpoint and says so.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{checkpoint, summary_row, table_records, text};
use serde_json::{Value, json};
use sluicegate_examples::cma::{CmaConfig, CmaServer};
use sluicegate_examples::shop::{Dataset, Resource, ShopConfig, ShopServer};

/// Customers synced into DuckDB (the shop serves one customer per five orders).
const RECORDS: u64 = 100_000;
/// Customers synced into the emulator (every entry is written and published).
const CMS_RECORDS: u64 = 20_000;
const TOKEN: &str = "kill-test-token";

/// Where the runs are killed: a moment after start, then once the committed
/// checkpoint has passed these fractions of the records.
const KILL_AFTER: [f64; 3] = [0.2, 0.55, 0.85];

async fn shop(records: u64) -> ShopServer {
    ShopServer::start(
        ShopConfig {
            orders: records * 5,
            ..ShopConfig::default()
        },
        "127.0.0.1:0",
    )
    .await
    .unwrap()
}

fn source(shop: &ShopServer) -> String {
    format!(
        "    source:\n      type: http\n      endPoint: \"{}/api/customers\"\n      resultsJsonPath: \"$.data\"\n      pagination: {{ skipKey: offset, limitKey: limit, pageSize: 1000, totalPath: \"$.meta.total\" }}\n",
        shop.url()
    )
}

fn command(config: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluicegate"));
    cmd.args(["sync-api", "--key", "customers", "--streaming", "--apply"])
        .args(["--config", config.to_str().unwrap()])
        .env_remove("SLUICEGATE_MAX_MEMORY_MB")
        .env_remove("SLUICEGATE_CONFIG")
        .env("CMA_TOKEN", TOKEN);
    cmd
}

/// Starts the sync and kills it (SIGKILL) once the committed offset passed
/// `after` (or 300 ms after start when `after` is `None`). Returns the offset
/// committed when it died.
fn run_and_kill(dir: &Path, config: &Path, after: Option<u64>) -> Option<u64> {
    let mut child: Child = command(config)
        .arg("--quiet")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let committed = || checkpoint(dir, "customers").and_then(|c| c["offset"].as_u64());
    loop {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it was killed (kill point {after:?})"
        );
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "the run did not pass offset {after:?} within 10 minutes"
        );
        match after {
            None if started.elapsed() >= Duration::from_millis(300) => break,
            Some(offset) if committed().is_some_and(|c| c >= offset) => break,
            _ => std::thread::sleep(Duration::from_millis(2)),
        }
    }
    child.kill().unwrap(); // SIGKILL
    assert!(!child.wait().unwrap().success());
    committed()
}

/// Kills a run at each point, then runs to the end; checks that each re-run
/// resumed from the checkpoint the killed one left.
async fn kill_at_several_points_then_finish(dir: &Path, config: &Path, records: u64) -> String {
    let (dir_owned, config_owned) = (dir.to_path_buf(), config.to_path_buf());
    let stderr_of_resumes = tokio::task::spawn_blocking(move || {
        let (dir, config) = (dir_owned.as_path(), config_owned.as_path());
        let mut points = vec![None];
        points.extend(KILL_AFTER.map(|f| Some((records as f64 * f) as u64)));
        let mut last = None;
        let mut resumes = String::new();
        for point in points {
            let committed = run_and_kill(dir, config, point);
            if let Some(point) = point {
                let committed = committed.expect("a checkpoint past the kill point");
                assert!(committed >= point && committed < records, "{committed}");
                assert!(committed > last.unwrap_or(0), "progress between kills");
            }
            last = committed.or(last);
        }
        let out = command(config).output().unwrap();
        let stderr = text(&out.stderr);
        assert!(out.status.success(), "the final run failed: {stderr}");
        let committed = last.expect("some checkpoint was committed");
        // The checkpoint store's offset, or (DuckDB, which commits each batch's
        // position with its rows) the sink's, one batch (at most the sink's
        // 10,000 rows) further when the kill fell between the two commits.
        let prefix = "customers: resuming after checkpoint {\"offset\":";
        let offset: u64 = stderr
            .split(prefix)
            .nth(1)
            .and_then(|rest| rest.split('}').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("the last run says where it resumes: {stderr}"));
        assert!(
            offset == committed || (offset > committed && offset <= committed + 10_000),
            "the last run resumes where the last killed one committed ({committed}): {stderr}"
        );
        let stdout = text(&out.stdout);
        let read: u64 = summary_row(&stdout, "customers")[2]
            .replace(',', "")
            .parse()
            .unwrap();
        assert_eq!(read, records - offset, "only the rest is read again");
        resumes.push_str(&stderr);
        resumes
    })
    .await
    .unwrap();
    assert!(
        checkpoint(dir, "customers").is_none(),
        "a completed stream leaves no checkpoint"
    );
    stderr_of_resumes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duckdb_holds_exactly_the_source_after_kills_at_several_points() {
    let shop = shop(RECORDS).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sluicegate.yaml");
    std::fs::write(
        &config,
        format!(
            "version: 1\nsinks:\n  warehouse: {{ type: duckdb, path: shop.duckdb }}\nsyncs:\n  - key: customers\n    sink: warehouse\n    keyField: id\n{}",
            source(&shop)
        ),
    )
    .unwrap();
    kill_at_several_points_then_finish(dir.path(), &config, RECORDS).await;

    let got = table_records(&dir.path().join("shop.duckdb"), "customers");
    let dataset = Dataset::new(RECORDS * 5);
    assert_eq!(got.len() as u64, RECORDS, "no gaps, no duplicates");
    for (i, record) in got.iter().enumerate() {
        assert_eq!(
            record,
            &dataset.record_value(Resource::Customers, i as u64),
            "row {i}"
        );
    }
}

fn customer_type() -> Value {
    json!({
        "sys": {"id": "customer"}, "name": "Customer", "displayField": "name",
        "fields": [
            {"id": "customerId", "name": "Customer id", "type": "Symbol", "required": true},
            {"id": "name", "name": "Name", "type": "Symbol"},
            {"id": "email", "name": "Email", "type": "Symbol"},
            {"id": "city", "name": "City", "type": "Symbol"},
        ],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cms_holds_exactly_the_source_after_kills_at_several_points() {
    let shop = shop(CMS_RECORDS).await;
    let cma = CmaServer::start(
        CmaConfig {
            token: TOKEN.into(),
            content_types: vec![customer_type()],
            rate_limit: Some(1_000_000),
            ..CmaConfig::default()
        },
        "127.0.0.1:0",
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config: PathBuf = dir.path().join("sluicegate.yaml");
    std::fs::write(
        &config,
        format!(
            r#"version: 1
sinks:
  cms: {{ type: contentful, spaceId: space1, baseUrl: "{cma}", tokenEnv: CMA_TOKEN }}
syncs:
  - key: customers
    sink: cms
    contentType: customer
    contentKeyField: customerId.en-US
{source}    mapping:
      - {{ fieldName: customerId.en-US, expression: "{{{{ row.id }}}}" }}
      - {{ fieldName: name.en-US, expression: "{{{{ row.name }}}}" }}
      - {{ fieldName: email.en-US, expression: "{{{{ row.email }}}}" }}
      - {{ fieldName: city.en-US, expression: "{{{{ row.address.city }}}}" }}
"#,
            cma = cma.url(),
            source = source(&shop),
        ),
    )
    .unwrap();
    kill_at_several_points_then_finish(dir.path(), &config, CMS_RECORDS).await;

    let dataset = Dataset::new(CMS_RECORDS * 5);
    let entries = cma.entries();
    let mut seen = BTreeSet::new();
    for entry in entries.values() {
        let fields = &entry["fields"];
        let id: u64 = fields["customerId"]["en-US"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("entry without a customer id: {entry}"));
        assert!(seen.insert(id), "customer {id} is in the CMS twice");
        let want = dataset.record_value(Resource::Customers, id - 1);
        assert_eq!(fields["name"]["en-US"], want["name"], "customer {id}");
        assert_eq!(fields["email"]["en-US"], want["email"], "customer {id}");
        assert_eq!(
            fields["city"]["en-US"], want["address"]["city"],
            "customer {id}"
        );
        assert!(
            entry["sys"]["publishedVersion"].is_number(),
            "customer {id} is published: {entry}"
        );
    }
    assert_eq!(seen.len() as u64, CMS_RECORDS, "no gaps");
    assert_eq!(seen.first(), Some(&1));
    assert_eq!(seen.last(), Some(&CMS_RECORDS));
}
