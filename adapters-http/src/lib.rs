#![doc = include_str!("../README.md")]

mod auth;
mod client;
pub mod config;
mod decode;
mod error;
mod filecache;
pub mod jsonpath;
mod pagination;
mod source;

use std::sync::Arc;

use sluicegate_core::{Factory, Registry, Source};

pub use auth::{AuthConfig, KeyLocation};
pub use config::{FileCacheConfig, HttpMethod, HttpSourceConfig, RetryConfig};
pub use decode::{ResultsFormat, decode_body};
pub use filecache::clear_file_cache;
pub use jsonpath::JsonSelector;
pub use pagination::{
    CursorPaging, HeaderTokenPaging, LinkHeaderPaging, MAX_EMPTY_PAGES, NextUrlPaging,
    OffsetPaging, PageNumberPaging, Pagination, SinglePaging, SkipMode,
};
pub use source::HttpSource;

/// Registers this crate's source types (`http`).
pub fn register(registry: &mut Registry) {
    registry.register_source(factory());
}

/// The factory of `http` sources.
pub fn factory() -> impl Factory<Config = HttpSourceConfig, Output = dyn Source> {
    sluicegate_core::factory(
        "http",
        HttpSourceConfig::validate,
        |config, ctx| async move { Ok(Arc::new(HttpSource::new(&config, &ctx)?) as Arc<dyn Source>) },
    )
}
