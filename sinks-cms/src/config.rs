//! What the content-platform sinks' configurations share: the request rate,
//! concurrency, timeout and attempts (with each platform's defaults and
//! documentation where they differ), and the lookup cache.
//!
//! [`cms_sink_config!`] declares a platform's configuration struct: its own
//! fields as written, then these. A macro rather than `#[serde(flatten)]`
//! because serde's `deny_unknown_fields` does not work with `flatten`: a
//! misspelt key must stay an error.

use std::time::Duration;

use sluicegate_upsert::{CacheConfig, Prefetch, UpsertOptions};

/// Declares a content-platform sink's configuration section: the platform's
/// fields, then the shared ones (`rateLimit`, `maxConcurrency`,
/// `cacheMaxEntries`, `cacheMaxMb`, `cacheTtlSecs`, `prefetch`, `timeoutSecs`,
/// `maxAttempts`), given the documentation of `rateLimit` and the functions of
/// the platform's default concurrency and attempts; and on the struct, the
/// checks of those values, the upsert options and the timeout.
macro_rules! cms_sink_config {
    (
        $(#[$meta:meta])*
        pub struct $name:ident
            (rate_limit = $rate_doc:literal, max_concurrency = $concurrency:literal, max_attempts = $attempts:literal)
        {
            $($(#[$field_meta:meta])* pub $field:ident: $ty:ty,)*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, serde::Deserialize)]
        #[serde(deny_unknown_fields, rename_all = "camelCase")]
        pub struct $name {
            $($(#[$field_meta])* pub $field: $ty,)*
            #[doc = $rate_doc]
            #[serde(default)]
            pub rate_limit: Option<u32>,
            /// Most requests in flight at once.
            #[serde(default = $concurrency)]
            pub max_concurrency: usize,
            /// Most entries (items) in the lookup cache.
            #[serde(default = "crate::config::default_cache_entries")]
            pub cache_max_entries: u64,
            /// Most MiB in the lookup cache.
            #[serde(default = "crate::config::default_cache_mb")]
            pub cache_max_mb: u64,
            /// Forget cached entries after this many seconds (default: never).
            #[serde(default)]
            pub cache_ttl_secs: Option<u64>,
            /// Load the whole content type (collection) into the cache when it
            /// fits (`auto`) or `never`.
            #[serde(default = "crate::config::default_prefetch")]
            pub prefetch: String,
            /// Timeout of one request, in seconds.
            #[serde(default = "crate::config::default_timeout")]
            pub timeout_secs: u64,
            /// Attempts per request for 429, 5xx and network failures.
            #[serde(default = $attempts)]
            pub max_attempts: u32,
            /// Processes sharing the platform's rate limit: the shard count
            /// of a sharded run (set by the run, not in configuration).
            #[serde(skip, default = "crate::config::one")]
            pub rate_share: u32,
        }

        impl $name {
            /// The upsert action's options for a run: its lookup cache and
            /// prefetch from this configuration.
            pub(crate) fn upsert_options(&self, dry_run: bool, publish: bool) -> sluicegate_upsert::UpsertOptions {
                crate::config::upsert_options(
                    dry_run,
                    publish,
                    self.cache_max_entries,
                    self.cache_max_mb,
                    self.cache_ttl_secs,
                    &self.prefetch,
                )
            }

            /// Checks the shared fields' values.
            pub(crate) fn check_shared(&self) -> sluicegate_core::Result<()> {
                use sluicegate_core::field_error;
                if self.rate_limit == Some(0) {
                    return Err(field_error("rateLimit", "must be at least 1"));
                }
                if self.max_concurrency == 0 {
                    return Err(field_error("maxConcurrency", "must be at least 1"));
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
                Ok(())
            }

            /// Takes the run's `--max-concurrent-chunks` over this
            /// configuration's `maxConcurrency`.
            pub(crate) fn apply_tuning(&mut self, ctx: &sluicegate_core::BuildContext) {
                if let Some(shard) = ctx.shard {
                    self.rate_share = shard.count.max(1);
                }
                if let Some(n) = ctx.tuning.max_concurrency {
                    self.max_concurrency = n.max(1);
                }
            }

            /// The API client's settings for the API at `base`: this
            /// configuration's pacing, concurrency, attempts and timeout,
            /// starting at `default_rate` requests per second without a
            /// `rateLimit`.
            pub(crate) fn client_settings(
                &self,
                base: reqwest::Url,
                token: sluicegate_core::Secret,
                default_rate: u32,
            ) -> crate::api::Settings {
                crate::api::Settings {
                    base,
                    token,
                    rate_limit: self.rate_limit,
                    default_rate,
                    max_concurrency: self.max_concurrency,
                    max_attempts: self.max_attempts,
                    timeout: std::time::Duration::from_secs(self.timeout_secs),
                    rate_share: self.rate_share,
                }
            }
        }
    };
}
pub(crate) use cms_sink_config;

pub(crate) fn one() -> u32 {
    1
}

pub(crate) fn default_cache_entries() -> u64 {
    10_000
}
pub(crate) fn default_cache_mb() -> u64 {
    4
}
pub(crate) fn default_prefetch() -> String {
    "auto".to_owned()
}
pub(crate) fn default_timeout() -> u64 {
    60
}

/// The upsert options of a content-platform sink's lookup cache settings.
pub(crate) fn upsert_options(
    dry_run: bool,
    publish: bool,
    cache_max_entries: u64,
    cache_max_mb: u64,
    cache_ttl_secs: Option<u64>,
    prefetch: &str,
) -> UpsertOptions {
    UpsertOptions::new(dry_run, publish)
        .with_cache(
            CacheConfig::new(cache_max_entries, cache_max_mb.saturating_mul(1 << 20))
                .with_ttl(cache_ttl_secs.map(Duration::from_secs)),
        )
        .with_prefetch(if prefetch == "never" {
            Prefetch::Never
        } else {
            Prefetch::Auto
        })
}
