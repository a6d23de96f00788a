//! The `duckdb` sink: bulk appends and keyed upserts, one transaction per batch.
//!
//! Per batch: duplicate keys are merged (the last record wins); column types are
//! inferred from the records and the table is created, extended with new columns
//! or has columns widened as needed; the records go through DuckDB's Appender
//! into a temporary staging table; then `DELETE ... WHERE key IN (staging)` and
//! `INSERT ... SELECT * FROM staging` replace existing rows and add new ones.
//! All of it commits as one transaction, so a batch is either fully in the table
//! or not at all, and a batch written twice leaves the table as written once.
//!
//! In a dry run the database is opened read-only (and not created when it does
//! not exist); only the keys of each batch are staged, in a temporary table, to
//! count which exist.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use duckdb::{AccessMode, Config, Connection, appender_params_from_iter};
use serde_json::Value;
use sluicegate_core::{
    Batch, BatchAck, BuildContext, Error, ErrorKind, Record, Result, Sink, SinkWriter,
    StreamTarget, WriterSummary,
};

use crate::config::DuckDbSinkConfig;
use crate::schema::{Cell, ColumnType, TableSchema, cell, key_text, quote_ident};

/// A DuckDB database file that sync streams write into.
pub struct DuckDbSink {
    path: PathBuf,
    /// `None` in a dry run against a database that does not exist yet.
    conn: Option<Arc<Mutex<Connection>>>,
    dry_run: bool,
}

fn duck_error(what: impl Into<String>, err: duckdb::Error) -> Error {
    Error::new(ErrorKind::Sink, what).with_source(err)
}

