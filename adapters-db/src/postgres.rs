//! PostgreSQL: a read-only transaction, the query bound to a portal, and rows
//! fetched `fetchSize` at a time, so the server holds the rest.
//!
//! Values are read in the binary format and converted without loss (see
//! [`values::decode`]); types without a lossless JSON form are refused with a hint to
//! cast them in the query.

use std::error::Error as StdError;
use std::fmt::Write as _;
use std::time::Duration;

use async_trait::async_trait;
use bytes::BytesMut;
use futures::{TryStreamExt, pin_mut};
use serde_json::{Map, Value};
use sluicegate_core::{ErrorKind, FieldTypes, Record, Result};
use tokio_postgres::types::{Format, IsNull, ToSql, Type, to_sql_checked};
use tokio_postgres::{Client, NoTls, Row};

use crate::batcher::{Batcher, TextLayout};
use crate::error::{Origin, query_hint};
use crate::session::{Session, check_unique_columns, quote_with};

mod columns;
mod values;

use values::{PgValue, Raw, field_type, is_json, write_value};

type BoxError = Box<dyn StdError + Sync + Send>;

/// An open PostgreSQL connection.
pub(crate) struct PgSession {
    client: Client,
    origin: Origin,
}

/// Connects (10 s timeout unless the connection string sets one).
pub(crate) async fn connect(config: &tokio_postgres::Config, origin: Origin) -> Result<PgSession> {
    let mut config = config.clone();
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    if config.get_application_name().is_none() {
        config.application_name("sluicegate");
    }
    let (client, connection) = config
        .connect(NoTls)
        .await
        .map_err(|e| pg_error(&origin, &e))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "postgres connection ended");
        }
    });
    Ok(PgSession { client, origin })
}

/// Converts a driver error into the source's error.
fn pg_error(origin: &Origin, e: &tokio_postgres::Error) -> sluicegate_core::Error {
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        let mut detail = db.message().to_owned();
        if let Some(tokio_postgres::error::ErrorPosition::Original(pos)) = db.position() {
            let _ = write!(detail, " (at character {pos})");
        }
        if let Some(hint) = db.hint() {
            let _ = write!(detail, "; server hint: {hint}");
        }
        return match code {
            c if c.starts_with("28") => origin.rejected_login(detail),
            "3D000" => origin.error(
                ErrorKind::Config,
                format!("{detail}; check the database name in connectionString"),
            ),
            c if c.starts_with("08") || c.starts_with("57P") || c == "53300" => {
                origin.unreachable(detail)
            }
            _ => {
                let hint = query_hint(&detail);
                origin.query_failed(format!("{detail} [SQLSTATE {code}]"), hint)
            }
        };
    }
    let mut detail = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let _ = write!(detail, ": {c}");
        cause = c.source();
    }
    origin.unreachable(detail)
}

#[async_trait]
impl Session for PgSession {
    fn quote_ident(&self, name: &str) -> String {
        quote_with(name, '"')
    }

    fn param(&self, index: usize, _value: &Value) -> Result<String> {
        Ok(format!("${index}"))
    }

