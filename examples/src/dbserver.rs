//! Real database servers for tests and benchmarks: PostgreSQL and MariaDB,
//! each started once per process by `scripts/db-server.sh` in a throwaway data
//! directory on a free port, and stopped when the process exits.
//!
//! `SLUICEGATE_TEST_POSTGRES_URL` / `SLUICEGATE_TEST_MYSQL_URL` point the tests
//! at servers of your own instead (the user needs to create databases).
//! A server that cannot start is a test failure, never a skip.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use mysql_async::prelude::Queryable;

/// Which server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbKind {
    /// PostgreSQL.
    Postgres,
    /// MariaDB (MySQL-compatible).
    Mariadb,
}

/// A running server.
#[derive(Debug)]
pub struct DbServer {
    kind: DbKind,
    /// The URL of its `sluicegate` database.
    pub url: String,
}

/// The PostgreSQL server of this process.
pub fn postgres() -> &'static DbServer {
    static SERVER: OnceLock<DbServer> = OnceLock::new();
    SERVER.get_or_init(|| DbServer::start(DbKind::Postgres))
}

/// The MariaDB server of this process.
pub fn mariadb() -> &'static DbServer {
    static SERVER: OnceLock<DbServer> = OnceLock::new();
    SERVER.get_or_init(|| DbServer::start(DbKind::Mariadb))
}

impl DbServer {
    fn start(kind: DbKind) -> Self {
        let (var, arg) = match kind {
            DbKind::Postgres => ("SLUICEGATE_TEST_POSTGRES_URL", "postgres"),
            DbKind::Mariadb => ("SLUICEGATE_TEST_MYSQL_URL", "mariadb"),
        };
        if let Ok(url) = std::env::var(var)
            && !url.is_empty()
        {
            return Self { kind, url };
        }
        let line = run_server_script("db-server.sh", &[arg]);
        let url = line.trim().to_owned();
        assert!(
            !url.is_empty(),
            "the {arg} server did not start (see the messages above); \
             install it (scripts/test.sh does) or set {var}"
        );
        Self { kind, url }
    }

    /// Creates a new, empty database named `name` (dropping an old one) and
    /// returns its URL.
    pub async fn fresh_database(&self, name: &str) -> String {
        assert!(
            name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
            "plain database names only"
        );
        self.execute(&format!("DROP DATABASE IF EXISTS {name}"))
            .await;
        self.execute(&format!("CREATE DATABASE {name}")).await;
        let (base, _) = self.url.rsplit_once('/').expect("a URL with a database");
        format!("{base}/{name}")
    }

    /// Runs SQL statements (separated by `;`) on the server's own database.
    pub async fn execute(&self, sql: &str) {
        execute(self.kind, &self.url, sql).await;
    }
}

/// Runs SQL statements (separated by `;`) on the database at `url`.
pub async fn execute(kind: DbKind, url: &str, sql: &str) {
    match kind {
        DbKind::Postgres => {
            let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .unwrap_or_else(|e| panic!("connecting to {url}: {e}"));
            let task = tokio::spawn(connection);
            client
                .batch_execute(sql)
                .await
                .unwrap_or_else(|e| panic!("{e:?} running {sql}"));
            drop(client);
            let _ = task.await;
        }
        DbKind::Mariadb => {
            let opts = mysql_async::Opts::from_url(url).expect("a MySQL URL");
            let mut conn = mysql_async::Conn::new(opts)
                .await
                .unwrap_or_else(|e| panic!("connecting to {url}: {e}"));
            conn.query_drop(sql)
                .await
                .unwrap_or_else(|e| panic!("{e} running {sql}"));
            let _ = conn.disconnect().await;
        }
    }
}

/// Runs `scripts/<script> <args> <this process id>` (a throwaway server that
/// stops when this process exits) and returns the first line it prints once the
/// server is ready (empty if it failed; the script says why on stderr).
pub(crate) fn run_server_script(script: &str, args: &[&str]) -> String {
    let path = format!("{}/../scripts/{script}", env!("CARGO_MANIFEST_DIR"));
    let mut child = Command::new("bash")
        .arg(&path)
        .args(args)
        .arg(std::process::id().to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {path}: {e}"));
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped"))
        .read_line(&mut line)
        .unwrap_or_else(|e| panic!("reading what {script} printed: {e}"));
    // The script stops its server when this process exits.
    std::mem::forget(child);
    line
}
