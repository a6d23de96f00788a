//! End-to-end deletions: after a complete read, what the source no longer has
//! leaves the target (DuckDB hard and soft, Contentful hard and archive,
//! Directus), a dry run only lists it, the mass-deletion guard refuses, and a
//! read with a rejected record removes nothing.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::{query, text};
use serde_json::{Value, json};
use sluicegate_examples::changes::{ChangesServer, Item};

/// 2024-01-01T00:00:00Z.
const BASE: u64 = 1_704_067_200;

fn items(n: u64) -> Vec<Item> {
    (1..=n)
        .map(|id| Item {
            id,
            name: format!("item {id}"),
            updated: Some(BASE + id * 60),
        })
        .collect()
}

async fn server(n: u64) -> ChangesServer {
    ChangesServer::start(items(n), "127.0.0.1:0", Duration::ZERO)
        .await
        .unwrap()
}

/// One entry `items` from the changing API into `sink` (a YAML flow mapping),
/// with `deletes` and extra entry lines.
fn write_config(dir: &Path, url: &str, sink: &str, deletes: &str, extra: &str) -> PathBuf {
    let path = dir.join("sluicegate.yaml");
    std::fs::write(
        &path,
        format!(
            "version: 1
sinks:
  target: {sink}
syncs:
  - key: items
    sink: target
    deletes: {deletes}
{extra}    source:
      type: http
      endPoint: \"{url}\"
      resultsJsonPath: \"$.data\"
      pagination: {{ skipKey: offset, limitKey: limit, pageSize: 100, totalPath: \"$.meta.total\" }}
"
        ),
    )
    .unwrap();
    path
}

async fn sync(config: &Path, args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluicegate"));
    cmd.args(["sync-api", "--all", "--streaming", "--config"])
        .arg(config)
        .args(args)
        .env_remove("SLUICEGATE_MAX_MEMORY_MB")
        .env_remove("SLUICEGATE_CONFIG");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

fn ids(db: &Path, filter: &str) -> Vec<u64> {
    query(db, &format!("SELECT id FROM items {filter} ORDER BY id"))
        .into_iter()
        .map(|r| r[0].as_u64().unwrap())
        .collect()
}

fn source_ids(api: &ChangesServer) -> Vec<u64> {
    api.records()
        .iter()
        .map(|r| r["id"].as_u64().unwrap())
        .collect()
}

const DUCKDB: &str = "{ type: duckdb, path: out.duckdb }";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duckdb_hard_deletes_exactly_the_missing_keys_after_a_dry_run_lists_them() {
    let api = server(1_000).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &api.url(),
        DUCKDB,
        "{ mode: hard }",
        "    keyField: id\n",
    );
    let db = dir.path().join("out.duckdb");
    let first = sync(&config, &["--apply"], &[]).await;
    assert!(first.status.success(), "{}", text(&first.stderr));
    assert!(
        text(&first.stdout).contains("items: deletes (hard): removed 0 of the target's 1,000 keys"),
        "{}",
        text(&first.stdout)
    );
    for id in (10..=300).step_by(10) {
        assert!(api.remove(id));
    }

    let dry = sync(&config, &[], &[]).await;
    assert!(dry.status.success(), "{}", text(&dry.stderr));
    assert!(
        text(&dry.stdout).contains(
            "items: deletes (hard): would remove 30 of the target's 1,000 keys (not in the source): 10, 100, 110,"
        ),
        "{}",
        text(&dry.stdout)
    );
    assert_eq!(ids(&db, "").len(), 1_000, "a dry run removes nothing");

    let second = sync(&config, &["--apply"], &[]).await;
    assert!(second.status.success(), "{}", text(&second.stderr));
    assert!(
        text(&second.stdout)
            .contains("items: deletes (hard): removed 30 of the target's 1,000 keys"),
        "{}",
        text(&second.stdout)
    );
    assert_eq!(ids(&db, ""), source_ids(&api));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duckdb_soft_deletes_mark_rows_and_a_key_that_comes_back_is_live_again() {
    let api = server(200).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &api.url(),
        DUCKDB,
        "{ mode: soft }",
        "    keyField: id\n",
    );
    let db = dir.path().join("out.duckdb");
    assert!(sync(&config, &["--apply"], &[]).await.status.success());
    for id in [3, 50, 51, 199] {
        api.remove(id);
    }
    let second = sync(&config, &["--apply"], &[]).await;
    assert!(second.status.success(), "{}", text(&second.stderr));
    assert_eq!(ids(&db, "").len(), 200, "soft: every row stays");
    assert_eq!(ids(&db, "WHERE _deleted_at IS NOT NULL"), [3, 50, 51, 199]);
    assert_eq!(ids(&db, "WHERE _deleted_at IS NULL"), source_ids(&api));

    // 50 comes back; the marked rows are not counted (or marked) again.
    api.put(Item {
        id: 50,
        name: "back".into(),
        updated: Some(BASE),
    });
    let third = sync(&config, &["--apply"], &[]).await;
    assert!(third.status.success(), "{}", text(&third.stderr));
    assert!(
        text(&third.stdout).contains("removed 0 of the target's 197 keys"),
        "{}",
        text(&third.stdout)
    );
    assert_eq!(ids(&db, "WHERE _deleted_at IS NOT NULL"), [3, 51, 199]);
    assert_eq!(
        query(&db, "SELECT name FROM items WHERE id = 50"),
        [[json!("back")]]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mass_deletion_guard_refuses_until_allowed() {
    let api = server(100).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &api.url(),
        DUCKDB,
        "{ mode: hard, maxFraction: 0.2 }",
        "    keyField: id\n",
    );
    let db = dir.path().join("out.duckdb");
    assert!(sync(&config, &["--apply"], &[]).await.status.success());
    for id in 1..=21 {
        api.remove(id);
    }
    let refused = sync(&config, &["--apply"], &[]).await;
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused.stderr));
    let stderr = text(&refused.stderr);
    assert!(
        stderr.contains("deletes: 21 of the target's 100 keys (21.0%) are not in the source, more than deletes.maxFraction (20.0%), so nothing was removed"),
        "{stderr}"
    );
    assert!(stderr.contains("--allow-mass-delete"), "{stderr}");
    assert_eq!(ids(&db, "").len(), 100, "nothing was removed");

    let allowed = sync(&config, &["--apply", "--allow-mass-delete"], &[]).await;
    assert!(allowed.status.success(), "{}", text(&allowed.stderr));
    assert_eq!(ids(&db, ""), source_ids(&api));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_with_a_rejected_record_removes_nothing() {
    let api = server(50).await;
    let dir = tempfile::tempdir().unwrap();
    // The mapping fails for one record (a name that is not a number).
    let mapping = "    keyField: id\n    mapping:\n      - { fieldName: id, expression: \"{{ row.id }}\" }\n      - { fieldName: name, expression: \"{{ (row.name | to_int) if row.name == 'boom' else row.name }}\" }\n";
    let config = write_config(dir.path(), &api.url(), DUCKDB, "{ mode: hard }", mapping);
    let db = dir.path().join("out.duckdb");
    assert!(sync(&config, &["--apply"], &[]).await.status.success());
    api.remove(7);
    api.put(Item {
        id: 8,
        name: "boom".into(),
        updated: Some(BASE),
    });
    let out = sync(&config, &["--apply"], &[]).await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("deletes (hard) skipped: 1 records were rejected"),
        "{}",
        text(&out.stdout)
    );
    // Mapped ids are text here; 7 stays until a clean read.
    assert_eq!(
        query(&db, "SELECT count(*) FROM items WHERE id = '7'"),
        [[json!(1)]]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_and_deletes_together_are_refused_before_any_request() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "http://127.0.0.1:9/items",
        DUCKDB,
        "{ mode: hard }",
        "    keyField: id\n    incremental: { cursorField: updated_at, initialValue: 0 }\n",
    );
    let out = sync(&config, &[], &[]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("syncs[items].deletes: cannot be combined with incremental"),
        "{}",
        text(&out.stderr)
    );
}

fn cms_mapping(locale: &str) -> String {
    format!(
        "    contentKeyField: sku{locale}\n    contentType: item\n    mapping:\n      - {{ fieldName: sku{locale}, expression: \"item-{{{{ row.id }}}}\" }}\n      - {{ fieldName: name{locale}, expression: \"{{{{ row.name }}}}\" }}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contentful_deletes_or_archives_the_entries_the_source_lost() {
    use sluicegate_examples::cma::{CmaConfig, CmaServer};
    for mode in ["hard", "archive"] {
        let cma = CmaServer::start(
            CmaConfig {
                token: "del-token".into(),
                locales: vec![("en-US".into(), true)],
                content_types: vec![json!({
                    "sys": {"id": "item"}, "name": "Item", "displayField": "name",
                    "fields": [
                        {"id": "sku", "name": "SKU", "type": "Symbol", "required": true},
                        {"id": "name", "name": "Name", "type": "Symbol"},
                    ],
                })],
                ..CmaConfig::default()
            },
            "127.0.0.1:0",
        )
        .await
        .unwrap();
        let api = server(120).await;
        let dir = tempfile::tempdir().unwrap();
        let sink = format!(
            "{{ type: contentful, spaceId: space1, baseUrl: \"{}\", tokenEnv: CMA_TOKEN, rateLimit: 500 }}",
            cma.url()
        );
        let config = write_config(
            dir.path(),
            &api.url(),
            &sink,
            &format!("{{ mode: {mode} }}"),
            &cms_mapping(".en-US"),
        );
        let env = [("CMA_TOKEN", "del-token")];
        let first = sync(&config, &["--apply"], &env).await;
        assert!(first.status.success(), "{mode}: {}", text(&first.stderr));
        for id in [5, 60, 61] {
            api.remove(id);
        }
        let second = sync(&config, &["--apply"], &env).await;
        assert!(second.status.success(), "{mode}: {}", text(&second.stderr));
        assert!(
            text(&second.stdout).contains(&format!(
                "deletes ({mode}): removed 3 of the target's 120 keys (not in the source): item-5, item-60, item-61"
            )),
            "{}",
            text(&second.stdout)
        );
        let entries = cma.entries();
        let live: Vec<String> = {
            let mut v: Vec<String> = entries
                .values()
                .filter(|e| e["sys"]["archivedVersion"].is_null())
                .map(|e| e["fields"]["sku"]["en-US"].as_str().unwrap().to_owned())
                .collect();
            v.sort();
            v
        };
        let mut expected: Vec<String> = source_ids(&api)
            .iter()
            .map(|id| format!("item-{id}"))
            .collect();
        expected.sort();
        assert_eq!(live, expected, "{mode}");
        let archived: Vec<&Value> = entries
            .values()
            .filter(|e| !e["sys"]["archivedVersion"].is_null())
            .collect();
        match mode {
            "hard" => {
                assert_eq!(entries.len(), 117);
                assert!(archived.is_empty());
            }
            _ => {
                assert_eq!(entries.len(), 120);
                assert_eq!(archived.len(), 3);
                assert!(
                    archived
                        .iter()
                        .all(|e| e["sys"]["publishedVersion"].is_null()),
                    "archived entries were unpublished first"
                );
                // The next run does not count the archived entries again.
                let third = sync(&config, &["--apply"], &env).await;
                assert!(
                    text(&third.stdout).contains("removed 0 of the target's 117 keys"),
                    "{}",
                    text(&third.stdout)
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directus_deletes_the_items_the_source_lost() {
    let directus = sluicegate_examples::directus::directus();
    directus
        .fresh_collection("del_items", &[("name", "string")])
        .await;
    let api = server(80).await;
    let dir = tempfile::tempdir().unwrap();
    let sink = format!(
        "{{ type: directus, url: \"{}\", tokenEnv: DIRECTUS_TOKEN }}",
        directus.url
    );
    let config = write_config(
        dir.path(),
        &api.url(),
        &sink,
        "{ mode: hard }",
        &cms_mapping("").replace("contentType: item", "contentType: del_items"),
    );
    let env = [("DIRECTUS_TOKEN", directus.token.as_str())];
    let first = sync(&config, &["--apply"], &env).await;
    assert!(first.status.success(), "{}", text(&first.stderr));
    for id in [1, 2, 79] {
        api.remove(id);
    }
    let second = sync(&config, &["--apply"], &env).await;
    assert!(second.status.success(), "{}", text(&second.stderr));
    assert!(
        text(&second.stdout).contains("deletes (hard): removed 3 of the target's 80 keys"),
        "{}",
        text(&second.stdout)
    );
    let mut skus: Vec<String> = directus
        .items("del_items")
        .await
        .iter()
        .map(|i| i["sku"].as_str().unwrap().to_owned())
        .collect();
    skus.sort();
    let mut expected: Vec<String> = source_ids(&api)
        .iter()
        .map(|id| format!("item-{id}"))
        .collect();
    expected.sort();
    assert_eq!(skus, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_read_removes_nothing_and_the_next_complete_read_does() {
    use std::process::Stdio;
    let api = ChangesServer::start(items(1_500), "127.0.0.1:0", Duration::from_millis(40))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &api.url(),
        DUCKDB,
        "{ mode: hard }",
        "    keyField: id\n",
    );
    let db = dir.path().join("out.duckdb");
    assert!(sync(&config, &["--apply"], &[]).await.status.success());
    api.remove(1_500);
    let child = Command::new(env!("CARGO_BIN_EXE_sluicegate"))
        .args([
            "sync-api",
            "--all",
            "--streaming",
            "--apply",
            "--batch-size",
            "100",
            "--config",
        ])
        .arg(&config)
        .env_remove("SLUICEGATE_MAX_MEMORY_MB")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    common::kill_after_offset(child, dir.path(), "items", 300);

    let resumed = sync(&config, &["--apply"], &[]).await;
    assert!(resumed.status.success(), "{}", text(&resumed.stderr));
    assert!(
        text(&resumed.stdout)
            .contains("deletes (hard) skipped: the read resumed from a checkpoint"),
        "{}",
        text(&resumed.stdout)
    );
    assert_eq!(ids(&db, "").len(), 1_500);
    let complete = sync(&config, &["--apply"], &[]).await;
    assert!(complete.status.success(), "{}", text(&complete.stderr));
    assert_eq!(ids(&db, ""), source_ids(&api));
}
