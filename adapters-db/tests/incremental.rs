//! Incremental windows on every provider: only the rows whose cursor is at or
//! after the window's start, ordered by the cursor and then the key, resumed
//! after a `(cursor, key)` pair, with the start bound as a parameter.

mod common;

use common::read_window;
use serde_json::{Value, json};
use sluicegate_adapters_db::Provider;
use sluicegate_core::IncrementalWindow;
use sluicegate_examples::dbserver::{self, DbKind};

/// Rows 1..=300: three rows per minute from 2024-01-01T00:00:00Z (so cursors
/// repeat and the key breaks ties), inserted in an order unlike either; plus
/// a row whose cursor is NULL.
fn rows_sql(timestamp_type: &str, literal: fn(u64) -> String) -> String {
    let mut sql = format!(
        "CREATE TABLE items (id INTEGER PRIMARY KEY, name VARCHAR(40) NOT NULL, \
         updated_at {timestamp_type});\n"
    );
    for id in (1..=300u64).rev().step_by(2).chain((1..=300u64).step_by(2)) {
        sql.push_str(&format!(
            "INSERT INTO items (id, name, updated_at) VALUES ({id}, 'item {id}', {});\n",
            literal(id / 3)
        ));
    }
    sql.push_str("INSERT INTO items (id, name, updated_at) VALUES (301, 'no cursor', NULL);\n");
    sql
}

fn minute(m: u64) -> String {
    format!("2024-01-01T{:02}:{:02}:00Z", m / 60, m % 60)
}

/// The ids the window from minute `start` holds, in the read's order.
fn expected_ids(start: u64) -> Vec<u64> {
    let mut ids: Vec<u64> = (1..=300).filter(|id| id / 3 >= start).collect();
    ids.sort_by_key(|id| (id / 3, *id));
    ids
}

fn ids(records: &[Value]) -> Vec<u64> {
    records.iter().map(|r| r["id"].as_u64().unwrap()).collect()
}

async fn check_provider(provider: Provider, connection: String, start: Value) {
    let section = json!({
        "connectionString": connection, "table": "items", "orderBy": "id", "fetchSize": 25,
    });
    let window = IncrementalWindow::new("updated_at", start, json!(minute(0)));
    let whole = read_window(provider, section.clone(), window.clone(), None)
        .await
        .unwrap();
    let expected = expected_ids(40);
    // The row without a cursor comes first, in a batch without a position.
    assert_eq!(ids(&whole.records[..1]), [301], "{provider:?}");
    assert_eq!(whole.batches[0], (1, None), "{provider:?}");
    assert_eq!(ids(&whole.records[1..]), expected, "{provider:?}");
    assert_eq!(
        whole.records[1]["updated_at"],
        json!(minute(40)),
        "{provider:?}"
    );
    // Resume after the second batch of the window: its position is the last
    // (cursor, key).
    let (_, position) = whole.batches[2].clone();
    let position = position.expect("an incremental keyset read is resumable");
    assert_eq!(
        position.as_value(),
        &json!({"cursor": minute(expected[49] / 3), "after": expected[49]}),
        "{provider:?}"
    );
    let rest = read_window(provider, section, window, Some(position))
        .await
        .unwrap();
    assert_eq!(ids(&rest.records), expected[50..], "{provider:?}");
}

#[tokio::test]
async fn each_provider_reads_the_window_in_cursor_then_key_order_and_resumes_after_a_pair() {
    let pg = dbserver::postgres().fresh_database("inc_window").await;
    dbserver::execute(
        DbKind::Postgres,
        &pg,
        &rows_sql("TIMESTAMPTZ", |m| format!("'{}'", minute(m))),
    )
    .await;
    // An offset other than UTC names the same instant (00:40Z).
    check_provider(Provider::Postgres, pg, json!("2024-01-01T02:40:00+02:00")).await;

    let my = dbserver::mariadb().fresh_database("inc_window").await;
    dbserver::execute(
        DbKind::Mariadb,
        &my,
        &rows_sql("TIMESTAMP(6) NULL", |m| {
            format!("'{}'", minute(m).trim_end_matches('Z').replace('T', " "))
        }),
    )
    .await;
    check_provider(Provider::Mysql, my, json!("2024-01-01T02:40:00+02:00")).await;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("items.db");
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch(&rows_sql("TEXT", |m| format!("'{}'", minute(m))))
        .unwrap();
    // SQLite compares the text: the start is written as the column is.
    check_provider(
        Provider::Sqlite,
        path.display().to_string(),
        json!(minute(40)),
    )
    .await;
}

#[tokio::test]
async fn a_numeric_cursor_without_order_by_reads_the_window_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("versions.db");
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch(
            "CREATE TABLE docs (id TEXT PRIMARY KEY, version INTEGER NOT NULL);
             INSERT INTO docs VALUES ('a', 10), ('b', 9), ('c', 11), ('d', 2), ('e', 100);",
        )
        .unwrap();
    let read = read_window(
        Provider::Sqlite,
        json!({"connectionString": path.display().to_string(), "query": "SELECT id, version FROM docs"}),
        IncrementalWindow::new("version", json!(10), json!(10)),
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        read.records,
        [
            json!({"id": "a", "version": 10}),
            json!({"id": "c", "version": 11}),
            json!({"id": "e", "version": 100}),
        ]
    );
    assert!(read.batches.iter().all(|(_, p)| p.is_none()));
}

#[tokio::test]
async fn templated_pages_and_ordering_by_the_cursor_are_refused() {
    let section = json!({
        "connectionString": "postgres://u@127.0.0.1/db",
        "query": "SELECT * FROM t OFFSET {{ skip }} LIMIT {{ limit }}",
        "pagination": {"limitMax": 10},
    });
    let window = IncrementalWindow::new("updated_at", json!(1), json!(1));
    let err = read_window(Provider::Postgres, section, window.clone(), None)
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("templated pages cannot"), "{err}");
    let err = read_window(
        Provider::Postgres,
        json!({"connectionString": "postgres://u@127.0.0.1/db", "table": "t", "orderBy": "updated_at"}),
        window,
        None,
    )
    .await
    .err()
    .unwrap();
    assert!(err.to_string().contains("must be the unique key"), "{err}");
}
