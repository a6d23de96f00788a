//! The MySQL source against a real MariaDB server (started by the test harness).

mod common;

use common::read;
use serde_json::{Value, json};
use sluicegate_adapters_db::Provider;
use sluicegate_core::{ErrorKind, FieldType, Position};
use sluicegate_examples::dbfixtures::{every_type_records, every_type_sql};
use sluicegate_examples::dbserver::{self, DbKind};

async fn database(name: &str) -> String {
    dbserver::mariadb().fresh_database(name).await
}

async fn exec(url: &str, sql: &str) {
    dbserver::execute(DbKind::Mariadb, url, sql).await;
}

#[tokio::test]
async fn every_type_reads_without_loss() {
    let url = database("my_types").await;
    exec(&url, &every_type_sql(DbKind::Mariadb)).await;
    let section = json!({"connectionString": url, "table": "every_type", "orderBy": "id"});
    let got = read(Provider::Mysql, section.clone(), None).await.unwrap();
    assert_eq!(got.records, every_type_records(DbKind::Mariadb));
    assert_eq!(got.json_batches, 1, "read as JSON text when asked");

    // jsonColumns turns MariaDB's JSON text into values.
    let mut with_json = section;
    with_json["jsonColumns"] = json!(["doc"]);
    let got = read(Provider::Mysql, with_json, None).await.unwrap();
    assert_eq!(got.records[0]["doc"], json!({"a": [1, 2.5, null]}));
    // SQL NULL is left out, apart from a JSON `null`; the column is declared JSON.
    assert_eq!(got.records[1].get("doc"), None);
    assert_eq!(got.json_fields.iter().collect::<Vec<_>>(), ["doc"]);
}

#[tokio::test]
async fn decimal_date_and_time_columns_are_declared_typed() {
    let url = database("my_declared").await;
    exec(
        &url,
        "CREATE TABLE t (id BIGINT PRIMARY KEY, money DECIMAL(10,2), plain DECIMAL(10,2) UNSIGNED,
             whole DECIMAL(18,0), day DATE, dt DATETIME(6), ts TIMESTAMP(3) NULL, name VARCHAR(10), doc JSON);
         INSERT INTO t VALUES (1, -12.30, 12.30, 7, '2024-02-29', '2024-02-29 13:45:00.5', '2024-02-29 13:45:00.5', 'x', '[]');",
    )
    .await;
    let section =
        json!({"connectionString": url, "table": "t", "orderBy": "id", "jsonColumns": ["doc"]});
    let got = read(Provider::Mysql, section, None).await.unwrap();
    let decimal = |precision, scale| FieldType::Decimal { precision, scale };
    assert_eq!(
        got.field_types.into_iter().collect::<Vec<_>>(),
        [
            ("day".to_owned(), FieldType::Date),
            ("dt".to_owned(), FieldType::Timestamp),
            ("money".to_owned(), decimal(10, 2)),
            ("plain".to_owned(), decimal(10, 2)),
            ("ts".to_owned(), FieldType::TimestampUtc),
            ("whole".to_owned(), decimal(18, 0)),
        ]
    );
    assert_eq!(got.records[0]["money"], json!("-12.30"));
}

#[tokio::test]
async fn floats_and_doubles_arrive_as_the_stored_bits_not_six_digits() {
    let url = database("my_floats").await;
    let floats = [
        "123456.789",
        "0.1",
        "3.4e38",
        "-1.1754944e-38",
        "16777217",
        "1.5",
    ];
    let doubles = [
        "0.42451918914251396",
        "1.7976931348623157e308",
        "-2.2250738585072014e-308",
        "0.1",
        "2",
        "-0.5",
    ];
    let rows: Vec<String> = floats
        .iter()
        .zip(doubles)
        .enumerate()
        .map(|(i, (f, d))| format!("({i}, {f}, {d})"))
        .collect();
    exec(
        &url,
        &format!(
            "CREATE TABLE nums (id INT PRIMARY KEY, f FLOAT, d DOUBLE); INSERT INTO nums VALUES {};",
            rows.join(", ")
        ),
    )
    .await;
    for query in [None, Some("SELECT id, f, d FROM nums ORDER BY id")] {
        let section = match query {
            None => json!({"connectionString": url, "table": "nums", "orderBy": "id"}),
            Some(q) => json!({"connectionString": url, "query": q}),
        };
        let got = read(Provider::Mysql, section, None).await.unwrap();
        assert_eq!(got.records.len(), floats.len());
        for (record, (f, d)) in got.records.iter().zip(floats.iter().zip(doubles)) {
            // A FLOAT is the shortest decimal of its 32-bit value.
            let want_f: f64 = f.parse::<f32>().unwrap().to_string().parse().unwrap();
            assert_eq!(record["f"].as_f64(), Some(want_f), "FLOAT {f}: {record:?}");
            let want_d: f64 = d.parse().unwrap();
            let got_d = record["d"].as_f64().unwrap();
            assert_eq!(got_d.to_bits(), want_d.to_bits(), "DOUBLE {d}: {record:?}");
        }
    }
}

