//! The `directus` sink: a Directus collection as a [`KeyedSink`], driven by the
//! core upsert action.
//!
//! Directus has no locales, versions or publishing step: the content model has
//! one locale, [`LOCALE`], so mapping keys are plain field names (`name`,
//! `tags[]`); every version is 0; nothing is published. Its quirks are handled
//! so that no change is lost silently:
//! - a missing collection answers 403, not 404: the message says it may not exist;
//! - a `PATCH` of an item that is gone answers 204 with no body: that update fails
//!   (and the record goes to the dead letters) instead of counting as written;
//! - decimals (and big integers) come back as strings: they are read as numbers,
//!   so `9.50` equals the source's `9.5` and the item is unchanged;
//! - a batch create is one transaction: when it is refused, its items are created
//!   one by one, so one bad record fails alone with Directus's message.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt;
use reqwest::Method;
use serde_json::{Map, Value, json};
use sluicegate_core::{
    BuildContext, ContentModel, DeleteMode, EntryFields, Error, ErrorKind, ExistingEntry, FieldDef,
    FieldKind, KeyedCapabilities, KeyedSink, Lookup, LookupPage, Result, Sink, SinkCapabilities,
    SinkWriter, StreamTarget, WriteOp, Written,
};
use sluicegate_http_client::{Attempt, retrying};
use sluicegate_upsert::UpsertOptions;

use super::config::DirectusSinkConfig;
use crate::api::{ApiClient, ApiError, Dialect, open_upsert};

/// The one locale of a Directus content model.
pub(crate) const LOCALE: &str = "default";
/// Keys per lookup request (they travel in the query string).
const LOOKUP_KEYS: usize = 100;

/// A Directus instance.
pub struct DirectusSink {
    client: Arc<ApiClient>,
    config: DirectusSinkConfig,
    description: String,
    dry_run: bool,
}

impl DirectusSink {
    /// Builds the sink (no request is made until a stream is opened).
    pub fn new(mut config: DirectusSinkConfig, ctx: &BuildContext) -> Result<Self> {
        config.apply_tuning(ctx);
        let resolved = config.resolve(ctx)?;
        let url = &resolved.url;
        let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
        let description = format!("directus at {}{port}", url.host_str().unwrap_or("?"));
        let client = ApiClient::new(
            config.client_settings(resolved.url, resolved.token, u32::MAX),
            Dialect {
                content_type: "application/json",
                limit_header: None,
                reset_header: "retry-after",
                parse_error: api_error,
            },
        )?;
        Ok(Self {
            client: Arc::new(client),
            config,
            description,
            dry_run: ctx.dry_run,
        })
    }

    fn options(&self) -> UpsertOptions {
        self.config.upsert_options(self.dry_run, false)
    }
}

#[async_trait]
impl Sink for DirectusSink {
    async fn open(&self, target: StreamTarget) -> Result<Box<dyn SinkWriter>> {
        let keyed = DirectusKeyed {
            client: self.client.clone(),
            create_chunk: self.config.create_chunk,
            max_concurrency: self.config.max_concurrency,
            primary_key: std::sync::OnceLock::new(),
        };
        open_upsert(&self.client, keyed, target, self.options())
    }

    fn describe(&self) -> String {
        self.description.clone()
    }

    fn capabilities(&self) -> SinkCapabilities {
        SinkCapabilities::none().with_preferred_batch_rows(500)
    }
}

/// The keyed-sink side for one stream (one collection).
pub(crate) struct DirectusKeyed {
    client: Arc<ApiClient>,
    create_chunk: usize,
    max_concurrency: usize,
    /// The collection's primary key field and its model, read by `model`.
    primary_key: std::sync::OnceLock<(String, Vec<FieldDef>)>,
}

fn key_field(target: &StreamTarget) -> &str {
    let field = target.key_field.as_deref().unwrap_or("id");
    field.split('.').next().unwrap_or(field)
}

