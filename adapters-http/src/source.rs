//! The `http` source: pages of a REST endpoint, decoded as they arrive.
//!
//! Reading runs in a task feeding the stream ([`channel_stream`]): for each page
//! it leases memory, sends the request (paced, authenticated, retried), and feeds
//! the body to the format's decoder chunk by chunk. Records go out in batches of
//! `chunk_rows` (or a quarter of the budget, whichever comes first) while the
//! body is still arriving, so one huge response never sits in memory whole; the
//! page's last batch carries the position of the next page. When every page's
//! request can be computed from the first page, the rest are fetched
//! `concurrency` at a time, each on its own task, and emitted in page order. A child endpoint
//! (`parent`) is called once per parent record, `fanOut` at a time.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::jsonpath::JsonSelector;
use bytes::Bytes;
use futures::FutureExt;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, Url};
use serde_json::{Map, Value, json};
use sluicegate_core::{
    BatchBuilder, BatchLimits, BatchSender, BatchStream, BuildContext, Error, ErrorKind,
    PageLoopGuard, Position, ReadRequest, Record, Result, ResultExt, Secret, Shard, Source,
    channel_stream,
};
use sluicegate_http_client::Pacer;
use sluicegate_templates::{Templates, render_template};

use crate::client::{Requester, RetryPolicy};
use crate::config::{HttpMethod, HttpSourceConfig, check_url};
use crate::decode::{BodyDecoder, RecordText, ResultsFormat, read_zipped_csv};
use crate::error::HttpError;
use crate::filecache::FileCache;
use crate::pagination::{MAX_EMPTY_PAGES, PageFacts, Paginator};

/// The error for a run of empty pages although the API said there was more.
fn too_many_empty_pages(page: u64, url: &Url) -> Error {
    Error::decode(format!(
        "page {page} ({url}) is the {}th empty page in a row, although the API still says there is \
         more; stopping instead of reading on without records. Check the pagination settings, or \
         run again to resume from the last checkpoint",
        MAX_EMPTY_PAGES + 1
    ))
    .with_context("page", page)
}

/// The error for an empty page of record offsets before the API's total: the
/// next offset would have to assume records that never came. `read` says how
/// far the read got.
fn empty_before_total(page: u64, url: &Url, read: &str) -> Error {
    Error::decode(format!(
        "page {page} ({url}) has no records, but {read}; the data changed during the read or the \
         server lost its place. Nothing after it was written; run again to resume from the last \
         checkpoint"
    ))
    .with_context("page", page)
}

/// Records per batch while a page is still arriving.
const CHUNK_ROWS: usize = 2000;

/// A built `http` source.
pub struct HttpSource {
    inner: Arc<Inner>,
}

struct Inner {
    requester: Requester,
    method: HttpMethod,
    /// The endpoint, rendered (top level) or a template over `parent` (child).
    endpoint: Endpoint,
    headers: HeaderMap,
    selector: JsonSelector,
    format: ResultsFormat,
    zip_password: Option<Secret>,
    paginator: Paginator,
    concurrency: usize,
    cache: Option<FileCache>,
    parent: Option<ParentLink>,
    scope: Value,
    /// The shard this process reads the pages of, if the job is sharded.
    shard: Option<Shard>,
    /// Decoded size of the last page, to lease before the next one.
    estimate: AtomicUsize,
    chunk_rows: usize,
}

enum Endpoint {
    Fixed {
        url: Url,
        form: Vec<(String, String)>,
        body: Option<Value>,
    },
    PerParent {
        templates: Templates,
        form: Vec<String>,
        body: Option<Value>,
    },
}

impl Endpoint {
    /// The endpoint of `config`: rendered now, or templates over the parent
    /// record for a child.
    fn of(config: &HttpSourceConfig, scope: &Value) -> Result<Self> {
        Ok(if config.parent.is_some() {
            let mut templates = Templates::new();
            templates.add("endPoint", &config.end_point)?;
            let mut form = Vec::new();
            for (k, v) in &config.form_url_encoded_content {
                templates.add(&format!("form.{k}"), v)?;
                form.push(k.clone());
            }
            Endpoint::PerParent {
                templates,
                form,
                body: config.body.clone(),
            }
        } else {
            let url = check_url(&render_template("endPoint", &config.end_point, scope)?)?;
            let form = config
                .form_url_encoded_content
                .iter()
                .map(|(k, v)| {
                    Ok((
                        k.clone(),
                        render_template(&format!("formUrlEncodedContent.{k}"), v, scope)?,
                    ))
                })
                .collect::<Result<_>>()?;
            let body = config
                .body
                .as_ref()
                .map(|b| render_body(b, scope))
                .transpose()?;
            Endpoint::Fixed { url, form, body }
        })
    }
}

