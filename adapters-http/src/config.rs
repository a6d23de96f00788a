//! Configuration of the `http` source. Keys are camelCase and include `cute`'s
//! sync-api keys unchanged (`endPoint`, `headers`, `httpMethod`,
//! `formUrlEncodedContent`, `pagination{skipKey, limitKey, pageSize, limitMax}`,
//! `continuationTokenHeader`, `resultsFormat`, `resultsSecret`,
//! `resultsJsonPath`, `resultsTotalPagesPath`).
//!
//! ```yaml
//! source:
//!   type: http
//!   endPoint: "{{ env.SHOP_API_URL }}/api/orders"
//!   headers: { Accept: application/json }
//!   resultsJsonPath: "$.data"
//!   pagination: { type: offset, skipKey: offset, limitKey: limit, pageSize: 1000, totalPath: "$.meta.total" }
//!   auth: { type: bearer, tokenEnv: SHOP_API_TOKEN }
//!   concurrency: 4          # parallel pages when they can be computed
//!   rateLimit: 20           # requests per second
//! ```

use std::collections::BTreeMap;

use crate::jsonpath::JsonSelector;
use serde::Deserialize;
use serde_json::Value;
use sluicegate_core::{BuildContext, Result, field_error};
use sluicegate_templates::{Templates, render_template};

use crate::auth::AuthConfig;
use crate::decode::ResultsFormat;
use crate::pagination::{HeaderTokenPaging, Pagination, Paginator, deserialize_pagination};

/// The HTTP method (`cute` writes `Get`/`Post`; any case is accepted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HttpMethod {
    /// GET.
    #[default]
    Get,
    /// POST, with `formUrlEncodedContent` or `body`.
    Post,
}

impl<'de> Deserialize<'de> for HttpMethod {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        match text.to_ascii_lowercase().as_str() {
            "get" => Ok(HttpMethod::Get),
            "post" => Ok(HttpMethod::Post),
            other => Err(serde::de::Error::custom(format!(
                "unknown httpMethod '{other}' (Get or Post)"
            ))),
        }
    }
}

/// The `http` source section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpSourceConfig {
    /// The URL to request; a template. In a child (see `parent`) it can use
    /// `{{ parent.<field> }}`. Pagination parameters are added to its query.
    pub end_point: String,
    /// GET (default) or POST.
    #[serde(default)]
    pub http_method: HttpMethod,
    /// Extra request headers; values are templates.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// A form body for POST (`cute`'s key); values are templates.
    #[serde(default)]
    pub form_url_encoded_content: BTreeMap<String, String>,
    /// A JSON body for POST; string values are templates.
    #[serde(default)]
    pub body: Option<Value>,
    /// The body's format: json (default), ndjson, csv, zippedCsv.
    #[serde(default)]
    pub results_format: ResultsFormat,
    /// The zip password for `zippedCsv`; a template (`{{ env.ZIP_PASSWORD }}`).
    #[serde(default)]
    pub results_secret: Option<String>,
    /// JSONPath to the records (`$.data`, or `data` as in `cute`); default: the
    /// whole document (an array of records, or one record).
    #[serde(default)]
    pub results_json_path: Option<String>,
    /// `cute`'s JSONPath to the total page count (same as `pagination.totalPagesPath`).
    #[serde(default)]
    pub results_total_pages_path: Option<String>,
    /// `cute`'s header-token paging: used when there is no `pagination`; the
    /// response header's value is sent back as a request header of the same name.
    #[serde(default)]
    pub continuation_token_header: Option<String>,
    /// How to page through results; absent means a single request.
    #[serde(default, deserialize_with = "deserialize_pagination")]
    pub pagination: Option<Pagination>,
    /// Authentication; secrets only from the environment or files.
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    /// Retries of failed requests.
    #[serde(default)]
    pub retry: RetryConfig,
    /// Timeout of one request (connect to last byte), in seconds.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// Requests per second at most (default: unlimited).
    #[serde(default)]
    pub rate_limit: Option<u32>,
    /// Pages fetched at once when every page's request can be computed
    /// (offset or page numbers with a known total).
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Call this endpoint once per record of another endpoint: the parent,
    /// itself an `http` source section (without `type`).
    #[serde(default)]
    pub parent: Option<Box<HttpSourceConfig>>,
    /// Parent records processed at once.
    #[serde(default = "default_fan_out")]
    pub fan_out: usize,
    /// Parent fields copied into each child record as `_parent_<field>`.
    #[serde(default)]
    pub include_from_parent: Vec<String>,
    /// The response cache's settings, used with `--use-filecache`.
    #[serde(default)]
    pub file_cache: FileCacheConfig,
}

