//! The SQLite source on database files written by the test.

mod common;

use std::path::Path;

use common::read;
use serde_json::{Value, json};
use sluicegate_adapters_db::Provider;
use sluicegate_core::{ErrorKind, Position};
use sluicegate_examples::dbfixtures::NON_ASCII;

fn create(path: &Path, sql: &str) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch(sql).unwrap();
}

#[tokio::test]
async fn every_storage_class_reads_without_loss() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("types.db");
    create(
        &db,
        &format!(
            "CREATE TABLE every_type (id INTEGER PRIMARY KEY, big INTEGER, ratio REAL, flag BOOLEAN,
                 name TEXT, doc JSON, bytes BLOB, price TEXT, amount NUMERIC, day DATE);
             INSERT INTO every_type VALUES (1, 9223372036854775807, 0.1, 1, '{text}',
                 '{{\"a\": [1, null]}}', X'DEADBEEF00', '12345678901234567890.5', '12.50', '2024-02-29');
             INSERT INTO every_type (id) VALUES (2);",
            text = NON_ASCII.replace('\'', "''")
        ),
    );
    let got = read(
        Provider::Sqlite,
        json!({"connectionString": db.display().to_string(), "table": "every_type", "orderBy": "id"}),
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        got.records,
        [
            json!({"id": 1, "big": 9223372036854775807i64, "ratio": 0.1, "flag": true,
                   "name": NON_ASCII, "doc": {"a": [1, null]}, "bytes": "3q2+7wA=",
                   // Exact decimals live in TEXT columns: NUMERIC affinity
                   // stores numeric-looking text as INTEGER or REAL.
                   "price": "12345678901234567890.5", "amount": 12.5, "day": "2024-02-29"}),
            // SQL NULL in the JSON column is left out (JSON `null` is a value).
            json!({"id": 2, "big": null, "ratio": null, "flag": null, "name": null,
                   "bytes": null, "price": null, "amount": null, "day": null}),
        ]
    );
    assert_eq!(got.json_fields.iter().collect::<Vec<_>>(), ["doc"]);
}

#[tokio::test]
async fn keyset_resume_and_ado_data_source() {
    let dir = tempfile::tempdir().unwrap();
    create(
        &dir.path().join("shop.db"),
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, total REAL);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000)
         INSERT INTO orders SELECT i, i * 1.5 FROM n;",
    );
    // A relative path in an ADO.NET string, resolved against the config directory.
    let section = json!({
        "connectionString": "Data Source=shop.db;Mode=ReadOnly",
        "query": "SELECT id, total FROM orders",
        "orderBy": "id",
        "fetchSize": 128,
    });
    let budget = || sluicegate_core::MemoryBudget::new(8 << 20);
    let read_from = |resume| {
        common::read_with(
            Provider::Sqlite,
            section.clone(),
            resume,
            budget(),
            Some(dir.path()),
        )
    };
    let all = read_from(None).await.unwrap();
    assert_eq!(all.records.len(), 1000);
    assert!(all.batches.iter().all(|(n, _)| *n <= 128));
    let rest = read_from(Some(Position::new(json!({"after": 700}))))
        .await
        .unwrap();
    let ids: Vec<Value> = (701..=1000).map(Value::from).collect();
    assert_eq!(rest.column("id"), ids);
}

#[tokio::test]
async fn missing_files_and_tables_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.db");
    let err = read(
        Provider::Sqlite,
        json!({"connectionString": missing.display().to_string(), "table": "t"}),
        None,
    )
    .await
    .err()
    .unwrap();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(
        err.message()
            .starts_with("sqlite source: no SQLite file at"),
        "{err}"
    );
    assert!(!missing.exists(), "a read never creates the file");

    let db = dir.path().join("empty.db");
    create(&db, "CREATE TABLE t (id INTEGER);");
    for (section, expected) in [
        (json!({"table": "orders"}), "no such table: orders"),
        (json!({"query": "SELEC 1"}), "syntax error"),
        (
            json!({"query": "SELECT 1 AS id, 2 AS id"}),
            "two columns named 'id'",
        ),
    ] {
        let mut section = section;
        section["connectionString"] = json!(db.display().to_string());
        let err = read(Provider::Sqlite, section, None).await.err().unwrap();
        assert_eq!(err.kind(), ErrorKind::Query, "{err}");
        assert!(
            err.message().starts_with("sqlite source: the query failed"),
            "{err}"
        );
        assert!(err.message().contains(expected), "{err}");
    }
}

#[tokio::test]
async fn numbers_inside_json_keep_their_text() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("json.db");
    let doc = r#"{"x": 0.42451918914251396, "big": 123456789012345678901234567890, "far": 1e400, "max": 9223372036854775807}"#;
    create(
        &db,
        &format!(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, doc JSON); INSERT INTO t VALUES (1, '{doc}');"
        ),
    );
    let got = read(
        Provider::Sqlite,
        json!({"connectionString": db.display().to_string(), "table": "t", "orderBy": "id"}),
        None,
    )
    .await
    .unwrap();
    let want: Value = serde_json::from_str(doc).unwrap();
    assert_eq!(got.records, [json!({"id": 1, "doc": want})]);
    assert_eq!(
        got.records[0]["doc"].to_string(),
        r#"{"x":0.42451918914251396,"big":123456789012345678901234567890,"far":1e+400,"max":9223372036854775807}"#
    );
}

#[tokio::test]
async fn a_value_that_cannot_be_read_names_its_column_and_its_rows_key() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("bad.db");
    create(
        &db,
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT, tag TEXT);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000)
         INSERT INTO notes SELECT i, 'note ' || i, 't' FROM n;
         UPDATE notes SET body = CAST(X'66FF6F' AS TEXT) WHERE id = 2345;",
    );
    let err = read(
        Provider::Sqlite,
        json!({"connectionString": db.display().to_string(), "table": "notes", "orderBy": "id"}),
        None,
    )
    .await
    .err()
    .unwrap();
    assert!(
        err.message()
            .starts_with("sqlite source: column 'body' of row 2345 of the read (id = 2345): "),
        "{err}"
    );
}