/// The configured headers, rendered (the `Authorization` header is marked
/// sensitive, so it never shows in debug output).
fn request_headers(config: &HttpSourceConfig, scope: &Value) -> Result<HeaderMap> {
    let mut headers = HeaderMap::new();
    for (name, value) in &config.headers {
        let rendered = render_template(name, value, scope)?;
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| Error::config(format!("invalid header name '{name}'")))?;
        let mut value = HeaderValue::from_str(&rendered).map_err(|_| {
            Error::config(format!(
                "header {name} has characters not allowed in headers"
            ))
        })?;
        value.set_sensitive(name == reqwest::header::AUTHORIZATION);
        headers.insert(name, value);
    }
    Ok(headers)
}

struct ParentLink {
    source: HttpSource,
    fan_out: usize,
    include: Vec<String>,
}

/// One resolved request target (a child's depends on its parent record).
#[derive(Clone)]
struct Target {
    url: Url,
    form: Vec<(String, String)>,
    body: Option<Value>,
    parent_fields: Vec<(String, Value)>,
}

/// A page's records not yet sent, and what the paginator needs to know.
struct Fetched {
    /// The page's records not sent yet. A page read in its turn holds a lease
    /// for them; a page fetched ahead of its turn (parallel pages) holds none:
    /// the page before it may be waiting for that very memory, and it cannot be
    /// emitted first. Its records are accounted when its turn comes (the
    /// overshoot is at most `concurrency - 1` decoded pages).
    builder: BatchBuilder,
    count: u64,
    meta: Value,
    matched: bool,
    headers: HeaderMap,
    url: Url,
}

/// A page's identity for spotting a repeated page: its record count and its
/// first and last records. `None` for an empty page, or one whose records were
/// already sent on in parts (streamed decode).
fn page_fingerprint(fetched: &Fetched) -> Option<(u64, String, String)> {
    if let Some(rows) = fetched.builder.json_rows() {
        let (first, last) = (rows.get(0)?, rows.get(rows.len() - 1)?);
        return (fetched.count == fetched.builder.len() as u64).then(|| {
            (
                fetched.count,
                String::from_utf8_lossy(first).into_owned(),
                String::from_utf8_lossy(last).into_owned(),
            )
        });
    }
    let records = fetched.builder.records();
    let (first, last) = (records.first()?, records.last()?);
    (fetched.count == records.len() as u64).then(|| {
        (
            fetched.count,
            Value::Object(first.clone()).to_string(),
            Value::Object(last.clone()).to_string(),
        )
    })
}

/// Renders string leaves of a JSON body template.
fn render_body(value: &Value, scope: &Value) -> Result<Value> {
    Ok(match value {
        Value::String(s) => Value::String(render_template("body", s, scope)?),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| render_body(v, scope))
                .collect::<Result<_>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), render_body(v, scope)?)))
                .collect::<Result<Map<String, Value>>>()?,
        ),
        other => other.clone(),
    })
}

/// Sets `value` at a dotted path of a JSON object, creating objects on the way.
fn set_path(body: &mut Value, path: &str, value: Value) {
    let mut node = body;
    let parts: Vec<&str> = path.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        if !node.is_object() {
            *node = Value::Object(Map::new());
        }
        let Value::Object(map) = node else { return };
        if i + 1 == parts.len() {
            map.insert((*part).to_owned(), value);
            return;
        }
        node = map
            .entry((*part).to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
    }
}

impl HttpSource {
    /// Builds the source from a configuration: renders templates, reads secrets,
    /// prepares the HTTP client. `ctx.cache_dir` turns the response cache on.
    pub fn new(config: &HttpSourceConfig, ctx: &BuildContext) -> Result<Self> {
        config.validate(ctx)?;
        Self::build(config, ctx)
    }

    fn build(config: &HttpSourceConfig, ctx: &BuildContext) -> Result<Self> {
        let scope = ctx.template_scope.clone();
        let headers = request_headers(config, &scope)?;
        let endpoint = Endpoint::of(config, &scope)?;
        let zip_password = config
            .results_secret
            .as_deref()
            .map(|s| render_template("resultsSecret", s, &scope).map(Secret::new))
            .transpose()?;
        let client = sluicegate_http_client::client(
            Duration::from_secs(config.timeout_secs),
            Some(Duration::from_secs(config.timeout_secs.min(30))),
        )?;
        let auth = match &config.auth {
            Some(a) => a.resolve(ctx)?,
            None => crate::auth::Auth::None,
        };
        let parent = match &config.parent {
            Some(p) => Some(ParentLink {
                // Every shard reads all parents, and the children of its own.
                source: HttpSource::build(p, &ctx.clone().with_shard(None))?,
                fan_out: config.fan_out,
                include: config.include_from_parent.clone(),
            }),
            None => None,
        };
        let mut pagination = config.effective_pagination();
        if let Some(size) = ctx.tuning.page_size {
            pagination = pagination.map(|p| p.with_page_size(size));
        }
        let paginator = Paginator::new(pagination)?;
        let estimate = paginator
            .page_size()
            .map_or(1 << 20, |n| {
                usize::try_from(n.saturating_mul(2048)).unwrap_or(usize::MAX)
            })
            .clamp(64 << 10, 16 << 20);
        Ok(Self {
            inner: Arc::new(Inner {
                requester: Requester {
                    client,
                    retry: RetryPolicy::from(&config.retry),
                    pacer: config.rate_limit.map(|r| Arc::new(Pacer::new(r, true))),
                    auth,
                },
                method: config.http_method,
                endpoint,
                headers,
                selector: JsonSelector::parse(config.results_json_path.as_deref().unwrap_or("$"))?,
                format: config.results_format,
                zip_password,
                paginator,
                concurrency: config.concurrency,
                cache: ctx.cache_dir.as_ref().map(|dir| {
                    FileCache::new(
                        dir.clone(),
                        Duration::from_secs(config.file_cache.ttl_secs),
                        config.file_cache.max_mb.saturating_mul(1 << 20),
                    )
                }),
                parent,
                scope,
                shard: ctx.shard,
                estimate: AtomicUsize::new(estimate),
                chunk_rows: CHUNK_ROWS,
            }),
        })
    }
}

