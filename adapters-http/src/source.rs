//! The `http` source: a paginated REST endpoint read page by page.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::Url;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};
use serde_json::{Value, json};
use sluicegate_core::{
    BatchStream, BuildContext, Error, JsonSelector, Page, PageContext, PageSource, Position,
    ReadRequest, Result, Secret, Source, into_record, paginate, render_template,
};

use crate::client::{RetryPolicy, ensure_crypto_provider, send_with_retry};
use crate::config::{AuthConfig, HttpSourceConfig, PaginationConfig};
use crate::error::{HttpError, snippet};

/// A built `http` source.
pub struct HttpSource {
    inner: Arc<Inner>,
}

struct Inner {
    client: reqwest::Client,
    url: Url,
    headers: HeaderMap,
    records: JsonSelector,
    pagination: Option<Pagination>,
    retry: RetryPolicy,
}

struct Pagination {
    config: PaginationConfig,
    total: Option<JsonSelector>,
}

impl HttpSource {
    /// Builds the source from a validated configuration: renders templates,
    /// reads secrets from the environment and prepares the HTTP client.
    pub fn new(config: &HttpSourceConfig, ctx: &BuildContext) -> Result<Self> {
        config.validate(ctx)?;
        let scope = &ctx.template_scope;
        let url = render_template("endPoint", &config.end_point, scope)?;
        let url = Url::parse(&url).map_err(|e| Error::config(format!("endPoint '{url}': {e}")))?;
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
            value.set_sensitive(name == AUTHORIZATION);
            headers.insert(name, value);
        }
        if let Some(AuthConfig::Bearer { token_env }) = &config.auth {
            let token = Secret::from_env(token_env)?;
            let mut value =
                HeaderValue::from_str(&format!("Bearer {}", token.expose())).map_err(|_| {
                    Error::config(format!(
                        "the token in {token_env} has characters not allowed in headers"
                    ))
                })?;
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
        let records = JsonSelector::parse(config.results_json_path.as_deref().unwrap_or("$"))?;
        let pagination = match &config.pagination {
            Some(p) => Some(Pagination {
                total: p
                    .total_path
                    .as_deref()
                    .map(JsonSelector::parse)
                    .transpose()?,
                config: p.clone(),
            }),
            None => None,
        };
        ensure_crypto_provider();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(config.timeout_secs))
            .connect_timeout(Duration::from_secs(config.timeout_secs.min(30)))
            .user_agent(concat!("sluicegate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::config("cannot build the HTTP client").with_source(e))?;
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                url,
                headers,
                records,
                pagination,
                retry: RetryPolicy::from(&config.retry),
            }),
        })
    }
}

impl Source for HttpSource {
    fn read(&self, request: ReadRequest) -> BatchStream {
        paginate(self.inner.clone(), request)
    }

    fn describe(&self) -> String {
        // Without the query string: it may hold credentials.
        let mut url = self.inner.url.clone();
        url.set_query(None);
        format!("GET {url}")
    }
}

impl Inner {
    fn page_url(&self, offset: u64) -> Url {
        let mut url = self.url.clone();
        if let Some(p) = &self.pagination {
            url.query_pairs_mut()
                .append_pair(&p.config.skip_key, &offset.to_string())
                .append_pair(&p.config.limit_key, &p.config.page_size.to_string());
        }
        url
    }
}

fn top_level_keys(body: &Value) -> String {
    match body {
        Value::Object(map) if map.is_empty() => "none".to_owned(),
        Value::Object(map) => map.keys().cloned().collect::<Vec<_>>().join(", "),
        Value::Array(_) => "none, the response is an array".to_owned(),
        _ => "none, the response is a scalar".to_owned(),
    }
}

