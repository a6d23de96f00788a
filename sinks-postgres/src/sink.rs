//! The `postgres` sink: each batch is one transaction that copies the records
//! into a temporary staging table (binary `COPY`) and moves them into the
//! target with one `INSERT … ON CONFLICT (key) DO UPDATE` (or a plain
//! `INSERT` without a key).
//!
//! Several writers (streams of one run, or processes: the shards of a job) may
//! write one table at once:
//! - schema changes (creating the table, adding or widening columns) happen in
//!   a transaction of their own under an exclusive advisory lock of the table,
//!   after reading the schema again; a batch's transaction holds the same lock
//!   shared, so it never sees a column change half-way;
//! - a batch's rows are inserted in key order, so two writers upserting
//!   overlapping keys lock rows in the same order and cannot deadlock;
//! - `ON CONFLICT DO UPDATE` replaces a row atomically (no lost update), and
//!   leaves a row whose content did not change untouched (counted unchanged).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use sluicegate_core::{
    Batch, BatchAck, BuildContext, DeleteMode, Error, ErrorKind, MemoryRelief, PrepareBatch,
    Record, Rejected, Result, Sink, SinkCapabilities, SinkPosition, SinkWriter, Stage,
    StreamTarget, TargetKeys, WriterExtension, WriterSummary, key_text,
};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, GenericClient, NoTls};

use crate::config::PostgresSinkConfig;
use crate::schema::{
    MAX_IDENTIFIER_BYTES, PgType, cell_text, quote_ident, quote_literal, unstorable,
};

/// The column soft deletions mark rows in.
const DELETED_AT: &str = "_deleted_at";
/// Keys per page when the target's keys are listed.
const KEY_PAGE: i64 = 10_000;

/// A PostgreSQL database that sync streams write into.
pub struct PostgresSink {
    pg: tokio_postgres::Config,
    schema: String,
    dry_run: bool,
    described: String,
}

impl PostgresSink {
    /// Checks that the database answers (and, unless in a dry run, that the
    /// schema exists); each stream's writer opens a connection of its own.
    pub async fn connect(config: &PostgresSinkConfig, ctx: &BuildContext) -> Result<Self> {
        config.validate(ctx)?;
        let mut pg = config.pg_config(ctx)?;
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(Duration::from_secs(10));
        }
        let described = format!(
            "postgres {}:{}/{} ({})",
            pg.get_hosts()
                .first()
                .map(|h| match h {
                    tokio_postgres::config::Host::Tcp(name) => name.clone(),
                    #[cfg(unix)]
                    tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
                })
                .unwrap_or_default(),
            pg.get_ports().first().copied().unwrap_or(5432),
            pg.get_dbname().unwrap_or_default(),
            config.schema
        );
        let sink = Self {
            pg,
            schema: config.schema.clone(),
            dry_run: ctx.dry_run,
            described,
        };
        let client = sink.client().await?;
        let exists: bool = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
                &[&sink.schema],
            )
            .await
            .map_err(|e| pg_error("cannot read the database's schemas", &e))?
            .get(0);
        if !exists {
            return Err(Error::config(format!(
                "schema '{}' does not exist in the database; create it (CREATE SCHEMA) or set the sink's schema",
                sink.schema
            )));
        }
        Ok(sink)
    }

    async fn client(&self) -> Result<Client> {
        let (client, connection) = self.pg.connect(NoTls).await.map_err(|e| {
            let kind = if e.code().is_some() {
                ErrorKind::Auth
            } else {
                ErrorKind::Network
            };
            Error::new(kind, format!("cannot connect to {}", self.described)).with_source(e)
        })?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "postgres sink connection ended");
            }
        });
        Ok(client)
    }
}

#[async_trait]
impl Sink for PostgresSink {
    async fn open(&self, target: StreamTarget) -> Result<Box<dyn SinkWriter>> {
        let client = self.client().await?;
        Ok(Box::new(PostgresWriter {
            client,
            table: Table {
                schema: self.schema.clone(),
                name: target.table.clone(),
            },
            target,
            dry_run: self.dry_run,
            columns: None,
        }))
    }

    fn describe(&self) -> String {
        self.described.clone()
    }

    /// Batches of 5,000 rows; no working memory of its own (the database
    /// server's is its own).
    fn capabilities(&self) -> SinkCapabilities {
        SinkCapabilities::none().with_preferred_batch_rows(5000)
    }
}

