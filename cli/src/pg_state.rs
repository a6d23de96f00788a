//! Run state in PostgreSQL (`state: { type: postgres, … }` in the
//! configuration file): checkpoints and incremental high-water marks in tables
//! of a schema of their own, and run locks as session advisory locks, so the
//! shards of a job on several machines share one state, and the lock of a
//! shard that died is released with its connection.
//!
//! The checkpoint and window traits are synchronous (a commit is one short
//! statement after a batch, as with SQLite), so the store keeps its
//! connection on a thread of its own with a small runtime, and each call waits
//! for that thread's answer.

use std::sync::{Arc, mpsc};

use serde::Deserialize;
use serde_json::Value;
use sluicegate_core::{
    BuildContext, CheckpointStore, Error, ErrorKind, Position, Result, field_error,
};
use sluicegate_engine::{SavedWindow, WindowStore};
use sluicegate_templates::render_template;
use tokio_postgres::{Client, NoTls};

use crate::state::{SavedCheckpoint, SavedMark};

/// The `state` section of the configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum StateConfig {
    /// A SQLite file, `.sluicegate/state/state.db` next to the configuration
    /// (or `--state-dir`): the default.
    #[default]
    Sqlite,
    /// Tables in a PostgreSQL database, shared by every process that uses it.
    Postgres(PgStateConfig),
}

/// `state: { type: postgres, … }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PgStateConfig {
    /// *Template.* Where the state database is (a URL or `key=value` form).
    pub connection_string: String,
    /// The schema of the state tables (default `sluicegate_state`), created
    /// on the first run that writes.
    #[serde(default = "default_schema")]
    pub schema: String,
}

fn default_schema() -> String {
    "sluicegate_state".to_owned()
}

impl PgStateConfig {
    /// The connection settings, rendered; errors never show the string.
    pub fn pg_config(&self, scope: &Value) -> Result<tokio_postgres::Config> {
        let rendered = render_template("state.connectionString", &self.connection_string, scope)
            .map_err(|e| field_error("state.connectionString", e.message()))?;
        rendered.parse::<tokio_postgres::Config>().map_err(|e| {
            field_error(
                "state.connectionString",
                format!("is not a PostgreSQL connection string ({e})"),
            )
        })
    }

    /// Checks the section without connecting.
    pub fn validate(&self, ctx: &BuildContext) -> Result<()> {
        if self.schema.trim().is_empty() {
            return Err(field_error("state.schema", "must name a schema"));
        }
        self.pg_config(&ctx.template_scope).map(drop)
    }
}

/// One request to the store's thread.
enum Request {
    /// Runs SQL with text parameters; answers the rows as text columns.
    Query {
        sql: String,
        params: Vec<Option<String>>,
        reply: mpsc::SyncSender<std::result::Result<Vec<Vec<Option<String>>>, String>>,
    },
}

/// Checkpoints, high-water marks and run locks in PostgreSQL.
pub struct PgStateStore {
    requests: mpsc::Sender<Request>,
    /// The state tables were found or created (they are not asked for again).
    tables: std::sync::atomic::AtomicBool,
    schema: String,
    described: String,
}