impl HttpSourceConfig {
    /// A configuration for `end_point` with every other key at its default (one
    /// GET request, JSON, no pagination); set fields to change them. For
    /// building sources in code rather than from a configuration file.
    pub fn new(end_point: impl Into<String>) -> Self {
        Self {
            end_point: end_point.into(),
            http_method: HttpMethod::default(),
            headers: BTreeMap::new(),
            form_url_encoded_content: BTreeMap::new(),
            body: None,
            results_format: ResultsFormat::default(),
            results_secret: None,
            results_json_path: None,
            results_total_pages_path: None,
            continuation_token_header: None,
            pagination: None,
            auth: None,
            retry: RetryConfig::default(),
            timeout_secs: default_timeout_secs(),
            rate_limit: None,
            concurrency: default_concurrency(),
            parent: None,
            fan_out: default_fan_out(),
            include_from_parent: Vec::new(),
            file_cache: FileCacheConfig::default(),
        }
    }
}

/// The `fileCache` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FileCacheConfig {
    /// How long a cached response is replayed, in seconds.
    #[serde(default = "default_cache_ttl")]
    pub ttl_secs: u64,
    /// Largest total size of the cache, in MiB; the oldest responses go first.
    #[serde(default = "default_cache_mb")]
    pub max_mb: u64,
}

impl Default for FileCacheConfig {
    fn default() -> Self {
        Self {
            ttl_secs: default_cache_ttl(),
            max_mb: default_cache_mb(),
        }
    }
}

fn default_cache_ttl() -> u64 {
    86_400
}
fn default_cache_mb() -> u64 {
    1024
}
fn default_timeout_secs() -> u64 {
    60
}
fn default_concurrency() -> usize {
    1
}
fn default_fan_out() -> usize {
    4
}

/// The `retry` section: capped exponential backoff with full jitter for 408,
/// 429, 5xx and network errors; `Retry-After` is honoured.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RetryConfig {
    /// Attempts per request, the first one included.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Backoff before the first retry (the cap of its random delay), in ms.
    #[serde(default = "default_initial_backoff_ms")]
    pub initial_backoff_ms: u64,
    /// Largest backoff between attempts, in ms.
    #[serde(default = "default_max_backoff_ms")]
    pub max_backoff_ms: u64,
    /// Longest `Retry-After` to wait for; a server asking for more fails the
    /// request with a message saying so.
    #[serde(default = "default_max_retry_after_secs")]
    pub max_retry_after_secs: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: default_max_attempts(),
            initial_backoff_ms: default_initial_backoff_ms(),
            max_backoff_ms: default_max_backoff_ms(),
            max_retry_after_secs: default_max_retry_after_secs(),
        }
    }
}

fn default_max_attempts() -> u32 {
    5
}
fn default_initial_backoff_ms() -> u64 {
    250
}
fn default_max_backoff_ms() -> u64 {
    30_000
}
fn default_max_retry_after_secs() -> u64 {
    300
}

/// How deep parents may nest.
pub(crate) const MAX_PARENT_DEPTH: usize = 3;

impl HttpSourceConfig {
    /// The pagination, with `cute`'s top-level keys folded in.
    pub(crate) fn effective_pagination(&self) -> Option<Pagination> {
        let mut pagination = self.pagination.clone();
        if let Some(path) = &self.results_total_pages_path {
            match &mut pagination {
                Some(Pagination::Offset(p)) if p.total_pages_path.is_none() => {
                    p.total_pages_path = Some(path.clone())
                }
                Some(Pagination::PageNumber(p)) if p.total_pages_path.is_none() => {
                    p.total_pages_path = Some(path.clone())
                }
                _ => {}
            }
        }
        if pagination.is_none()
            && let Some(header) = &self.continuation_token_header
        {
            pagination = Some(Pagination::HeaderToken(HeaderTokenPaging {
                response_header: header.clone(),
                request_header: None,
                max_pages: None,
            }));
        }
        pagination
    }

    /// Checks everything that can be checked without network: templates,
    /// URL, JSONPaths, pagination, secrets, numbers, the parent chain.
    pub fn validate(&self, ctx: &BuildContext) -> Result<()> {
        self.validate_at(ctx, 0, &mut Vec::new())
    }