/// A table's qualified name.
#[derive(Debug, Clone)]
struct Table {
    schema: String,
    name: String,
}

impl Table {
    fn sql(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }

    /// The advisory lock guarding the table's schema.
    fn lock_key(&self) -> String {
        quote_literal(&format!("sluicegate:{}.{}", self.schema, self.name))
    }
}

struct PostgresWriter {
    client: Client,
    target: StreamTarget,
    table: Table,
    dry_run: bool,
    /// The table's columns as last read (`None`: not read yet, or stale).
    columns: Option<Columns>,
}

/// The columns of a table, in order.
#[derive(Debug, Clone, Default)]
struct Columns {
    list: Vec<(String, PgType)>,
}

impl Columns {
    /// Whether the table exists (a table has at least one column here).
    fn exists(&self) -> bool {
        !self.list.is_empty()
    }

    fn get(&self, name: &str) -> Option<&PgType> {
        self.list.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }
}

/// A transaction holding the advisory lock of `table`'s schema: exclusive
/// to change the schema, shared to write rows.
async fn locked<'a>(
    client: &'a mut Client,
    table: &Table,
    exclusive: bool,
) -> Result<tokio_postgres::Transaction<'a>> {
    let tx = client
        .transaction()
        .await
        .map_err(|e| pg_error("cannot begin a transaction", &e))?;
    let lock = if exclusive {
        "pg_advisory_xact_lock"
    } else {
        "pg_advisory_xact_lock_shared"
    };
    tx.execute(
        &format!("SELECT {lock}(hashtext({}))", table.lock_key()),
        &[],
    )
    .await
    .map_err(|e| pg_error("cannot lock the table's schema", &e))?;
    Ok(tx)
}

/// A table's columns and their types, in order (none: no such table).
async fn table_columns<C: GenericClient>(
    client: &C,
    table: &Table,
) -> Result<Vec<(String, PgType)>> {
    let rows = client
        .query(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod) \
             FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped \
             ORDER BY a.attnum",
            &[&table.schema, &table.name],
        )
        .await
        .map_err(|e| pg_error("cannot read the table's columns", &e))?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                r.get::<_, String>(0),
                PgType::from_sql(&r.get::<_, String>(1)),
            )
        })
        .collect())
}

fn pg_error(what: &str, e: &tokio_postgres::Error) -> Error {
    let detail = e
        .as_db_error()
        .map_or_else(|| e.to_string(), |db| db.message().to_owned());
    Error::new(ErrorKind::Sink, format!("{what}: {detail}"))
}

impl PostgresWriter {
    fn reject(&self, key: Option<String>, reason: String, record: Record) {
        self.target.observer.rejected(
            &self.target.sync_key,
            Rejected {
                stage: Stage::Write,
                key,
                reason,
                record,
            },
        );
    }

    /// The records that can be written (the rest rejected), the last of each
    /// key, and how many were rejected and were duplicates.
    fn admit(&self, records: Vec<Record>) -> (Vec<Record>, u64, u64) {
        let key_field = self.target.key_field.as_deref();
        let mut kept: Vec<Record> = Vec::with_capacity(records.len());
        let mut at: HashMap<String, usize> = HashMap::new();
        let (mut failed, mut duplicates) = (0u64, 0u64);
        for record in records {
            let key = key_field.and_then(|f| record.get(f)).and_then(key_text);
            if let Some(field) = key_field
                && key.is_none()
            {
                failed += 1;
                self.reject(
                    None,
                    format!("no value for the key field '{field}'"),
                    record,
                );
                continue;
            }
            if let Some(name) = record.keys().find(|k| k.len() > MAX_IDENTIFIER_BYTES) {
                failed += 1;
                let reason = format!(
                    "field '{name}' is longer than PostgreSQL's {MAX_IDENTIFIER_BYTES}-byte column names; rename it in a mapping"
                );
                self.reject(key, reason, record);
                continue;
            }
            if let Some((field, why)) = record
                .iter()
                .find_map(|(k, v)| unstorable(v).map(|why| (k.clone(), why)))
            {
                failed += 1;
                let reason = format!("field '{field}' holds {why}, which PostgreSQL cannot store");
                self.reject(key, reason, record);
                continue;
            }
            match key {
                Some(key) => match at.get(&key) {
                    Some(&i) => {
                        duplicates += 1;
                        kept[i] = record;
                    }
                    None => {
                        at.insert(key, kept.len());
                        kept.push(record);
                    }
                },
                None => kept.push(record),
            }
        }
        (kept, failed, duplicates)
    }

