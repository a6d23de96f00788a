#![doc = include_str!("../README.md")]

mod api;
mod config;
pub mod contentful;
pub mod directus;

use std::sync::Arc;

use sluicegate_core::{Factory, Registry, Sink, factory};

pub use contentful::{ContentfulSink, ContentfulSinkConfig, CuteSyncEntry, fetch_cute_entry};
pub use directus::{DirectusSink, DirectusSinkConfig};

/// Registers this crate's sink types (`contentful`, `directus`).
pub fn register(registry: &mut Registry) {
    registry.register_sink(contentful_factory());
    registry.register_sink(directus_factory());
}

/// The factory of `contentful` sinks.
pub fn contentful_factory() -> impl Factory<Config = ContentfulSinkConfig, Output = dyn Sink> {
    factory(
        "contentful",
        ContentfulSinkConfig::validate,
        |config, ctx| async move { Ok(Arc::new(ContentfulSink::new(config, &ctx)?) as Arc<dyn Sink>) },
    )
}

/// The factory of `directus` sinks.
pub fn directus_factory() -> impl Factory<Config = DirectusSinkConfig, Output = dyn Sink> {
    factory(
        "directus",
        DirectusSinkConfig::validate,
        |config, ctx| async move { Ok(Arc::new(DirectusSink::new(config, &ctx)?) as Arc<dyn Sink>) },
    )
}