    fn validate_at(&self, ctx: &BuildContext, depth: usize, chain: &mut Vec<String>) -> Result<()> {
        let scope = &ctx.template_scope;
        if depth > 0 || self.parent.is_some() {
            // A child's endpoint reads `parent`: compile it now, render per parent later.
            Templates::new()
                .add("endPoint", &self.end_point)
                .map_err(|e| field_error("endPoint", e.message()))?;
        }
        if self.parent.is_none() {
            let url = render_template("endPoint", &self.end_point, scope)
                .map_err(|e| field_error("endPoint", e.message()))?;
            check_url(&url)?;
        }
        for (name, value) in &self.headers {
            reqwest::header::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                field_error(&format!("headers.{name}"), "is not a valid header name")
            })?;
            Templates::new()
                .add(name, value)
                .map_err(|e| field_error(&format!("headers.{name}"), e.message()))?;
        }
        if self.http_method == HttpMethod::Get
            && (!self.form_url_encoded_content.is_empty() || self.body.is_some())
        {
            return Err(field_error(
                "httpMethod",
                "a request body (formUrlEncodedContent or body) needs httpMethod: Post",
            ));
        }
        if !self.form_url_encoded_content.is_empty() && self.body.is_some() {
            return Err(field_error(
                "body",
                "give either formUrlEncodedContent or body, not both",
            ));
        }
        if let Some(path) = &self.results_json_path {
            JsonSelector::parse(path).map_err(|e| field_error("resultsJsonPath", e.message()))?;
        }
        if let Some(secret) = &self.results_secret {
            render_template("resultsSecret", secret, scope)
                .map_err(|e| field_error("resultsSecret", e.message()))?;
        }
        if self.pagination.is_some() && self.continuation_token_header.is_some() {
            return Err(field_error(
                "continuationTokenHeader",
                "applies only without pagination (or use pagination type header_token)",
            ));
        }
        Paginator::new(self.effective_pagination())?;
        if let Some(auth) = &self.auth {
            auth.resolve(ctx)?;
        }
        self.check_limits()?;
        self.validate_parent(ctx, depth, chain)
    }

    /// Checks the retry, timeout, rate, concurrency and file-cache values.
    fn check_limits(&self) -> Result<()> {
        if self.retry.max_attempts == 0 {
            return Err(field_error("retry.maxAttempts", "must be at least 1"));
        }
        if self.retry.initial_backoff_ms > self.retry.max_backoff_ms {
            return Err(field_error(
                "retry.initialBackoffMs",
                "must not be larger than retry.maxBackoffMs",
            ));
        }
        if self.timeout_secs == 0 {
            return Err(field_error("timeoutSecs", "must be at least 1"));
        }
        if self.rate_limit == Some(0) {
            return Err(field_error("rateLimit", "must be at least 1"));
        }
        if self.concurrency == 0 || self.concurrency > 64 {
            return Err(field_error("concurrency", "must be between 1 and 64"));
        }
        if self.fan_out == 0 || self.fan_out > 64 {
            return Err(field_error("fanOut", "must be between 1 and 64"));
        }
        if self.file_cache.ttl_secs == 0 || self.file_cache.max_mb == 0 {
            return Err(field_error(
                "fileCache",
                "ttlSecs and maxMb must be at least 1",
            ));
        }
        Ok(())
    }

    /// Checks the parent chain (no cycle, not too deep) and validates each
    /// parent; `includeFromParent` needs a parent.
    fn validate_parent(
        &self,
        ctx: &BuildContext,
        depth: usize,
        chain: &mut Vec<String>,
    ) -> Result<()> {
        if let Some(parent) = &self.parent {
            if chain.contains(&self.end_point) {
                return Err(field_error(
                    "parent",
                    format!(
                        "the parent chain repeats endPoint '{}' (a cycle)",
                        self.end_point
                    ),
                ));
            }
            if depth + 1 > MAX_PARENT_DEPTH {
                return Err(field_error(
                    "parent",
                    format!("parents nest at most {MAX_PARENT_DEPTH} deep"),
                ));
            }
            chain.push(self.end_point.clone());
            if chain.contains(&parent.end_point) {
                return Err(field_error(
                    "parent",
                    format!(
                        "the parent chain repeats endPoint '{}' (a cycle)",
                        parent.end_point
                    ),
                ));
            }
            parent
                .validate_at(ctx, depth + 1, chain)
                .map_err(|e| sluicegate_core::locate(e, "parent"))?;
        } else if !self.include_from_parent.is_empty() {
            return Err(field_error("includeFromParent", "needs a parent"));
        }
        Ok(())
    }
}