/// Directus's field type → the content model's kind; `None` for fields that
/// hold no column (aliases: relations shown from the other side, groups).
fn field_kind(directus_type: &str) -> Option<FieldKind> {
    Some(match directus_type {
        "alias" => return None,
        "text" => FieldKind::Text,
        "integer" | "bigInteger" => FieldKind::Integer,
        "float" | "decimal" => FieldKind::Number,
        "boolean" => FieldKind::Boolean,
        "date" | "dateTime" | "timestamp" => FieldKind::Date,
        "json"
        | "geometry"
        | "geometry.Point"
        | "geometry.LineString"
        | "geometry.Polygon"
        | "geometry.MultiPoint"
        | "geometry.MultiLineString"
        | "geometry.MultiPolygon" => FieldKind::Object,
        "csv" => FieldKind::Array,
        _ => FieldKind::Symbol,
    })
}

fn api_error(method: &Method, path: &str, status: u16, body: &[u8]) -> ApiError {
    let parsed: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let errors = parsed["errors"].as_array();
    let first = errors.and_then(|e| e.first());
    let id = first
        .and_then(|e| e["extensions"]["code"].as_str())
        .unwrap_or("Error")
        .to_owned();
    let message = match errors {
        Some(errors) if !errors.is_empty() => errors
            .iter()
            .take(5)
            .filter_map(|e| e["message"].as_str())
            .collect::<Vec<_>>()
            .join("; "),
        _ => String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned(),
    };
    ApiError::Api {
        method: method.to_string(),
        path: path.to_owned(),
        status,
        id,
        message,
        details: String::new(),
    }
}

/// Percent-encodes a path segment or query value.
fn encode(value: &str) -> String {
    sluicegate_http_client::encode_component(value)
}

/// A primary key as text (Directus keys are integers or strings).
fn id_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A value as the model holds it: decimals and big integers come back as
/// strings; they are numbers.
fn normalized(kind: FieldKind, value: &Value) -> Value {
    match (kind, value) {
        (FieldKind::Integer, Value::String(s)) => {
            s.parse::<i64>().map_or_else(|_| value.clone(), Value::from)
        }
        (FieldKind::Number, Value::String(s)) => s
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map_or_else(|| value.clone(), Value::Number),
        _ => value.clone(),
    }
}

/// The plain item body of typed fields (`{field: {LOCALE: value}}` → `{field: value}`).
/// The key of an item body, as text.
fn item_key(body: &Map<String, Value>, field: &str) -> Option<String> {
    id_text(body.get(field)?)
}

fn item_body(fields: &EntryFields) -> Map<String, Value> {
    fields
        .iter()
        .filter_map(|(field, locales)| Some((field.clone(), locales.get(LOCALE)?.clone())))
        .collect()
}

impl DirectusKeyed {
    fn pk(&self) -> Result<&(String, Vec<FieldDef>)> {
        self.primary_key.get().ok_or_else(|| {
            Error::new(
                ErrorKind::Contract,
                "the directus sink was used before its model was read",
            )
        })
    }

    fn existing(&self, item: &Value) -> Option<ExistingEntry> {
        let (pk, fields) = self.pk().ok()?;
        let id = id_text(&item[pk])?;
        let mut out = EntryFields::new();
        for f in fields {
            if let Some(v) = item.get(&f.id) {
                out.insert(f.id.clone(), json!({ LOCALE: normalized(f.kind, v) }));
            }
        }
        Some(ExistingEntry {
            id,
            version: 0,
            fields: out,
            metadata: None,
            publish_pending: false,
        })
    }

    fn items_url(&self, target: &StreamTarget, rest: &str) -> Result<reqwest::Url> {
        self.client
            .url(&format!("items/{}{rest}", encode(&target.table)))
    }

