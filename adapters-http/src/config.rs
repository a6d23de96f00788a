//! Configuration of the `http` source (camelCase keys, as in `cute` sync-api YAML).
//!
//! ```yaml
//! source:
//!   type: http
//!   endPoint: "{{ env.SHOP_API_URL }}/api/orders"
//!   headers: { Accept: application/json }
//!   resultsJsonPath: "$.data"
//!   pagination: { type: offset, skipKey: offset, limitKey: limit, pageSize: 1000, totalPath: "$.meta.total" }
//!   auth: { type: bearer, tokenEnv: SHOP_API_TOKEN }
//!   retry: { maxAttempts: 5, initialBackoffMs: 250, maxBackoffMs: 30000 }
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;
use sluicegate_core::{BuildContext, JsonSelector, Result, Secret, field_error, render_template};

/// The `http` source section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpSourceConfig {
    /// The URL to request; a template (`{{ env.X }}`). Pagination parameters are
    /// added to its query string.
    pub end_point: String,
    /// Extra request headers; values are templates.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// JSONPath to the records in a response (`$.data`, or `data` as in `cute`).
    /// Default: the whole response (an array of records, or one record).
    #[serde(default)]
    pub results_json_path: Option<String>,
    /// How to page through results; absent means a single request.
    #[serde(default)]
    pub pagination: Option<PaginationConfig>,
    /// Authentication; secrets come only from the environment.
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    /// Retries of failed requests.
    #[serde(default)]
    pub retry: RetryConfig,
    /// Timeout of one request (connect to last byte), in seconds.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
}

fn default_timeout_secs() -> u64 {
    60
}

/// The pagination styles this source supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PaginationKind {
    /// `skipKey` is a record offset, advanced by the number of records received.
    Offset,
}

fn default_pagination_kind() -> PaginationKind {
    PaginationKind::Offset
}

/// The `pagination` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PaginationConfig {
    /// The pagination style.
    #[serde(rename = "type", default = "default_pagination_kind")]
    pub kind: PaginationKind,
    /// Query parameter carrying the offset.
    #[serde(default = "default_skip_key")]
    pub skip_key: String,
    /// Query parameter carrying the page size.
    #[serde(default = "default_limit_key")]
    pub limit_key: String,
    /// Records requested per page.
    #[serde(default = "default_page_size")]
    pub page_size: u64,
    /// JSONPath to the total number of records; when set, reaching it ends the
    /// read (and a short page does not).
    #[serde(default)]
    pub total_path: Option<String>,
    /// Stop after this many pages.
    #[serde(default)]
    pub max_pages: Option<u64>,
}

fn default_skip_key() -> String {
    "offset".to_owned()
}

fn default_limit_key() -> String {
    "limit".to_owned()
}

fn default_page_size() -> u64 {
    100
}

/// The `auth` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase", deny_unknown_fields)]
pub enum AuthConfig {
    /// `Authorization: Bearer <token>`, the token read from an environment variable.
    #[serde(rename_all = "camelCase")]
    Bearer {
        /// The environment variable holding the token.
        token_env: String,
    },
}

/// The `retry` section: capped exponential backoff with full jitter for
/// 408/429/5xx responses and network errors; `Retry-After` is honoured.
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