    async fn run(
        &mut self,
        sql: &str,
        params: &[Value],
        fetch: usize,
        out: &mut Batcher,
    ) -> Result<u64> {
        let origin = self.origin.clone();
        let err = |e: tokio_postgres::Error| pg_error(&origin, &e);
        let tx = self
            .client
            .build_transaction()
            .read_only(true)
            .start()
            .await
            .map_err(err)?;
        // The portal lives in this transaction while the sink works; a server
        // default that ends idle transactions would cut a slow run off.
        tx.batch_execute("SET LOCAL idle_in_transaction_session_timeout = 0")
            .await
            .map_err(err)?;
        let statement = tx.prepare(sql).await.map_err(err)?;
        let names: Vec<String> = statement
            .columns()
            .iter()
            .map(|c| c.name().to_owned())
            .collect();
        check_unique_columns(names.iter().map(String::as_str))
            .map_err(|m| origin.query_failed(m, "rename the column in query"))?;
        let json: Vec<bool> = statement
            .columns()
            .iter()
            .map(|c| is_json(c.type_()))
            .collect();
        out.declare_json(&names, &json);
        out.declare_types(FieldTypes::new(statement.columns().iter().filter_map(
            |c| field_type(c.type_(), c.type_modifier()).map(|t| (c.name().to_owned(), t)),
        )));
        // Rows go on as Arrow columns when the read takes them and every
        // column's type has an Arrow form (see `columns`), else as JSON text
        // when the read takes it, written straight from the binary values
        // (no map per row).
        let mut arrow = out
            .column_layout(names.iter().map(String::as_str))
            .and_then(|tracked| {
                let at = tracked.iter().map(|(_, i)| *i).collect();
                columns::PgColumns::new(statement.columns(), &names, at, (fetch, out.batch_bytes()))
                    .map(|columns| (columns, tracked))
            });
        let text_columns = out
            .text_layout(names.iter().map(String::as_str))
            .filter(|_| arrow.is_none())
            .map(|layout| TextColumns::new(statement.columns(), &json, layout));
        // The last row that went into columns, for the positions.
        let mut last: Option<Row> = None;
        let mut text = Vec::new();
        let mut tracked = Record::new();
        let params: Vec<TextParam> = params.iter().map(|v| TextParam(key_text(v))).collect();
        let portal = tx.bind_raw(&statement, params.iter()).await.map_err(err)?;
        let max_rows = i32::try_from(fetch).unwrap_or(i32::MAX);
        let mut total = 0u64;
        loop {
            out.reserve().await?;
            out.next_page();
            let rows = tx.query_portal_raw(&portal, max_rows).await.map_err(err)?;
            pin_mut!(rows);
            let mut fetched = 0usize;
            while let Some(row) = rows.try_next().await.map_err(err)? {
                fetched += 1;
                if let Some((columns, tracked_at)) = &mut arrow {
                    if columns.push(&row) {
                        last = Some(row);
                        if columns.is_full() {
                            hand_on(columns, tracked_at, last.as_ref(), &mut tracked, out).await?;
                        }
                        continue;
                    }
                    // The row takes the record path, after the rows before it.
                    hand_on(columns, tracked_at, last.as_ref(), &mut tracked, out).await?;
                }
                if let Some(columns) = &text_columns
                    && columns.write_row(&row, &mut text).is_ok()
                    && columns.tracked(&row, &mut tracked).is_ok()
                {
                    out.push_json(&text, &tracked).await?;
                    continue;
                }
                // As a record: a value that could not be written says why.
                let record = decode_row(&origin, &row, (&names, &json), out)?;
                if text_columns.is_some() || arrow.is_some() {
                    // After the rows before it, in order.
                    out.flush().await?;
                }
                out.push(record).await?;
                if arrow.is_some() {
                    // Alone: the columns after it make batches of their own.
                    out.flush().await?;
                }
            }
            if let Some((columns, tracked_at)) = &mut arrow {
                hand_on(columns, tracked_at, last.as_ref(), &mut tracked, out).await?;
            }
            total += fetched as u64;
            if fetched < fetch {
                break;
            }
        }
        tx.commit().await.map_err(err)?;
        Ok(total)
    }
}

/// Hands the rows gathered in `columns` on to `out`, with the values of the
/// columns the positions record (`tracked_at`: name and index) in `last`, the
/// last row gathered, put into `tracked`.
async fn hand_on(
    columns: &mut columns::PgColumns,
    tracked_at: &[(String, usize)],
    last: Option<&Row>,
    tracked: &mut Record,
    out: &mut Batcher,
) -> Result<()> {
    let Some(rows) = columns.take()? else {
        return Ok(());
    };
    if let Some(row) = last {
        tracked_values(row, tracked_at, tracked)
            .map_err(|e| sluicegate_core::Error::new(ErrorKind::Decode, e.to_string()))?;
    }
    out.push_columns(rows, tracked).await
}