    async fn query(
        &self,
        target: &StreamTarget,
        query: String,
    ) -> Result<(Vec<ExistingEntry>, Option<u64>)> {
        let url = self.items_url(target, &format!("?{query}"))?;
        let body = self
            .client
            .call(Method::GET, url, None, Vec::new())
            .await
            .map_err(|e| collection_error(e, &target.table))?;
        let entries = body["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|item| self.existing(item))
            .collect();
        let total = match &body["meta"]["total_count"] {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.parse().ok(),
            _ => None,
        };
        Ok((entries, total))
    }

    /// Creates items in chunks; a refused chunk is retried item by item.
    async fn create_all(
        &self,
        target: &StreamTarget,
        bodies: Vec<Map<String, Value>>,
    ) -> Vec<Result<Written>> {
        let mut out: Vec<Result<Written>> = Vec::with_capacity(bodies.len());
        for chunk in bodies.chunks(self.create_chunk) {
            let start = out.len();
            match self
                .create(
                    target,
                    Value::Array(chunk.iter().cloned().map(Value::Object).collect()),
                )
                .await
            {
                Ok(created) if created.len() == chunk.len() => {
                    out.extend(created.into_iter().map(Ok))
                }
                Ok(created) => {
                    let text = format!(
                        "directus created {} of {} items in one request; the rest are unaccounted",
                        created.len(),
                        chunk.len()
                    );
                    let missing = chunk.len().saturating_sub(created.len());
                    out.extend(created.into_iter().take(chunk.len()).map(Ok));
                    out.extend((0..missing).map(|_| Err(Error::sink(text.clone()))));
                }
                Err(e) if chunk.len() > 1 || e.is_retryable() => {
                    // A refusal: one transaction, nothing was created. A failure
                    // that may have come after Directus acted (a lost answer; a
                    // create is not repeated blindly): look the keys up first.
                    let found = if e.is_retryable() {
                        match self.created_before(target, chunk).await {
                            Ok(found) => found,
                            Err(e) => {
                                out.extend(
                                    chunk
                                        .iter()
                                        .map(|_| Err(Error::new(e.kind(), e.to_string()))),
                                );
                                continue;
                            }
                        }
                    } else {
                        HashMap::new()
                    };
                    let singles = futures::stream::iter(chunk.iter().cloned())
                        .map(|body| {
                            let known = item_key(&body, key_field(target))
                                .and_then(|k| found.get(&k).cloned());
                            async move {
                                match known {
                                    Some(written) => Ok(written),
                                    None => self.create_one(target, body).await,
                                }
                            }
                        })
                        .buffered(self.max_concurrency);
                    out.extend(singles.collect::<Vec<_>>().await);
                }
                Err(e) => out.push(Err(e)),
            }
            let created = out[start..].iter().filter(|r| r.is_ok()).count();
            target.stats.add_entries_written(created as u64);
        }
        out
    }

    /// Creates one item. After a failure that may have come after Directus
    /// acted, its key is looked up: found, it was created; not found, the
    /// create is sent again (up to the configured attempts).
    async fn create_one(&self, target: &StreamTarget, body: Map<String, Value>) -> Result<Written> {
        // The client paces and counts each request; this loop only decides
        // whether a create is sent again.
        let retry = self.client.retry_policy();
        let body = &body;
        retrying(&retry, None, None, |attempt| async move {
            let error = match self.create(target, Value::Object(body.clone())).await {
                Ok(mut written) => return Attempt::Done(written.remove(0)),
                Err(e) if e.is_retryable() => e,
                Err(e) => return Attempt::Fail(e),
            };
            let chunk = std::slice::from_ref(body);
            let found = match self.created_before(target, chunk).await {
                Ok(found) => found,
                Err(e) => return Attempt::Fail(e),
            };
            match item_key(body, key_field(target)).and_then(|k| found.get(&k).cloned()) {
                Some(written) => Attempt::Done(written),
                None => Attempt::Again {
                    error,
                    wait: retry.backoff(attempt),
                },
            }
        })
        .await
        .map_err(|gave_up| gave_up.error)
    }

    /// The items of `chunk` that exist already, by key: after a create whose
    /// answer was lost, those it made.
    async fn created_before(
        &self,
        target: &StreamTarget,
        chunk: &[Map<String, Value>],
    ) -> Result<HashMap<String, Written>> {
        let field = key_field(target);
        let keys: Vec<String> = chunk.iter().filter_map(|b| item_key(b, field)).collect();
        let found = self.lookup(target, Lookup::Keys(&keys)).await?;
        Ok(found
            .entries
            .into_iter()
            .filter_map(|e| {
                let key = id_text(e.fields.get(field)?.get(LOCALE)?)?;
                Some((
                    key,
                    Written {
                        id: e.id,
                        version: 0,
                    },
                ))
            })
            .collect())
    }

    async fn create(&self, target: &StreamTarget, body: Value) -> Result<Vec<Written>> {
        let (pk, _) = self.pk()?;
        let url = self.items_url(target, "")?;
        let response = self
            .client
            .call(Method::POST, url, Some(&body), Vec::new())
            .await?;
        let items = match &response["data"] {
            Value::Array(items) => items.clone(),
            Value::Object(_) => vec![response["data"].clone()],
            _ => Vec::new(),
        };
        let written: Vec<Written> = items
            .iter()
            .filter_map(|item| {
                Some(Written {
                    id: id_text(&item[pk])?,
                    version: 0,
                })
            })
            .collect();
        if written.is_empty() {
            return Err(Error::sink(
                "directus answered a create without the created item; is the token allowed to read the collection?",
            ));
        }
        Ok(written)
    }

    /// Updates one item with the fields that differ from what was read.
    async fn update(
        &self,
        target: &StreamTarget,
        existing: &ExistingEntry,
        fields: &EntryFields,
    ) -> Result<Written> {
        let old = item_body(&existing.fields);
        let changed: Map<String, Value> = item_body(fields)
            .into_iter()
            .filter(|(k, v)| old.get(k) != Some(v))
            .collect();
        let url = self.items_url(target, &format!("/{}", encode(&existing.id)))?;
        let response = self
            .client
            .call(
                Method::PATCH,
                url,
                Some(&Value::Object(changed)),
                Vec::new(),
            )
            .await?;
        // 204 and no body: nothing matched, the item is gone.
        if response.is_null() {
            return Err(Error::sink(format!(
                "item {} of collection '{}' no longer exists (deleted while the sync ran); run again to create it",
                existing.id, target.table
            )));
        }
        Ok(Written {
            id: existing.id.clone(),
            version: 0,
        })
    }
}

/// Directus answers 403 for a collection that does not exist.
fn collection_error(err: ApiError, collection: &str) -> Error {
    match err.status() {
        Some(403) => Error::new(
            ErrorKind::Config,
            format!(
                "collection '{collection}' does not exist in Directus, or the token may not access it ({err}); create it or grant the token's role access"
            ),
        ),
        Some(401) => Error::new(
            ErrorKind::Auth,
            format!("Directus refused the token ({err}); check the sink's tokenEnv or tokenFile"),
        ),
        _ => err.into(),
    }
}

#[async_trait]
impl KeyedSink for DirectusKeyed {
    fn capabilities(&self) -> KeyedCapabilities {
        KeyedCapabilities {
            max_lookup_keys: LOOKUP_KEYS,
            max_page_size: 500,
            publish: false,
            delete_modes: &[DeleteMode::Hard],
        }
    }

