//! The database source: plans the SQL for the paging mode, opens a session of
//! the configured provider and streams its rows as budgeted batches.

use std::sync::Arc;

use serde_json::Value;
use sluicegate_core::{
    BatchSender, BatchStream, BuildContext, Error, ErrorKind, ReadRequest, Result, Source,
    channel_stream,
};

use crate::batcher::{Batcher, Tracker};
use crate::config::{DbSourceConfig, split_table};
use crate::connstr::ConnectionParams;
use crate::error::Origin;
use crate::provider::Provider;
use crate::session::Session;
use crate::{mysql, postgres, sqlite};

/// A built database source (`postgres`, `mysql` or `sqlite`).
pub struct DbSource {
    plan: Arc<Plan>,
}

struct Plan {
    origin: Origin,
    config: DbSourceConfig,
    ctx: BuildContext,
    /// `query` rendered once (keyset and one-query modes).
    query: Option<String>,
}

impl DbSource {
    /// Builds a source from a validated configuration; does not connect yet.
    pub fn new(provider: Provider, mut config: DbSourceConfig, ctx: &BuildContext) -> Result<Self> {
        if let Some(size) = ctx.tuning.page_size {
            let size = size.max(1);
            config.fetch_size = usize::try_from(size).unwrap_or(usize::MAX);
            if let Some(paging) = config.pagination.as_mut() {
                paging.limit_max = Some(size);
            }
        }
        let rendered = config.render_connection(ctx)?;
        let params = ConnectionParams::parse(provider, &rendered, &ctx.base_dir)
            .map_err(|e| sluicegate_core::field_error("connectionString", e.message()))?;
        let query = match (&config.query, &config.pagination) {
            (Some(q), None) => Some(config.render_query(q, ctx, 0)?),
            _ => None,
        };
        Ok(Self {
            plan: Arc::new(Plan {
                origin: Origin { provider, params },
                config,
                ctx: ctx.clone(),
                query,
            }),
        })
    }
}

impl Source for DbSource {
    fn read(&self, request: ReadRequest) -> BatchStream {
        let plan = self.plan.clone();
        channel_stream(move |tx| async move {
            plan.produce(request, tx)
                .await
                .map_err(|e| plan.origin.label(e))
        })
    }

    fn describe(&self) -> String {
        format!(
            "{} {}",
            self.plan.origin.provider.type_name(),
            self.plan.origin.params.describe()
        )
    }

    /// A keyset read (`orderBy`) of PostgreSQL or MySQL splits by a hash of
    /// the key; templated pages, one-query reads and SQLite files do not.
    fn splits(&self) -> bool {
        self.plan.config.order_by.is_some() && self.plan.origin.provider != Provider::Sqlite
    }
}

impl Plan {
    async fn connect(&self) -> Result<Box<dyn Session>> {
        let origin = self.origin.clone();
        Ok(match &self.origin.params {
            ConnectionParams::Postgres(c) => Box::new(postgres::connect(c, origin).await?),
            ConnectionParams::Mysql(o) => Box::new(mysql::connect(o, origin).await?),
            ConnectionParams::Sqlite(p) => Box::new(sqlite::connect(p, origin)?),
        })
    }