    /// Reads the table's columns (in the current transaction, if any).
    async fn read_columns(&self) -> Result<Columns> {
        let list = table_columns(&self.client, &self.table).await?;
        Ok(Columns { list })
    }

    async fn columns(&mut self) -> Result<Columns> {
        if let Some(c) = &self.columns {
            return Ok(c.clone());
        }
        let c = self.read_columns().await?;
        self.columns = Some(c.clone());
        Ok(c)
    }

    /// The types the records need, field by field in first-seen order.
    fn needed(records: &[Record]) -> Vec<(String, PgType)> {
        let mut order: Vec<String> = Vec::new();
        let mut types: BTreeMap<String, PgType> = BTreeMap::new();
        for record in records {
            for (field, value) in record {
                let Some(ty) = PgType::of(value) else {
                    continue;
                };
                match types.get_mut(field) {
                    Some(t) => *t = t.widen(&ty),
                    None => {
                        order.push(field.clone());
                        types.insert(field.clone(), ty);
                    }
                }
            }
        }
        order
            .into_iter()
            .map(|f| {
                let t = types.remove(&f).expect("recorded");
                (f, t)
            })
            .collect()
    }

    /// Whether `columns` already hold what `needed` asks for.
    fn fits(columns: &Columns, needed: &[(String, PgType)]) -> bool {
        columns.exists()
            && needed
                .iter()
                .all(|(f, t)| columns.get(f).is_some_and(|have| &have.widen(t) == have))
    }

    /// Creates the table, adds and widens columns, under the table's
    /// exclusive advisory lock, after reading the schema again.
    async fn evolve(&mut self, needed: &[(String, PgType)]) -> Result<()> {
        let t = self.table.sql();
        let tx = locked(&mut self.client, &self.table, true).await?;
        let current = table_columns(&tx, &self.table).await?;
        let mut ddl = Vec::new();
        if current.is_empty() {
            let mut columns: Vec<String> = needed
                .iter()
                .map(|(f, ty)| format!("{} {}", quote_ident(f), ty.sql()))
                .collect();
            if let Some(key) = self.target.key_field.as_deref() {
                if !needed.iter().any(|(f, _)| f == key) {
                    return Err(Error::new(
                        ErrorKind::Sink,
                        format!("key field '{key}' has only null values"),
                    ));
                }
                columns.push(format!("PRIMARY KEY ({})", quote_ident(key)));
            }
            ddl.push(format!("CREATE TABLE {t} ({})", columns.join(", ")));
            tracing::info!(table = %self.table.name, "creating table");
        } else {
            for (field, ty) in needed {
                match current.iter().find(|(n, _)| n == field) {
                    None => {
                        tracing::info!(table = %self.table.name, column = %field, "adding a column");
                        ddl.push(format!(
                            "ALTER TABLE {t} ADD COLUMN {} {}",
                            quote_ident(field),
                            ty.sql()
                        ));
                    }
                    Some((_, have)) => {
                        let wider = have.widen(ty);
                        if &wider != have {
                            tracing::info!(table = %self.table.name, column = %field, from = have.sql(), to = wider.sql(), "widening a column");
                            let column = quote_ident(field);
                            ddl.push(format!(
                                "ALTER TABLE {t} ALTER COLUMN {column} TYPE {} USING {}",
                                wider.sql(),
                                have.conversion(&column, &wider)
                            ));
                        }
                    }
                }
            }
        }
        for statement in &ddl {
            tx.batch_execute(statement)
                .await
                .map_err(|e| pg_error(&format!("cannot change table {t}"), &e))?;
        }
        tx.commit()
            .await
            .map_err(|e| pg_error("cannot commit the table's schema", &e))?;
        self.columns = None;
        if !current.is_empty() {
            self.check_unique_key().await?;
        }
        Ok(())
    }

