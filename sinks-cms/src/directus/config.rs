//! Configuration of the `directus` sink.
//!
//! ```yaml
//! sinks:
//!   directus:
//!     type: directus
//!     url: "{{ env.DIRECTUS_URL }}"
//!     tokenEnv: DIRECTUS_TOKEN
//! ```

use sluicegate_core::{BuildContext, Result, Secret, field_error};
use sluicegate_templates::render_template;

use crate::api::read_token;
use crate::config::{self, cms_sink_config};

cms_sink_config! {
    /// The `directus` sink section.
    pub struct DirectusSinkConfig (
        rate_limit = "Requests per second at most (default: no limit).",
        max_concurrency = "default_max_concurrency",
        max_attempts = "default_attempts"
    ) {
        /// The instance's base URL (`https://cms.example.com`); a template.
        pub url: String,
        /// The environment variable holding a static access token.
        #[serde(default = "default_token_env")]
        pub token_env: String,
        /// A file holding the token (instead of `tokenEnv`), relative to the
        /// configuration file; keep it readable by its owner only.
        #[serde(default)]
        pub token_file: Option<String>,
        /// Items per create request.
        #[serde(default = "default_create_chunk")]
        pub create_chunk: usize,
    }
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
            cache_max_entries: config::default_cache_entries(),
            cache_max_mb: config::default_cache_mb(),
            cache_ttl_secs: None,
            prefetch: config::default_prefetch(),
            timeout_secs: config::default_timeout(),
            max_attempts: default_attempts(),
            rate_share: 1,
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
        self.check_shared()?;
        if self.create_chunk == 0 {
            return Err(field_error("createChunk", "must be at least 1"));
        }
        Ok(Resolved { url, token })
    }
}
