//! End-to-end: the real `sluicegate` binary reading PostgreSQL, MariaDB (real
//! servers started by the test harness) and SQLite into DuckDB.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{checkpoint, query, table_records, text};
use serde_json::{Value, json};
use sluicegate_examples::dbfixtures::{NON_ASCII, every_type_records, every_type_sql};
use sluicegate_examples::dbserver::{self, DbKind};

/// A configuration of one sync `key` from `source` (YAML flow mapping) into
/// `out.duckdb`, written into `dir`.
fn write_config(dir: &Path, key: &str, source: &str) -> PathBuf {
    let path = dir.join("sluicegate.yaml");
    std::fs::write(
        &path,
        format!(
            "version: 1\nsinks:\n  warehouse: {{ type: duckdb, path: out.duckdb }}\nsyncs:\n  - key: {key}\n    sink: warehouse\n    table: {key}\n    keyField: id\n    source: {source}\n"
        ),
    )
    .unwrap();
    path
}

fn command(config: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluicegate"));
    cmd.args(["sync-api", "--all", "--config", config.to_str().unwrap()])
        .args(args)
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

/// The fixture's records as DuckDB gives them back (NULL columns left out).
fn without_nulls(records: Vec<Value>) -> Vec<Value> {
    records
        .into_iter()
        .map(|mut r| {
            r.as_object_mut().unwrap().retain(|_, v| !v.is_null());
            r
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_of_each_provider_lands_in_duckdb_exactly() {
    let pg = dbserver::postgres().fresh_database("e2e_types").await;
    dbserver::execute(DbKind::Postgres, &pg, &every_type_sql(DbKind::Postgres)).await;
    // A third row like the first: with one row per batch, each row comes as
    // JSON text straight into the table's columns, full and empty ones.
    dbserver::execute(
        DbKind::Postgres,
        &pg,
        "CREATE TABLE third AS SELECT * FROM every_type WHERE id = 1;
         UPDATE third SET id = 3;
         INSERT INTO every_type SELECT * FROM third;",
    )
    .await;
    let my = dbserver::mariadb().fresh_database("e2e_types").await;
    dbserver::execute(DbKind::Mariadb, &my, &every_type_sql(DbKind::Mariadb)).await;

    for (kind, url, source_type) in [
        (DbKind::Postgres, &pg, "postgres"),
        (DbKind::Mariadb, &my, "mysql"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(
            dir.path(),
            "every_type",
            &format!(
                "{{ type: {source_type}, connectionString: \"{url}\", table: every_type, orderBy: id }}"
            ),
        );
        let mut cmd = command(&config, &["--apply", "--streaming", "--batch-size", "1"]);
        cmd.env("SLUICEGATE_LOG", "sluicegate_sinks_duckdb=debug");
        let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        let got = table_records(&dir.path().join("out.duckdb"), "every_type");
        let mut want = every_type_records(kind);
        if kind == DbKind::Postgres {
            let mut third = want[0].clone();
            third["id"] = json!(3);
            want.push(third);
        }
        // Every batch went straight into columns, the first one too (its
        // table made from its first record).
        let log = text(&out.stderr);
        assert_eq!(
            log.matches("batch straight into columns").count(),
            want.len(),
            "{log}"
        );
        assert!(!log.contains("batch decoded into records"), "{log}");
        assert_eq!(got, without_nulls(want), "{source_type}");
        // Decimals, dates and timestamps: typed columns for the declared
        // types (PostgreSQL's `numeric` without a scale stays text, never DOUBLE).
        let types = query(
            &dir.path().join("out.duckdb"),
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'every_type' \
             AND column_name IN ('price', 'huge', 'day', 'ts', 'tstz', 'dt') ORDER BY column_name",
        );
        let want = match kind {
            DbKind::Postgres => json!([
                ["day", "DATE"],
                ["huge", "VARCHAR"],
                ["price", "DECIMAL(30,10)"],
                ["ts", "TIMESTAMP"],
                ["tstz", "TIMESTAMP WITH TIME ZONE"],
            ]),
            DbKind::Mariadb => json!([
                ["day", "DATE"],
                ["dt", "TIMESTAMP"],
                ["price", "DECIMAL(38,10)"],
                ["ts", "TIMESTAMP WITH TIME ZONE"],
            ]),
        };
        assert_eq!(json!(types), want, "{source_type}");
    }

    // SQLite, through a relative path in the configuration.
    let dir = tempfile::tempdir().unwrap();
    rusqlite::Connection::open(dir.path().join("shop.db"))
        .unwrap()
        .execute_batch(&format!(
            "CREATE TABLE every_type (id INTEGER PRIMARY KEY, n INTEGER, r REAL, b BOOLEAN, t TEXT, j JSON, x BLOB);
             INSERT INTO every_type VALUES (1, -9223372036854775808, 2.5, 0, '{}', '[1, {{\"k\": \"v\"}}]', X'00');
             INSERT INTO every_type (id) VALUES (2);",
            NON_ASCII.replace('\'', "''")
        ))
        .unwrap();
    let config = write_config(
        dir.path(),
        "every_type",
        "{ type: sqlite, connectionString: shop.db, table: every_type, orderBy: id }",
    );
    let out = run(&config, &["--apply"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        table_records(&dir.path().join("out.duckdb"), "every_type"),
        [
            json!({"id": 1, "n": i64::MIN, "r": 2.5, "b": false, "t": NON_ASCII, "j": [1, {"k": "v"}], "x": "AA=="}),
            json!({"id": 2}),
        ]
    );
}

/// The JSON values of the JSON-column test: `None` is SQL NULL. Each value's
/// JSON type must survive (`"123"` apart from `123`, `"true"` from `true`),
/// JSON `null` apart from SQL NULL, and every digit.
const JSON_DOCS: [Option<&str>; 12] = [
    Some(r#""123""#),
    Some("123"),
    Some("null"),
    None,
    Some("true"),
    Some(r#""true""#),
    Some(r#"{"a": [1, "1", null, 0.42451918914251396], "b": {"c": "ü✓"}}"#),
    Some("0.42451918914251396"),
    Some("123456789012345678901234567890"),
    Some(r#""""#),
    Some("[]"),
    Some(r#""{\"a\": 1}""#),
];

/// `JSON_DOCS` as SQL rows `(1, 'v'), (2, NULL), …`; MariaDB's string
/// literals take backslash escapes (`backslashes`).
fn json_docs_sql(backslashes: bool) -> String {
    JSON_DOCS
        .iter()
        .enumerate()
        .map(|(i, doc)| match doc {
            Some(text) => {
                let text = if backslashes {
                    text.replace('\\', "\\\\")
                } else {
                    (*text).to_owned()
                };
                format!("({}, '{}')", i + 1, text.replace('\'', "''"))
            }
            None => format!("({}, NULL)", i + 1),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The column `column` of table `docs` in DuckDB, as parsed JSON (`None`: NULL).
fn duckdb_docs(db: &Path, column: &str) -> Vec<Option<Value>> {
    let types = query(
        db,
        &format!(
            "SELECT data_type FROM information_schema.columns WHERE table_name = 'docs' AND column_name = '{column}'"
        ),
    );
    assert_eq!(types, [[json!("JSON")]], "{column}");
    query(
        db,
        &format!("SELECT \"{column}\"::VARCHAR FROM docs ORDER BY id"),
    )
    .into_iter()
    .map(|row| row[0].as_str().map(|t| serde_json::from_str(t).unwrap()))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_columns_keep_each_values_json_type_and_null_apart_from_sql_null() {
    let want: Vec<Option<Value>> = JSON_DOCS
        .iter()
        .map(|d| d.map(|t| serde_json::from_str(t).unwrap()))
        .collect();
    let pg = dbserver::postgres().fresh_database("e2e_json_docs").await;
    let rows = json_docs_sql(false);
    dbserver::execute(
        DbKind::Postgres,
        &pg,
        &format!(
            "CREATE TABLE docs (id int PRIMARY KEY, doc json, docb jsonb);
             INSERT INTO docs (id, doc) VALUES {rows};
             UPDATE docs SET docb = doc::jsonb;"
        ),
    )
    .await;
    let my = dbserver::mariadb().fresh_database("e2e_json_docs").await;
    dbserver::execute(
        DbKind::Mariadb,
        &my,
        &format!(
            "CREATE TABLE docs (id INT PRIMARY KEY, doc JSON); INSERT INTO docs VALUES {};",
            json_docs_sql(true)
        ),
    )
    .await;
    let sources = [
        (
            format!("{{ type: postgres, connectionString: \"{pg}\", table: docs, orderBy: id }}"),
            vec!["doc", "docb"],
        ),
        (
            format!(
                "{{ type: mysql, connectionString: \"{my}\", table: docs, orderBy: id, jsonColumns: [doc] }}"
            ),
            vec!["doc"],
        ),
    ];
    for (source, columns) in sources {
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(dir.path(), "docs", &source);
        // One row per batch: after the first, each comes straight into the
        // table's columns (PostgreSQL sends JSON text).
        let out = run(&config, &["--apply", "--streaming", "--batch-size", "1"]).await;
        assert!(out.status.success(), "{source}: {}", text(&out.stderr));
        for column in columns {
            assert_eq!(
                duckdb_docs(&dir.path().join("out.duckdb"), column),
                want,
                "{source} {column}"
            );
        }
    }
    // SQLite: a column declared JSON, and a TEXT column named in jsonColumns.
    let dir = tempfile::tempdir().unwrap();
    rusqlite::Connection::open(dir.path().join("docs.db"))
        .unwrap()
        .execute_batch(&format!(
            "CREATE TABLE docs (id INTEGER PRIMARY KEY, doc JSON, txt TEXT);
             INSERT INTO docs (id, txt) VALUES {rows};
             UPDATE docs SET doc = txt;"
        ))
        .unwrap();
    let config = write_config(
        dir.path(),
        "docs",
        "{ type: sqlite, connectionString: docs.db, table: docs, orderBy: id, jsonColumns: [txt] }",
    );
    let out = run(&config, &["--apply"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    // A column declared JSON has NUMERIC affinity: SQLite itself stores the
    // 30-digit text as a REAL, so that double is what the source holds.
    let mut stored = want.clone();
    stored[8] = Some(serde_json::from_str("1.2345678901234568e29").unwrap());
    for (column, want) in [("doc", stored), ("txt", want)] {
        assert_eq!(
            duckdb_docs(&dir.path().join("out.duckdb"), column),
            want,
            "sqlite {column}"
        );
    }
}

/// Rows of the resume test's table.
const ROWS: u64 = 400_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_keyset_run_resumes_from_its_last_committed_key() {
    let url = dbserver::postgres().fresh_database("e2e_resume").await;
    dbserver::execute(
        DbKind::Postgres,
        &url,
        &format!(
            "CREATE TABLE orders (id bigint PRIMARY KEY, customer text NOT NULL, total numeric(12,2) NOT NULL);
             INSERT INTO orders SELECT i, 'customer ' || (i % 977), (i % 10000) / 100.0 FROM generate_series(1, {ROWS}) i;"
        ),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "orders",
        &format!(
            "{{ type: postgres, connectionString: \"{url}\", table: orders, orderBy: id, fetchSize: 500 }}"
        ),
    );

    // Small batches make the run long enough to be killed in the middle.
    let mut child = command(
        &config,
        &["--apply", "--streaming", "--batch-size", "500", "--quiet"],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let started = Instant::now();
    while checkpoint(dir.path(), "orders").is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no checkpoint written"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert!(!status.success(), "the run was killed, not finished");

    let db = dir.path().join("out.duckdb");
    let saved = checkpoint(dir.path(), "orders").expect("a committed checkpoint");
    let after = saved["after"]
        .as_u64()
        .unwrap_or_else(|| panic!("checkpoint {saved}"));
    assert!(after < ROWS, "killed mid-way, at {after}");
    let committed = query(&db, "SELECT count(*), max(id) FROM orders");
    assert!(
        committed[0][1].as_u64().unwrap() >= after,
        "everything up to the checkpoint is in DuckDB: {committed:?}, {after}"
    );

    let out = run(&config, &["--apply", "--streaming"]).await;
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // DuckDB keeps its own committed position in the transaction of the rows, so the
    // run resumes from there: at the checkpoint file's key, or past it when the kill
    // fell between the sink's commit and the file's update.
    let resumed: u64 = stderr
        .split("orders: resuming after checkpoint {\"after\":")
        .nth(1)
        .and_then(|rest| rest.split('}').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no resume message: {stderr}"));
    assert!(resumed >= after, "resumed at {resumed}, checkpoint {after}");
    assert_eq!(
        committed[0][..2],
        [json!(resumed), json!(resumed)],
        "DuckDB held exactly the rows up to the resume key when the run was killed"
    );
    let stdout = text(&out.stdout);
    let read_again: u64 = stdout
        .lines()
        .find(|l| l.starts_with("orders"))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|n| n.replace(',', "").parse().ok())
        .unwrap_or_else(|| panic!("no summary row: {stdout}"));
    assert_eq!(
        read_again,
        ROWS - resumed,
        "the resumed run reads only the rest"
    );
    let end = query(
        &db,
        "SELECT count(*), count(DISTINCT id), min(id), max(id), sum(id), CAST(sum(CAST(total AS DECIMAL(18,2))) AS VARCHAR) FROM orders",
    );
    let want_total: u64 = (1..=ROWS).map(|i| i % 10000).sum();
    assert_eq!(
        end[0][..5],
        [
            json!(ROWS),
            json!(ROWS),
            json!(1),
            json!(ROWS),
            json!(ROWS * (ROWS + 1) / 2)
        ]
    );
    assert_eq!(
        end[0][5],
        json!(format!("{}.{:02}", want_total / 100, want_total % 100)),
        "exact decimal totals"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_errors_name_the_sync_and_provider_without_the_password() {
    let url = dbserver::postgres().fresh_database("e2e_errors").await;
    let wrong = url.replace("sluicegate:sluicegate@", "sluicegate:{{ env.PG_PW }}@");
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "pg_orders",
        &format!("{{ type: postgres, connectionString: \"{wrong}\", table: orders, orderBy: id }}"),
    );
    let mut cmd = command(&config, &["--apply"]);
    cmd.env("PG_PW", "wrong-secret-77");
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    let stdout = text(&out.stdout);
    let line = stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("no error line: {stderr}"));
    assert!(
        line.contains("postgres source: the server rejected the login"),
        "{line}"
    );
    assert!(line.contains("sync=pg_orders"), "{line}");
    assert!(!stderr.contains("wrong-secret-77") && !stdout.contains("wrong-secret-77"));

    // A missing table, with the right password.
    let mut cmd = command(&config, &["--apply"]);
    cmd.env("PG_PW", "sluicegate");
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let stderr = text(&out.stderr);
    let line = stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_default();
    assert!(
        line.contains("relation \"orders\" does not exist"),
        "{stderr}"
    );
    assert!(line.contains("sync=pg_orders"), "{line}");
}

#[tokio::test]
async fn an_append_sync_into_duckdb_resumes_exactly_once_so_it_warns_of_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("src.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch("CREATE TABLE events (id INTEGER PRIMARY KEY, what TEXT); INSERT INTO events VALUES (1, 'a'), (2, 'b');")
        .unwrap();
    drop(conn);
    let config = dir.path().join("sluicegate.yaml");
    std::fs::write(
        &config,
        format!(
            "version: 1\nsinks:\n  warehouse: {{ type: duckdb, path: out.duckdb }}\nsyncs:\n  - key: events\n    sink: warehouse\n    table: events\n    source: {{ type: sqlite, connectionString: \"{}\", table: events, orderBy: id }}\n",
            db.display()
        ),
    )
    .unwrap();
    let out = run(&config, &["--apply"]).await;
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // DuckDB commits each batch's position with its rows: appends resume
    // exactly once (sinks-duckdb/tests/duckdb_sink.rs), nothing to warn about.
    assert!(!stderr.contains("at-least-once"), "{stderr}");
    let conn = duckdb::Connection::open(dir.path().join("out.duckdb")).unwrap();
    let (rows, complete): (i64, bool) = conn
        .query_row(
            "SELECT (SELECT count(*) FROM events), (SELECT complete FROM _sluicegate_positions WHERE sync_key = 'events')",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((rows, complete), (2, true));
}

/// The records a PostgreSQL source reads from `table` (decoded; SQL NULL
/// left out).
async fn source_records(url: &str, table: &str) -> Vec<Value> {
    use futures::StreamExt;
    use sluicegate_core::{BuildContext, Factory, MemoryBudget, ReadRequest, parse_section};
    let ctx = BuildContext::new("test", true);
    let factory = sluicegate_adapters_db::factory(sluicegate_adapters_db::Provider::Postgres);
    let config = parse_section(
        json!({"connectionString": url, "table": table, "orderBy": "id"}),
        "source",
    )
    .unwrap();
    let source = factory.build(config, &ctx).await.unwrap();
    let mut stream = source.read(ReadRequest::new("test", MemoryBudget::new(8 << 20)));
    let mut out = Vec::new();
    while let Some(batch) = stream.next().await {
        let (records, _, _lease) = batch.unwrap().into_parts();
        out.extend(records.into_iter().map(Value::Object));
    }
    without_nulls(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_decimals_dates_and_timestamps_land_typed_and_read_back_as_the_source_sent_them()
{
    // Values PostgreSQL draws (seeded) across each type's range, and a second
    // table whose later rows hold values no typed column holds (NaN,
    // ±infinity, years beyond 9999 and before 1): batches of 97 rows,
    // so its columns are typed first and made text in the middle of the run.
    let url = dbserver::postgres().fresh_database("e2e_typed").await;
    let columns = "round(((random() - 0.5) * 1.99e10)::numeric, 2)::numeric(12,2) AS money,
         ((CASE WHEN random() < 0.5 THEN -1 ELSE 1 END) * (trunc(random() * 1e14)::numeric * 1e13
             + trunc(random() * 1e13)::numeric + round(random()::numeric, 10)))::numeric(38,10) AS wide,
         round(((random() - 0.5) * 1.99)::numeric, 5)::numeric(5,5) AS frac,
         round(((random() - 0.5) * 1.99e17)::numeric)::numeric(18,0) AS whole,
         date '0001-01-01' + (random() * 3652058)::int AS day,
         timestamp '0001-01-01' + random() * (timestamp '9999-12-31 23:59:59.999999' - timestamp '0001-01-01') AS ts,
         timestamptz '0001-01-01 00:00:00+00' + random() * interval '3652058 days' AS tstz";
    dbserver::execute(
        DbKind::Postgres,
        &url,
        &format!(
            "SET TimeZone = 'UTC'; SELECT setseed(0.42);
             CREATE TABLE typed AS SELECT i AS id, {columns} FROM generate_series(1, 2000) i;
             UPDATE typed SET money = NULL, day = NULL WHERE id % 13 = 0;
             UPDATE typed SET ts = date_trunc('second', ts), tstz = date_trunc('day', tstz) WHERE id % 7 = 0;
             CREATE TABLE odd AS SELECT * FROM typed;
             UPDATE odd SET wide = 'NaN' WHERE id = 1500;
             UPDATE odd SET whole = 'NaN' WHERE id = 1700;
             UPDATE odd SET day = 'infinity', ts = '-infinity' WHERE id = 1800;
             UPDATE odd SET day = '294276-12-31', ts = '4713-01-01 00:00:00 BC' WHERE id = 1801;
             UPDATE odd SET tstz = '294276-12-31 23:59:59.5+00' WHERE id = 1900;"
        ),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluicegate.yaml");
    std::fs::write(
        &path,
        format!(
            "version: 1\nsinks:\n  warehouse: {{ type: duckdb, path: out.duckdb }}\nsyncs:\n{}",
            ["typed", "odd"]
                .map(|t| format!(
                    "  - key: {t}\n    sink: warehouse\n    keyField: id\n    source: {{ type: postgres, connectionString: \"{url}\", table: {t}, orderBy: id }}\n"
                ))
                .concat()
        ),
    )
    .unwrap();
    let out = run(&path, &["--apply", "--streaming", "--batch-size", "97"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let db = dir.path().join("out.duckdb");
    for (table, widened) in [
        ("typed", &[][..]),
        ("odd", &["wide", "whole", "day", "ts", "tstz"][..]),
    ] {
        let want = source_records(&url, table).await;
        assert_eq!(want.len(), 2000);
        let got = table_records(&db, table);
        assert_eq!(got.len(), want.len(), "{table}");
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g, w, "{table}");
        }
        let types = query(
            &db,
            &format!(
                "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = '{table}' AND column_name <> 'id' ORDER BY ordinal_position"
            ),
        );
        let typed = json!([
            ["money", "DECIMAL(12,2)"],
            ["wide", "DECIMAL(38,10)"],
            ["frac", "DECIMAL(6,5)"],
            ["whole", "DECIMAL(18,0)"],
            ["day", "DATE"],
            ["ts", "TIMESTAMP"],
            ["tstz", "TIMESTAMP WITH TIME ZONE"],
        ]);
        let want_types: Vec<Value> = typed
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                if widened.contains(&c[0].as_str().unwrap()) {
                    json!([c[0], "VARCHAR"])
                } else {
                    c.clone()
                }
            })
            .collect();
        assert_eq!(json!(types), json!(want_types), "{table}");
    }
    // The values no typed column holds arrived as the source wrote them.
    let odd = table_records(&db, "odd");
    assert_eq!(odd[1499]["wide"], json!("NaN"));
    assert_eq!(odd[1699]["whole"], json!("NaN"));
    assert_eq!(odd[1799]["day"], json!("infinity"));
    assert_eq!(odd[1800]["ts"], json!("-4712-01-01T00:00:00"));
}