    async fn produce(&self, request: ReadRequest, tx: BatchSender) -> Result<()> {
        let mut session = self.connect().await?;
        let fetch = self.config.fetch_size;
        let resume = request.resume_from.as_ref().map(|p| p.as_value().clone());
        if let Some(window) = &self.ctx.incremental {
            let key = self.config.order_by.clone();
            let after = match (resume.as_ref(), &key) {
                (Some(p), Some(_)) => {
                    let cursor = self.resume_value(Some(p), "cursor")?;
                    let after = self.resume_value(Some(p), "after")?;
                    cursor.zip(after)
                }
                _ => None,
            };
            let (sql, params) = self.window_sql(
                session.as_ref(),
                &window.cursor_field,
                &window.start_value,
                key.as_deref(),
                after.as_ref(),
            )?;
            tracing::debug!(%sql, "incremental read");
            if resume.is_none() {
                // Rows whose cursor is NULL are in no window: they are read
                // first (without a position), so the run rejects each of them
                // by name instead of never seeing them.
                let unplaced = self.unplaced_sql(session.as_ref(), &window.cursor_field)?;
                let mut out = Batcher::new(&request, tx.clone(), fetch, Tracker::None)
                    .with_json_columns(self.config.json_columns.clone());
                session.run(&unplaced, &[], fetch, &mut out).await?;
                out.flush().await?;
            }
            let tracker = match key {
                Some(column) => Tracker::Keyset {
                    column,
                    last: None,
                    cursor: Some((window.cursor_field.clone(), None)),
                },
                None => Tracker::None,
            };
            let mut out = Batcher::new(&request, tx, fetch, tracker)
                .with_json_columns(self.config.json_columns.clone());
            session.run(&sql, &params, fetch, &mut out).await?;
            return out.flush().await;
        }
        if let Some(column) = &self.config.order_by {
            let after = self.resume_value(resume.as_ref(), "after")?;
            let sql = self.keyset_sql(session.as_ref(), column, after.as_ref())?;
            tracing::debug!(%sql, "keyset read");
            let tracker = Tracker::Keyset {
                column: column.clone(),
                last: None,
                cursor: None,
            };
            let mut out = Batcher::new(&request, tx, fetch, tracker)
                .with_json_columns(self.config.json_columns.clone());
            let params: Vec<Value> = after.into_iter().collect();
            session.run(&sql, &params, fetch, &mut out).await?;
            return out.flush().await;
        }
        if let (Some(template), Some(paging)) = (&self.config.query, &self.config.pagination) {
            let mut skip = match self.resume_value(resume.as_ref(), "skip")? {
                Some(v) => v.as_u64().ok_or_else(|| self.foreign_checkpoint(&v))?,
                None => 0,
            };
            let limit = paging.limit();
            // A query that ignores the paging variables would be read forever.
            let single = self.config.render_query(template, &self.ctx, 0)?
                == self.config.render_query(template, &self.ctx, limit)?;
            let mut out = Batcher::new(&request, tx, fetch, Tracker::Offset { next: skip })
                .with_json_columns(self.config.json_columns.clone());
            loop {
                let sql = self.config.render_query(template, &self.ctx, skip)?;
                out.set_offset(skip);
                let rows = session.run(&sql, &[], fetch, &mut out).await?;
                out.flush().await?;
                if rows == 0 || single {
                    return Ok(());
                }
                skip += limit;
            }
        }
        if resume.is_some() {
            tracing::warn!(
                "this source has no orderBy or pagination, so it cannot resume; reading everything again"
            );
        }
        let sql = match (&self.config.table, &self.query) {
            (Some(table), _) => {
                format!("SELECT * FROM {}", self.table_sql(session.as_ref(), table)?)
            }
            (None, Some(q)) => q.clone(),
            (None, None) => unreachable!("validated: table or query"),
        };
        let mut out = Batcher::new(&request, tx, fetch, Tracker::None)
            .with_json_columns(self.config.json_columns.clone());
        session.run(&sql, &[], fetch, &mut out).await?;
        out.flush().await
    }

    /// The value under `key` of a checkpoint this mode wrote.
    fn resume_value(&self, position: Option<&Value>, key: &str) -> Result<Option<Value>> {
        match position {
            None => Ok(None),
            Some(Value::Object(m)) if m.contains_key(key) => Ok(m.get(key).cloned()),
            Some(other) => Err(self.foreign_checkpoint(other)),
        }
    }

    fn foreign_checkpoint(&self, position: &Value) -> Error {
        self.origin.error(
            ErrorKind::Checkpoint,
            format!(
                "the checkpoint {position} was written by another paging mode; \
                 run with --full-refresh to read from the start"
            ),
        )
    }

    fn table_sql(&self, session: &dyn Session, table: &str) -> Result<String> {
        let parts = split_table(table)
            .ok_or_else(|| Error::config(format!("'{table}' is not a table name")))?;
        Ok(parts
            .iter()
            .map(|p| session.quote_ident(p))
            .collect::<Vec<_>>()
            .join("."))
    }

