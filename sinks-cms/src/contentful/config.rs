//! Configuration of the `contentful` sink.
//!
//! ```yaml
//! sinks:
//!   cms:
//!     type: contentful
//!     spaceId: "{{ env.CONTENTFUL_SPACE_ID }}"
//!     environmentId: master
//!     tokenEnv: CONTENTFUL_MANAGEMENT_TOKEN
//! ```

use sluicegate_core::{BuildContext, Result, Secret, field_error};
use sluicegate_templates::render_template;

use crate::api::read_token;
use crate::config::cms_sink_config;

cms_sink_config! {
    /// The `contentful` sink section.
    pub struct ContentfulSinkConfig (
        rate_limit = "Requests per second. Default: learned from the API's \
            `X-Contentful-RateLimit-Second-Limit` header, starting at 7 (the CMA's \
            default) until the first response says otherwise.",
        max_concurrency = "default_max_concurrency",
        max_attempts = "default_attempts"
    ) {
        /// The space id; a template (`{{ env.CONTENTFUL_SPACE_ID }}`).
        pub space_id: String,
        /// The environment id; a template.
        #[serde(default = "default_environment")]
        pub environment_id: String,
        /// The environment variable holding the management token.
        #[serde(default = "default_token_env")]
        pub token_env: String,
        /// A file holding the management token (instead of `tokenEnv`), relative to
        /// the configuration file; keep it readable by its owner only.
        #[serde(default)]
        pub token_file: Option<String>,
        /// The API's base URL (an emulator's, for local runs); a template.
        #[serde(default = "default_base_url")]
        pub base_url: String,
        /// Publish what was written (the `--no-publish` flag turns it off for a run).
        #[serde(default = "default_true")]
        pub publish: bool,
        /// Entries per bulk publish action (at most 200).
        #[serde(default = "default_publish_chunk")]
        pub publish_chunk: usize,
    }
}

fn default_environment() -> String {
    "master".to_owned()
}
fn default_token_env() -> String {
    "CONTENTFUL_MANAGEMENT_TOKEN".to_owned()
}
fn default_base_url() -> String {
    "https://api.contentful.com".to_owned()
}
fn default_max_concurrency() -> usize {
    8
}
fn default_true() -> bool {
    true
}
fn default_publish_chunk() -> usize {
    100
}
fn default_attempts() -> u32 {
    8
}

/// The configuration with templates rendered and the token read.
#[derive(Debug, Clone)]
pub(crate) struct Resolved {
    pub(crate) space_id: String,
    pub(crate) environment_id: String,
    pub(crate) base_url: reqwest::Url,
    pub(crate) token: Secret,
}

impl ContentfulSinkConfig {
    /// Checks values and renders templates without any network call.
    pub fn validate(&self, ctx: &BuildContext) -> Result<()> {
        self.resolve(ctx).map(|_| ())
    }

    pub(crate) fn resolve(&self, ctx: &BuildContext) -> Result<Resolved> {
        let scope = &ctx.template_scope;
        let render = |name: &str, value: &str| {
            render_template(name, value, scope).map_err(|e| field_error(name, e.message()))
        };
        let space_id = render("spaceId", &self.space_id)?;
        let environment_id = render("environmentId", &self.environment_id)?;
        for (name, id) in [("spaceId", &space_id), ("environmentId", &environment_id)] {
            if id.is_empty()
                || !id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            {
                return Err(field_error(name, format!("'{id}' is not a valid id")));
            }
        }
        let base = render("baseUrl", &self.base_url)?;
        let base_url = reqwest::Url::parse(&base)
            .map_err(|e| field_error("baseUrl", format!("'{base}' is not a URL: {e}")))?;
        let token = read_token(self.token_file.as_deref(), &self.token_env, ctx)?;
        self.check_shared()?;
        if self.publish_chunk == 0 || self.publish_chunk > 200 {
            return Err(field_error("publishChunk", "must be between 1 and 200"));
        }
        Ok(Resolved {
            space_id,
            environment_id,
            base_url,
            token,
        })
    }
}