impl PgStateStore {
    /// Connects; `writable` creates the schema and tables when missing (a dry
    /// run reads only, and finds nothing where there is nothing yet).
    pub fn connect(config: &PgStateConfig, scope: &Value, writable: bool) -> Result<Self> {
        let mut pg = config.pg_config(scope)?;
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(std::time::Duration::from_secs(10));
        }
        let described = format!(
            "the PostgreSQL state (database {}, schema {})",
            pg.get_dbname().unwrap_or_default(),
            config.schema
        );
        let (requests, incoming) = mpsc::channel::<Request>();
        let (ready_tx, ready) = mpsc::sync_channel::<std::result::Result<(), String>>(1);
        std::thread::Builder::new()
            .name("sluicegate-state".into())
            .spawn(move || serve(&pg, &incoming, &ready_tx))
            .map_err(|e| {
                Error::new(ErrorKind::Checkpoint, "cannot start the state thread").with_source(e)
            })?;
        ready
            .recv()
            .map_err(|_| Error::new(ErrorKind::Checkpoint, "the state thread stopped"))?
            .map_err(|e| {
                Error::new(
                    ErrorKind::Checkpoint,
                    format!("cannot connect to {described}: {e}"),
                )
            })?;
        let store = Self {
            requests,
            tables: std::sync::atomic::AtomicBool::new(false),
            schema: config.schema.clone(),
            described,
        };
        if writable {
            store.create_tables()?;
        }
        Ok(store)
    }

    fn query(&self, sql: &str, params: &[Option<&str>]) -> Result<Vec<Vec<Option<String>>>> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.requests
            .send(Request::Query {
                sql: sql.to_owned(),
                params: params.iter().map(|p| p.map(str::to_owned)).collect(),
                reply,
            })
            .map_err(|_| self.failed("the state connection is gone"))?;
        answer
            .recv()
            .map_err(|_| self.failed("the state connection is gone"))?
            .map_err(|e| self.failed(&e))
    }

    fn failed(&self, why: &str) -> Error {
        Error::new(
            ErrorKind::Checkpoint,
            format!("{} failed: {why}", self.described),
        )
    }

    fn table(&self, name: &str) -> String {
        format!("{}.{name}", quote_ident(&self.schema))
    }

    fn create_tables(&self) -> Result<()> {
        // Several shards start at once: one creates, the others wait.
        let schema = quote_ident(&self.schema);
        self.query(
            &format!(
                "DO $$ BEGIN
                   PERFORM pg_advisory_xact_lock(hashtext('sluicegate:state-schema'));
                   CREATE SCHEMA IF NOT EXISTS {schema};
                   CREATE TABLE IF NOT EXISTS {schema}.checkpoints (
                     sync_key text NOT NULL, stream text NOT NULL, position text NOT NULL,
                     committed_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (sync_key, stream));
                   CREATE TABLE IF NOT EXISTS {schema}.incremental (
                     sync_key text NOT NULL, stream text NOT NULL, last_value text, progress text,
                     updated_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (sync_key, stream));
                 END $$"
            ),
            &[],
        )
        .map(drop)?;
        self.tables
            .store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Whether the state tables exist (a read-only store may find none).
    fn has_tables(&self) -> Result<bool> {
        if self.tables.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(true);
        }
        let rows = self.query(
            "SELECT to_regclass($1) IS NOT NULL",
            &[Some(&format!("{}.checkpoints", quote_ident(&self.schema)))],
        )?;
        let found = rows.first().and_then(|r| r[0].as_deref()) == Some("t");
        self.tables
            .store(found, std::sync::atomic::Ordering::Relaxed);
        Ok(found)
    }

    /// Takes the run lock of `key`: a session advisory lock, held until the
    /// guard is dropped or the process ends (its connection closes).
    pub fn lock(self: &Arc<Self>, key: &str) -> Result<PgRunLock> {
        let rows = self.query(
            "SELECT pg_try_advisory_lock(hashtextextended('sluicegate-run:' || $1, 0))",
            &[Some(key)],
        )?;
        if rows.first().and_then(|r| r[0].as_deref()) == Some("t") {
            return Ok(PgRunLock {
                store: self.clone(),
                key: key.to_owned(),
            });
        }
        Err(Error::new(
            ErrorKind::Checkpoint,
            format!(
                "sync '{key}' is already running (another session of {} holds its run lock); wait \
                 for it to finish or stop it, then run again: it resumes from the last checkpoint",
                self.described
            ),
        ))
    }

    /// Every saved checkpoint.
    pub fn list(&self) -> Result<Vec<SavedCheckpoint>> {
        if !self.has_tables()? {
            return Ok(Vec::new());
        }
        let rows = self.query(
            &format!(
                "SELECT sync_key, stream, position, to_char(committed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') \
                 FROM {} ORDER BY sync_key, stream",
                self.table("checkpoints")
            ),
            &[],
        )?;
        Ok(rows
            .into_iter()
            .map(|r| SavedCheckpoint {
                sync_key: r[0].clone().unwrap_or_default(),
                stream: r[1].clone().unwrap_or_default(),
                position: r[2].clone().unwrap_or_default(),
                committed_at: r[3].clone().unwrap_or_default(),
            })
            .collect())
    }

    /// Every saved high-water mark.
    pub fn marks(&self) -> Result<Vec<SavedMark>> {
        if !self.has_tables()? {
            return Ok(Vec::new());
        }
        let rows = self.query(
            &format!(
                "SELECT sync_key, stream, last_value, progress, to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') \
                 FROM {} ORDER BY sync_key, stream",
                self.table("incremental")
            ),
            &[],
        )?;
        Ok(rows
            .into_iter()
            .map(|r| SavedMark {
                sync_key: r[0].clone().unwrap_or_default(),
                stream: r[1].clone().unwrap_or_default(),
                last_value: r[2].clone(),
                progress: r[3].clone(),
                updated_at: r[4].clone().unwrap_or_default(),
            })
            .collect())
    }

    /// Forgets the checkpoints and marks of `key`.
    pub fn clear_key(&self, key: &str) -> Result<(usize, usize)> {
        if !self.has_tables()? {
            return Ok((0, 0));
        }
        let count = |table: &str| -> Result<usize> {
            let rows = self.query(
                &format!(
                    "WITH gone AS (DELETE FROM {} WHERE sync_key = $1 RETURNING 1) SELECT count(*) FROM gone",
                    self.table(table)
                ),
                &[Some(key)],
            )?;
            Ok(rows
                .first()
                .and_then(|r| r[0].as_deref())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0))
        };
        Ok((count("checkpoints")?, count("incremental")?))
    }

    /// Every sync key the state knows.
    pub fn keys(&self) -> Result<Vec<String>> {
        if !self.has_tables()? {
            return Ok(Vec::new());
        }
        let rows = self.query(
            &format!(
                "SELECT sync_key FROM {} UNION SELECT sync_key FROM {} ORDER BY 1",
                self.table("checkpoints"),
                self.table("incremental")
            ),
            &[],
        )?;
        Ok(rows.into_iter().filter_map(|r| r[0].clone()).collect())
    }

    fn load_text(&self, sql: &str, key: &str, stream: &str) -> Result<Option<Vec<Option<String>>>> {
        if !self.has_tables()? {
            return Ok(None);
        }
        Ok(self
            .query(sql, &[Some(key), Some(stream)])?
            .into_iter()
            .next())
    }
}

