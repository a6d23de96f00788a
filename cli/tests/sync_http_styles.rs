//! End-to-end: every pagination style, body format and auth kind of the `http`
//! source, synced from the zoo test server into DuckDB and compared with the
//! server's dataset row for row.

mod common;

use std::process::{Command, Output};

use common::{table_records, text};
use serde_json::{Value, json};
use sluicegate_examples::zoo::{self, ZooConfig, ZooServer};

/// One sync entry per style: (key, source section as YAML flow mapping).
fn entries(u: &str) -> Vec<(&'static str, String)> {
    vec![
        (
            "offset",
            format!(
                "{{ type: http, endPoint: '{u}/offset', resultsJsonPath: items, pagination: {{ type: offset, pageSize: 10, totalPath: total }} }}"
            ),
        ),
        (
            "offset_parallel",
            format!(
                "{{ type: http, endPoint: '{u}/offset', resultsJsonPath: items, concurrency: 4, pagination: {{ type: offset, pageSize: 10, totalPath: total }} }}"
            ),
        ),
        (
            "page_number",
            format!(
                "{{ type: http, endPoint: '{u}/page', resultsJsonPath: results, pagination: {{ type: page_number, limitKey: size, pageSize: 10, totalPagesPath: pages }} }}"
            ),
        ),
        (
            "page_index",
            format!(
                "{{ type: http, endPoint: '{u}/page-index', pagination: {{ skipKey: p, limitKey: n, pageSize: 10, skipMode: page }} }}"
            ),
        ),
        (
            "has_more",
            format!(
                "{{ type: http, endPoint: '{u}/has-more', resultsJsonPath: data, pagination: {{ type: page_number, limitKey: size, pageSize: 10, hasMorePath: has_more }} }}"
            ),
        ),
        (
            "cursor",
            format!(
                "{{ type: http, endPoint: '{u}/cursor', resultsJsonPath: data, pagination: {{ type: cursor, cursorPath: paging.next_cursor, cursorParam: after, limitKey: limit, pageSize: 8 }} }}"
            ),
        ),
        (
            "cursor_body",
            format!(
                "{{ type: http, endPoint: '{u}/cursor-body', httpMethod: Post, body: {{ filter: {{ kind: all }}, page: {{ size: 8 }} }}, resultsJsonPath: data, pagination: {{ type: cursor, cursorPath: cursor.next, cursorBodyPath: page.cursor }} }}"
            ),
        ),
        (
            "next_url",
            format!(
                "{{ type: http, endPoint: '{u}/next-url', resultsJsonPath: value, pagination: {{ type: next_url, nextUrlPath: \"$['@odata.nextLink']\" }} }}"
            ),
        ),
        (
            "link_header",
            format!("{{ type: http, endPoint: '{u}/link', pagination: {{ type: link_header }} }}"),
        ),
        (
            "header_token",
            format!(
                "{{ type: http, endPoint: '{u}/header-token', resultsJsonPath: rows, continuationTokenHeader: x-continuation }}"
            ),
        ),
        (
            "single",
            format!("{{ type: http, endPoint: '{u}/single', resultsJsonPath: data }}"),
        ),
        (
            "ndjson",
            format!("{{ type: http, endPoint: '{u}/ndjson', resultsFormat: ndjson }}"),
        ),
        (
            "form_post",
            format!(
                "{{ type: http, endPoint: '{u}/form', httpMethod: Post, formUrlEncodedContent: {{ kind: all }}, resultsJsonPath: data }}"
            ),
        ),
        (
            "basic_auth",
            format!(
                "{{ type: http, endPoint: '{u}/basic', resultsJsonPath: data, auth: {{ type: basic, usernameEnv: ZOO_USER, passwordEnv: ZOO_PASS }} }}"
            ),
        ),
        (
            "api_key_header",
            format!(
                "{{ type: http, endPoint: '{u}/api-key', resultsJsonPath: data, auth: {{ type: api_key, name: X-Api-Key, valueEnv: ZOO_KEY }} }}"
            ),
        ),
        (
            "api_key_query",
            format!(
                "{{ type: http, endPoint: '{u}/api-key', resultsJsonPath: data, auth: {{ type: api_key, name: api_key, location: query, valueEnv: ZOO_KEY }} }}"
            ),
        ),
        (
            "oauth2",
            format!(
                "{{ type: http, endPoint: '{u}/oauth/data', resultsJsonPath: data, auth: {{ type: oauth2_client_credentials, tokenUrl: '{u}/oauth/token', clientIdEnv: ZOO_CLIENT, clientSecretEnv: ZOO_SECRET }} }}"
            ),
        ),
    ]
}

fn csv_entries(u: &str) -> Vec<(&'static str, String)> {
    vec![
        (
            "csv",
            format!("{{ type: http, endPoint: '{u}/csv', resultsFormat: Csv }}"),
        ),
        (
            "zipped_csv",
            format!("{{ type: http, endPoint: '{u}/zip-csv', resultsFormat: ZippedCsv }}"),
        ),
        (
            "zipped_csv_locked",
            format!(
                "{{ type: http, endPoint: '{u}/zip-csv-locked', resultsFormat: zippedCsv, resultsSecret: '{{{{ env.ZOO_ZIP }}}}' }}"
            ),
        ),
    ]
}

