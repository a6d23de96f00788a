//! The PostgreSQL source against a real server (started by the test harness).

mod common;

use common::read;
use serde_json::{Value, json};
use sluicegate_adapters_db::Provider;
use sluicegate_core::{ErrorKind, FieldType, MemoryBudget, Position};
use sluicegate_examples::dbfixtures::{every_type_records, every_type_sql};
use sluicegate_examples::dbserver::{self, DbKind};

async fn database(name: &str) -> String {
    dbserver::postgres().fresh_database(name).await
}

async fn exec(url: &str, sql: &str) {
    dbserver::execute(DbKind::Postgres, url, sql).await;
}

#[tokio::test]
async fn every_type_reads_without_loss() {
    let url = database("pg_types").await;
    exec(&url, &every_type_sql(DbKind::Postgres)).await;
    let got = read(
        Provider::Postgres,
        json!({"connectionString": url, "table": "public.every_type", "orderBy": "id"}),
        None,
    )
    .await
    .unwrap();
    assert_eq!(got.records, every_type_records(DbKind::Postgres));
    assert_eq!(
        got.json_fields.iter().collect::<Vec<_>>(),
        ["doc", "docb"],
        "json and jsonb columns are declared JSON"
    );
    assert_eq!(got.json_batches, 1, "read as JSON text when asked");
}

#[tokio::test]
async fn special_numbers_and_unsupported_types() {
    let url = database("pg_special").await;
    let got = read(
        Provider::Postgres,
        json!({
            "connectionString": url,
            "query": "SELECT 'NaN'::float8 AS d, '-Infinity'::real AS r, 'NaN'::numeric AS n, \
                      0.000000001::numeric AS tiny, 'infinity'::timestamptz AS forever, \
                      ARRAY[]::int[] AS empty, '{}'::jsonb AS obj",
        }),
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        got.records,
        [
            json!({"d": "NaN", "r": "-Infinity", "n": "NaN", "tiny": "0.000000001",
                "forever": "infinity", "empty": [], "obj": {}})
        ]
    );
    let err = read(
        Provider::Postgres,
        json!({"connectionString": url, "query": "SELECT 1 AS id, 12.5::money AS price"}),
        None,
    )
    .await
    .err()
    .unwrap();
    assert_eq!(err.kind(), ErrorKind::Decode);
    assert!(
        err.message().starts_with(
            "postgres source: column 'price' of row 1 of the read: type money has no lossless conversion to JSON"
        ),
        "{err}"
    );
    assert!(err.message().contains("cast it in the query"), "{err}");
}

#[tokio::test]
async fn a_value_that_cannot_be_read_names_its_column_and_its_rows_key() {
    let url = database("pg_bad_value").await;
    exec(
        &url,
        "CREATE TABLE prices (id int PRIMARY KEY, price money, note text); \
         INSERT INTO prices SELECT g, NULL, 'n' || g FROM generate_series(1, 30) g; \
         UPDATE prices SET price = 12.5 WHERE id = 17;",
    )
    .await;
    let err = read(
        Provider::Postgres,
        json!({"connectionString": url, "table": "prices", "orderBy": "id"}),
        None,
    )
    .await
    .err()
    .unwrap();
    assert!(
        err.message().starts_with(
            "postgres source: column 'price' of row 17 of the read (id = 17): type money"
        ),
        "{err}"
    );
}

#[tokio::test]
async fn dates_beyond_chronos_range_are_read_not_panicked_on() {
    let url = database("pg_far_dates").await;
    let got = read(
        Provider::Postgres,
        json!({
            "connectionString": url,
            "query": "SELECT '262143-01-01'::date AS d, \
                      '294276-12-31 23:59:59.999999'::timestamp AS t, \
                      '294276-12-31 23:59:59.5+00'::timestamptz AS tz, \
                      '4714-11-24 BC'::date AS first, '5874897-12-31'::date AS last, \
                      '0001-01-01 BC'::date AS year_zero",
        }),
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        got.records,
        [
            json!({"d": "+262143-01-01", "t": "+294276-12-31T23:59:59.999999",
            "tz": "+294276-12-31T23:59:59.5Z", "first": "-4713-11-24",
            "last": "+5874897-12-31", "year_zero": "0000-01-01"})
        ]
    );
}

