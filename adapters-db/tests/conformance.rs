//! Every database source passes the testkit's source suite against real servers.

mod common;

use std::sync::Arc;

use serde_json::{Value, json};
use sluicegate_adapters_db::{DbSourceConfig, Provider};
use sluicegate_core::{BuildContext, Factory, Source, parse_section};
use sluicegate_examples::dbserver::{self, DbKind};
use sluicegate_testkit::{SourceCase, check_failing_source, check_source};

const ROWS: usize = 3_000;

async fn source(provider: Provider, section: Value) -> Arc<dyn Source> {
    let ctx = BuildContext::new("conformance", true);
    let factory = sluicegate_adapters_db::factory(provider);
    let config: DbSourceConfig = parse_section(section, "source").unwrap();
    factory.validate(&config, &ctx).unwrap();
    factory.build(config, &ctx).await.unwrap()
}

fn case(name: &str, source: Arc<dyn Source>) -> SourceCase {
    SourceCase::new(name, source, ROWS).small_budget(48 * 1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_conforms() {
    let url = dbserver::postgres().fresh_database("pg_conformance").await;
    dbserver::execute(
        DbKind::Postgres,
        &url,
        &format!(
            "CREATE TABLE t (id int PRIMARY KEY, body text);
             INSERT INTO t SELECT i, repeat('x', 100) FROM generate_series(1, {ROWS}) i;"
        ),
    )
    .await;
    let keyset = source(
        Provider::Postgres,
        json!({"connectionString": url, "table": "t", "orderBy": "id", "fetchSize": 200}),
    )
    .await;
    check_source(case("postgres keyset", keyset)).await;
    let pages = source(
        Provider::Postgres,
        json!({
            "connectionString": url,
            "query": "SELECT * FROM t ORDER BY id LIMIT {{ limit }} OFFSET {{ skip }}",
            "pagination": {"limitMax": 250},
        }),
    )
    .await;
    check_source(case("postgres templated pages", pages)).await;
    let once = source(
        Provider::Postgres,
        json!({"connectionString": url, "table": "t"}),
    )
    .await;
    check_source(case("postgres one query", once).not_resumable()).await;
    let broken = source(
        Provider::Postgres,
        json!({"connectionString": url, "table": "nope"}),
    )
    .await;
    check_failing_source("postgres missing table", broken).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_conforms() {
    let url = dbserver::mariadb().fresh_database("my_conformance").await;
    dbserver::execute(
        DbKind::Mariadb,
        &url,
        &format!(
            "CREATE TABLE t (id INT PRIMARY KEY, body TEXT);
             INSERT INTO t SELECT seq, REPEAT('x', 100) FROM seq_1_to_{ROWS};"
        ),
    )
    .await;
    let keyset = source(
        Provider::Mysql,
        json!({"connectionString": url, "table": "t", "orderBy": "id", "fetchSize": 200}),
    )
    .await;
    check_source(case("mysql keyset", keyset)).await;
    let pages = source(
        Provider::Mysql,
        json!({
            "connectionString": url,
            "query": "SELECT * FROM t ORDER BY id LIMIT {{ limit }} OFFSET {{ skip }}",
            "pagination": {"limitMax": 250},
        }),
    )
    .await;
    check_source(case("mysql templated pages", pages)).await;
    let broken = source(
        Provider::Mysql,
        json!({"connectionString": url, "query": "SELEC 1"}),
    )
    .await;
    check_failing_source("mysql syntax error", broken).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch(&format!(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {ROWS})
             INSERT INTO t SELECT i, printf('%.100c', 'x') FROM n;"
        ))
        .unwrap();
    let conn = path.display().to_string();
    let keyset = source(
        Provider::Sqlite,
        json!({"connectionString": conn, "table": "t", "orderBy": "id", "fetchSize": 200}),
    )
    .await;
    check_source(case("sqlite keyset", keyset)).await;
    let broken = source(
        Provider::Sqlite,
        json!({"connectionString": conn, "table": "nope"}),
    )
    .await;
    check_failing_source("sqlite missing table", broken).await;
}