impl Source for HttpSource {
    fn read(&self, request: ReadRequest) -> BatchStream {
        let inner = self.inner.clone();
        channel_stream(move |tx| async move {
            let sync = request.sync_key.clone();
            inner.run(request, tx).await.context("sync", sync)
        })
    }

    /// Offset or page-number pagination with a total: each shard reads a
    /// contiguous slice of the pages; a parent/child endpoint: each shard
    /// reads the children of the parents that hash to it.
    fn splits(&self) -> bool {
        self.inner.parent.is_some() || self.inner.paginator.can_split()
    }

    fn describe(&self) -> String {
        match &self.inner.endpoint {
            Endpoint::Fixed { url, .. } => {
                // Without the query string: it may hold credentials.
                let mut url = url.clone();
                url.set_query(None);
                let method = format!("{:?}", self.inner.method).to_uppercase();
                format!("{method} {url}")
            }
            Endpoint::PerParent { .. } => "http endpoint per parent record".to_owned(),
        }
    }
}

impl Inner {
    async fn run(self: Arc<Self>, request: ReadRequest, tx: BatchSender) -> Result<()> {
        match &self.parent {
            None => {
                let target = self.target(None)?;
                match self.shard {
                    Some(shard) if self.paginator.can_split() => {
                        self.shard_pages(&request, &tx, &target, shard).await
                    }
                    _ => {
                        self.pages(&request, &tx, &target, request.resume_from.clone(), true)
                            .await
                    }
                }
            }
            Some(link) => {
                if request.resume_from.is_some() {
                    tracing::warn!(sync = %request.sync_key, "parent/child reads cannot resume; starting over");
                }
                let mut parent_request = request.clone();
                parent_request.resume_from = None;
                // The parents' fields are read here.
                parent_request.json_rows = false;
                let mut parents = link.source.read(parent_request);
                let shard = self.shard;
                while let Some(batch) = parents.next().await {
                    let (mut records, _position, lease) = batch?.into_parts();
                    // In a sharded run each shard reads the children of the
                    // parents that hash to it (every shard reads the parents).
                    if let Some(shard) = shard {
                        records.retain(|parent| {
                            Shard::owner_of(&Value::Object(parent.clone()).to_string(), shard.count)
                                == shard.index
                        });
                    }
                    // The parents' memory stays leased while their children are read.
                    let run = futures::stream::iter(records)
                        .map(|parent| {
                            let this = self.clone();
                            let (request, tx) = (request.clone(), tx.clone());
                            async move {
                                let target = this.target(Some(&parent))?;
                                this.pages(&request, &tx, &target, None, false)
                                    .await
                                    .context(
                                        "parent",
                                        Value::Object(parent)
                                            .to_string()
                                            .chars()
                                            .take(120)
                                            .collect::<String>(),
                                    )
                            }
                        })
                        .buffer_unordered(link.fan_out)
                        .try_collect::<Vec<()>>()
                        .await;
                    drop(lease);
                    run?;
                }
                Ok(())
            }
        }
    }

    /// The request target, for a child rendered with its parent record.
    fn target(&self, parent: Option<&Record>) -> Result<Target> {
        match (&self.endpoint, parent) {
            (Endpoint::Fixed { url, form, body }, _) => Ok(Target {
                url: url.clone(),
                form: form.clone(),
                body: body.clone(),
                parent_fields: Vec::new(),
            }),
            (
                Endpoint::PerParent {
                    templates,
                    form,
                    body,
                },
                Some(parent),
            ) => {
                let mut scope = self.scope.clone();
                scope["parent"] = Value::Object(parent.clone());
                let url = check_url(&templates.render("endPoint", &scope)?)?;
                let form = form
                    .iter()
                    .map(|k| Ok((k.clone(), templates.render(&format!("form.{k}"), &scope)?)))
                    .collect::<Result<_>>()?;
                let body = body.as_ref().map(|b| render_body(b, &scope)).transpose()?;
                let include = self.parent.as_ref().map_or(&[][..], |l| &l.include[..]);
                let parent_fields = include
                    .iter()
                    .map(|f| {
                        (
                            format!("_parent_{f}"),
                            parent.get(f).cloned().unwrap_or(Value::Null),
                        )
                    })
                    .collect();
                Ok(Target {
                    url,
                    form,
                    body,
                    parent_fields,
                })
            }
            (Endpoint::PerParent { .. }, None) => Err(Error::new(
                ErrorKind::Contract,
                "a child endpoint needs its parent record",
            )),
        }
    }