#[async_trait]
impl PageSource for Inner {
    async fn fetch_page(&self, token: Option<&Position>, ctx: &PageContext) -> Result<Page> {
        let offset = match token {
            None => 0,
            Some(position) => position.as_value()["offset"].as_u64().ok_or_else(|| {
                Error::new(
                    sluicegate_core::ErrorKind::Checkpoint,
                    format!("position {position} is not an offset position of this source; reset the checkpoint"),
                )
            })?,
        };
        let url = self.page_url(offset);
        let url_text = url.to_string();
        let fetched = send_with_retry(
            || self.client.get(url.clone()).headers(self.headers.clone()),
            &url_text,
            &self.retry,
            &ctx.stats,
        )
        .await?;
        let mut body: Value =
            serde_json::from_slice(&fetched.body).map_err(|source| HttpError::Json {
                url: url_text.clone(),
                snippet: snippet(&fetched.body),
                source,
            })?;
        drop(fetched);
        let total = self
            .pagination
            .as_ref()
            .and_then(|p| p.total.as_ref())
            .and_then(|sel| sel.select_u64(&body));
        let records = match self.records.take_records(&mut body) {
            Some(records) => records,
            None if ctx.page == 1 && token.is_none() => {
                return Err(HttpError::NoRecords {
                    path: self.records.as_str().to_owned(),
                    url: url_text,
                    keys: top_level_keys(&body),
                }
                .into());
            }
            None => Vec::new(),
        };
        drop(body);
        let records: Vec<_> = records.into_iter().map(into_record).collect();
        let next = self
            .pagination
            .as_ref()
            .and_then(|p| next_offset(&p.config, offset, records.len() as u64, total, ctx));
        Ok(Page {
            records,
            next: next.map(|o| Position::new(json!({ "offset": o }))),
        })
    }

    fn page_bytes_hint(&self) -> usize {
        let rows = self
            .pagination
            .as_ref()
            .map_or(1000, |p| p.config.page_size);
        usize::try_from(rows.saturating_mul(2048))
            .unwrap_or(usize::MAX)
            .clamp(64 * 1024, 16 << 20)
    }
}

/// The offset of the next page, or `None` when this page was the last.
///
/// With a total: stop once the offset reaches it (an empty page before that
/// also stops, with a warning). Without: stop on a short or empty page. Either
/// way `maxPages` caps the read.
fn next_offset(
    p: &PaginationConfig,
    offset: u64,
    received: u64,
    total: Option<u64>,
    ctx: &PageContext,
) -> Option<u64> {
    let next = offset + received;
    if p.max_pages.is_some_and(|max| ctx.page >= max) {
        return None;
    }
    if received == 0 {
        if let Some(total) = total
            && offset < total
        {
            tracing::warn!(
                sync = %ctx.sync_key,
                page = ctx.page,
                offset,
                total,
                "empty page before the reported total was reached; stopping"
            );
        }
        return None;
    }
    match total {
        Some(total) => (next < total).then_some(next),
        None if p.total_path.is_some() => {
            tracing::warn!(sync = %ctx.sync_key, page = ctx.page, "totalPath matched nothing; falling back to the short-page rule");
            (received >= p.page_size).then_some(next)
        }
        None => (received >= p.page_size).then_some(next),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PaginationKind;
    use sluicegate_core::RunStats;

    fn pagination(total_path: Option<&str>, max_pages: Option<u64>) -> PaginationConfig {
        PaginationConfig {
            kind: PaginationKind::Offset,
            skip_key: "offset".into(),
            limit_key: "limit".into(),
            page_size: 100,
            total_path: total_path.map(str::to_owned),
            max_pages,
        }
    }

    fn ctx(page: u64) -> PageContext {
        PageContext {
            sync_key: "k".into(),
            page,
            stats: Arc::new(RunStats::default()),
        }
    }

    #[test]
    fn stop_rules() {
        let no_total = pagination(None, None);
        assert_eq!(next_offset(&no_total, 0, 100, None, &ctx(1)), Some(100));
        assert_eq!(
            next_offset(&no_total, 100, 40, None, &ctx(2)),
            None,
            "short page"
        );
        assert_eq!(
            next_offset(&no_total, 100, 0, None, &ctx(2)),
            None,
            "empty page"
        );

        let with_total = pagination(Some("$.total"), None);
        // A server capping the page below pageSize must not end the read early.
        assert_eq!(
            next_offset(&with_total, 0, 50, Some(250), &ctx(1)),
            Some(50)
        );
        assert_eq!(
            next_offset(&with_total, 200, 50, Some(250), &ctx(5)),
            None,
            "total reached"
        );
        assert_eq!(
            next_offset(&with_total, 100, 0, Some(250), &ctx(3)),
            None,
            "empty page"
        );

        let capped = pagination(None, Some(2));
        assert_eq!(next_offset(&capped, 0, 100, None, &ctx(1)), Some(100));
        assert_eq!(
            next_offset(&capped, 100, 100, None, &ctx(2)),
            None,
            "maxPages"
        );
    }
}
