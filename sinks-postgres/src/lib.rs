#![doc = include_str!("../README.md")]

pub mod config;
mod schema;
mod sink;

use sluicegate_core::{Factory, Registry, Sink};

pub use config::PostgresSinkConfig;
pub use sink::PostgresSink;

/// Registers this crate's sink types (`postgres`).
pub fn register(registry: &mut Registry) {
    registry.register_sink(factory());
}

/// The factory of `postgres` sinks.
pub fn factory() -> impl Factory<Config = PostgresSinkConfig, Output = dyn Sink> {
    sluicegate_core::factory(
        "postgres",
        |config: &PostgresSinkConfig, ctx| config.validate(ctx),
        |config, ctx| async move { sink::build(config, ctx).await },
    )
}