    /// Reads every page of `target` from `start`, sending batches; page
    /// positions are attached when `positions` (resumable reads).
    async fn pages(
        self: &Arc<Self>,
        request: &ReadRequest,
        tx: &BatchSender,
        target: &Target,
        start: Option<Position>,
        positions: bool,
    ) -> Result<()> {
        let mut guard = PageLoopGuard::new(start);
        let mut previous_fingerprint = None;
        let mut page = 0;
        let mut empty_run = 0;
        loop {
            page += 1;
            let token = guard.current();
            let mut fetched = self
                .fetch(request, Some(tx), target, token, page)
                .await
                .context("page", page)?;
            if !fetched.matched && page == 1 && token.is_none() {
                return Err(HttpError::NoRecords {
                    path: self.selector.as_str().to_owned(),
                    url: fetched.url.to_string(),
                    keys: top_level_keys(&fetched.meta),
                }
                .into());
            }
            let facts = PageFacts {
                records: fetched.count,
                meta: &fetched.meta,
                headers: &fetched.headers,
                url: &fetched.url,
            };
            if page == 1 {
                self.paginator
                    .check_first_page(&facts)
                    .map_err(|e| e.with_context("page", page))?;
            }
            // The expected count of a top-level read (not of each parent's children).
            if page == 1
                && positions
                && let (Some(total), Some(done)) = (
                    self.paginator.total_of(&facts),
                    self.paginator.records_before(token),
                )
            {
                request.stats.set_expected_rows(total.saturating_sub(done));
            }
            if let Some((done, total)) = self.paginator.empty_before_total(token, &facts) {
                let read = format!("the API's total is {total} and only {done} were read");
                return Err(empty_before_total(page, &fetched.url, &read));
            }
            // A server that ignores the paging parameters serves the same page
            // again and again under advancing tokens: refuse it, like a loop.
            let fingerprint = page_fingerprint(&fetched);
            if fingerprint.is_some() && fingerprint == previous_fingerprint {
                return Err(Error::decode(format!(
                    "pagination loop: page {page} ({}) returned the same records as page {}; the server \
                     seems to ignore the paging parameters, check the pagination settings",
                    fetched.url,
                    page - 1
                ))
                .with_context("page", page));
            }
            previous_fingerprint = fingerprint;
            let next = self.paginator.next(token, page, &facts);
            if let Some(n) = &next
                && let Err(error) = guard.check(page, n)
            {
                // The page itself is new: pass its records on (without a
                // position, so the checkpoint stays before it), then stop.
                tx.send(fetched.builder.end_page(None).await?).await?;
                return Err(error);
            }
            empty_run = if fetched.count == 0 && next.is_some() {
                empty_run + 1
            } else {
                0
            };
            if empty_run > MAX_EMPTY_PAGES {
                return Err(too_many_empty_pages(page, &fetched.url));
            }
            let parallel = (page == 1 && token.is_none() && self.concurrency > 1)
                .then(|| self.paginator.remaining(&facts))
                .flatten();
            let mut builder = fetched.builder;
            if let Some(rest) = parallel {
                let position = positions.then(|| rest.first().cloned()).flatten();
                tx.send(builder.end_page(position).await?).await?;
                return self.parallel(request, tx, target, rest, positions).await;
            }
            let position = if positions { next.clone() } else { None };
            tx.send(builder.end_page(position).await?).await?;
            match next {
                None => return Ok(()),
                Some(n) => guard.advance(n),
            }
        }
    }