#[tokio::test]
async fn numbers_inside_json_and_jsonb_keep_every_digit() {
    let url = database("pg_json_numbers").await;
    let doc = r#"{"x": 0.42451918914251396, "big": 123456789012345678901234567890, "far": 1e400}"#;
    let got = read(
        Provider::Postgres,
        json!({
            "connectionString": url,
            "query": format!("SELECT '{doc}'::json AS j, '{doc}'::jsonb AS b"),
        }),
        None,
    )
    .await
    .unwrap();
    let j = &got.records[0]["j"];
    assert_eq!(
        j.to_string(),
        r#"{"x":0.42451918914251396,"big":123456789012345678901234567890,"far":1e+400}"#,
        "json keeps every digit (serde_json writes exponents as e+N)"
    );
    let b = &got.records[0]["b"];
    assert_eq!(b["x"].as_f64(), Some(0.42451918914251396));
    assert_eq!(b["big"].to_string(), "123456789012345678901234567890");
    // jsonb keeps numbers as `numeric`: 1e400 comes back as its 401 digits.
    assert_eq!(b["far"].to_string(), format!("1{}", "0".repeat(400)));
}

#[tokio::test]
async fn a_jsonb_column_also_named_in_json_columns_keeps_its_values() {
    let url = database("pg_json_listed").await;
    exec(
        &url,
        r#"CREATE TABLE docs (id int PRIMARY KEY, doc jsonb);
           INSERT INTO docs VALUES (1, '"123"'), (2, 'null'), (3, NULL), (4, '{"a": 1}');"#,
    )
    .await;
    let got = read(
        Provider::Postgres,
        json!({"connectionString": url, "table": "docs", "orderBy": "id", "jsonColumns": ["doc"]}),
        None,
    )
    .await
    .unwrap();
    // Already JSON values: a JSON string is not parsed again, and JSON `null`
    // stays apart from SQL NULL (left out).
    assert_eq!(
        got.records,
        [
            json!({"id": 1, "doc": "123"}),
            json!({"id": 2, "doc": null}),
            json!({"id": 3}),
            json!({"id": 4, "doc": {"a": 1}}),
        ]
    );
    assert_eq!(got.json_fields.iter().collect::<Vec<_>>(), ["doc"]);
}

#[tokio::test]
async fn keyset_paging_resumes_after_the_last_key() {
    let url = database("pg_keyset").await;
    exec(
        &url,
        "CREATE TABLE items (sku text PRIMARY KEY, n int NOT NULL);
         INSERT INTO items SELECT 'sku-' || lpad(i::text, 5, '0'), i FROM generate_series(1, 2500) i;
         INSERT INTO items VALUES ('zz ü''s \\ key', 0);",
    )
    .await;
    let section =
        json!({"connectionString": url, "table": "items", "orderBy": "sku", "fetchSize": 300});
    let full = read(Provider::Postgres, section.clone(), None)
        .await
        .unwrap();
    assert_eq!(full.records.len(), 2501);
    assert!(full.batches.iter().all(|(n, _)| *n <= 300));
    let keys = full.column("sku");
    let mut sorted = keys.clone();
    sorted.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
    assert_eq!(keys, sorted, "rows arrive in key order");

    // Resume from the checkpoint of the fourth batch: exactly the rest follows.
    let (_, position) = full.batches[3].clone();
    let position = position.unwrap();
    assert_eq!(position, Position::new(json!({"after": keys[1199]})));
    let rest = read(Provider::Postgres, section.clone(), Some(position))
        .await
        .unwrap();
    assert_eq!(rest.column("sku"), keys[1200..]);

    // A key with quotes, backslashes and non-ASCII text is bound, not spliced.
    let last_but_one = Position::new(json!({"after": keys[2499]}));
    let tail = read(Provider::Postgres, section, Some(last_but_one))
        .await
        .unwrap();
    assert_eq!(tail.column("sku"), [json!("zz ü's \\ key")]);
}