/// A held run lock of the PostgreSQL state; released when dropped.
pub struct PgRunLock {
    store: Arc<PgStateStore>,
    key: String,
}

impl Drop for PgRunLock {
    fn drop(&mut self) {
        let _ = self.store.query(
            "SELECT pg_advisory_unlock(hashtextextended('sluicegate-run:' || $1, 0))",
            &[Some(&self.key)],
        );
    }
}

fn decode(text: Option<&str>, what: &str, key: &str) -> Result<Option<Value>> {
    text.map(|t| {
        serde_json::from_str(t).map_err(|e| {
            Error::new(
                ErrorKind::Checkpoint,
                format!(
                    "the {what} of '{key}' in the PostgreSQL state is not valid JSON ({e}); run \
                     `sluicegate state reset --key {key}` to start that sync over"
                ),
            )
        })
    })
    .transpose()
}

impl CheckpointStore for PgStateStore {
    fn load(&self, sync_key: &str, stream: &str) -> Result<Option<Position>> {
        let row = self.load_text(
            &format!(
                "SELECT position FROM {} WHERE sync_key = $1 AND stream = $2",
                self.table("checkpoints")
            ),
            sync_key,
            stream,
        )?;
        Ok(decode(
            row.as_ref().and_then(|r| r[0].as_deref()),
            "checkpoint",
            sync_key,
        )?
        .map(Position::new))
    }

    fn commit(&self, sync_key: &str, stream: &str, position: &Position) -> Result<()> {
        let text = serde_json::to_string(position).map_err(|e| {
            Error::new(ErrorKind::Checkpoint, "cannot encode a checkpoint").with_source(e)
        })?;
        self.query(
            &format!(
                "INSERT INTO {} (sync_key, stream, position, committed_at) VALUES ($1, $2, $3, now()) \
                 ON CONFLICT (sync_key, stream) DO UPDATE SET position = EXCLUDED.position, committed_at = now()",
                self.table("checkpoints")
            ),
            &[Some(sync_key), Some(stream), Some(&text)],
        )
        .map(drop)
    }

