//! The `contentful` sink: the Contentful Management API as a [`KeyedSink`],
//! driven by the core upsert action.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use reqwest::Method;
use serde_json::{Map, Value, json};
use sluicegate_core::{
    BuildContext, ContentModel, DeleteMode, EntryFields, Error, ErrorKind, ExistingEntry, FieldDef,
    FieldKind, KeyedCapabilities, KeyedSink, Lookup, LookupPage, Result, Sink, SinkCapabilities,
    SinkWriter, StreamTarget, WriteOp, Written,
};
use sluicegate_upsert::UpsertOptions;

use super::client::cma_client;
use super::config::ContentfulSinkConfig;
use crate::api::{ApiClient, ApiError, open_upsert};

/// Longest query string sent for lookups (the API refuses very long URLs).
const MAX_QUERY_CHARS: usize = 6000;
/// Bulk publish actions in flight at once.
const PUBLISH_ACTIONS_IN_FLIGHT: usize = 4;
/// Keys per lookup request, before the URL-length limit.
const LOOKUP_KEYS: usize = 200;

/// A Contentful space environment.
pub struct ContentfulSink {
    client: Arc<ApiClient>,
    config: ContentfulSinkConfig,
    description: String,
    dry_run: bool,
    publish: bool,
}

impl ContentfulSink {
    /// Builds the sink (no request is made until a stream is opened).
    pub fn new(mut config: ContentfulSinkConfig, ctx: &BuildContext) -> Result<Self> {
        config.apply_tuning(ctx);
        let resolved = config.resolve(ctx)?;
        let client = cma_client(&resolved, &config)?;
        let description = format!(
            "contentful space {} environment {} at {}",
            resolved.space_id,
            resolved.environment_id,
            resolved.base_url.host_str().unwrap_or("?")
        );
        Ok(Self {
            client: Arc::new(client),
            publish: config.publish && ctx.publish,
            config,
            description,
            dry_run: ctx.dry_run,
        })
    }

    fn options(&self) -> UpsertOptions {
        self.config.upsert_options(self.dry_run, self.publish)
    }
}