    /// A table made elsewhere must have a unique index on the key alone, or
    /// `ON CONFLICT` has nothing to go by.
    async fn check_unique_key(&self) -> Result<()> {
        let Some(key) = self.target.key_field.as_deref() else {
            return Ok(());
        };
        let unique: bool = self
            .client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_index i \
                 JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
                 JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = i.indkey[0] \
                 WHERE n.nspname = $1 AND c.relname = $2 AND i.indisunique AND i.indnkeyatts = 1 \
                 AND i.indpred IS NULL AND a.attname = $3)",
                &[&self.table.schema, &self.table.name, &key],
            )
            .await
            .map_err(|e| pg_error("cannot read the table's indexes", &e))?
            .get(0);
        if unique {
            Ok(())
        } else {
            Err(Error::config(format!(
                "table {} has no unique index on the key column '{key}'; add one \
                 (ALTER TABLE … ADD PRIMARY KEY ({})) so rows can be upserted",
                self.table.sql(),
                quote_ident(key)
            )))
        }
    }

    /// Dry run: how many of the records' keys the table already holds.
    async fn plan(&mut self, records: &[Record]) -> Result<u64> {
        let columns = self.columns().await?;
        let Some(key) = self.target.key_field.as_deref() else {
            return Ok(0);
        };
        if columns.get(key).is_none() {
            return Ok(0);
        }
        let keys: Vec<String> = records
            .iter()
            .filter_map(|r| r.get(key).and_then(key_text))
            .collect();
        let existing: i64 = self
            .client
            .query_one(
                &format!(
                    "SELECT count(*) FROM {} WHERE {}::text = ANY($1)",
                    self.table.sql(),
                    quote_ident(key)
                ),
                &[&keys],
            )
            .await
            .map_err(|e| pg_error("cannot count existing keys", &e))?
            .get(0);
        Ok(u64::try_from(existing).unwrap_or(0))
    }

    /// One batch in one transaction: staged by binary `COPY`, then inserted or
    /// upserted in key order. Returns (inserted, updated).
    async fn load(&mut self, records: &[Record]) -> Result<(u64, u64)> {
        let t = self.table.sql();
        let tx = locked(&mut self.client, &self.table, false).await?;
        // The columns as they are now, under the lock.
        let columns = table_columns(&tx, &self.table).await?;
        let staged: Vec<String> = (0..columns.len()).map(|i| format!("c{i}")).collect();
        tx.batch_execute(&format!(
            "CREATE TEMP TABLE sluicegate_stage (sg_ord bigint, {}) ON COMMIT DROP",
            staged
                .iter()
                .map(|c| format!("{c} text"))
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .await
        .map_err(|e| pg_error("cannot create the staging table", &e))?;
        let sink = tx
            .copy_in("COPY sluicegate_stage FROM STDIN (FORMAT binary)")
            .await
            .map_err(|e| pg_error("cannot start the copy", &e))?;
        let mut types = vec![Type::INT8];
        types.extend(std::iter::repeat_n(Type::TEXT, columns.len()));
        let writer = BinaryCopyInWriter::new(sink, &types);
        futures::pin_mut!(writer);
        for (ord, record) in records.iter().enumerate() {
            let ord = i64::try_from(ord).unwrap_or(i64::MAX);
            let cells: Vec<Option<String>> = columns
                .iter()
                .map(|(name, ty)| record.get(name).and_then(|v| cell_text(v, ty)))
                .collect();
            let mut row: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&ord];
            row.extend(
                cells
                    .iter()
                    .map(|c| c as &(dyn tokio_postgres::types::ToSql + Sync)),
            );
            writer
                .as_mut()
                .write(&row)
                .await
                .map_err(|e| pg_error("cannot copy the batch's rows", &e))?;
        }
        writer
            .finish()
            .await
            .map_err(|e| pg_error("cannot finish the copy", &e))?;
        let names: Vec<String> = columns.iter().map(|(n, _)| quote_ident(n)).collect();
        let casts: Vec<String> = columns
            .iter()
            .zip(&staged)
            .map(|((_, ty), c)| format!("{c}::{}", ty.sql()))
            .collect();
        let counts = match self.target.key_field.as_deref() {
            Some(key) => {
                let k = columns.iter().position(|(n, _)| n == key).ok_or_else(|| {
                    Error::new(ErrorKind::Sink, format!("table {t} has no column '{key}'"))
                })?;
                let others: Vec<usize> = (0..columns.len()).filter(|i| *i != k).collect();
                let set = if others.is_empty() {
                    format!("{0} = EXCLUDED.{0}", names[k])
                } else {
                    others
                        .iter()
                        .map(|i| format!("{0} = EXCLUDED.{0}", names[*i]))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                // A row whose content is the same is left alone (and counted
                // unchanged); a type without equality compares as text.
                let changed = if others.is_empty() {
                    "false".to_owned()
                } else {
                    others
                        .iter()
                        .map(|i| match &columns[*i].1 {
                            PgType::Other(_) => format!(
                                "sg_t.{0}::text IS DISTINCT FROM EXCLUDED.{0}::text",
                                names[*i]
                            ),
                            _ => format!("sg_t.{0} IS DISTINCT FROM EXCLUDED.{0}", names[*i]),
                        })
                        .collect::<Vec<_>>()
                        .join(" OR ")
                };
                let rows = tx
                    .query(
                        &format!(
                            "INSERT INTO {t} AS sg_t ({}) SELECT {} FROM sluicegate_stage ORDER BY {} \
                             ON CONFLICT ({}) DO UPDATE SET {set} WHERE {changed} \
                             RETURNING (sg_t.xmax = 0)",
                            names.join(", "),
                            casts.join(", "),
                            k + 1,
                            names[k]
                        ),
                        &[],
                    )
                    .await
                    .map_err(|e| pg_error(&format!("cannot upsert into {t}"), &e))?;
                let inserted = rows.iter().filter(|r| r.get::<_, bool>(0)).count() as u64;
                (inserted, rows.len() as u64 - inserted)
            }
            None => {
                let n = tx
                    .execute(
                        &format!(
                            "INSERT INTO {t} ({}) SELECT {} FROM sluicegate_stage ORDER BY sg_ord",
                            names.join(", "),
                            casts.join(", ")
                        ),
                        &[],
                    )
                    .await
                    .map_err(|e| pg_error(&format!("cannot insert into {t}"), &e))?;
                (n, 0)
            }
        };
        tx.commit()
            .await
            .map_err(|e| pg_error("cannot commit the batch", &e))?;
        Ok(counts)
    }
}

#[async_trait]
impl SinkWriter for PostgresWriter {
    async fn write(&mut self, batch: Batch) -> Result<BatchAck> {
        let (records, _position, _lease) = batch.into_parts();
        let rows = records.len() as u64;
        let (records, failed, duplicates) = self.admit(records);
        let written = records.len() as u64;
        if self.dry_run {
            let existing = self.plan(&records).await?.min(written);
            return Ok(BatchAck::new(rows)
                .with_inserted(written - existing)
                .with_updated(existing)
                .with_failed(failed)
                .with_duplicates(duplicates));
        }
        if records.is_empty() {
            return Ok(BatchAck::new(rows)
                .with_failed(failed)
                .with_duplicates(duplicates));
        }
        let needed = Self::needed(&records);
        let columns = self.columns().await?;
        if !Self::fits(&columns, &needed) {
            self.evolve(&needed).await?;
        }
        let (inserted, updated) = match self.load(&records).await {
            Ok(counts) => counts,
            Err(e) => {
                // Read the schema again next time: another writer may have
                // changed it.
                self.columns = None;
                return Err(e.with_context("table", &self.table.name));
            }
        };
        Ok(BatchAck::new(rows)
            .with_inserted(inserted)
            .with_updated(updated)
            .with_unchanged(written - inserted - updated)
            .with_failed(failed)
            .with_duplicates(duplicates))
    }

    async fn finish(self: Box<Self>) -> Result<WriterSummary> {
        let columns = self.read_columns().await?;
        let mut summary = WriterSummary::default();
        if self.target.key_field.is_some() {
            summary = summary.comparing_content();
        }
        if columns.exists() {
            let n: i64 = self
                .client
                .query_one(&format!("SELECT count(*) FROM {}", self.table.sql()), &[])
                .await
                .map_err(|e| pg_error("cannot count the table's rows", &e))?
                .get(0);
            summary = summary.with_total_rows(u64::try_from(n).unwrap_or(0));
        } else {
            summary = summary.with_total_rows(0);
        }
        Ok(summary)
    }

    fn extension(&mut self) -> Option<&mut dyn WriterExtension> {
        Some(self)
    }
}

#[async_trait]
impl WriterExtension for PostgresWriter {
    /// Nothing is held between batches.
    async fn relieve_memory(&mut self) -> Result<MemoryRelief> {
        Ok(MemoryRelief::default())
    }

    /// Positions are kept in the checkpoint store.
    async fn committed_position(&mut self) -> Result<SinkPosition> {
        Ok(SinkPosition::Unknown)
    }

    async fn forget_position(&mut self) -> Result<()> {
        Ok(())
    }

    /// With a key: `hard` (rows deleted) and `soft` (rows marked in
    /// `_deleted_at`).
    fn delete_modes(&self) -> &'static [DeleteMode] {
        if self.target.key_field.is_some() {
            &[DeleteMode::Hard, DeleteMode::Soft]
        } else {
            &[]
        }
    }

    /// Keys in key order through the primary key's index, after the last
    /// key of the previous page.
    async fn target_keys(&mut self, page: Option<Value>) -> Result<TargetKeys> {
        let columns = self.read_columns().await?;
        let Some(key) = self.target.key_field.as_deref() else {
            return Ok(TargetKeys::default());
        };
        let Some(ty) = columns.get(key) else {
            return Ok(TargetKeys::default());
        };
        let k = quote_ident(key);
        let live = if columns.get(DELETED_AT).is_some() {
            format!(" AND {} IS NULL", quote_ident(DELETED_AT))
        } else {
            String::new()
        };
        let after = page.as_ref().and_then(Value::as_str).map(str::to_owned);
        let sql = format!(
            "SELECT {k}::text FROM {} WHERE {k} IS NOT NULL{live} {} ORDER BY {k} LIMIT {KEY_PAGE}",
            self.table.sql(),
            if after.is_some() {
                format!("AND {k} > $1::{}", ty.sql())
            } else {
                String::new()
            }
        );
        let rows = match &after {
            Some(a) => self.client.query(&sql, &[a]).await,
            None => self.client.query(&sql, &[]).await,
        }
        .map_err(|e| pg_error("cannot list the table's keys", &e))?;
        let keys: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        let next = (keys.len() as i64 == KEY_PAGE)
            .then(|| keys.last().cloned().map(Value::String))
            .flatten();
        Ok(TargetKeys::new(keys, next))
    }

    async fn delete_keys(&mut self, keys: &[String], mode: DeleteMode) -> Result<u64> {
        if self.dry_run {
            return Ok(0);
        }
        let columns = self.read_columns().await?;
        let Some(key) = self.target.key_field.as_deref() else {
            return Ok(0);
        };
        let Some(ty) = columns.get(key) else {
            return Ok(0);
        };
        let t = self.table.sql();
        let k = quote_ident(key);
        let matching = format!("{k} = ANY($1::text[]::{}[])", ty.sql());
        let keys = keys.to_vec();
        let n = match mode {
            DeleteMode::Soft => {
                let column = quote_ident(DELETED_AT);
                if columns.get(DELETED_AT).is_none() {
                    let tx = locked(&mut self.client, &self.table, true).await?;
                    tx.batch_execute(&format!(
                        "ALTER TABLE {t} ADD COLUMN IF NOT EXISTS {column} timestamptz"
                    ))
                    .await
                    .map_err(|e| pg_error("cannot add the _deleted_at column", &e))?;
                    tx.commit()
                        .await
                        .map_err(|e| pg_error("cannot commit the _deleted_at column", &e))?;
                    self.columns = None;
                }
                self.client
                    .execute(
                        &format!(
                            "UPDATE {t} SET {column} = now() WHERE {matching} AND {column} IS NULL"
                        ),
                        &[&keys],
                    )
                    .await
            }
            _ => {
                self.client
                    .execute(&format!("DELETE FROM {t} WHERE {matching}"), &[&keys])
                    .await
            }
        }
        .map_err(|e| pg_error(&format!("cannot delete rows of {t}"), &e))?;
        Ok(n)
    }

    fn accepts_json_rows(&self) -> bool {
        // Records only: its staging copies decoded values.
        false
    }

    fn preparer(&self) -> Option<Arc<dyn PrepareBatch>> {
        None
    }
}

/// The sink as the registry builds it.
pub(crate) async fn build(config: PostgresSinkConfig, ctx: BuildContext) -> Result<Arc<dyn Sink>> {
    Ok(Arc::new(PostgresSink::connect(&config, &ctx).await?) as Arc<dyn Sink>)
}