    /// One shard's part of the read: the first page tells how many pages there
    /// are, and the shard reads its contiguous slice of them (see
    /// [`Shard::slice`]), resuming inside it.
    async fn shard_pages(
        self: &Arc<Self>,
        request: &ReadRequest,
        tx: &BatchSender,
        target: &Target,
        shard: Shard,
    ) -> Result<()> {
        let fetched = self
            .fetch(request, None, target, None, 1)
            .await
            .context("page", 1)?;
        let facts = PageFacts {
            records: fetched.count,
            meta: &fetched.meta,
            headers: &fetched.headers,
            url: &fetched.url,
        };
        self.paginator
            .check_first_page(&facts)
            .map_err(|e| e.with_context("page", 1))?;
        let rest = match self.paginator.remaining(&facts) {
            Some(rest) => rest,
            None if self.paginator.next(None, 1, &facts).is_none() => Vec::new(),
            None => {
                return Err(Error::config(format!(
                    "the first page of {} held {} records, not the page size, so the offsets of \
                     the later pages are not known and the pages cannot be split across shards; \
                     run this sync as one shard",
                    fetched.url, fetched.count
                )));
            }
        };
        let all: Vec<Option<Position>> = std::iter::once(None)
            .chain(rest.into_iter().map(Some))
            .collect();
        let (lo, hi) = shard.slice(all.len());
        let slice = &all[lo..hi];
        let start = match &request.resume_from {
            None => 0,
            Some(token) => slice
                .iter()
                .position(|t| t.as_ref() == Some(token))
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::Checkpoint,
                        format!(
                            "the checkpoint {token} is not a page of shard {}: the API's total \
                             changed since it was written; start over with --full-refresh",
                            shard.label()
                        ),
                    )
                })?,
        };
        let mut builder = fetched.builder;
        if lo == 0 && start == 0 {
            // The first page is this shard's.
            let next = slice.get(1).cloned().flatten();
            tx.send(builder.end_page(next).await?).await?;
        } else {
            drop(builder);
        }
        let tokens: Vec<Position> = slice.iter().skip(start).filter_map(Clone::clone).collect();
        if tokens.is_empty() {
            return Ok(());
        }
        self.parallel(request, tx, target, tokens, true).await
    }

    /// Fetches the computed pages `concurrency` at a time, emitting in order.
    async fn parallel(
        self: &Arc<Self>,
        request: &ReadRequest,
        tx: &BatchSender,
        target: &Target,
        tokens: Vec<Position>,
        positions: bool,
    ) -> Result<()> {
        let nexts: Vec<Option<Position>> = tokens
            .iter()
            .skip(1)
            .cloned()
            .map(Some)
            .chain([None])
            .collect();
        // Each page is fetched on its own task, so pages ahead of the head go
        // on (and give their memory back, see `settle`) while the head waits
        // for memory. Dropping a handle cancels its task.
        let target = Arc::new(target.clone());
        let mut fetches = futures::stream::iter(tokens.into_iter().enumerate())
            .map(|(i, token)| {
                let page = i as u64 + 2;
                let (this, request, target) = (self.clone(), request.clone(), target.clone());
                let (task, handle) = async move {
                    this.fetch(&request, None, &target, Some(&token), page)
                        .await
                        .context("page", page)
                        .map(|f| (page, f))
                }
                .remote_handle();
                tokio::spawn(task);
                handle
            })
            .buffered(self.concurrency);
        let mut nexts = nexts.into_iter();
        let mut empty_run = 0;
        while let Some(result) = fetches.next().await {
            let (page, fetched) = result?;
            // The same stop rule as one page at a time: an empty page the
            // total says is not the last is skipped (page numbers) or an
            // error (record offsets), and only so many in a row.
            let last = nexts.len() == 1;
            if fetched.count == 0 && !last {
                if self.paginator.record_offsets() {
                    let read = "the API's total says more follow";
                    return Err(empty_before_total(page, &fetched.url, read));
                }
                empty_run += 1;
                if empty_run > MAX_EMPTY_PAGES {
                    return Err(too_many_empty_pages(page, &fetched.url));
                }
            } else {
                empty_run = 0;
            }
            // Its turn: the page's records are accounted (waiting for memory
            // if they must).
            let next = nexts.next().flatten();
            let position = if positions { next } else { None };
            let mut builder = fetched.builder;
            tx.send(builder.end_page(position).await?).await?;
        }
        Ok(())
    }

    fn url_for(
        &self,
        target: &Target,
        token: Option<&Position>,
    ) -> Result<(Url, HeaderMap, Option<Body>)> {
        let req = self.paginator.request(token)?;
        let mut url = match &req.url {
            Some(u) => Url::parse(u)
                .map_err(|e| Error::decode(format!("next URL '{u}' is not a URL: {e}")))?,
            None => target.url.clone(),
        };
        if !req.query.is_empty() {
            let mut pairs = url.query_pairs_mut();
            for (k, v) in &req.query {
                pairs.append_pair(k, v);
            }
        }
        let mut headers = self.headers.clone();
        for (k, v) in &req.headers {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| Error::decode(format!("bad header name {k}")))?;
            let value = HeaderValue::from_str(v).map_err(|_| {
                Error::decode(format!(
                    "the token for header {k} is not a valid header value"
                ))
            })?;
            headers.insert(name, value);
        }
        let body = match self.method {
            HttpMethod::Get => None,
            HttpMethod::Post if !target.form.is_empty() => Some(Body::Form(target.form.clone())),
            HttpMethod::Post => {
                let mut body = target.body.clone().unwrap_or_else(|| json!({}));
                for (path, value) in &req.body {
                    set_path(&mut body, path, Value::String(value.clone()));
                }
                Some(Body::Json(body))
            }
        };
        Ok((url, headers, body))
    }

    /// Fetches one page. With `tx`, full chunks of records are sent as they
    /// decode (without position); the rest comes back in [`Fetched`].
    async fn fetch(
        &self,
        request: &ReadRequest,
        tx: Option<&BatchSender>,
        target: &Target,
        token: Option<&Position>,
        page: u64,
    ) -> Result<Fetched> {
        let (url, headers, body) = self.url_for(target, token)?;
        let shown = url.to_string();
        let method = match self.method {
            HttpMethod::Get => Method::GET,
            HttpMethod::Post => Method::POST,
        };
        let body_bytes = match &body {
            Some(Body::Json(v)) => v.to_string().into_bytes(),
            Some(Body::Form(f)) => serde_urlencoded_form(f),
            None => Vec::new(),
        };
        let key = FileCache::key(method.as_str(), &shown, &body_bytes);
        let sent = PageRequest {
            url,
            shown,
            method,
            headers,
            body,
            body_bytes,
            key,
        };
        let to = PageTo {
            request,
            tx,
            page,
            target,
        };
        let shown = &sent.shown;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut progress = Progress::default();
            let result = self.fetch_once(&to, &sent, &mut progress).await;
            let Progress { sent_any, answered } = progress;
            match result {
                // Only a body that broke off is asked for again here: a request
                // that got no answer was already retried by the client, and one
                // retry budget (`retry.maxAttempts`) covers the whole request.
                Err(e)
                    if e.kind() == ErrorKind::Network
                        && answered
                        && !sent_any
                        && attempt < self.requester.retry.policy.max_attempts =>
                {
                    // The body broke off before anything was sent on: ask again.
                    request.stats.add_retry();
                    tracing::warn!(url = %shown, attempt, error = %e, "response body failed, retrying the page");
                    tokio::time::sleep(self.requester.retry.policy.backoff(attempt)).await;
                }
                other => return other,
            }
        }
    }

    /// One attempt at a page: lease, fetch (or read the file cache), decode.
    async fn fetch_once(
        &self,
        to: &PageTo<'_>,
        sent: &PageRequest,
        progress: &mut Progress,
    ) -> Result<Fetched> {
        let PageTo {
            request,
            tx,
            page,
            target,
        } = *to;
        let mut builder = self.builder(request, page);
        builder.reserve().await?;
        let download = self.download(request, sent, progress).await?;
        let Download {
            headers: response_headers,
            mut chunks,
            mut writer,
            cached,
        } = download;
        let (url, shown) = (&sent.url, sent.shown.as_str());
        // The first bytes of the body, to show what came instead of the format
        // expected (an HTML error page served as 200, say).
        let mut head: Vec<u8> = Vec::new();
        let content_type = response_headers
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("no content type")
            .to_owned();
        let decode_error = |msg: String, head: &[u8]| {
            let start: String = String::from_utf8_lossy(head)
                .chars()
                .filter(|c| !c.is_control())
                .take(60)
                .collect();
            let start = if msg.contains("starts with") {
                String::new()
            } else {
                format!(", starting `{start}`")
            };
            Error::decode(format!(
                "{shown}: {msg} (the response was {content_type}{start})"
            ))
        };

        if self.format == ResultsFormat::ZippedCsv {
            let download = Download {
                headers: response_headers,
                chunks,
                writer,
                cached,
            };
            return self
                .zipped(to, download, builder, url, &mut progress.sent_any)
                .await;
        }
        let mut decoder = BodyDecoder::new(self.format, &self.selector);
        // Records handed on as their JSON text when the reader takes them so
        // and nothing is added to them here.
        let as_text = request.json_rows && target.parent_fields.is_empty() && decoder.yields_text();
        let mut texts: Vec<RecordText> = Vec::new();
        let mut decoded: Vec<Record> = Vec::new();
        let mut count = 0u64;
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            if !cached {
                request.stats.add_bytes_received(chunk.len() as u64);
            }
            if let Some(w) = &mut writer {
                w.write(&chunk)?;
            }
            if head.len() < 60 {
                head.extend_from_slice(&chunk[..chunk.len().min(60 - head.len())]);
            }
            if as_text {
                decoder
                    .feed_text(&chunk, &mut texts)
                    .map_err(|msg| decode_error(msg, &head))?;
                count += texts.len() as u64;
                if self
                    .add_texts(tx, &mut builder, &mut texts, |msg| decode_error(msg, &head))
                    .await?
                {
                    progress.sent_any = true;
                }
                continue;
            }
            decoder
                .feed(&chunk, &mut decoded)
                .map_err(|msg| decode_error(msg, &head))?;
            count += decoded.len() as u64;
            if self.add(tx, &mut builder, &mut decoded, target).await? {
                progress.sent_any = true;
            }
        }
        let tail = if as_text {
            let tail = decoder
                .finish_text(&mut texts, &mut decoded)
                .map_err(|msg| decode_error(msg, &head))?;
            count += texts.len() as u64;
            self.add_texts(tx, &mut builder, &mut texts, |msg| decode_error(msg, &head))
                .await?;
            tail
        } else {
            decoder
                .finish(&mut decoded)
                .map_err(|msg| decode_error(msg, &head))?
        };
        if let Some(w) = writer {
            w.commit()?;
        }
        count += decoded.len() as u64;
        self.add(tx, &mut builder, &mut decoded, target).await?;
        self.settle(&mut builder, tx.is_some());
        Ok(Fetched {
            builder,
            count,
            meta: tail.meta,
            matched: tail.matched,
            headers: response_headers,
            url: url.clone(),
        })
    }

    /// The page's body as a stream of chunks: from the file cache, or sent for
    /// (then written to the cache as it arrives, when there is one).
    async fn download(
        &self,
        request: &ReadRequest,
        sent: &PageRequest,
        progress: &mut Progress,
    ) -> Result<Download> {
        let PageRequest {
            url,
            shown,
            method,
            headers,
            body,
            body_bytes,
            key,
        } = sent;
        let hit = self.cache.as_ref().and_then(|c| c.lookup(key));
        let (response_headers, chunks): (HeaderMap, BoxStream<'static, Result<Bytes>>) = match &hit
        {
            Some(hit) => (hit.headers.clone(), file_chunks(hit.body.clone())),
            None => {
                let response = self
                    .requester
                    .send(
                        || {
                            let mut r = self
                                .requester
                                .client
                                .request(method.clone(), url.clone())
                                .headers(headers.clone());
                            match body {
                                Some(Body::Json(_)) => {
                                    r = r
                                        .header("content-type", "application/json")
                                        .body(body_bytes.to_vec())
                                }
                                Some(Body::Form(_)) => {
                                    r = r
                                        .header("content-type", "application/x-www-form-urlencoded")
                                        .body(body_bytes.to_vec())
                                }
                                None => {}
                            }
                            r
                        },
                        shown,
                        &request.stats,
                    )
                    .await?;
                progress.answered = true;
                let h = response.headers().clone();
                let shown = shown.to_owned();
                (
                    h,
                    response
                        .bytes_stream()
                        .map_err(move |e| {
                            Error::from(HttpError::Network {
                                url: shown.clone(),
                                source: e,
                            })
                        })
                        .boxed(),
                )
            }
        };
        let writer = match (&self.cache, &hit) {
            (Some(cache), None) => Some(cache.writer(key, &response_headers)?),
            _ => None,
        };
        Ok(Download {
            headers: response_headers,
            chunks,
            writer,
            cached: hit.is_some(),
        })
    }

    /// Zipped CSV: the archive is written to a temporary file (its directory is
    /// at the end), then its first file is read in chunks on a blocking thread.
    async fn zipped(
        &self,
        to: &PageTo<'_>,
        download: Download,
        mut builder: BatchBuilder,
        url: &Url,
        sent_any: &mut bool,
    ) -> Result<Fetched> {
        use std::io::Write;
        let PageTo {
            request,
            tx,
            page: _,
            target,
        } = *to;
        let Download {
            headers,
            mut chunks,
            mut writer,
            cached,
        } = download;
        let mut file = tempfile::tempfile().map_err(|e| {
            Error::new(ErrorKind::Io, "cannot create a temporary file").with_source(e)
        })?;
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            if !cached {
                request.stats.add_bytes_received(chunk.len() as u64);
            }
            if let Some(w) = &mut writer {
                w.write(&chunk)?;
            }
            file.write_all(&chunk).map_err(|e| {
                Error::new(ErrorKind::Io, "cannot write a temporary file").with_source(e)
            })?;
        }
        if let Some(w) = writer {
            w.commit()?;
        }
        let (rows_tx, mut rows_rx) = tokio::sync::mpsc::channel::<Vec<Record>>(1);
        let password = self.zip_password.as_ref().map(|s| s.expose().to_owned());
        let chunk = self.chunk_rows;
        let reader = tokio::task::spawn_blocking(move || {
            use std::io::Seek;
            let mut file = file;
            file.seek(std::io::SeekFrom::Start(0))
                .map_err(|e| e.to_string())?;
            read_zipped_csv(file, password.as_deref(), chunk, |rows| {
                rows_tx.blocking_send(rows).is_ok()
            })
        });
        let mut count = 0u64;
        while let Some(mut rows) = rows_rx.recv().await {
            count += rows.len() as u64;
            if self.add(tx, &mut builder, &mut rows, target).await? {
                *sent_any = true;
            }
        }
        reader
            .await
            .map_err(|e| Error::new(ErrorKind::Contract, "the zip reader failed").with_source(e))?
            .map_err(|e| Error::decode(format!("{url}: {e}")))?;
        self.settle(&mut builder, tx.is_some());
        Ok(Fetched {
            builder,
            count,
            meta: Value::Null,
            matched: true,
            headers,
            url: url.clone(),
        })
    }

    /// A builder for one page: parts of `chunk_rows` records or a quarter of
    /// the budget, whichever comes first (so a part never outgrows the
    /// budget), leasing the size of the last page before the first part.
    fn builder(&self, request: &ReadRequest, page: u64) -> BatchBuilder {
        let limits = BatchLimits::for_budget(self.chunk_rows, &request.budget);
        let mut builder =
            BatchBuilder::new(request, limits).with_estimate(self.estimate.load(Ordering::Relaxed));
        builder.set_page(page);
        builder
    }

    /// Adds the records decoded so far (with the parent's fields) to the
    /// page's builder. Read in its turn (`tx`), the lease grows as they arrive
    /// and a full part is sent on (no position: the page is not complete);
    /// returns whether one was.
    async fn add(
        &self,
        tx: Option<&BatchSender>,
        builder: &mut BatchBuilder,
        decoded: &mut Vec<Record>,
        target: &Target,
    ) -> Result<bool> {
        let mut sent = false;
        for mut record in decoded.drain(..) {
            for (k, v) in &target.parent_fields {
                record.insert(k.clone(), v.clone());
            }
            let full = builder.add(record);
            sent |= pass_on(tx, builder, full).await?;
        }
        Ok(sent)
    }

    /// Adds records' JSON texts (checked here: each one JSON object) to the
    /// page's builder, as [`add`](Self::add) adds decoded records; a text that
    /// is not becomes the error `invalid` makes of the message.
    async fn add_texts(
        &self,
        tx: Option<&BatchSender>,
        builder: &mut BatchBuilder,
        texts: &mut Vec<RecordText>,
        invalid: impl Fn(String) -> Error,
    ) -> Result<bool> {
        let mut sent = false;
        for record in texts.drain(..) {
            let full = builder
                .add_json(&record.text)
                .map_err(|e| invalid(format!("{}{e}", record.place())))?;
            sent |= pass_on(tx, builder, full).await?;
        }
        Ok(sent)
    }

    /// Ends a page's fetch: the next page leases what this one's rest needs. A
    /// page fetched ahead of its turn gives its memory back (see [`Fetched`]).
    fn settle(&self, builder: &mut BatchBuilder, in_turn: bool) {
        self.estimate
            .store(builder.bytes().max(4096), Ordering::Relaxed);
        if !in_turn {
            builder.release();
        }
    }
}

