//! Sharded runs: four processes (`--shard I/4`) sync a paginated API, a
//! database table read by key and a query that reads in sequence into
//! PostgreSQL at once, with their state in PostgreSQL; the tables end with
//! exactly the source's rows. A shard killed with SIGKILL is run again: it
//! resumes from its own checkpoint (its run lock died with it) and the tables
//! end exact.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{pg_rows, text};
use serde_json::{Value, json};
use sluicegate_examples::changes::{ChangesServer, Item};
use sluicegate_examples::dbserver::{self, DbKind};

const ITEMS: u64 = 8_000;
const ORDERS: u64 = 12_000;

struct Fixture {
    dir: tempfile::TempDir,
    config: PathBuf,
    target: String,
    api: ChangesServer,
}

async fn fixture(name: &str) -> Fixture {
    let source = dbserver::postgres()
        .fresh_database(&format!("{name}_src"))
        .await;
    dbserver::execute(
        DbKind::Postgres,
        &source,
        &format!(
            "CREATE TABLE orders (id bigint PRIMARY KEY, total numeric NOT NULL, note text);
             INSERT INTO orders SELECT i, i * 1.25, 'order ' || i FROM generate_series(1, {ORDERS}) i;"
        ),
    )
    .await;
    let target = dbserver::postgres()
        .fresh_database(&format!("{name}_dst"))
        .await;
    let state = dbserver::postgres()
        .fresh_database(&format!("{name}_state"))
        .await;
    let api = ChangesServer::start(
        (1..=ITEMS).map(|id| Item {
            id,
            name: format!("item {id}"),
            updated: Some(id),
        }),
        "127.0.0.1:0",
        Duration::from_millis(15),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sluicegate.yaml");
    std::fs::write(
        &config,
        format!(
            "version: 1
state: {{ type: postgres, connectionString: \"{state}\" }}
sinks:
  pg: {{ type: postgres, connectionString: \"{target}\" }}
syncs:
  - key: items
    sink: pg
    keyField: id
    source:
      type: http
      endPoint: \"{api}\"
      resultsJsonPath: \"$.data\"
      pagination: {{ skipKey: offset, limitKey: limit, pageSize: 100, totalPath: \"$.meta.total\" }}
  - key: orders
    sink: pg
    keyField: id
    source: {{ type: postgres, connectionString: \"{source}\", table: orders, orderBy: id, fetchSize: 500 }}
  - key: notes
    sink: pg
    keyField: id
    source: {{ type: postgres, connectionString: \"{source}\", query: \"SELECT id, note FROM orders WHERE id % 10 = 0\" }}
",
            api = api.url()
        ),
    )
    .unwrap();
    Fixture {
        dir,
        config,
        target,
        api,
    }
}

fn shard(config: &Path, index: u32, extra: &[&str]) -> Command {
    shard_of(config, index, 4, extra)
}

fn shard_of(config: &Path, index: u32, count: u32, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluicegate"));
    cmd.args([
        "sync-api",
        "--all",
        "--streaming",
        "--apply",
        "--batch-size",
        "100",
    ])
    .arg("--shard")
    .arg(format!("{index}/{count}"))
    .args(extra)
    .arg("--config")
    .arg(config)
    .env_remove("SLUICEGATE_MAX_MEMORY_MB")
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    cmd
}

async fn wait(child: Child) -> Output {
    tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap()
}

async fn assert_exact(fx: &Fixture) {
    assert_eq!(
        pg_rows(
            &fx.target,
            "SELECT id, name, updated_at FROM items ORDER BY id"
        )
        .await,
        fx.api.records()
    );
    assert_eq!(
        pg_rows(&fx.target, "SELECT count(*) AS n, count(DISTINCT id) AS ids, sum(total::numeric)::text AS sum FROM orders").await,
        [json!({"n": ORDERS, "ids": ORDERS, "sum": "90007500.00"})]
    );
    assert_eq!(
        pg_rows(&fx.target, "SELECT count(*) AS n FROM notes").await,
        [json!({"n": ORDERS / 10})]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_shards_at_once_end_with_exactly_the_sources_rows() {
    let fx = fixture("shards_all").await;
    let children: Vec<Child> = (0..4)
        .map(|i| shard(&fx.config, i, &[]).spawn().unwrap())
        .collect();
    let mut read_whole = 0;
    for child in children {
        let out = wait(child).await;
        assert!(out.status.success(), "{}", text(&out.stderr));
        let stderr = text(&out.stderr);
        assert!(stderr.contains("items: shard"), "{stderr}");
        assert!(stderr.contains("orders: shard"), "{stderr}");
        if stderr.contains("notes: read whole by this shard") {
            read_whole += 1;
        }
    }
    assert_eq!(
        read_whole, 1,
        "the query that reads in sequence is read by one shard"
    );
    // Every shard fetched its own pages: 80 pages, once each, plus each
    // shard's look at the first page for the total.
    assert_eq!(fx.api.requests(), ITEMS / 100 + 3);
    assert_exact(&fx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_shard_run_again_resumes_and_the_tables_end_exact() {
    let fx = fixture("shards_kill").await;
    let state = |fx: &Fixture| {
        let text = std::fs::read_to_string(&fx.config).unwrap();
        text.split("connectionString: \"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap()
            .to_owned()
    };
    let state_url = state(&fx);
    let others: Vec<Child> = [0, 1, 3]
        .into_iter()
        .map(|i| shard(&fx.config, i, &[]).spawn().unwrap())
        .collect();
    let mut victim = shard(&fx.config, 2, &[])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Shard 2's slice of the API is pages 40..60 (offsets 4,000..6,000).
    let started = Instant::now();
    loop {
        let committed = pg_rows(
            &state_url,
            "SELECT position FROM sluicegate_state.checkpoints WHERE sync_key = 'items' AND stream = 'items#2/4'",
        )
        .await;
        let offset = committed
            .first()
            .and_then(|r| r["position"].as_str())
            .and_then(|p| serde_json::from_str::<Value>(p).ok())
            .and_then(|p| p["offset"].as_u64());
        if offset.is_some_and(|o| o >= 4_600) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no checkpoint of shard 2"
        );
        assert!(
            victim.try_wait().unwrap().is_none(),
            "shard 2 ended before the kill"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    victim.kill().unwrap();
    victim.wait().unwrap();
    for child in others {
        let out = wait(child).await;
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let again = wait(shard(&fx.config, 2, &[]).spawn().unwrap()).await;
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert!(
        text(&again.stderr).contains("items: resuming after checkpoint {\"offset\":"),
        "{}",
        text(&again.stderr)
    );
    assert!(fx.dir.path().exists());
    assert_exact(&fx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_split_a_parent_child_endpoint_by_parent() {
    let target = dbserver::postgres().fresh_database("shards_children").await;
    let api = ChangesServer::start(
        (1..=300).map(|id| Item {
            id,
            name: format!("item {id}"),
            updated: Some(id * 60),
        }),
        "127.0.0.1:0",
        Duration::ZERO,
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sluicegate.yaml");
    // Each parent's child is the first item at or after its time: itself.
    std::fs::write(
        &config,
        format!(
            "version: 1
sinks:
  pg: {{ type: postgres, connectionString: \"{target}\" }}
syncs:
  - key: children
    sink: pg
    keyField: id
    source:
      type: http
      endPoint: \"{url}?since={{{{ parent.updated_at | urlencode }}}}&limit=1\"
      resultsJsonPath: \"$.data\"
      pagination: {{ type: single }}
      parent:
        endPoint: \"{url}\"
        resultsJsonPath: \"$.data\"
        pagination: {{ skipKey: offset, limitKey: limit, pageSize: 100, totalPath: \"$.meta.total\" }}
",
            url = api.url()
        ),
    )
    .unwrap();
    let children: Vec<Child> = (0..2)
        .map(|i| shard_of(&config, i, 2, &[]).spawn().unwrap())
        .collect();
    for child in children {
        let out = wait(child).await;
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    assert_eq!(
        pg_rows(
            &target,
            "SELECT id, name, updated_at FROM children ORDER BY id"
        )
        .await,
        api.records()
    );
    // Each shard read the 3 parent pages; the 300 children once in all.
    assert_eq!(api.requests(), 2 * 3 + 300);
}