#[tokio::test]
async fn keyset_paging_resumes_after_text_keys_with_quotes() {
    let url = database("my_keyset").await;
    exec(
        &url,
        "CREATE TABLE items (sku VARCHAR(40) PRIMARY KEY, n INT NOT NULL) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
         INSERT INTO items SELECT CONCAT('sku-', LPAD(seq, 5, '0')), seq FROM seq_1_to_2500;
         INSERT INTO items VALUES ('zz ü''s \\\\ key', 0), ('zzz', -1);",
    )
    .await;
    let section =
        json!({"connectionString": url, "table": "items", "orderBy": "sku", "fetchSize": 400});
    let full = read(Provider::Mysql, section.clone(), None).await.unwrap();
    assert_eq!(full.records.len(), 2502);
    let keys = full.column("sku");
    assert_eq!(keys[2500], json!("zz ü's \\ key"));
    let position = full.batches[2].1.clone().unwrap();
    assert_eq!(position, Position::new(json!({"after": keys[1199]})));
    let rest = read(Provider::Mysql, section.clone(), Some(position))
        .await
        .unwrap();
    assert_eq!(rest.column("sku"), keys[1200..]);
    // The quoted, escaped key as a literal: only the row after it follows.
    let tail = read(
        Provider::Mysql,
        section,
        Some(Position::new(json!({"after": keys[2500]}))),
    )
    .await
    .unwrap();
    assert_eq!(tail.column("sku"), [json!("zzz")]);
}

#[tokio::test]
async fn cute_templated_pages_with_ado_connection_strings() {
    let url = database("my_pages").await;
    exec(
        &url,
        "CREATE TABLE t (id INT PRIMARY KEY); INSERT INTO t SELECT seq FROM seq_1_to_57;",
    )
    .await;
    // The same server as an ADO.NET string, as cute configurations hold it.
    let rest = url.strip_prefix("mysql://sluicegate:sluicegate@").unwrap();
    let (host_port, db) = rest.split_once('/').unwrap();
    let (host, port) = host_port.split_once(':').unwrap();
    let ado = format!(
        "Server={host};Port={port};Database={db};Uid=sluicegate;Pwd=sluicegate;Pooling=true"
    );
    let section = json!({
        "connectionString": ado,
        "query": "SELECT id FROM t ORDER BY id LIMIT {{ take }} OFFSET {{ from }}",
        "pagination": {"skipKey": "from", "limitKey": "take", "limitMax": 10},
    });
    let all = read(Provider::Mysql, section.clone(), None).await.unwrap();
    let ids: Vec<Value> = (1..=57).map(Value::from).collect();
    assert_eq!(all.column("id"), ids);
    let rest = read(
        Provider::Mysql,
        section,
        Some(Position::new(json!({"skip": 50}))),
    )
    .await
    .unwrap();
    assert_eq!(rest.column("id"), ids[50..]);
}

#[tokio::test]
async fn errors_name_the_provider_and_never_the_password() {
    let url = database("my_errors").await;
    let wrong = url.replace("sluicegate:sluicegate@", "sluicegate:not-the-pw-42@");
    let cases = [
        (
            json!({"connectionString": wrong, "table": "t"}),
            ErrorKind::Auth,
            "the server rejected the login: Access denied",
        ),
        (
            json!({"connectionString": "mysql://u:hunter2-pw@127.0.0.1:1/db", "table": "t"}),
            ErrorKind::Network,
            "cannot connect to 127.0.0.1:1/db",
        ),
        (
            json!({"connectionString": url, "query": "SELEC id FROM t"}),
            ErrorKind::Query,
            "the query failed: You have an error in your SQL syntax",
        ),
        (
            json!({"connectionString": url, "table": "no_such_table", "orderBy": "id"}),
            ErrorKind::Query,
            "the query failed: Table 'my_errors.no_such_table' doesn't exist",
        ),
    ];
    for (section, kind, expected) in cases {
        let err = read(Provider::Mysql, section, None).await.err().unwrap();
        let text = err.to_string();
        assert_eq!(err.kind(), kind, "{text}");
        assert!(text.starts_with("mysql source: "), "{text}");
        assert!(text.contains(expected), "{text}");
        assert!(
            !text.contains("not-the-pw-42") && !text.contains("hunter2-pw"),
            "{text}"
        );
        assert!(!text.contains('\n'), "one line: {text}");
    }
}