/// After a record was added to a page's builder: read in its turn (`tx`), the
/// lease grows as records arrive and a full part is sent on (no position: the
/// page is not complete); returns whether one was.
async fn pass_on(tx: Option<&BatchSender>, builder: &mut BatchBuilder, full: bool) -> Result<bool> {
    let Some(tx) = tx else {
        return Ok(false);
    };
    builder.grow().await?;
    if full && let Some(part) = builder.cut(None).await? {
        tx.send(part).await?;
        builder.reserve().await?;
        return Ok(true);
    }
    Ok(false)
}

/// A request body.
/// One page's request as it is sent (and as the file cache names it).
struct PageRequest {
    url: Url,
    /// The URL as shown in messages (it holds no secret).
    shown: String,
    method: Method,
    headers: HeaderMap,
    body: Option<Body>,
    body_bytes: Vec<u8>,
    /// The file cache's key of the request.
    key: String,
}

/// Where a page's records go: the read they belong to, the channel full parts
/// are sent on while the page arrives (if any), the page's number and target.
#[derive(Clone, Copy)]
struct PageTo<'a> {
    request: &'a ReadRequest,
    tx: Option<&'a BatchSender>,
    page: u64,
    target: &'a Target,
}

/// How far an attempt at a page got, to decide whether it may be repeated.
#[derive(Default)]
struct Progress {
    /// Records of the page were sent on already.
    sent_any: bool,
    /// The server answered (the body may still have broken off).
    answered: bool,
}