pub(crate) fn check_url(url: &str) -> Result<reqwest::Url> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| field_error("endPoint", format!("'{url}' is not an absolute URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(field_error(
            "endPoint",
            format!("'{url}' must be an http or https URL"),
        ));
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use sluicegate_core::{locate, parse_section};

    fn ctx() -> BuildContext {
        BuildContext::new("orders", true)
            .with_template_scope(json!({"env": {"PORT": "9"}, "config": {}}))
    }

    fn parse(v: Value) -> Result<HttpSourceConfig> {
        parse_section(v, "syncs[orders].source")
    }

    fn check(v: Value) -> Result<()> {
        parse(v)?.validate(&ctx()).map_err(|e| locate(e, "s"))
    }

    #[test]
    fn a_cute_entry_parses_unchanged() {
        let c = parse(json!({
            "endPoint": "https://api.example.test/users?active=1",
            "httpMethod": "Get",
            "headers": {"Accept": "application/json", "Authorization": "Bearer {{ config.PORT }}"},
            "resultsJsonPath": "data.items",
            "resultsFormat": "Json",
            "resultsTotalPagesPath": "meta.pages",
            "pagination": {"skipKey": "page", "limitKey": "per_page", "pageSize": 100, "limitMax": 100},
        }))
        .unwrap();
        match c.effective_pagination() {
            Some(Pagination::Offset(p)) => {
                assert_eq!(
                    (
                        p.skip_key.as_str(),
                        p.limit_max,
                        p.total_pages_path.as_deref()
                    ),
                    ("page", Some(100), Some("meta.pages"))
                );
            }
            other => panic!("{other:?}"),
        }
        c.validate(&ctx()).unwrap();
        let c =
            parse(json!({"endPoint": "http://x/", "continuationTokenHeader": "x-token"})).unwrap();
        assert!(matches!(
            c.effective_pagination(),
            Some(Pagination::HeaderToken(_))
        ));
    }

    #[test]
    fn mistakes_name_the_field() {
        let err =
            parse(json!({"endPoint": "http://x", "pagination": {"skipKye": "o"}})).unwrap_err();
        assert!(err.to_string().contains("unknown field `skipKye`"), "{err}");
        let err = parse(json!({"endPoint": "http://x", "resultsFormat": "xml"})).unwrap_err();
        assert!(
            err.to_string().contains("unknown resultsFormat 'xml'"),
            "{err}"
        );
        let err = check(json!({"endPoint": "{{ env.NOPE }}/x"})).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("s.endPoint: cannot render template"),
            "{err}"
        );
        let err = check(json!({"endPoint": "http://x", "formUrlEncodedContent": {"a": "b"}}))
            .unwrap_err();
        assert!(err.to_string().contains("needs httpMethod: Post"), "{err}");
        let err = check(json!({"endPoint": "http://x", "auth": {"type": "bearer", "tokenEnv": "SLUICEGATE_TEST_SURELY_UNSET"}})).unwrap_err();
        assert!(
            err.to_string()
                .contains("SLUICEGATE_TEST_SURELY_UNSET is not set"),
            "{err}"
        );
        let err = check(
            json!({"endPoint": "http://x", "pagination": {"type": "cursor", "cursorPath": "n"}}),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("exactly one of cursorParam and cursorBodyPath"),
            "{err}"
        );
    }

    #[test]
    fn parent_chains_are_checked() {
        let ok = json!({"endPoint": "http://x/orders/{{ parent.id }}/lines", "parent": {"endPoint": "http://x/orders"}});
        check(ok).unwrap();
        let deep = json!({"endPoint": "http://x/a/{{ parent.id }}", "parent": {"endPoint": "http://x/b/{{ parent.id }}",
            "parent": {"endPoint": "http://x/c/{{ parent.id }}", "parent": {"endPoint": "http://x/d/{{ parent.id }}", "parent": {"endPoint": "http://x/e"}}}}});
        assert!(
            check(deep)
                .unwrap_err()
                .to_string()
                .contains("nest at most 3 deep")
        );
        let cycle = json!({"endPoint": "http://x/a/{{ parent.id }}", "parent": {"endPoint": "http://x/a/{{ parent.id }}", "parent": {"endPoint": "http://x/z"}}});
        assert!(check(cycle).unwrap_err().to_string().contains("cycle"));
        let err = check(json!({"endPoint": "http://x", "includeFromParent": ["id"]})).unwrap_err();
        assert!(err.to_string().contains("needs a parent"), "{err}");
    }
}