/// Puts the row's values of the tracked columns (`(name, index)`) into
/// `record`, which holds the previous row's: one record for the whole read,
/// its fields replaced in place (a new map per row was 2% of a read's CPU).
fn tracked_values(
    row: &Row,
    tracked: &[(String, usize)],
    record: &mut Record,
) -> std::result::Result<(), BoxError> {
    for (name, i) in tracked {
        let value = row
            .try_get::<_, Option<PgValue>>(*i)?
            .map_or(Value::Null, |v| v.0);
        match record.get_mut(name.as_str()) {
            Some(slot) => *slot = value,
            None => {
                record.insert(name.clone(), value);
            }
        }
    }
    Ok(())
}

/// How a query's rows are written as JSON text: the layout (field names and
/// the columns the positions record), each column's type, and which columns
/// are JSON.
struct TextColumns {
    layout: TextLayout,
    types: Vec<Type>,
    json: Vec<bool>,
}

impl TextColumns {
    fn new(columns: &[tokio_postgres::Column], json: &[bool], layout: TextLayout) -> Self {
        Self {
            layout,
            types: columns.iter().map(|c| c.type_().clone()).collect(),
            json: json.to_vec(),
        }
    }

    /// Writes `row` as one JSON object into `out` (cleared first): each value
    /// as [`values::decode`] converts it, SQL NULL in a JSON column left out, as
    /// [`decode_row`] leaves it. `Err` when a value cannot be converted.
    fn write_row(&self, row: &Row, out: &mut Vec<u8>) -> std::result::Result<(), BoxError> {
        TextLayout::begin(out);
        for (i, ty) in self.types.iter().enumerate() {
            let raw = row.try_get::<_, Option<Raw<'_>>>(i)?;
            if raw.is_none() && self.json[i] {
                continue;
            }
            self.layout.field(i, out);
            match raw {
                None => out.extend_from_slice(b"null"),
                Some(Raw(raw)) => write_value(ty, raw, out)?,
            }
        }
        out.push(b'}');
        Ok(())
    }

    /// Puts the row's values of the tracked columns into `record` (see
    /// [`tracked_values`]).
    fn tracked(&self, row: &Row, record: &mut Record) -> std::result::Result<(), BoxError> {
        tracked_values(row, &self.layout.tracked, record)
    }
}

/// Decodes a row; a value that cannot be decoded is an error naming its
/// column and the row (its key, when the other columns decode). SQL NULL in a
/// JSON column (`json[i]`) is left out of the record, so it stays apart from
/// the JSON `null`.
fn decode_row(
    origin: &Origin,
    row: &Row,
    (names, json): (&[String], &[bool]),
    out: &Batcher,
) -> Result<Record> {
    let mut record = Map::with_capacity(names.len());
    let mut failed = None;
    for (i, name) in names.iter().enumerate() {
        match row.try_get::<_, Option<PgValue>>(i) {
            Ok(None) if json[i] => {}
            Ok(value) => {
                record.insert(name.clone(), value.map_or(Value::Null, |v| v.0));
            }
            Err(e) if failed.is_none() => {
                let ty = row.columns()[i].type_().name().to_owned();
                let why = e
                    .source()
                    .map_or_else(|| e.to_string(), ToString::to_string);
                let why = if why.contains(&ty) {
                    why
                } else {
                    format!("{why} (type {ty})")
                };
                failed = Some((name, why));
            }
            Err(_) => {}
        }
    }
    match failed {
        Some((name, why)) => Err(origin.undecodable(name, &out.locate(&record), why)),
        None => Ok(record),
    }
}

/// The keyset value as PostgreSQL text input (the server converts it to the
/// column's type).
fn key_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A parameter sent in the text format, so one type serves every key column.
#[derive(Debug)]
struct TextParam(String);

impl ToSql for TextParam {
    fn to_sql(&self, _ty: &Type, out: &mut BytesMut) -> std::result::Result<IsNull, BoxError> {
        out.extend_from_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }

    fn encode_format(&self, _ty: &Type) -> Format {
        Format::Text
    }

    to_sql_checked!();
}
