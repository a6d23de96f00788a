//! End-to-end incremental syncs: the real binary against a changing HTTP API
//! and real databases, into DuckDB. The servers count what they served, so each
//! test proves a second run fetched only the window, and compares the sink with
//! the source after every run.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{query, summary_row, text};
use serde_json::{Value, json};
use sluicegate_examples::changes::{ChangesServer, Item};
use sluicegate_examples::dbserver::{self, DbKind};

/// 2024-01-01T00:00:00Z.
const BASE: u64 = 1_704_067_200;

fn item(id: u64, name: &str, updated: u64) -> Item {
    Item {
        id,
        name: name.to_owned(),
        updated: Some(updated),
    }
}

/// `n` items, one a minute from `BASE`.
fn items(n: u64) -> Vec<Item> {
    (1..=n)
        .map(|id| item(id, &format!("item {id}"), BASE + id * 60))
        .collect()
}

async fn server(items: Vec<Item>, page_delay: Duration) -> ChangesServer {
    ChangesServer::start(items, "127.0.0.1:0", page_delay)
        .await
        .unwrap()
}

/// One incremental entry `items` reading the changing API, with `lag`.
fn write_config(dir: &Path, url: &str, lag: Option<&str>) -> PathBuf {
    let lag = lag.map_or_else(String::new, |l| format!("\n      lag: {l}"));
    let path = dir.join("sluicegate.yaml");
    std::fs::write(
        &path,
        format!(
            "version: 1
sinks:
  warehouse: {{ type: duckdb, path: out.duckdb }}
syncs:
  - key: items
    sink: warehouse
    keyField: id
    incremental:
      cursorField: updated_at
      initialValue: \"2000-01-01T00:00:00Z\"{lag}
    source:
      type: http
      endPoint: \"{url}?since={{{{ incremental.start_value | urlencode }}}}\"
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
        .args(["--config", config.to_str().unwrap()])
        .env_remove("SLUICEGATE_MAX_MEMORY_MB")
        .env_remove("SLUICEGATE_CONFIG");
    cmd
}

async fn run(config: &Path, args: &[&str]) -> Output {
    let mut cmd = command(config, args);
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

async fn sync(config: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["sync-api", "--all", "--streaming"];
    args.extend_from_slice(extra);
    run(config, &args).await
}

/// The DuckDB table's rows as the API serves items, ordered by id.
fn sink_records(db: &Path, table: &str) -> Vec<Value> {
    query(
        db,
        &format!("SELECT id, name, updated_at FROM \"{table}\" ORDER BY id"),
    )
    .into_iter()
    .map(|r| {
        let mut v = json!({"id": r[0], "name": r[1]});
        if !r[2].is_null() {
            v["updated_at"] = r[2].clone();
        }
        v
    })
    .collect()
}

/// The saved high-water mark and progress of `key`, as `state show` prints them.
async fn state_show(config: &Path) -> String {
    let out = run(config, &["state", "show"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_fetches_only_what_changed_and_the_sink_equals_the_source() {
    let api = server(items(1_000), Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &api.url(), None);
    let db = dir.path().join("out.duckdb");

    let first = sync(&config, &["--apply"]).await;
    assert!(first.status.success(), "{}", text(&first.stderr));
    assert_eq!(api.rows_served(), 1_000);
    assert_eq!(sink_records(&db, "items"), api.records());
    let latest = api.latest().unwrap();
    let stdout = text(&first.stdout);
    assert!(
        stdout.contains(&format!(
            "items: incremental on updated_at from 2000-01-01T00:00:00Z to {latest} (1,000 rows in the window)"
        )),
        "{stdout}"
    );
    assert!(
        state_show(&config)
            .await
            .contains(&format!("items  items  last \"{latest}\""))
    );

    // 20 items change, 5 are new.
    for (k, id) in (100..=119).enumerate() {
        api.put(item(
            id,
            &format!("changed {id}"),
            BASE + 1_000 * 60 + 30 + k as u64,
        ));
    }
    for id in 1_001..=1_005 {
        api.put(item(id, &format!("new {id}"), BASE + 2_000 * 60 + id));
    }
    api.reset_counts();
    // A dry run reads the window and saves nothing.
    let dry = sync(&config, &[]).await;
    assert!(dry.status.success(), "{}", text(&dry.stderr));
    assert!(
        text(&dry.stdout).contains("(dry run: not saved)"),
        "{}",
        text(&dry.stdout)
    );
    assert!(
        state_show(&config)
            .await
            .contains(&format!("last \"{latest}\""))
    );
    api.reset_counts();

    let second = sync(&config, &["--apply"]).await;
    assert!(second.status.success(), "{}", text(&second.stderr));
    // The 25 changes, and the item at the last mark (the window includes its
    // start: another record may have the same cursor).
    assert_eq!(api.rows_served(), 26);
    assert_eq!(summary_row(&text(&second.stdout), "items")[2], "26");
    assert_eq!(sink_records(&db, "items"), api.records());
    assert!(
        state_show(&config)
            .await
            .contains(&format!("last \"{}\"", api.latest().unwrap()))
    );

    // Nothing changed: only the item at the mark is read again.
    api.reset_counts();
    let third = sync(&config, &["--apply"]).await;
    assert!(third.status.success(), "{}", text(&third.stderr));
    assert_eq!(api.rows_served(), 1);
    assert_eq!(sink_records(&db, "items"), api.records());

    // A full refresh reads from the initial value again.
    api.reset_counts();
    let full = sync(&config, &["--apply", "--full-refresh"]).await;
    assert!(full.status.success(), "{}", text(&full.stderr));
    assert_eq!(api.rows_served(), 1_005);
    assert_eq!(sink_records(&db, "items"), api.records());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_record_inside_the_lag_is_picked_up_and_one_before_it_is_not() {
    let api = server(items(200), Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &api.url(), Some("5m"));
    let db = dir.path().join("out.duckdb");
    let first = sync(&config, &["--apply"]).await;
    assert!(first.status.success(), "{}", text(&first.stderr));
    let mark = BASE + 200 * 60;

    // Committed at the source after the run, stamped before its mark.
    api.put(item(501, "late, inside the lag", mark - 4 * 60));
    api.put(item(502, "late, before the lag", mark - 6 * 60 - 30));
    api.reset_counts();
    let second = sync(&config, &["--apply"]).await;
    assert!(second.status.success(), "{}", text(&second.stderr));
    // The window starts 5 minutes before the mark: 6 items a minute apart
    // (195..=200) and the late one inside it.
    assert_eq!(api.rows_served(), 7);
    let ids: Vec<Value> = query(&db, "SELECT id FROM items WHERE id > 500")
        .into_iter()
        .map(|r| r[0].clone())
        .collect();
    assert_eq!(ids, [json!(501)]);
    assert!(
        text(&second.stdout).contains("incremental on updated_at from 2024-01-01T03:15:00Z"),
        "{}",
        text(&second.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_without_a_cursor_is_a_dead_letter_and_the_mark_still_moves() {
    let mut all = items(50);
    all.push(Item {
        id: 77,
        name: "undated".into(),
        updated: None,
    });
    let api = server(all, Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &api.url(), None);
    let out = sync(&config, &["--apply"]).await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let letters =
        std::fs::read_to_string(dir.path().join(".sluicegate/dead-letters.ndjson")).unwrap();
    let letter: Value = serde_json::from_str(letters.lines().next().unwrap()).unwrap();
    assert_eq!(letter["stage"], json!("read"));
    assert_eq!(letter["record"]["id"], json!(77));
    assert!(
        letter["reason"]
            .as_str()
            .unwrap()
            .contains("incremental.cursorField 'updated_at': the record has no such field"),
        "{letter}"
    );
    assert_eq!(
        query(&dir.path().join("out.duckdb"), "SELECT count(*) FROM items"),
        [[json!(50)]]
    );
    assert!(
        state_show(&config)
            .await
            .contains(&format!("last \"{}\"", api.latest().unwrap()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_mid_window_resumes_inside_it_and_ends_exact_with_the_same_mark() {
    // The changed half is 15 pages of 100, 40 ms each, a batch each: the kill
    // lands mid-window.
    let api = server(items(3_000), Duration::from_millis(40)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &api.url(), None);
    let db = dir.path().join("out.duckdb");
    let first = sync(&config, &["--apply"]).await;
    assert!(first.status.success(), "{}", text(&first.stderr));
    let first_mark = api.latest().unwrap();

    // Half the items change, in an order unlike their ids.
    for (k, id) in (1..=3_000u64).filter(|id| id % 2 == 0).rev().enumerate() {
        api.put(item(
            id,
            &format!("v2 {id}"),
            BASE + 10_000 * 60 + k as u64 * 7,
        ));
    }
    let child = command(
        &config,
        &[
            "sync-api",
            "--all",
            "--streaming",
            "--apply",
            "--batch-size",
            "100",
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    common::kill_after_offset(child, dir.path(), "items", 500);
    let shown = state_show(&config).await;
    assert!(shown.contains(&format!("last \"{first_mark}\"")), "{shown}");
    assert!(shown.contains("an interrupted run wrote up to"), "{shown}");

    api.reset_counts();
    let resumed = sync(&config, &["--apply", "--batch-size", "100"]).await;
    assert!(resumed.status.success(), "{}", text(&resumed.stderr));
    let stderr = text(&resumed.stderr);
    assert!(stderr.contains("resuming after checkpoint"), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "from {first_mark} (resuming a window written up to"
        )),
        "{stderr}"
    );
    // The resumed run read the rest of the window, not all of it.
    assert!(api.rows_served() < 1_500, "{}", api.rows_served());
    assert_eq!(sink_records(&db, "items"), api.records());
    let shown = state_show(&config).await;
    assert!(
        shown.contains(&format!("last \"{}\"", api.latest().unwrap())),
        "{shown}"
    );
    assert!(!shown.contains("interrupted"), "{shown}");
}

/// `items(id, name, updated_at)` in each database: 600 rows, three per
/// minute; then 40 rows change and 10 are added.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_database_source_reads_only_the_changed_rows_on_the_second_run() {
    let pg = dbserver::postgres().fresh_database("e2e_incremental").await;
    let my = dbserver::mariadb().fresh_database("e2e_incremental").await;
    let sqlite_dir = tempfile::tempdir().unwrap();
    let sqlite = sqlite_dir.path().join("items.db");
    let minute = |m: u64| format!("2024-01-01 {:02}:{:02}:00", m / 60, m % 60);
    let create = |ty: &str| {
        let mut sql = format!(
            "CREATE TABLE items (id INTEGER PRIMARY KEY, name VARCHAR(40) NOT NULL, updated_at {ty} NOT NULL);\n"
        );
        for id in 1..=600u64 {
            sql.push_str(&format!(
                "INSERT INTO items VALUES ({id}, 'item {id}', '{}');\n",
                minute(id / 3)
            ));
        }
        sql
    };
    let change = {
        let mut sql = String::new();
        for id in (7..=600u64).step_by(15) {
            sql.push_str(&format!(
                "UPDATE items SET name = 'changed {id}', updated_at = '{}' WHERE id = {id};\n",
                minute(300 + id % 11)
            ));
        }
        for id in 601..=610u64 {
            sql.push_str(&format!(
                "INSERT INTO items VALUES ({id}, 'new {id}', '{}');\n",
                minute(320)
            ));
        }
        sql
    };
    dbserver::execute(DbKind::Postgres, &pg, &create("TIMESTAMP")).await;
    dbserver::execute(DbKind::Mariadb, &my, &create("DATETIME(6)")).await;
    rusqlite::Connection::open(&sqlite)
        .unwrap()
        .execute_batch(&create("TEXT"))
        .unwrap();

    for (name, source) in [
        (
            "postgres",
            format!(
                "{{ type: postgres, connectionString: \"{pg}\", table: items, orderBy: id, fetchSize: 50 }}"
            ),
        ),
        (
            "mysql",
            format!(
                "{{ type: mysql, connectionString: \"{my}\", table: items, orderBy: id, fetchSize: 50 }}"
            ),
        ),
        (
            "sqlite",
            format!(
                "{{ type: sqlite, connectionString: \"{}\", table: items, orderBy: id, fetchSize: 50 }}",
                sqlite.display()
            ),
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("sluicegate.yaml");
        // SQLite keeps the text as written, so its initial value is written the same way.
        let initial = if name == "sqlite" {
            "2000-01-01 00:00:00"
        } else {
            "2000-01-01T00:00:00"
        };
        std::fs::write(
            &config,
            format!(
                "version: 1\nsinks:\n  warehouse: {{ type: duckdb, path: out.duckdb }}\nsyncs:\n  - key: items\n    sink: warehouse\n    keyField: id\n    incremental: {{ cursorField: updated_at, initialValue: \"{initial}\" }}\n    source: {source}\n"
            ),
        )
        .unwrap();
        let first = sync(&config, &["--apply"]).await;
        assert!(first.status.success(), "{name}: {}", text(&first.stderr));
        assert_eq!(
            summary_row(&text(&first.stdout), "items")[2],
            "600",
            "{name}"
        );
        match name {
            "postgres" => dbserver::execute(DbKind::Postgres, &pg, &change).await,
            "mysql" => dbserver::execute(DbKind::Mariadb, &my, &change).await,
            _ => rusqlite::Connection::open(&sqlite)
                .unwrap()
                .execute_batch(&change)
                .unwrap(),
        }
        let second = sync(&config, &["--apply"]).await;
        assert!(second.status.success(), "{name}: {}", text(&second.stderr));
        // 40 changed, 10 new, and the row at the last mark (minute 200: id
        // 600, unchanged).
        assert_eq!(
            summary_row(&text(&second.stdout), "items")[2],
            "51",
            "{name}: {}",
            text(&second.stdout)
        );
        let names: Vec<Value> = query(
            &dir.path().join("out.duckdb"),
            "SELECT name FROM items ORDER BY id",
        )
        .into_iter()
        .map(|r| r[0].clone())
        .collect();
        let expected: Vec<Value> = (1..=610u64)
            .map(|id| {
                json!(if id > 600 {
                    format!("new {id}")
                } else if id >= 7 && (id - 7) % 15 == 0 {
                    format!("changed {id}")
                } else {
                    format!("item {id}")
                })
            })
            .collect();
        assert_eq!(names, expected, "{name}");
    }
}

/// An incremental entry from the changing API into a content platform: `sink`
/// is the sink section, `key_field` the platform's key and `locale` the
/// suffix of mapped field names (`.en-US` for Contentful, none for Directus).
fn write_cms_config(
    dir: &Path,
    url: &str,
    sink: &str,
    content_type: &str,
    key_field: &str,
    locale: &str,
) -> PathBuf {
    let path = dir.join("sluicegate.yaml");
    std::fs::write(
        &path,
        format!(
            "version: 1
sinks:
  cms: {sink}
syncs:
  - key: items
    sink: cms
    contentType: {content_type}
    contentKeyField: {key_field}
    incremental: {{ cursorField: updated_at, initialValue: \"2000-01-01T00:00:00Z\" }}
    source:
      type: http
      endPoint: \"{url}?since={{{{ incremental.start_value | urlencode }}}}\"
      resultsJsonPath: \"$.data\"
      pagination: {{ skipKey: offset, limitKey: limit, pageSize: 100, totalPath: \"$.meta.total\" }}
    mapping:
      - {{ fieldName: sku{locale}, expression: \"item-{{{{ row.id }}}}\" }}
      - {{ fieldName: name{locale}, expression: \"{{{{ row.name }}}}\" }}
      - {{ fieldName: updated{locale}, expression: \"{{{{ row.updated_at }}}}\" }}
"
        ),
    )
    .unwrap();
    path
}

/// The source's items as `(sku, name, updated)`, ordered by sku.
fn expected_entries(api: &ChangesServer) -> Vec<(String, String, String)> {
    let mut all: Vec<(String, String, String)> = api
        .records()
        .iter()
        .map(|r| {
            (
                format!("item-{}", r["id"]),
                r["name"].as_str().unwrap().to_owned(),
                r["updated_at"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    all.sort();
    all
}

/// 300 items, then 12 changes: the second run reads 13 rows (the changes and
/// the item at the mark), writes the 12 and leaves the rest untouched.
async fn change_twelve(api: &ChangesServer) {
    for id in (10..=120).step_by(10) {
        api.put(item(id, &format!("renamed {id}"), BASE + 400 * 60 + id));
    }
    api.reset_counts();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn into_contentful_a_second_run_reads_and_writes_only_the_changes() {
    use sluicegate_examples::cma::{CmaConfig, CmaServer};
    let cma = CmaServer::start(
        CmaConfig {
            token: "inc-token".into(),
            locales: vec![("en-US".into(), true)],
            content_types: vec![json!({
                "sys": {"id": "item"}, "name": "Item", "displayField": "name",
                "fields": [
                    {"id": "sku", "name": "SKU", "type": "Symbol", "required": true},
                    {"id": "name", "name": "Name", "type": "Symbol"},
                    {"id": "updated", "name": "Updated", "type": "Symbol"},
                ],
            })],
            ..CmaConfig::default()
        },
        "127.0.0.1:0",
    )
    .await
    .unwrap();
    let api = server(items(300), Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let sink = format!(
        "{{ type: contentful, spaceId: space1, baseUrl: \"{}\", tokenEnv: CMA_TOKEN, rateLimit: 500 }}",
        cma.url()
    );
    let config = write_cms_config(dir.path(), &api.url(), &sink, "item", "sku.en-US", ".en-US");
    let entries = || {
        let mut all: Vec<(String, String, String)> = cma
            .entries()
            .into_values()
            .map(|e| {
                let field = |f: &str| e["fields"][f]["en-US"].as_str().unwrap().to_owned();
                (field("sku"), field("name"), field("updated"))
            })
            .collect();
        all.sort();
        all
    };
    let sync = |args: &'static [&'static str]| {
        let mut cmd = command(
            &config,
            &[&["sync-api", "--all", "--streaming"], args].concat(),
        );
        cmd.env("CMA_TOKEN", "inc-token");
        async move {
            tokio::task::spawn_blocking(move || cmd.output().unwrap())
                .await
                .unwrap()
        }
    };
    let first = sync(&["--apply"]).await;
    assert!(first.status.success(), "{}", text(&first.stderr));
    assert_eq!(entries(), expected_entries(&api));

    change_twelve(&api).await;
    let second = sync(&["--apply"]).await;
    assert!(second.status.success(), "{}", text(&second.stderr));
    assert_eq!(api.rows_served(), 13);
    // key, table, rows, new, changed, unchanged
    assert_eq!(
        summary_row(&text(&second.stdout), "items")[2..6],
        ["13", "0", "12", "1"],
        "{}",
        text(&second.stdout)
    );
    assert_eq!(entries(), expected_entries(&api));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn into_directus_a_second_run_reads_and_writes_only_the_changes() {
    let directus = sluicegate_examples::directus::directus();
    directus
        .fresh_collection("inc_items", &[("name", "string"), ("updated", "string")])
        .await;
    let api = server(items(300), Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let sink = format!(
        "{{ type: directus, url: \"{}\", tokenEnv: DIRECTUS_TOKEN }}",
        directus.url
    );
    let config = write_cms_config(dir.path(), &api.url(), &sink, "inc_items", "sku", "");
    let items_now = || async {
        let mut all: Vec<(String, String, String)> = directus
            .items("inc_items")
            .await
            .iter()
            .map(|i| {
                let field = |f: &str| i[f].as_str().unwrap().to_owned();
                (field("sku"), field("name"), field("updated"))
            })
            .collect();
        all.sort();
        all
    };
    let sync = |args: &'static [&'static str]| {
        let mut cmd = command(
            &config,
            &[&["sync-api", "--all", "--streaming"], args].concat(),
        );
        cmd.env("DIRECTUS_TOKEN", &directus.token);
        async move {
            tokio::task::spawn_blocking(move || cmd.output().unwrap())
                .await
                .unwrap()
        }
    };
    let first = sync(&["--apply"]).await;
    assert!(first.status.success(), "{}", text(&first.stderr));
    assert_eq!(items_now().await, expected_entries(&api));

    change_twelve(&api).await;
    let second = sync(&["--apply"]).await;
    assert!(second.status.success(), "{}", text(&second.stderr));
    assert_eq!(api.rows_served(), 13);
    assert_eq!(
        summary_row(&text(&second.stdout), "items")[2..6],
        ["13", "0", "12", "1"],
        "{}",
        text(&second.stdout)
    );
    assert_eq!(items_now().await, expected_entries(&api));
}