    async fn model(&self, target: &StreamTarget) -> Result<ContentModel> {
        let url = self
            .client
            .url(&format!("fields/{}", encode(&target.table)))?;
        let body = self
            .client
            .call(Method::GET, url, None, Vec::new())
            .await
            .map_err(|e| collection_error(e, &target.table))?;
        let mut pk = None;
        let mut fields = Vec::new();
        for f in body["data"].as_array().into_iter().flatten() {
            let Some(id) = f["field"].as_str() else {
                continue;
            };
            if f["schema"]["is_primary_key"] == true {
                pk = Some(id.to_owned());
                continue;
            }
            let Some(kind) = field_kind(f["type"].as_str().unwrap_or("string")) else {
                continue;
            };
            fields.push(FieldDef {
                id: id.to_owned(),
                kind,
                localized: false,
                link_type: None,
                items: (kind == FieldKind::Array).then_some((FieldKind::Symbol, None)),
            });
        }
        let pk = pk.ok_or_else(|| {
            Error::config(format!(
                "collection '{}' has no primary key field (a folder collection?)",
                target.table
            ))
        })?;
        let _ = self.primary_key.set((pk, fields.clone()));
        Ok(ContentModel {
            name: target.table.clone(),
            display_field: None,
            fields,
            locales: vec![LOCALE.to_owned()],
        })
    }

