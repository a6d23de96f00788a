#![doc = include_str!("../README.md")]

mod api;
pub mod contentful;
pub mod directus;

use std::sync::Arc;

use async_trait::async_trait;
use sluicegate_core::{BuildContext, Factory, Registry, Result, Sink};

pub use contentful::{ContentfulSink, ContentfulSinkConfig, CuteSyncEntry, fetch_cute_entry};
pub use directus::{DirectusSink, DirectusSinkConfig};

/// Builds `contentful` sinks.
#[derive(Debug, Default, Clone, Copy)]
pub struct ContentfulSinkFactory;

#[async_trait]
impl Factory for ContentfulSinkFactory {
    type Config = ContentfulSinkConfig;
    type Output = dyn Sink;

    fn type_name(&self) -> &'static str {
        "contentful"
    }

    fn validate(&self, config: &ContentfulSinkConfig, ctx: &BuildContext) -> Result<()> {
        config.validate(ctx)
    }

    async fn build(
        &self,
        config: ContentfulSinkConfig,
        ctx: &BuildContext,
    ) -> Result<Arc<dyn Sink>> {
        Ok(Arc::new(ContentfulSink::new(config, ctx)?))
    }
}

/// Builds `directus` sinks.
#[derive(Debug, Default, Clone, Copy)]
pub struct DirectusSinkFactory;

#[async_trait]
impl Factory for DirectusSinkFactory {
    type Config = DirectusSinkConfig;
    type Output = dyn Sink;

    fn type_name(&self) -> &'static str {
        "directus"
    }

    fn validate(&self, config: &DirectusSinkConfig, ctx: &BuildContext) -> Result<()> {
        config.validate(ctx)
    }

    async fn build(&self, config: DirectusSinkConfig, ctx: &BuildContext) -> Result<Arc<dyn Sink>> {
        Ok(Arc::new(DirectusSink::new(config, ctx)?))
    }
}

/// Registers this crate's sink types (`contentful`, `directus`).
pub fn register(registry: &mut Registry) {
    registry.register_sink(ContentfulSinkFactory);
    registry.register_sink(DirectusSinkFactory);
}
