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

use async_trait::async_trait;
use sluicegate_core::{BuildContext, Factory, Registry, Result, Source};

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

/// Builds `http` sources.
#[derive(Debug, Default, Clone, Copy)]
pub struct HttpSourceFactory;

#[async_trait]
impl Factory for HttpSourceFactory {
    type Config = HttpSourceConfig;
    type Output = dyn Source;

    fn type_name(&self) -> &'static str {
        "http"
    }

    fn validate(&self, config: &HttpSourceConfig, ctx: &BuildContext) -> Result<()> {
        config.validate(ctx)
    }

    async fn build(&self, config: HttpSourceConfig, ctx: &BuildContext) -> Result<Arc<dyn Source>> {
        Ok(Arc::new(HttpSource::new(&config, ctx)?))
    }
}

/// Registers this crate's source types (`http`).
pub fn register(registry: &mut Registry) {
    registry.register_source(HttpSourceFactory);
}