fn config(dir: &std::path::Path, u: &str) -> String {
    let mut text =
        String::from("version: 1\nsinks:\n  zoo: { type: duckdb, path: zoo.duckdb }\nsyncs:\n");
    for (key, source) in entries(u).into_iter().chain(csv_entries(u)) {
        text.push_str(&format!(
            "  - key: {key}\n    sink: zoo\n    keyField: id\n    source: {source}\n"
        ));
    }
    text.push_str(&format!(
        "  - key: children\n    sink: zoo\n    keyField: id\n    source:\n      type: http\n      endPoint: '{u}/parents/{{{{ parent.gid }}}}/children'\n      resultsJsonPath: items\n      pagination: {{ type: offset, pageSize: 4 }}\n      parent: {{ endPoint: '{u}/parents', resultsJsonPath: parents }}\n      includeFromParent: [gid, label]\n      fanOut: 3\n"
    ));
    text.push_str(&format!(
        "  - key: big\n    sink: zoo\n    keyField: id\n    source: {{ type: http, endPoint: '{u}/big?count=5000', resultsJsonPath: export.rows }}\n"
    ));
    text.push_str(&format!(
        "  - key: looping\n    sink: zoo\n    keyField: id\n    source: {{ type: http, endPoint: '{u}/loop', resultsJsonPath: data, pagination: {{ type: next_url, nextUrlPath: next }} }}\n"
    ));
    let path = dir.join("sluicegate.yaml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

async fn run(config: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluicegate"));
    cmd.args(["sync-api", "--config", config])
        .args(args)
        .env("ZOO_USER", zoo::BASIC_USER)
        .env("ZOO_PASS", zoo::BASIC_PASSWORD)
        .env("ZOO_KEY", zoo::API_KEY)
        .env("ZOO_CLIENT", zoo::CLIENT_ID)
        .env("ZOO_SECRET", zoo::CLIENT_SECRET)
        .env("ZOO_ZIP", zoo::ZIP_PASSWORD)
        .env_remove("SLUICEGATE_MAX_MEMORY_MB");
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

/// Rows of a table with the columns DuckDB adds for missing fields dropped.
fn rows(db: &std::path::Path, table: &str) -> Vec<Value> {
    table_records(db, table)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_style_format_and_auth_syncs_the_whole_dataset() {
    let server = ZooServer::start(ZooConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &server.url());
    let mut keys: Vec<&str> = entries("").iter().map(|(k, _)| *k).collect();
    keys.extend(csv_entries("").iter().map(|(k, _)| *k));
    keys.extend(["children", "big"]);
    let mut args = vec!["--streaming", "--apply"];
    for k in &keys {
        args.push("--key");
        args.push(k);
    }
    let out = run(&config, &args).await;
    assert!(
        out.status.success(),
        "stderr: {}\nstdout: {}",
        text(&out.stderr),
        text(&out.stdout)
    );
    let db = dir.path().join("zoo.duckdb");
    let dataset = server.records();

    for (key, _) in entries("") {
        assert_eq!(rows(&db, key), dataset, "{key}");
    }
    let as_csv: Vec<Value> = (1..=dataset.len() as u64).map(zoo::csv_record).collect();
    for (key, _) in csv_entries("") {
        // CSV gives text; DuckDB sorts the text ids numerically only if asked.
        let mut got = rows(&db, key);
        got.sort_by_key(|r| r["id"].as_str().unwrap().parse::<u64>().unwrap());
        assert_eq!(got, as_csv, "{key}");
    }
    let expected_children: Vec<Value> = dataset
        .iter()
        .map(|r| {
            let mut r = r.clone();
            let gid = (r["id"].as_u64().unwrap() - 1) / 10;
            r["_parent_gid"] = json!(gid);
            r["_parent_label"] = json!(format!("group {gid}"));
            r
        })
        .collect();
    assert_eq!(rows(&db, "children"), expected_children);
    let big = rows(&db, "big");
    assert_eq!(big.len(), 5000);
    assert_eq!(big[4321], zoo::record(4322));
    assert_eq!(server.tokens_issued(), 1, "one OAuth token, reused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pagination_loop_is_an_error_naming_the_page() {
    let server = ZooServer::start(ZooConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &server.url());
    let out = run(&config, &["--key", "looping", "--streaming"]).await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("pagination loop: page 2"), "{stderr}");
    assert!(
        server.requests() <= 3,
        "stops at once: {} requests",
        server.requests()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_cache_replays_responses_until_cleared() {
    let server = ZooServer::start(ZooConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &server.url());
    let args = [
        "--key",
        "offset",
        "--key",
        "csv",
        "--streaming",
        "--apply",
        "--use-filecache",
    ];
    let out = run(&config, &args).await;
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let first = server.requests();
    assert!(first >= 7);
    let out = run(&config, &args).await;
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert_eq!(
        server.requests(),
        first,
        "the second run is served from the cache"
    );
    assert_eq!(
        rows(&dir.path().join("zoo.duckdb"), "offset"),
        server.records()
    );

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluicegate"));
    cmd.args(["cache", "clear", "--config", &config]);
    let out = cmd.output().unwrap();
    assert!(out.status.success());
    assert!(
        text(&out.stdout).starts_with(&format!("removed {} cached responses", first)),
        "{}",
        text(&out.stdout)
    );
    let out = run(&config, &args).await;
    assert!(out.status.success());
    assert_eq!(
        server.requests(),
        first * 2,
        "after clearing, the network again"
    );
}