#[tokio::test]
async fn keyset_paging_over_a_query_and_a_foreign_checkpoint() {
    let url = database("pg_keyset_query").await;
    exec(
        &url,
        "CREATE TABLE t (id bigint PRIMARY KEY, odd boolean);
         INSERT INTO t SELECT i, i % 2 = 1 FROM generate_series(1, 1000) i;",
    )
    .await;
    let section = json!({
        "connectionString": url,
        "query": "SELECT id, odd FROM t WHERE odd;",
        "orderBy": "id",
        "fetchSize": 64,
    });
    let got = read(
        Provider::Postgres,
        section.clone(),
        Some(Position::new(json!({"after": 901}))),
    )
    .await
    .unwrap();
    let ids: Vec<Value> = (903..=999).step_by(2).map(Value::from).collect();
    assert_eq!(got.column("id"), ids);
    let err = read(
        Provider::Postgres,
        section,
        Some(Position::new(json!({"skip": 10}))),
    )
    .await
    .err()
    .unwrap();
    assert_eq!(err.kind(), ErrorKind::Checkpoint);
    assert!(err.message().contains("--full-refresh"), "{err}");
}

#[tokio::test]
async fn cute_templated_pages_read_everything_and_resume_at_the_offset() {
    let url = database("pg_pages").await;
    exec(
        &url,
        "CREATE TABLE t (id int PRIMARY KEY);
         INSERT INTO t SELECT i FROM generate_series(1, 95) i;",
    )
    .await;
    let section = json!({
        "connectionString": url,
        "query": "SELECT id FROM t ORDER BY id OFFSET {{ skip }} ROWS FETCH NEXT {{ limit }} ROWS ONLY",
        "pagination": {"skipKey": "skip", "limitKey": "limit", "limitMax": 10},
    });
    let all = read(Provider::Postgres, section.clone(), None)
        .await
        .unwrap();
    let ids: Vec<Value> = (1..=95).map(Value::from).collect();
    assert_eq!(all.column("id"), ids);
    assert_eq!(
        all.batches.last().unwrap().1,
        Some(Position::new(json!({"skip": 95})))
    );
    let rest = read(
        Provider::Postgres,
        section,
        Some(Position::new(json!({"skip": 42}))),
    )
    .await
    .unwrap();
    assert_eq!(rest.column("id"), ids[42..]);
}

#[tokio::test]
async fn a_query_that_ignores_the_paging_variables_is_read_once() {
    let url = database("pg_static").await;
    let got = read(
        Provider::Postgres,
        json!({
            "connectionString": url,
            "query": "SELECT generate_series(1, 3) AS id",
            "pagination": {"limitMax": 2},
        }),
        None,
    )
    .await
    .unwrap();
    assert_eq!(got.column("id"), [json!(1), json!(2), json!(3)]);
}

#[tokio::test]
async fn a_small_budget_still_reads_everything_in_small_batches() {
    let url = database("pg_budget").await;
    exec(
        &url,
        "CREATE TABLE wide (id int PRIMARY KEY, body text);
         INSERT INTO wide SELECT i, repeat('x', 2000) FROM generate_series(1, 3000) i;",
    )
    .await;
    let budget = MemoryBudget::new(1 << 20);
    let got = common::read_with(
        Provider::Postgres,
        json!({"connectionString": url, "table": "wide", "orderBy": "id", "fetchSize": 5000}),
        None,
        budget.clone(),
        None,
    )
    .await
    .unwrap();
    assert_eq!(got.records.len(), 3000);
    // A batch never exceeds a quarter of the budget (plus one row).
    assert!(got.batches.len() > 20, "{} batches", got.batches.len());
    assert!(budget.snapshot().peak <= 1 << 20);
}

#[tokio::test]
async fn errors_name_the_provider_and_never_the_password() {
    let url = database("pg_errors").await;
    let (prefix, rest) = url.split_once("sluicegate:sluicegate@").unwrap();
    let wrong = format!("{prefix}sluicegate:not-the-pw-42@{rest}");
    let cases = [
        (
            json!({"connectionString": wrong, "table": "t"}),
            ErrorKind::Auth,
            "the server rejected the login",
        ),
        (
            json!({"connectionString": "postgres://u:hunter2-pw@127.0.0.1:1/db", "table": "t"}),
            ErrorKind::Network,
            "cannot connect to 127.0.0.1:1/db",
        ),
        (
            json!({"connectionString": url, "query": "SELEC id FROM t"}),
            ErrorKind::Query,
            "the query failed: syntax error at or near \"SELEC\"",
        ),
        (
            json!({"connectionString": url, "table": "no_such_table", "orderBy": "id"}),
            ErrorKind::Query,
            "the query failed: relation \"no_such_table\" does not exist",
        ),
    ];
    for (section, kind, expected) in cases {
        let err = read(Provider::Postgres, section, None).await.err().unwrap();
        let text = err.to_string();
        assert_eq!(err.kind(), kind, "{text}");
        assert!(text.starts_with("postgres source: "), "{text}");
        assert!(text.contains(expected), "{text}");
        assert!(
            !text.contains("not-the-pw-42") && !text.contains("hunter2-pw"),
            "{text}"
        );
        assert!(!text.contains('\n'), "one line: {text}");
    }
}

