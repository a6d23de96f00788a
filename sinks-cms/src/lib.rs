#![doc = include_str!("../README.md")]

pub mod contentful;

use std::sync::Arc;

use async_trait::async_trait;
use sluicegate_core::{BuildContext, Factory, Registry, Result, Sink};

pub use contentful::{ContentfulSink, ContentfulSinkConfig, CuteSyncEntry, fetch_cute_entry};

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

/// Registers this crate's sink types (`contentful`).
pub fn register(registry: &mut Registry) {
    registry.register_sink(ContentfulSinkFactory);
}
