//! Run state in PostgreSQL (`state: { type: postgres }`): a run killed with
//! SIGKILL resumes from the checkpoint it committed there, its run lock dies
//! with it, a second run of a running key is refused, and `state show` and
//! `state reset` work on it.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{query, text};
use sluicegate_examples::changes::{ChangesServer, Item};
use sluicegate_examples::dbserver;

fn write_config(dir: &Path, api: &str, state_url: &str) -> PathBuf {
    let path = dir.join("sluicegate.yaml");
    std::fs::write(
        &path,
        format!(
            "version: 1
state: {{ type: postgres, connectionString: \"{state_url}\" }}
sinks:
  warehouse: {{ type: duckdb, path: out.duckdb }}
syncs:
  - key: items
    sink: warehouse
    keyField: id
    source:
      type: http
      endPoint: \"{api}\"
      resultsJsonPath: \"$.data\"
      pagination: {{ skipKey: offset, limitKey: limit, pageSize: 100, totalPath: \"$.meta.total\" }}
"
        ),
    )
    .unwrap();
    path
}

fn command(config: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluicegate"));
    cmd.args(args)
        .arg("--config")
        .arg(config)
        .env_remove("SLUICEGATE_MAX_MEMORY_MB");
    cmd
}

async fn run(config: &Path, args: &[&str]) -> Output {
    let mut cmd = command(config, args);
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_run_resumes_from_the_postgres_state_and_its_lock_dies_with_it() {
    let state = dbserver::postgres().fresh_database("e2e_pg_state").await;
    let api = ChangesServer::start(
        (1..=3_000).map(|id| Item {
            id,
            name: format!("item {id}"),
            updated: Some(id),
        }),
        "127.0.0.1:0",
        Duration::from_millis(60),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &api.url(), &state);
    let sync = [
        "sync-api",
        "--all",
        "--streaming",
        "--apply",
        "--batch-size",
        "100",
    ];
    let mut child = command(&config, &sync)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the PostgreSQL state holds a checkpoint past offset 500; a
    // second run of the key, tried at the first checkpoint, is refused.
    let started = Instant::now();
    let mut tried_second = false;
    loop {
        let shown = run(&config, &["state", "show"]).await;
        let shown = text(&shown.stdout);
        let offset = shown
            .split("{\"offset\":")
            .nth(1)
            .and_then(|rest| rest.split('}').next())
            .and_then(|n| n.parse::<u64>().ok());
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no checkpoint: {shown}"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before the kill"
        );
        // While it runs, a second run of the key is refused.
        if offset.is_some() && !tried_second {
            tried_second = true;
            let second = run(&config, &sync).await;
            assert_eq!(second.status.code(), Some(1));
            assert!(
                text(&second.stderr).contains("sync 'items' is already running"),
                "{}",
                text(&second.stderr)
            );
        }
        if offset.is_some_and(|o| o >= 500) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();

    // The lock died with the process: the next run goes ahead and resumes.
    let resumed = run(&config, &sync).await;
    assert!(resumed.status.success(), "{}", text(&resumed.stderr));
    assert!(
        text(&resumed.stderr).contains("items: resuming after checkpoint {\"offset\":"),
        "{}",
        text(&resumed.stderr)
    );
    assert_eq!(
        query(
            &dir.path().join("out.duckdb"),
            "SELECT count(*), count(DISTINCT id) FROM items"
        ),
        [[serde_json::json!(3_000), serde_json::json!(3_000)]]
    );
    let shown = run(&config, &["state", "show"]).await;
    assert!(
        text(&shown.stdout).contains("no checkpoints in the PostgreSQL state"),
        "{}",
        text(&shown.stdout)
    );
    let reset = run(&config, &["state", "reset", "--key", "items"]).await;
    assert!(reset.status.success(), "{}", text(&reset.stderr));
    assert!(text(&reset.stdout).contains("items: forgot 0 checkpoint(s)"));
}