#[tokio::test]
async fn decimal_date_and_time_columns_are_declared_typed() {
    let url = database("pg_declared").await;
    exec(
        &url,
        "CREATE TABLE t (id bigint PRIMARY KEY, money numeric(12,2), any_scale numeric,
             frac numeric(5,5), day date, ts timestamp(3), tstz timestamptz, name text, doc jsonb, tm time);
         INSERT INTO t VALUES (1, -12.30, 1.5, 0.5, '2024-02-29', '2024-02-29 13:45:00.5',
             '2024-02-29 13:45:00.5+01', 'x', '[]', '12:00');",
    )
    .await;
    let section = json!({"connectionString": url, "table": "t", "orderBy": "id"});
    let got = read(Provider::Postgres, section, None).await.unwrap();
    let decimal = |precision, scale| FieldType::Decimal { precision, scale };
    assert_eq!(
        got.field_types.into_iter().collect::<Vec<_>>(),
        [
            ("day".to_owned(), FieldType::Date),
            ("frac".to_owned(), decimal(5, 5)),
            ("money".to_owned(), decimal(12, 2)),
            ("ts".to_owned(), FieldType::Timestamp),
            ("tstz".to_owned(), FieldType::TimestampUtc),
        ],
        "a numeric without a scale, time, text and JSON are not"
    );
    assert_eq!(got.records[0]["frac"], json!("0.50000"));
    assert_eq!(got.records[0]["tstz"], json!("2024-02-29T12:45:00.5Z"));
}