impl HttpSourceConfig {
    /// Checks everything that can be checked without network: templates render,
    /// the URL parses, JSONPaths compile, secrets are present, numbers are sane.
    pub fn validate(&self, ctx: &BuildContext) -> Result<()> {
        let url = render_template("endPoint", &self.end_point, &ctx.template_scope)
            .map_err(|e| field_error("endPoint", e.message()))?;
        let parsed = reqwest::Url::parse(&url)
            .map_err(|e| field_error("endPoint", format!("'{url}' is not an absolute URL: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(field_error(
                "endPoint",
                format!("'{url}' must be an http or https URL"),
            ));
        }
        for (name, value) in &self.headers {
            reqwest::header::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                field_error(&format!("headers.{name}"), "is not a valid header name")
            })?;
            render_template(name, value, &ctx.template_scope)
                .map_err(|e| field_error(&format!("headers.{name}"), e.message()))?;
        }
        if let Some(path) = &self.results_json_path {
            JsonSelector::parse(path).map_err(|e| field_error("resultsJsonPath", e.message()))?;
        }
        if let Some(p) = &self.pagination {
            if p.page_size == 0 {
                return Err(field_error("pagination.pageSize", "must be at least 1"));
            }
            if p.skip_key.is_empty() || p.limit_key.is_empty() {
                return Err(field_error(
                    "pagination",
                    "skipKey and limitKey must not be empty",
                ));
            }
            if let Some(path) = &p.total_path {
                JsonSelector::parse(path)
                    .map_err(|e| field_error("pagination.totalPath", e.message()))?;
            }
            if p.max_pages == Some(0) {
                return Err(field_error("pagination.maxPages", "must be at least 1"));
            }
        }
        if let Some(AuthConfig::Bearer { token_env }) = &self.auth {
            Secret::from_env(token_env).map_err(|e| field_error("auth.tokenEnv", e.message()))?;
        }
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
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use sluicegate_core::parse_section;

    fn ctx() -> BuildContext {
        BuildContext {
            sync_key: "orders".into(),
            dry_run: true,
            template_scope: json!({"env": {"PORT": "9"}, "config": {}}),
            base_dir: ".".into(),
            publish: true,
        }
    }

    fn parse(v: serde_json::Value) -> Result<HttpSourceConfig> {
        parse_section(v, "syncs[orders].source")
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(json!({"endPoint": "http://x/api", "pagination": {}})).unwrap();
        let p = c.pagination.as_ref().unwrap();
        assert_eq!(
            (
                p.kind,
                p.skip_key.as_str(),
                p.limit_key.as_str(),
                p.page_size
            ),
            (PaginationKind::Offset, "offset", "limit", 100)
        );
        assert_eq!(c.retry.max_attempts, 5);
        c.validate(&ctx()).unwrap();
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_path() {
        let err =
            parse(json!({"endPoint": "http://x", "pagination": {"skipKye": "o"}})).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("syncs[orders].source.pagination"), "{msg}");
        assert!(msg.contains("unknown field `skipKye`"), "{msg}");
        let err = parse(json!({"endPoint": "http://x", "auth": {"type": "bearer", "token": "x"}}))
            .unwrap_err();
        assert!(err.to_string().contains("unknown field `token`"), "{err}");
    }

    #[test]
    fn validation_names_the_field() {
        let c = parse(
            json!({"endPoint": "http://127.0.0.1:{{ env.PORT }}/x", "resultsJsonPath": "$[?"}),
        )
        .unwrap();
        let err = sluicegate_core::locate(c.validate(&ctx()).unwrap_err(), "syncs[orders].source");
        assert!(
            err.to_string()
                .starts_with("syncs[orders].source.resultsJsonPath: invalid JSONPath"),
            "{err}"
        );

        let c = parse(json!({"endPoint": "{{ env.NOPE }}/x"})).unwrap();
        let err = sluicegate_core::locate(c.validate(&ctx()).unwrap_err(), "s");
        assert!(
            err.to_string()
                .starts_with("s.endPoint: cannot render template"),
            "{err}"
        );

        let c = parse(json!({"endPoint": "/relative"})).unwrap();
        assert!(
            c.validate(&ctx())
                .unwrap_err()
                .to_string()
                .contains("not an absolute URL")
        );

        let c = parse(json!({"endPoint": "http://x", "auth": {"type": "bearer", "tokenEnv": "SLUICEGATE_TEST_SURELY_UNSET"}})).unwrap();
        let err = c.validate(&ctx()).unwrap_err();
        assert!(
            err.to_string()
                .contains("SLUICEGATE_TEST_SURELY_UNSET is not set"),
            "{err}"
        );
    }
}