    /// What to select from (the table, or the query as a subquery) and how
    /// to name `column` in it.
    fn source_and_column(&self, session: &dyn Session, column: &str) -> Result<(String, String)> {
        let quoted = session.quote_ident(column);
        Ok(match (&self.config.table, &self.query) {
            (Some(table), _) => (self.table_sql(session, table)?, quoted),
            (None, Some(q)) => {
                let q = q.trim().trim_end_matches(';').trim_end();
                (format!("({q}) AS sg_rows"), format!("sg_rows.{quoted}"))
            }
            (None, None) => unreachable!("validated: table or query"),
        })
    }

    fn keyset_sql(
        &self,
        session: &dyn Session,
        column: &str,
        after: Option<&Value>,
    ) -> Result<String> {
        let (from, key) = self.source_and_column(session, column)?;
        let mut filters = Vec::new();
        if let Some(after) = after {
            filters.push(format!("{key} > {}", session.param(1, after)?));
        }
        filters.extend(self.shard_filter(&key));
        let mut sql = format!("SELECT * FROM {from}");
        if !filters.is_empty() {
            sql.push_str(&format!(" WHERE {}", filters.join(" AND ")));
        }
        sql.push_str(&format!(" ORDER BY {key}"));
        Ok(sql)
    }

    /// This shard's rows, by a hash of the key (`None` without shards, or for
    /// SQLite, which reads whole).
    fn shard_filter(&self, key_sql: &str) -> Option<String> {
        let shard = self.ctx.shard?;
        match self.origin.provider {
            Provider::Postgres => Some(format!(
                "mod(abs(hashtext({key_sql}::text)::bigint), {}) = {}",
                shard.count, shard.index
            )),
            Provider::Mysql => Some(format!(
                "MOD(CRC32({key_sql}), {}) = {}",
                shard.count, shard.index
            )),
            Provider::Sqlite => None,
        }
    }

    /// The rows of an incremental read whose cursor is SQL NULL (this
    /// shard's, in a sharded run).
    fn unplaced_sql(&self, session: &dyn Session, cursor: &str) -> Result<String> {
        let (from, cursor_sql) = self.source_and_column(session, cursor)?;
        let mut sql = format!("SELECT * FROM {from} WHERE {cursor_sql} IS NULL");
        if let Some(key) = &self.config.order_by {
            let (_, key_sql) = self.source_and_column(session, key)?;
            if let Some(filter) = self.shard_filter(&key_sql) {
                sql.push_str(&format!(" AND {filter}"));
            }
            sql.push_str(&format!(" ORDER BY {key_sql}"));
        }
        Ok(sql)
    }

    /// The read of an incremental window: rows whose `cursor` is at least
    /// `start`, ordered by the cursor and then by `key` (when there is one),
    /// after the `(cursor, key)` pair of a checkpoint. Values are bound
    /// parameters (MySQL: escaped literals), never spliced in as text.
    fn window_sql(
        &self,
        session: &dyn Session,
        cursor: &str,
        start: &Value,
        key: Option<&str>,
        after: Option<&(Value, Value)>,
    ) -> Result<(String, Vec<Value>)> {
        let (from, cursor_sql) = self.source_and_column(session, cursor)?;
        let start = self.origin.provider.cursor_param(start);
        let mut sql = format!(
            "SELECT * FROM {from} WHERE {cursor_sql} >= {}",
            session.param(1, &start)?
        );
        let mut params = vec![start];
        let Some(key) = key else {
            sql.push_str(&format!(" ORDER BY {cursor_sql}"));
            return Ok((sql, params));
        };
        let (_, key_sql) = self.source_and_column(session, key)?;
        if let Some(filter) = self.shard_filter(&key_sql) {
            sql.push_str(&format!(" AND {filter}"));
        }
        if let Some((last_cursor, last_key)) = after {
            let last_cursor = self.origin.provider.cursor_param(last_cursor);
            sql.push_str(&format!(
                " AND ({cursor_sql}, {key_sql}) > ({}, {})",
                session.param(2, &last_cursor)?,
                session.param(3, last_key)?
            ));
            params.push(last_cursor);
            params.push(last_key.clone());
        }
        sql.push_str(&format!(" ORDER BY {cursor_sql}, {key_sql}"));
        Ok((sql, params))
    }
}