    fn clear(&self, sync_key: &str, stream: &str) -> Result<()> {
        self.query(
            &format!(
                "DELETE FROM {} WHERE sync_key = $1 AND stream = $2",
                self.table("checkpoints")
            ),
            &[Some(sync_key), Some(stream)],
        )
        .map(drop)
    }
}

impl WindowStore for PgStateStore {
    fn load(&self, sync_key: &str, stream: &str) -> Result<SavedWindow> {
        let row = self.load_text(
            &format!(
                "SELECT last_value, progress FROM {} WHERE sync_key = $1 AND stream = $2",
                self.table("incremental")
            ),
            sync_key,
            stream,
        )?;
        let Some(row) = row else {
            return Ok(SavedWindow::default());
        };
        Ok(SavedWindow::new(
            decode(row[0].as_deref(), "high-water mark", sync_key)?,
            decode(row[1].as_deref(), "high-water mark", sync_key)?,
        ))
    }

    fn progress(&self, sync_key: &str, stream: &str, highest: &Value) -> Result<()> {
        self.query(
            &format!(
                "INSERT INTO {} (sync_key, stream, progress) VALUES ($1, $2, $3) \
                 ON CONFLICT (sync_key, stream) DO UPDATE SET progress = EXCLUDED.progress, updated_at = now()",
                self.table("incremental")
            ),
            &[Some(sync_key), Some(stream), Some(&highest.to_string())],
        )
        .map(drop)
    }

    fn complete(&self, sync_key: &str, stream: &str, last_value: &Value) -> Result<()> {
        self.query(
            &format!(
                "INSERT INTO {} (sync_key, stream, last_value, progress) VALUES ($1, $2, $3, NULL) \
                 ON CONFLICT (sync_key, stream) DO UPDATE SET last_value = EXCLUDED.last_value, \
                 progress = NULL, updated_at = now()",
                self.table("incremental")
            ),
            &[Some(sync_key), Some(stream), Some(&last_value.to_string())],
        )
        .map(drop)
    }

    fn clear(&self, sync_key: &str, stream: &str) -> Result<()> {
        if !self.has_tables()? {
            return Ok(());
        }
        self.query(
            &format!(
                "DELETE FROM {} WHERE sync_key = $1 AND stream = $2",
                self.table("incremental")
            ),
            &[Some(sync_key), Some(stream)],
        )
        .map(drop)
    }
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The store's thread: one connection, answering requests in order.
fn serve(
    pg: &tokio_postgres::Config,
    requests: &mpsc::Receiver<Request>,
    ready: &mpsc::SyncSender<std::result::Result<(), String>>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(e.to_string()));
            return;
        }
    };
    runtime.block_on(async move {
        let client: Client = match pg.connect(NoTls).await {
            Ok((client, connection)) => {
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                client
            }
            Err(e) => {
                let _ = ready.send(Err(e.to_string()));
                return;
            }
        };
        let _ = ready.send(Ok(()));
        // Waiting for the next request blocks this thread's runtime; the
        // connection is polled again while a query runs.
        while let Ok(Request::Query { sql, params, reply }) = requests.recv() {
            let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
                .iter()
                .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
                .collect();
            let answer = match client.query(&sql, &refs).await {
                Ok(rows) => Ok(rows
                    .iter()
                    .map(|row| {
                        (0..row.len())
                            .map(|i| text_cell(row, i))
                            .collect::<Vec<Option<String>>>()
                    })
                    .collect()),
                Err(e) => Err(e
                    .as_db_error()
                    .map_or_else(|| e.to_string(), |db| db.message().to_owned())),
            };
            let _ = reply.send(answer);
        }
    });
}

/// A column of a row as text (the state's queries select text, booleans and
/// counts).
fn text_cell(row: &tokio_postgres::Row, i: usize) -> Option<String> {
    use tokio_postgres::types::Type;
    let ty = row.columns()[i].type_().clone();
    if ty == Type::BOOL {
        row.get::<_, Option<bool>>(i)
            .map(|b| if b { "t" } else { "f" }.to_owned())
    } else if ty == Type::INT8 {
        row.get::<_, Option<i64>>(i).map(|n| n.to_string())
    } else {
        row.get::<_, Option<String>>(i)
    }
}