/// A page's body arriving: its headers, its chunks, the file cache entry it is
/// written to, and whether it comes from the cache.
struct Download {
    headers: HeaderMap,
    chunks: BoxStream<'static, Result<Bytes>>,
    writer: Option<crate::filecache::CacheWriter>,
    cached: bool,
}

enum Body {
    Json(Value),
    Form(Vec<(String, String)>),
}

fn serde_urlencoded_form(pairs: &[(String, String)]) -> Vec<u8> {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
        .into_bytes()
}

/// A cached body, read back in chunks of 64 KiB.
fn file_chunks(path: std::path::PathBuf) -> BoxStream<'static, Result<Bytes>> {
    use tokio::io::AsyncReadExt;
    let shown = path.display().to_string();
    futures::stream::once(async move { tokio::fs::File::open(&path).await })
        .flat_map(move |opened| {
            let shown = shown.clone();
            match opened {
                Err(e) => futures::stream::once(async move {
                    Err(
                        Error::new(ErrorKind::Io, format!("file cache: cannot read {shown}"))
                            .with_source(e),
                    )
                })
                .boxed(),
                Ok(file) => futures::stream::try_unfold(file, move |mut file| {
                    let shown = shown.clone();
                    async move {
                        let mut buf = vec![0; 64 * 1024];
                        let n = file.read(&mut buf).await.map_err(|e| {
                            Error::new(ErrorKind::Io, format!("file cache: cannot read {shown}"))
                                .with_source(e)
                        })?;
                        if n == 0 {
                            return Ok(None);
                        }
                        buf.truncate(n);
                        Ok(Some((Bytes::from(buf), file)))
                    }
                })
                .boxed(),
            }
        })
        .boxed()
}

fn top_level_keys(body: &Value) -> String {
    match body {
        Value::Object(map) if map.is_empty() => "none".to_owned(),
        Value::Object(map) => map.keys().cloned().collect::<Vec<_>>().join(", "),
        Value::Array(_) => "none, the response is an array".to_owned(),
        _ => "none".to_owned(),
    }
}