#[async_trait]
impl Sink for ContentfulSink {
    async fn open(&self, target: StreamTarget) -> Result<Box<dyn SinkWriter>> {
        let keyed = ContentfulKeyed {
            client: self.client.clone(),
            publish_chunk: self.config.publish_chunk,
            max_concurrency: self.config.max_concurrency,
            page_limit: AtomicU64::new(u64::MAX),
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

/// The keyed-sink side: lookups, writes and publishing for one stream.
pub(crate) struct ContentfulKeyed {
    client: Arc<ApiClient>,
    publish_chunk: usize,
    max_concurrency: usize,
    /// The largest page the API answered without "Response size too big".
    page_limit: AtomicU64,
}

fn key_field(target: &StreamTarget) -> &str {
    let field = target.key_field.as_deref().unwrap_or("id");
    field.split('.').next().unwrap_or(field)
}

fn existing(entry: &Value) -> Option<ExistingEntry> {
    let version = entry["sys"]["version"].as_u64()?;
    Some(ExistingEntry {
        id: entry["sys"]["id"].as_str()?.to_owned(),
        version,
        fields: entry["fields"].as_object().cloned().unwrap_or_default(),
        metadata: entry.get("metadata").cloned(),
        publish_pending: !live(entry, version),
    })
}

/// Whether an entry's current version is the published one: publishing makes
/// the published version the version it had, and adds one to the version.
fn live(entry: &Value, version: u64) -> bool {
    entry["sys"]["publishedVersion"]
        .as_u64()
        .is_some_and(|p| p + 1 == version)
}

fn field_kind(name: &str) -> FieldKind {
    match name {
        "Text" => FieldKind::Text,
        "Integer" => FieldKind::Integer,
        "Number" => FieldKind::Number,
        "Boolean" => FieldKind::Boolean,
        "Date" => FieldKind::Date,
        "Link" => FieldKind::Link,
        "Array" => FieldKind::Array,
        "Location" => FieldKind::Location,
        "Object" => FieldKind::Object,
        "RichText" => FieldKind::RichText,
        _ => FieldKind::Symbol,
    }
}

/// Percent-encodes a query value (commas kept: they separate `[in]` values).
fn encode(value: &str) -> String {
    sluicegate_http_client::encode_component(value).replace("%2C", ",")
}

/// The entries a set of keys can be matched to with `[in]` queries that stay
/// under the URL limit; keys holding commas need an exact-match query each.
fn in_queries(prefix: &str, values: &[String]) -> Vec<String> {
    let mut queries = Vec::new();
    let mut current: Vec<String> = Vec::new();
    let mut len = 0;
    for v in values {
        if v.contains(',') {
            queries.push(format!("{}={}", prefix, encode(v).replace(',', "%2C")));
            continue;
        }
        let e = encode(v);
        if !current.is_empty()
            && (len + e.len() + 1 > MAX_QUERY_CHARS || current.len() >= LOOKUP_KEYS)
        {
            queries.push(format!("{prefix}[in]={}", current.join(",")));
            current.clear();
            len = 0;
        }
        len += e.len() + 1;
        current.push(e);
    }
    if !current.is_empty() {
        queries.push(format!("{prefix}[in]={}", current.join(",")));
    }
    queries
}

impl ContentfulKeyed {
    async fn query(
        &self,
        target: &StreamTarget,
        query: &str,
        limit: u64,
        skip: u64,
    ) -> Result<(Vec<ExistingEntry>, u64)> {
        let ct = encode(&target.table);
        // A page size the API refused as too big stays halved for the stream.
        let mut limit = limit.min(self.page_limit.load(Ordering::Relaxed)).max(1);
        loop {
            let relative = format!(
                "entries?content_type={ct}&{query}&sys.archivedAt[exists]=false&limit={limit}&skip={skip}&order=sys.createdAt,sys.id"
            );
            match self.client.get(&relative).await {
                Ok(body) => {
                    let entries = body["items"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(existing)
                        .collect();
                    return Ok((entries, body["total"].as_u64().unwrap_or(0)));
                }
                // The API refuses responses over 7 MB; ask for smaller pages.
                Err(e) if e.to_string().contains("Response size too big") && limit > 1 => {
                    limit /= 2;
                    self.page_limit.fetch_min(limit, Ordering::Relaxed);
                    tracing::info!(content_type = %target.table, limit, "response too big; asking for smaller pages from now on");
                }
                Err(e) => return Err(e.with_context("content_type", &target.table)),
            }
        }
    }

    async fn write_one(&self, target: &StreamTarget, op: WriteOp) -> Result<Written> {
        match op {
            WriteOp::Create { id, fields } => {
                let id = id.unwrap_or_else(new_id);
                let body = json!({ "fields": fields });
                let url = self.client.url(&format!("entries/{}", encode(&id)))?;
                let headers = vec![
                    ("x-contentful-content-type", target.table.clone()),
                    ("x-contentful-version", "0".to_owned()),
                ];
                match self
                    .client
                    .call(Method::PUT, url, Some(&body), headers)
                    .await
                {
                    Ok(entry) => written(&entry),
                    // An earlier attempt of this very request (a timeout or a
                    // broken answer, retried) may have created the entry: if it
                    // holds exactly these fields, the create succeeded.
                    Err(ApiError::Api { status: 409, .. }) => {
                        let current = self.client.get(&format!("entries/{}", encode(&id))).await?;
                        match existing(&current) {
                            Some(entry) if entry.fields == fields => written(&current),
                            _ => Err(Error::sink(format!(
                                "entry id {id} is already taken by another entry; run again to create it under a new id"
                            ))),
                        }
                    }
                    Err(e) => Err(e.into()),
                }
            }
            WriteOp::Update {
                existing: base,
                fields,
            } => {
                match self.put_update(&base, &fields).await {
                    Err(ApiError::Api { status: 409, .. }) => {
                        // Someone changed the entry since it was read: apply our
                        // changes onto the current version, once.
                        let current = self
                            .client
                            .get(&format!("entries/{}", encode(&base.id)))
                            .await?;
                        let current = existing(&current).ok_or_else(|| {
                            Error::sink(format!("entry {} came back without sys", base.id))
                        })?;
                        let rebased = rebase(&base.fields, &fields, &current.fields);
                        tracing::info!(id = %base.id, "version conflict; retrying on the current version");
                        let entry = self.put_update(&current, &rebased).await?;
                        written(&entry)
                    }
                    Err(e) => Err(e.into()),
                    Ok(entry) => written(&entry),
                }
            }
        }
    }

    async fn put_update(
        &self,
        base: &ExistingEntry,
        fields: &EntryFields,
    ) -> std::result::Result<Value, ApiError> {
        let body = json!({ "fields": fields, "metadata": base.metadata.clone().unwrap_or(json!({"tags": []})) });
        let url = self
            .client
            .url(&format!("entries/{}", encode(&base.id)))
            .map_err(|e| ApiError::Network {
                method: "PUT".into(),
                path: base.id.clone(),
                message: e.to_string(),
            })?;
        self.client
            .call(
                Method::PUT,
                url,
                Some(&body),
                vec![("x-contentful-version", base.version.to_string())],
            )
            .await
    }

    async fn publish_chunk(&self, items: Vec<Written>) -> Vec<Result<Written>> {
        match self.bulk_publish(&items).await {
            Ok(()) => items
                .into_iter()
                .map(|w| {
                    Ok(Written {
                        id: w.id,
                        version: w.version + 1,
                    })
                })
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, items = items.len(), "bulk publish failed; publishing one by one");
                futures::stream::iter(items)
                    .map(|w| self.publish_one(w))
                    .buffered(self.max_concurrency)
                    .collect()
                    .await
            }
        }
    }

    async fn bulk_publish(&self, items: &[Written]) -> Result<()> {
        let links: Vec<Value> = items
            .iter()
            .map(|w| json!({"sys": {"type": "Link", "linkType": "Entry", "id": w.id, "version": w.version}}))
            .collect();
        let body = json!({"entities": {"sys": {"type": "Array"}, "items": links}});
        let url = self.client.url("bulk_actions/publish")?;
        let action = self
            .client
            .call(Method::POST, url, Some(&body), Vec::new())
            .await?;
        let id = action["sys"]["id"]
            .as_str()
            .ok_or_else(|| Error::sink("bulk action came back without an id"))?
            .to_owned();
        let mut wait = Duration::from_millis(50);
        for _ in 0..120 {
            tokio::time::sleep(wait).await;
            let status = self
                .client
                .get(&format!("bulk_actions/actions/{}", encode(&id)))
                .await?;
            match status["sys"]["status"].as_str() {
                Some("succeeded") => return Ok(()),
                Some("failed") => {
                    return Err(Error::sink(format!(
                        "bulk publish {id} failed: {}",
                        status["error"]["message"].as_str().unwrap_or("no message")
                    )));
                }
                _ => wait = (wait * 2).min(Duration::from_secs(2)),
            }
        }
        Err(Error::sink(format!("bulk publish {id} did not finish")))
    }

    /// Unpublishes an entry if it is published, then deletes (`Hard`) or
    /// archives it; an entry already gone (or already archived) is done.
    async fn remove_one(&self, id: &str, mode: DeleteMode) -> Result<()> {
        let path = format!("entries/{}", encode(id));
        let current = match self.client.get(&path).await {
            Ok(entry) => entry,
            Err(e) if e.to_string().contains(" 404 ") => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut version = current["sys"]["version"].as_u64().unwrap_or(0);
        if current["sys"]["archivedVersion"].is_u64() && mode == DeleteMode::Archive {
            return Ok(());
        }
        if current["sys"]["publishedVersion"].is_u64() {
            let url = self.client.url(&format!("{path}/published"))?;
            let entry = self
                .client
                .call(
                    Method::DELETE,
                    url,
                    None,
                    vec![("x-contentful-version", version.to_string())],
                )
                .await?;
            version = entry["sys"]["version"].as_u64().unwrap_or(version + 1);
        }
        match mode {
            DeleteMode::Archive => {
                let url = self.client.url(&format!("{path}/archived"))?;
                self.client
                    .call(
                        Method::PUT,
                        url,
                        None,
                        vec![("x-contentful-version", version.to_string())],
                    )
                    .await?;
            }
            _ => {
                let url = self.client.url(&path)?;
                match self
                    .client
                    .call(
                        Method::DELETE,
                        url,
                        None,
                        vec![("x-contentful-version", version.to_string())],
                    )
                    .await
                {
                    Ok(_) | Err(ApiError::Api { status: 404, .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(())
    }

    async fn publish_one(&self, item: Written) -> Result<Written> {
        let url = self
            .client
            .url(&format!("entries/{}/published", encode(&item.id)))?;
        let answer = self
            .client
            .call(
                Method::PUT,
                url,
                None,
                vec![("x-contentful-version", item.version.to_string())],
            )
            .await;
        match answer {
            Ok(entry) => written(&entry),
            // The version moved on: a bulk action whose answer was lost, or an
            // earlier attempt of this request, may have published it. Only
            // what the entry says counts.
            Err(ApiError::Api { status: 409, .. }) => {
                let current = self
                    .client
                    .get(&format!("entries/{}", encode(&item.id)))
                    .await?;
                let published = current["sys"]["publishedVersion"].as_u64();
                if published.is_some_and(|p| p >= item.version) {
                    written(&current)
                } else {
                    Err(Error::sink(format!(
                        "entry {} was changed by someone else (version {} is now {}) before it could be published; run again to publish the current version",
                        item.id, item.version, current["sys"]["version"]
                    )))
                }
            }
            Err(e) => Err(e.into()),
        }
    }
}

fn written(entry: &Value) -> Result<Written> {
    Ok(Written {
        id: entry["sys"]["id"]
            .as_str()
            .ok_or_else(|| Error::sink("the API answered an entry without sys.id"))?
            .to_owned(),
        version: entry["sys"]["version"]
            .as_u64()
            .ok_or_else(|| Error::sink("the API answered an entry without sys.version"))?,
    })
}

/// A new entry id: 22 characters of [A-Za-z0-9], like the API's own.
fn new_id() -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    (0..22)
        .map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())] as char)
        .collect()
}

/// Applies the changes between `base` and `ours` onto `theirs` (a three-way
/// merge per field and locale), so a retry after a conflict keeps both sides.
fn rebase(base: &EntryFields, ours: &EntryFields, theirs: &EntryFields) -> EntryFields {
    let mut out = theirs.clone();
    let fields: std::collections::BTreeSet<&String> = base.keys().chain(ours.keys()).collect();
    for field in fields {
        let empty = Map::new();
        let b = base.get(field).and_then(Value::as_object).unwrap_or(&empty);
        let o = ours.get(field).and_then(Value::as_object).unwrap_or(&empty);
        let locales: std::collections::BTreeSet<&String> = b.keys().chain(o.keys()).collect();
        for locale in locales {
            if b.get(locale) == o.get(locale) {
                continue;
            }
            let slot = out
                .entry(field.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(m) = slot {
                match o.get(locale) {
                    Some(v) => {
                        m.insert(locale.clone(), v.clone());
                    }
                    None => {
                        m.remove(locale);
                    }
                }
            }
        }
    }
    out
}

#[async_trait]
impl KeyedSink for ContentfulKeyed {
    fn capabilities(&self) -> KeyedCapabilities {
        KeyedCapabilities {
            max_lookup_keys: LOOKUP_KEYS * 5,
            max_page_size: 1000,
            publish: true,
            delete_modes: &[DeleteMode::Hard, DeleteMode::Archive],
        }
    }

    async fn model(&self, target: &StreamTarget) -> Result<ContentModel> {
        let locales = self.client.get("locales?limit=1000").await?;
        let mut codes: Vec<(bool, String)> = locales["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| Some((l["default"] == true, l["code"].as_str()?.to_owned())))
            .collect();
        codes.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        let ct = self
            .client
            .get(&format!("content_types/{}", encode(&target.table)))
            .await
            .map_err(|e| {
                if e.to_string().contains(" 404 ") {
                    Error::config(format!(
                        "content type '{}' does not exist in this space environment; create it first",
                        target.table
                    ))
                } else {
                    e
                }
            })?;
        let fields = ct["fields"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| {
                Some(FieldDef {
                    id: f["id"].as_str()?.to_owned(),
                    kind: field_kind(f["type"].as_str().unwrap_or("Symbol")),
                    localized: f["localized"] == true,
                    link_type: f["linkType"].as_str().map(str::to_owned),
                    items: f["items"]["type"].as_str().map(|t| {
                        (
                            field_kind(t),
                            f["items"]["linkType"].as_str().map(str::to_owned),
                        )
                    }),
                })
            })
            .collect();
        if codes.is_empty() {
            return Err(Error::new(
                ErrorKind::Sink,
                "the space environment has no locales",
            ));
        }
        Ok(ContentModel {
            name: target.table.clone(),
            display_field: ct["displayField"].as_str().map(str::to_owned),
            fields,
            locales: codes.into_iter().map(|(_, c)| c).collect(),
        })
    }

    async fn lookup(&self, target: &StreamTarget, lookup: Lookup<'_>) -> Result<LookupPage> {
        let (prefix, values) = match lookup {
            Lookup::Page { skip, limit } => {
                let (entries, total) = self
                    .query(target, "select=sys,fields,metadata", limit, skip)
                    .await?;
                return Ok(LookupPage {
                    entries,
                    total: Some(total),
                });
            }
            Lookup::Keys(keys) => (format!("fields.{}", encode(key_field(target))), keys),
            Lookup::Ids(ids) => ("sys.id".to_owned(), ids),
        };
        let mut entries = Vec::new();
        for query in in_queries(&prefix, values) {
            let mut skip = 0;
            loop {
                let (page, total) = self.query(target, &query, 1000, skip).await?;
                skip += page.len() as u64;
                let done = page.is_empty() || skip >= total;
                entries.extend(page);
                if done {
                    break;
                }
            }
        }
        Ok(LookupPage {
            entries,
            total: None,
        })
    }

    async fn write(&self, target: &StreamTarget, ops: Vec<WriteOp>) -> Vec<Result<Written>> {
        futures::stream::iter(ops)
            .map(|op| async {
                let result = self.write_one(target, op).await;
                if result.is_ok() {
                    target.stats.add_entries_written(1);
                }
                result
            })
            .buffered(self.max_concurrency)
            .collect()
            .await
    }

    async fn publish(&self, target: &StreamTarget, items: Vec<Written>) -> Vec<Result<Written>> {
        let mut chunks = Vec::new();
        let mut items = items.into_iter().peekable();
        while items.peek().is_some() {
            chunks.push(
                items
                    .by_ref()
                    .take(self.publish_chunk)
                    .collect::<Vec<Written>>(),
            );
        }
        // Several bulk actions at once (as `cute` does), results kept in order.
        let results: Vec<Vec<Result<Written>>> = futures::stream::iter(chunks)
            .map(|chunk| async {
                let results = self.publish_chunk(chunk).await;
                let ok = results.iter().filter(|r| r.is_ok()).count();
                target.stats.add_entries_published(ok as u64);
                results
            })
            .buffered(PUBLISH_ACTIONS_IN_FLIGHT)
            .collect()
            .await;
        results.into_iter().flatten().collect()
    }

    async fn remove(
        &self,
        target: &StreamTarget,
        entries: Vec<ExistingEntry>,
        mode: DeleteMode,
    ) -> Vec<Result<()>> {
        futures::stream::iter(entries)
            .map(|entry| async move {
                self.remove_one(&entry.id, mode)
                    .await
                    .map_err(|e| e.with_context("content_type", &target.table))
            })
            .buffered(self.max_concurrency)
            .collect()
            .await
    }

    fn describe(&self) -> String {
        "contentful".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_split_by_count_url_length_and_commas() {
        let keys: Vec<String> = (0..250).map(|i| format!("k{i}")).collect();
        let qs = in_queries("fields.sku", &keys);
        assert_eq!(qs.len(), 2);
        assert!(qs[0].starts_with("fields.sku[in]=k0,k1,"));
        let qs = in_queries("fields.sku", &["a,b".to_owned(), "c d".to_owned()]);
        assert_eq!(qs, ["fields.sku=a%2Cb", "fields.sku[in]=c%20d"]);
        let long: Vec<String> = (0..50)
            .map(|i| format!("{i}-{}", "x".repeat(300)))
            .collect();
        assert!(
            in_queries("f", &long)
                .iter()
                .all(|q| q.len() <= MAX_QUERY_CHARS + 400)
        );
    }

    #[test]
    fn rebase_keeps_their_changes_and_ours() {
        let base: EntryFields =
            serde_json::from_value(json!({"a": {"en": 1}, "b": {"en": 1}})).unwrap();
        let ours: EntryFields =
            serde_json::from_value(json!({"a": {"en": 2}, "b": {"en": 1}})).unwrap();
        let theirs: EntryFields =
            serde_json::from_value(json!({"a": {"en": 1}, "b": {"en": 9}, "c": {"en": 3}}))
                .unwrap();
        assert_eq!(
            Value::Object(rebase(&base, &ours, &theirs)),
            json!({"a": {"en": 2}, "b": {"en": 9}, "c": {"en": 3}})
        );
    }
}
