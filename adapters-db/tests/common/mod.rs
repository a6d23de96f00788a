//! Reading a database source the way the pipeline does.
//!
//! Every read is made twice: once taking records, once taking rows as JSON
//! text where the source can ([`ReadRequest::json_rows`], as the pipeline
//! asks when the sink takes it), decoded afterwards. Both must give the same
//! records, JSON fields and final position, or the same error.

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
    let as_records = read_once(provider, &section, &resume, &budget, &ctx, false).await;
    let as_text = read_once(provider, &section, &resume, &budget, &ctx, true).await;
    match (&as_records, as_text) {
        (Ok(records), Ok(text)) => {
            assert_eq!(
                records.records, text.records,
                "records read as JSON text differ"
            );
            // Batches are cut by bytes too, and text is counted as it is: only
            // where the read ends must agree.
            assert_eq!(
                records.batches.last().map(|b| &b.1),
                text.batches.last().map(|b| &b.1),
                "the read as JSON text ends elsewhere"
            );
            assert_eq!(records.json_fields, text.json_fields);
            assert_eq!(records.field_types, text.field_types);
            return Ok(Read {
                json_batches: text.json_batches,
                ..as_records.unwrap()
            });
        }
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "errors differ"),
        (a, b) => panic!(
            "records: {:?}; as JSON text: {:?}",
            a.as_ref().map(|r| r.records.len()),
            b.map(|r| r.records.len())
        ),
    }
    as_records
}

async fn read_once(
    provider: Provider,
    section: &Value,
    resume: &Option<Position>,
    budget: &MemoryBudget,
    ctx: &BuildContext,
    json_rows: bool,
) -> Result<Read> {
    let factory = sluicegate_adapters_db::factory(provider);
    let config: DbSourceConfig = parse_section(section.clone(), "source")?;
    factory.validate(&config, ctx)?;
    let source = factory.build(config, ctx).await?;
    let request = ReadRequest::new("test", budget.clone())
        .with_resume_from(resume.clone())
        .with_json_rows(json_rows);
    let mut stream = source.read(request);
    let mut out = Read {
        records: Vec::new(),
        batches: Vec::new(),
        json_fields: BTreeSet::new(),
        field_types: BTreeMap::new(),
        json_batches: 0,
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
        let (records, _, _lease) = batch.into_parts();
        out.records.extend(records.into_iter().map(Value::Object));
    }
    Ok(out)
}