impl DuckDbSink {
    /// Opens (or, unless in a dry run, creates) the database.
    pub fn open(config: &DuckDbSinkConfig, ctx: &BuildContext) -> Result<Self> {
        config.validate()?;
        let in_memory = config.path == ":memory:";
        let path = if in_memory || Path::new(&config.path).is_absolute() {
            PathBuf::from(&config.path)
        } else {
            ctx.base_dir.join(&config.path)
        };
        let mut settings = Config::default()
            .max_memory(&format!("{}MB", config.memory_limit_mb))
            .map_err(|e| duck_error("invalid memoryLimitMb", e))?;
        if let Some(threads) = config.threads {
            settings = settings
                .threads(i64::from(threads))
                .map_err(|e| duck_error("invalid threads", e))?;
        }
        let conn = if ctx.dry_run {
            if in_memory || !path.exists() {
                None
            } else {
                let settings = settings
                    .access_mode(AccessMode::ReadOnly)
                    .map_err(|e| duck_error("cannot configure read-only access", e))?;
                Some(Connection::open_with_flags(&path, settings).map_err(|e| {
                    duck_error(format!("cannot open {} read-only", path.display()), e)
                })?)
            }
        } else if in_memory {
            Some(
                Connection::open_in_memory_with_flags(settings)
                    .map_err(|e| duck_error("cannot open an in-memory database", e))?,
            )
        } else {
            if let Some(parent) = path.parent()
                && !parent.as_os_str().is_empty()
            {
                std::fs::create_dir_all(parent).map_err(|e| {
                    Error::new(
                        ErrorKind::Io,
                        format!("cannot create directory {}", parent.display()),
                    )
                    .with_source(e)
                })?;
            }
            Some(Connection::open_with_flags(&path, settings).map_err(|e| {
                duck_error(
                    format!(
                        "cannot open {} (is another process using it?)",
                        path.display()
                    ),
                    e,
                )
            })?)
        };
        Ok(Self {
            path,
            conn: conn.map(|c| Arc::new(Mutex::new(c))),
            dry_run: ctx.dry_run,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[async_trait]
impl Sink for DuckDbSink {
    async fn open(&self, target: StreamTarget) -> Result<Box<dyn SinkWriter>> {
        Ok(Box::new(DuckDbWriter {
            conn: self.conn.clone(),
            target: Arc::new(target),
            table: None,
            dry_run: self.dry_run,
        }))
    }

    fn describe(&self) -> String {
        format!("duckdb {}", self.path.display())
    }
}

/// What the writer knows of its table.
#[derive(Debug, Clone)]
struct TableState {
    schema: TableSchema,
    exists: bool,
}

struct DuckDbWriter {
    conn: Option<Arc<Mutex<Connection>>>,
    target: Arc<StreamTarget>,
    /// Loaded on the first write; dropped after a failed write so it is re-read.
    table: Option<TableState>,
    dry_run: bool,
}

#[async_trait]
impl SinkWriter for DuckDbWriter {
    async fn write(&mut self, batch: Batch) -> Result<BatchAck> {
        let target = self.target.clone();
        let (records, _position, lease) = batch.into_parts();
        let (records, duplicates) = merge_duplicate_keys(records, target.key_field.as_deref())?;
        let Some(conn) = self.conn.clone() else {
            // Dry run against a database that does not exist: everything is new.
            let rows = records.len() as u64;
            return Ok(BatchAck {
                rows,
                inserted: rows,
                duplicates,
                ..BatchAck::default()
            });
        };
        let table = self.table.take();
        let dry_run = self.dry_run;
        let (result, table) = tokio::task::spawn_blocking(move || {
            let conn = conn
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut table = match table {
                Some(t) => t,
                None => match load_table(&conn, &target.table) {
                    Ok(t) => t,
                    Err(e) => return (Err(e), None),
                },
            };
            let result = if dry_run {
                plan_batch(&conn, &target, &table, &records)
            } else {
                write_batch(&conn, &target, &mut table, &records)
            };
            drop(records);
            drop(lease);
            let keep = result.is_ok().then_some(table);
            (result, keep)
        })
        .await
        .map_err(|e| Error::new(ErrorKind::Sink, "duckdb writer task failed").with_source(e))?;
        self.table = table;
        let mut ack = result.map_err(|e| e.with_context("table", &self.target.table))?;
        ack.duplicates = duplicates;
        Ok(ack)
    }

    async fn finish(self: Box<Self>) -> Result<WriterSummary> {
        let Some(conn) = self.conn.clone() else {
            return Ok(WriterSummary {
                total_rows: Some(0),
            });
        };
        let table = self.target.table.clone();
        tokio::task::spawn_blocking(move || {
            let conn = conn
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if !load_table(&conn, &table)?.exists {
                return Ok(WriterSummary {
                    total_rows: Some(0),
                });
            }
            let n: i64 = conn
                .query_row(
                    &format!("SELECT count(*) FROM main.{}", quote_ident(&table)),
                    [],
                    |r| r.get(0),
                )
                .map_err(|e| duck_error(format!("cannot count rows of {table}"), e))?;
            Ok(WriterSummary {
                total_rows: Some(u64::try_from(n).unwrap_or(0)),
            })
        })
        .await
        .map_err(|e| Error::new(ErrorKind::Sink, "duckdb writer task failed").with_source(e))?
    }
}

/// Keeps the last record of each key, in first-seen order; a record without a
/// key is an error naming the field and showing the record.
fn merge_duplicate_keys(records: Vec<Record>, key: Option<&str>) -> Result<(Vec<Record>, u64)> {
    let Some(key) = key else {
        return Ok((records, 0));
    };
    let mut index = std::collections::HashMap::with_capacity(records.len());
    let mut out: Vec<Record> = Vec::with_capacity(records.len());
    let mut duplicates = 0;
    for record in records {
        let Some(k) = record.get(key).and_then(key_text) else {
            let shown = Value::Object(record).to_string();
            let shown: String = shown.chars().take(200).collect();
            return Err(Error::new(
                ErrorKind::Sink,
                format!(
                    "a record has no value for the key field '{key}'; fix keyField or the data"
                ),
            )
            .with_context("record", shown));
        };
        match index.get(&k) {
            Some(&at) => {
                out[at] = record;
                duplicates += 1;
            }
            None => {
                index.insert(k, out.len());
                out.push(record);
            }
        }
    }
    Ok((out, duplicates))
}

fn load_table(conn: &Connection, table: &str) -> Result<TableState> {
    let mut stmt = conn
        .prepare(
            "SELECT column_name, data_type FROM information_schema.columns \
             WHERE table_catalog = current_database() AND table_schema = 'main' AND lower(table_name) = lower(?) \
             ORDER BY ordinal_position",
        )
        .map_err(|e| duck_error("cannot read the table schema", e))?;
    let columns = stmt
        .query_map([table], |row| {
            Ok((
                row.get::<_, String>(0)?,
                ColumnType::from_sql(&row.get::<_, String>(1)?),
            ))
        })
        .and_then(|rows| rows.collect::<duckdb::Result<Vec<_>>>())
        .map_err(|e| duck_error(format!("cannot read the schema of {table}"), e))?;
    Ok(TableState {
        exists: !columns.is_empty(),
        schema: TableSchema::from_columns(columns),
    })
}

/// Schema changes a batch needs: new columns and widened ones.
struct SchemaChanges {
    added: Vec<usize>,
    widened: Vec<usize>,
}

fn evolve(schema: &mut TableSchema, records: &[Record]) -> SchemaChanges {
    let existing = schema.columns.len();
    let mut widened = Vec::new();
    for record in records {
        for (field, value) in record {
            let Some(ty) = ColumnType::of(value) else {
                continue;
            };
            match schema.column_of(field) {
                Some(idx) => {
                    let current = &schema.columns[idx].1;
                    let wider = current.widen(&ty);
                    if &wider != current {
                        schema.columns[idx].1 = wider;
                        if idx < existing && !widened.contains(&idx) {
                            widened.push(idx);
                        }
                    }
                }
                None => {
                    schema.add_field(field, ty);
                }
            }
        }
    }
    SchemaChanges {
        added: (existing..schema.columns.len()).collect(),
        widened,
    }
}

fn stage_name(table: &str) -> String {
    quote_ident(&format!("sluicegate_stage_{table}"))
}

fn write_batch(
    conn: &Connection,
    target: &StreamTarget,
    table: &mut TableState,
    records: &[Record],
) -> Result<BatchAck> {
    let rows = records.len() as u64;
    if records.is_empty() {
        return Ok(BatchAck::default());
    }
    let mut schema = table.schema.clone();
    let changes = evolve(&mut schema, records);
    if schema.columns.is_empty() {
        // Only empty records or nulls: nothing to store yet.
        return Ok(BatchAck {
            rows,
            ..BatchAck::default()
        });
    }
    let t = quote_ident(&target.table);
    let mut ddl = String::new();
    if !table.exists {
        let cols: Vec<String> = schema
            .columns
            .iter()
            .map(|(name, ty)| format!("{} {}", quote_ident(name), ty.sql()))
            .collect();
        ddl.push_str(&format!("CREATE TABLE main.{t} ({});", cols.join(", ")));
    } else {
        for idx in &changes.added {
            let (name, ty) = &schema.columns[*idx];
            ddl.push_str(&format!(
                "ALTER TABLE main.{t} ADD COLUMN {} {};",
                quote_ident(name),
                ty.sql()
            ));
        }
        for idx in &changes.widened {
            let (name, ty) = &schema.columns[*idx];
            ddl.push_str(&format!(
                "ALTER TABLE main.{t} ALTER COLUMN {} SET DATA TYPE {};",
                quote_ident(name),
                ty.sql()
            ));
        }
    }
    if !changes.added.is_empty() && table.exists {
        tracing::info!(table = %target.table, columns = ?changes.added.iter().map(|i| &schema.columns[*i].0).collect::<Vec<_>>(), "adding columns");
    }
    let key_column = match target.key_field.as_deref() {
        Some(field) => Some(quote_ident(
            &schema.columns[schema.column_of(field).ok_or_else(|| {
                Error::new(
                    ErrorKind::Sink,
                    format!("key field '{field}' has only null values"),
                )
            })?]
            .0,
        )),
        None => None,
    };

    conn.execute_batch("BEGIN TRANSACTION")
        .map_err(|e| duck_error("cannot begin a transaction", e))?;
    let result = (|| -> Result<BatchAck> {
        if !ddl.is_empty() {
            conn.execute_batch(&ddl).map_err(|e| {
                duck_error(format!("cannot create or alter table {}", target.table), e)
            })?;
        }
        let Some(key) = &key_column else {
            append_rows(conn, &target.table, false, &schema, records)?;
            return Ok(BatchAck {
                rows,
                inserted: rows,
                ..BatchAck::default()
            });
        };
        let stage = stage_name(&target.table);
        conn.execute_batch(&format!(
            "CREATE OR REPLACE TEMP TABLE {stage} AS SELECT * FROM main.{t} LIMIT 0"
        ))
        .map_err(|e| duck_error("cannot create the staging table", e))?;
        append_rows(
            conn,
            &format!("sluicegate_stage_{}", target.table),
            true,
            &schema,
            records,
        )?;
        let replaced =
            conn.execute(
                &format!("DELETE FROM main.{t} WHERE {key} IN (SELECT {key} FROM temp.{stage})"),
                [],
            )
            .map_err(|e| duck_error("cannot replace existing rows", e))? as u64;
        conn.execute(
            &format!("INSERT INTO main.{t} SELECT * FROM temp.{stage}"),
            [],
        )
        .map_err(|e| duck_error("cannot insert rows", e))?;
        conn.execute_batch(&format!("DROP TABLE temp.{stage}"))
            .map_err(|e| duck_error("cannot drop the staging table", e))?;
        Ok(BatchAck {
            rows,
            inserted: rows - replaced.min(rows),
            updated: replaced.min(rows),
            ..BatchAck::default()
        })
    })();
    match result {
        Ok(ack) => {
            conn.execute_batch("COMMIT")
                .map_err(|e| duck_error("cannot commit", e))?;
            table.schema = schema;
            table.exists = true;
            Ok(ack)
        }
        Err(e) => {
            if let Err(rollback) = conn.execute_batch("ROLLBACK") {
                tracing::error!(error = %rollback, "rollback failed");
            }
            Err(e)
        }
    }
}

/// Appends records through DuckDB's Appender into `main.table` or `temp.table`.
fn append_rows(
    conn: &Connection,
    table: &str,
    temp: bool,
    schema: &TableSchema,
    records: &[Record],
) -> Result<()> {
    let appender = if temp {
        conn.appender_to_catalog_and_db(table, "temp", "main")
    } else {
        conn.appender_to_db(table, "main")
    };
    let mut appender =
        appender.map_err(|e| duck_error(format!("cannot open an appender on {table}"), e))?;
    let width = schema.columns.len();
    let mut row = Vec::with_capacity(width);
    for record in records {
        row.clear();
        row.resize_with(width, || Cell::Null);
        for (field, value) in record {
            if let Some(idx) = schema.column_of(field) {
                row[idx] = cell(value, &schema.columns[idx].1);
            }
        }
        appender
            .append_row(appender_params_from_iter(row.iter()))
            .map_err(|e| duck_error("cannot append a row", e))?;
    }
    appender
        .flush()
        .map_err(|e| duck_error("cannot flush the appender", e))
}

/// Dry run: counts which keys of the batch already exist.
fn plan_batch(
    conn: &Connection,
    target: &StreamTarget,
    table: &TableState,
    records: &[Record],
) -> Result<BatchAck> {
    let rows = records.len() as u64;
    let all_new = BatchAck {
        rows,
        inserted: rows,
        ..BatchAck::default()
    };
    let Some(field) = target.key_field.as_deref() else {
        return Ok(all_new);
    };
    let Some(idx) = table.schema.column_of(field).filter(|_| table.exists) else {
        return Ok(all_new);
    };
    let (column, ty) = &table.schema.columns[idx];
    let stage = quote_ident("sluicegate_plan_keys");
    conn.execute_batch(&format!(
        "CREATE OR REPLACE TEMP TABLE {stage} (k {})",
        ty.sql()
    ))
    .map_err(|e| duck_error("cannot create the key staging table", e))?;
    {
        let mut appender = conn
            .appender_to_catalog_and_db("sluicegate_plan_keys", "temp", "main")
            .map_err(|e| duck_error("cannot open an appender", e))?;
        for record in records {
            let value = record.get(field).unwrap_or(&Value::Null);
            appender
                .append_row([cell(value, ty)])
                .map_err(|e| duck_error("cannot stage a key", e))?;
        }
    }
    let existing: i64 = conn
        .query_row(
            &format!(
                "SELECT count(*) FROM main.{} WHERE {} IN (SELECT k FROM temp.{stage})",
                quote_ident(&target.table),
                quote_ident(column)
            ),
            [],
            |r| r.get(0),
        )
        .map_err(|e| duck_error("cannot count existing keys", e))?;
    let existing = u64::try_from(existing).unwrap_or(0).min(rows);
    Ok(BatchAck {
        rows,
        inserted: rows - existing,
        updated: existing,
        ..BatchAck::default()
    })
}