    async fn lookup(&self, target: &StreamTarget, lookup: Lookup<'_>) -> Result<LookupPage> {
        let (pk, _) = self.pk()?;
        let (entries, total) = match lookup {
            Lookup::Page { skip, limit } => {
                self.query(
                    target,
                    format!(
                        "fields=*&sort={}&limit={limit}&offset={skip}&meta=total_count",
                        encode(pk)
                    ),
                )
                .await?
            }
            Lookup::Keys(values) | Lookup::Ids(values) => {
                let field = match lookup {
                    Lookup::Keys(_) => key_field(target),
                    _ => pk.as_str(),
                };
                let mut entries = Vec::new();
                for chunk in values.chunks(LOOKUP_KEYS) {
                    let filter = json!({ field: { "_in": chunk } }).to_string();
                    let (found, _) = self
                        .query(
                            target,
                            format!("fields=*&limit=-1&filter={}", encode(&filter)),
                        )
                        .await?;
                    entries.extend(found);
                }
                (entries, None)
            }
        };
        Ok(LookupPage { entries, total })
    }

    async fn write(&self, target: &StreamTarget, ops: Vec<WriteOp>) -> Vec<Result<Written>> {
        let (pk, _) = match self.pk() {
            Ok(pk) => pk,
            Err(e) => {
                return ops
                    .iter()
                    .map(|_| Err(Error::new(e.kind(), e.to_string())))
                    .collect();
            }
        };
        // Creates go in chunks, updates one request each; results in op order.
        let mut creates = Vec::new();
        let mut slots: Vec<Option<Result<Written>>> = Vec::with_capacity(ops.len());
        let mut updates = Vec::new();
        for (i, op) in ops.into_iter().enumerate() {
            slots.push(None);
            match op {
                WriteOp::Create { id, fields } => {
                    let mut body = item_body(&fields);
                    if let Some(id) = id {
                        body.insert(pk.clone(), Value::String(id));
                    }
                    creates.push((i, body));
                }
                WriteOp::Update { existing, fields } => updates.push((i, existing, fields)),
            }
        }
        let (indexes, bodies): (Vec<usize>, Vec<_>) = creates.into_iter().unzip();
        for (i, result) in indexes
            .into_iter()
            .zip(self.create_all(target, bodies).await)
        {
            slots[i] = Some(result);
        }
        let updated: Vec<(usize, Result<Written>)> = futures::stream::iter(updates)
            .map(|(i, existing, fields)| async move {
                let result = self.update(target, &existing, &fields).await;
                if result.is_ok() {
                    target.stats.add_entries_written(1);
                }
                (i, result)
            })
            .buffer_unordered(self.max_concurrency)
            .collect()
            .await;
        for (i, result) in updated {
            slots[i] = Some(result);
        }
        slots
            .into_iter()
            .map(|s| s.unwrap_or_else(|| Err(Error::sink("no result for a write"))))
            .collect()
    }

    async fn publish(&self, _target: &StreamTarget, items: Vec<Written>) -> Vec<Result<Written>> {
        // Directus has no publishing step: written items are live.
        items.into_iter().map(Ok).collect()
    }

    /// Deletes the items (Directus has no archive of its own). Directus
    /// answers 403 for an item that does not exist, as for a token without the
    /// right: that fails, since the two cannot be told apart.
    async fn remove(
        &self,
        target: &StreamTarget,
        entries: Vec<ExistingEntry>,
        _mode: DeleteMode,
    ) -> Vec<Result<()>> {
        futures::stream::iter(entries)
            .map(|entry| async move {
                let url = self.client.url(&format!(
                    "items/{}/{}",
                    encode(&target.table),
                    encode(&entry.id)
                ))?;
                match self
                    .client
                    .call(Method::DELETE, url, None, Vec::new())
                    .await
                {
                    Ok(_) => Ok(()),
                    Err(e) if e.status() == Some(404) => Ok(()),
                    Err(e) => Err(collection_error(e, &target.table)),
                }
            })
            .buffered(self.max_concurrency)
            .collect()
            .await
    }

    fn describe(&self) -> String {
        "directus collection".to_owned()
    }
}
