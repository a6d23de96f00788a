//! Configuration of the `directus` sink.
//!
//! ```yaml
//! sinks:
//!   directus:
//!     type: directus
//!     url: "{{ env.DIRECTUS_URL }}"
//!     tokenEnv: DIRECTUS_TOKEN
//! ```

use serde::Deserialize;
use sluicegate_core::{BuildContext, Result, Secret, field_error};
use sluicegate_templates::render_template;

use crate::api::read_token;

/// The `directus` sink section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DirectusSinkConfig {
    /// The instance's base URL (`https://cms.example.com`); a template.
    pub url: String,
    /// The environment variable holding a static access token.
    #[serde(default = "default_token_env")]
    pub token_env: String,
    /// A file holding the token (instead of `tokenEnv`), relative to the
    /// configuration file; keep it readable by its owner only.
    #[serde(default)]
    pub token_file: Option<String>,
    /// Requests per second at most (default: no limit).
    #[serde(default)]
    pub rate_limit: Option<u32>,
    /// Most requests in flight at once.
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: usize,
    /// Items per create request.
    #[serde(default = "default_create_chunk")]
    pub create_chunk: usize,
    /// Most items in the lookup cache.
    #[serde(default = "default_cache_entries")]
    pub cache_max_entries: u64,
    /// Most MiB in the lookup cache.
    #[serde(default = "default_cache_mb")]
    pub cache_max_mb: u64,
    /// Forget cached items after this many seconds (default: never).
    #[serde(default)]
    pub cache_ttl_secs: Option<u64>,
    /// Load the whole collection into the cache when it fits (`auto`) or never.
    #[serde(default = "default_prefetch")]
    pub prefetch: String,
    /// Timeout of one request, in seconds.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// Attempts per request for 429, 5xx and network failures.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
}

fn default_token_env() -> String {
    "DIRECTUS_TOKEN".to_owned()
}
fn default_max_concurrency() -> usize {
    4
}
fn default_create_chunk() -> usize {
    100
}
fn default_cache_entries() -> u64 {
    10_000
}
fn default_cache_mb() -> u64 {
    4
}
fn default_prefetch() -> String {
    "auto".to_owned()
}
fn default_timeout() -> u64 {
    60
}
fn default_attempts() -> u32 {
    5
}

/// The configuration with templates rendered and the token read.
#[derive(Debug, Clone)]
pub(crate) struct Resolved {
    pub(crate) url: reqwest::Url,
    pub(crate) token: Secret,
}

impl DirectusSinkConfig {
    /// A configuration of the instance at `url` with every default (the token
    /// from `DIRECTUS_TOKEN`).
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            token_env: default_token_env(),
            token_file: None,
            rate_limit: None,
            max_concurrency: default_max_concurrency(),
            create_chunk: default_create_chunk(),
            cache_max_entries: default_cache_entries(),
            cache_max_mb: default_cache_mb(),
            cache_ttl_secs: None,
            prefetch: default_prefetch(),
            timeout_secs: default_timeout(),
            max_attempts: default_attempts(),
        }
    }

    /// Checks values and renders templates without any network call.
    pub fn validate(&self, ctx: &BuildContext) -> Result<()> {
        self.resolve(ctx).map(|_| ())
    }

    pub(crate) fn resolve(&self, ctx: &BuildContext) -> Result<Resolved> {
        let text = render_template("url", &self.url, &ctx.template_scope)
            .map_err(|e| field_error("url", e.message()))?;
        let mut url = reqwest::Url::parse(text.trim())
            .map_err(|e| field_error("url", format!("'{text}' is not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(field_error(
                "url",
                format!("'{text}' is not an http(s) URL"),
            ));
        }
        if !url.path().ends_with('/') {
            let path = format!("{}/", url.path());
            url.set_path(&path);
        }
        let token = read_token(self.token_file.as_deref(), &self.token_env, ctx)?;
        if self.rate_limit == Some(0) {
            return Err(field_error("rateLimit", "must be at least 1"));
        }
        if self.max_concurrency == 0 {
            return Err(field_error("maxConcurrency", "must be at least 1"));
        }
        if self.create_chunk == 0 {
            return Err(field_error("createChunk", "must be at least 1"));
        }
        if self.cache_max_entries == 0 {
            return Err(field_error("cacheMaxEntries", "must be at least 1"));
        }
        if !matches!(self.prefetch.as_str(), "auto" | "never") {
            return Err(field_error("prefetch", "must be auto or never"));
        }
        if self.max_attempts == 0 {
            return Err(field_error("maxAttempts", "must be at least 1"));
        }
        Ok(Resolved { url, token })
    }
}