#[tokio::test]
async fn generated_values_read_the_same_as_json_text_and_as_records() {
    // Values PostgreSQL draws (seeded): doubles across the exponent range,
    // reals, numerics of every scale, text of random code points (controls,
    // quotes, backslashes, astral planes), and JSON built from them; the
    // helper reads the table both ways and compares every record.
    let url = database("pg_generated").await;
    exec(
        &url,
        "SELECT setseed(0.17);
         CREATE TABLE generated AS
         SELECT i AS id,
                (random() - 0.5) * 10 ^ (floor(random() * 600) - 300)::int AS d,
                ((random() - 0.5) * 10 ^ (floor(random() * 60) - 30)::int)::real AS r,
                round(((random() - 0.5) * 10 ^ floor(random() * 40))::numeric, (random() * 20)::int) AS n,
                (SELECT string_agg(chr(CASE WHEN c BETWEEN 55296 AND 57343 THEN 65 ELSE c END), '')
                   FROM (SELECT 1 + (random() * CASE WHEN random() < 0.5 THEN 127 ELSE 131000 END)::int AS c
                         FROM generate_series(1, i % 13)) AS cs) AS t,
                CASE WHEN i % 7 = 0 THEN NULL ELSE i % 5 = 0 END AS b
         FROM generate_series(1, 3000) i;
         ALTER TABLE generated ADD PRIMARY KEY (id);
         ALTER TABLE generated ADD COLUMN j jsonb;
         UPDATE generated SET j = CASE WHEN id % 11 = 0 THEN NULL
             ELSE jsonb_build_object('t', t, 'n', n, 'd', d, 'list', jsonb_build_array(b, r, id)) END;",
    )
    .await;
    let got = read(
        Provider::Postgres,
        json!({"connectionString": url, "table": "generated", "orderBy": "id"}),
        None,
    )
    .await
    .unwrap();
    assert_eq!(got.records.len(), 3000);
    assert!(got.json_batches > 0);
    let texts: Vec<String> = got
        .column("t")
        .iter()
        .map(|t| t.as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(
        texts.iter().any(|t| t.chars().any(char::is_control)),
        "control characters were drawn"
    );
    assert!(texts.iter().any(|t| t.contains('"') || t.contains('\\')));
}

#[tokio::test]
async fn typed_rows_read_as_columns_give_the_same_records() {
    // Every type that goes into Arrow columns, with the values a column's
    // Arrow type does not hold as the JSON text would carry them (NaN and
    // infinite doubles and numerics, infinite and BC dates and timestamps,
    // years past 9999) on some rows: those rows go on as records, after the
    // columns before them. The helper reads the table as records, as JSON
    // text and as columns, and compares every record.
    let url = database("pg_columns").await;
    exec(
        &url,
        "CREATE TABLE typed AS
         SELECT i AS id,
                i % 2 = 0 AS flag,
                (i % 32767)::smallint AS small,
                (i * 7919)::integer AS medium,
                CASE i % 97 WHEN 0 THEN -9223372036854775808 WHEN 1 THEN 9223372036854775807
                    ELSE i * 104729 END::bigint AS big,
                CASE WHEN i % 13 = 0 THEN NULL ELSE 'näme ' || i || E' \"q\" \\\\ 😀' END AS name,
                ('x' || i)::varchar(20) AS code,
                (i % 100)::char(3) AS padded,
                CASE WHEN i % 401 = 0 THEN 'NaN'::numeric ELSE round((i * 1.37 - 900)::numeric, 2) END::numeric(12,2) AS money,
                (i % 100000 / 100000.0)::numeric(5,5) AS frac,
                (i::numeric * 10 ^ 30)::numeric(38,0) AS wide,
                (i::numeric / 7)::numeric(40,4) AS wider,
                (i::numeric / 3) AS any_scale,
                CASE i % 211 WHEN 0 THEN 'infinity'::date WHEN 1 THEN '0044-03-15 BC'::date
                    WHEN 2 THEN '12000-01-01'::date ELSE '2000-01-01'::date + i END AS day,
                CASE WHEN i % 307 = 0 THEN '-infinity'::timestamp
                    ELSE '1999-12-31 23:59:59.5'::timestamp + i * interval '37 minutes 0.001 seconds' END AS ts,
                CASE WHEN i % 503 = 0 THEN 'infinity'::timestamptz
                    ELSE '2024-02-29 13:45:00.5+01'::timestamptz - i * interval '1 day 1 second' END AS tstz,
                md5(i::text)::uuid AS ref,
                CASE i % 89 WHEN 0 THEN 'NaN'::float8 WHEN 1 THEN '-0'::float8 WHEN 2 THEN '-Infinity'::float8
                    ELSE i * 1.1e-3 END AS ratio,
                CASE WHEN i % 17 = 0 THEN NULL WHEN i % 17 = 1 THEN 'null'::jsonb
                    ELSE jsonb_build_object('i', i, 'list', jsonb_build_array(i / 3.0, 'é', NULL)) END AS doc,
                CASE WHEN i % 19 = 0 THEN NULL ELSE ('{\"b\" : 1E5, \"a\":[1 , 2],\"a\": \"dup\"}')::json END AS raw
         FROM generate_series(1, 5000) i;
         ALTER TABLE typed ADD PRIMARY KEY (id);",
    )
    .await;
    let got = read(
        Provider::Postgres,
        json!({"connectionString": url, "table": "typed", "orderBy": "id", "fetchSize": 700}),
        None,
    )
    .await
    .unwrap();
    assert_eq!(got.records.len(), 5000);
    // Most rows went as columns: 5,000 rows in fetches of 700, broken up
    // only by the rows with a value columns do not hold.
    assert!(
        got.column_batches >= 8,
        "{} batches of columns",
        got.column_batches
    );
    assert_eq!(got.records[0]["money"], json!("-898.63"));
    assert_eq!(got.records[88]["ratio"], json!("NaN"));
    assert_eq!(got.records[89]["ratio"], json!(-0.0));
    assert_eq!(got.records[210]["day"], json!("infinity"));
    assert_eq!(got.records[211]["day"], json!("-0043-03-15"));
    assert_eq!(got.records[17].get("doc"), Some(&json!(null)));
    assert!(
        got.records[16].get("doc").is_none(),
        "SQL NULL in a JSON column is left out"
    );
}
