//! Reading a database source the way the pipeline does.
//!
//! Every read is made three times: once taking records, once taking rows as
//! JSON text where the source can ([`ReadRequest::json_rows`], as the
//! pipeline asks when the sink takes it), once taking them as Arrow columns
//! where it can ([`ReadRequest::columns`]); the text and the columns are
//! decoded afterwards. All must give the same records, JSON fields and final
//! position, or the same error.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use futures::StreamExt;
use serde_json::Value;
use sluicegate_adapters_db::{DbSourceConfig, Provider};
use sluicegate_core::{
    BuildContext, Factory, FieldType, IncrementalWindow, MemoryBudget, Position, ReadRequest,
    Result, parse_section,
};

/// What one read produced.
pub(crate) struct Read {
    /// Every record, in order.
    pub(crate) records: Vec<Value>,
    /// Each batch's size and position.
    pub(crate) batches: Vec<(usize, Option<Position>)>,
    /// The fields the batches declared JSON.
    pub(crate) json_fields: BTreeSet<String>,
    /// The fields the batches declared typed, with their types.
    pub(crate) field_types: BTreeMap<String, FieldType>,
    /// How many batches of the JSON-text read came as JSON text.
    pub(crate) json_batches: usize,
    /// How many batches of the columns read came as columns.
    pub(crate) column_batches: usize,
}

impl Read {
    /// The values of `field` in order.
    pub(crate) fn column(&self, field: &str) -> Vec<Value> {
        self.records.iter().map(|r| r[field].clone()).collect()
    }
}

/// Validates, builds and reads a source section to the end (or its first error).
pub(crate) async fn read(
    provider: Provider,
    section: Value,
    resume: Option<Position>,
) -> Result<Read> {
    read_with(provider, section, resume, MemoryBudget::new(8 << 20), None).await
}

/// [`read`] of an incremental sync's window.
pub(crate) async fn read_window(
    provider: Provider,
    section: Value,
    window: IncrementalWindow,
    resume: Option<Position>,
) -> Result<Read> {
    let ctx = BuildContext::new("test", true).with_incremental(Some(window));
    read_in(provider, section, resume, MemoryBudget::new(8 << 20), ctx).await
}

/// [`read`] on a given budget, with relative paths resolved against `base_dir`.
pub(crate) async fn read_with(
    provider: Provider,
    section: Value,
    resume: Option<Position>,
    budget: MemoryBudget,
    base_dir: Option<&Path>,
) -> Result<Read> {
    let mut ctx = BuildContext::new("test", true);
    if let Some(dir) = base_dir {
        ctx.base_dir = dir.to_owned();
    }
    read_in(provider, section, resume, budget, ctx).await
}

async fn read_in(
    provider: Provider,
    section: Value,
    resume: Option<Position>,
    budget: MemoryBudget,
    ctx: BuildContext,
) -> Result<Read> {
    let as_records = read_once(provider, &section, &resume, &budget, &ctx, Form::Records).await;
    let as_text = read_once(provider, &section, &resume, &budget, &ctx, Form::Text).await;
    let as_columns = read_once(provider, &section, &resume, &budget, &ctx, Form::Columns).await;
    let column_batches = same_read(&as_records, as_columns, "as columns")?.column_batches;
    let text = same_read(&as_records, as_text, "as JSON text")?;
    Ok(Read {
        json_batches: text.json_batches,
        column_batches,
        ..as_records?
    })
}

/// `other` (the read in another form, `how`) after checking it gave what
/// `records` did (the same error, if any).
fn same_read(records: &Result<Read>, other: Result<Read>, how: &str) -> Result<Read> {
    match (records, other) {
        (Ok(records), Ok(other)) => {
            assert_eq!(records.records, other.records, "records read {how} differ");
            // Batches are cut by bytes too, and text and columns are counted
            // as they are: only where the read ends must agree.
            assert_eq!(
                records.batches.last().map(|b| &b.1),
                other.batches.last().map(|b| &b.1),
                "the read {how} ends elsewhere"
            );
            assert_eq!(records.json_fields, other.json_fields);
            assert_eq!(records.field_types, other.field_types);
            Ok(other)
        }
        (Err(a), Err(b)) => {
            assert_eq!(a.to_string(), b.to_string(), "errors differ {how}");
            Err(b)
        }
        (a, b) => panic!(
            "records: {:?}; {how}: {:?}",
            a.as_ref().map(|r| r.records.len()),
            b.map(|r| r.records.len())
        ),
    }
}

/// The form a read takes its rows in.
#[derive(Clone, Copy, PartialEq)]
enum Form {
    Records,
    Text,
    Columns,
}

async fn read_once(
    provider: Provider,
    section: &Value,
    resume: &Option<Position>,
    budget: &MemoryBudget,
    ctx: &BuildContext,
    form: Form,
) -> Result<Read> {
    let factory = sluicegate_adapters_db::factory(provider);
    let config: DbSourceConfig = parse_section(section.clone(), "source")?;
    factory.validate(&config, ctx)?;
    let source = factory.build(config, ctx).await?;
    let request = ReadRequest::new("test", budget.clone())
        .with_resume_from(resume.clone())
        .with_json_rows(form == Form::Text)
        .with_columns(form == Form::Columns);
    let mut stream = source.read(request);
    let mut out = Read {
        records: Vec::new(),
        batches: Vec::new(),
        json_fields: BTreeSet::new(),
        field_types: BTreeMap::new(),
        json_batches: 0,
        column_batches: 0,
    };
    while let Some(batch) = stream.next().await {
        let mut batch = batch?;
        out.batches.push((batch.len(), batch.position().cloned()));
        if let Some(json) = batch.json_fields() {
            out.json_fields.extend(json.iter().map(str::to_owned));
        }
        if let Some(types) = batch.field_types() {
            out.field_types
                .extend(types.iter().map(|(f, t)| (f.to_owned(), t)));
        }
        if batch.json_rows().is_some() {
            out.json_batches += 1;
            batch.decode_records()?;
        }
        if batch.column_rows().is_some() {
            out.column_batches += 1;
            batch.decode_records()?;
        }
        let (records, _, _lease) = batch.into_parts();
        out.records.extend(records.into_iter().map(Value::Object));
    }
    Ok(out)
}
