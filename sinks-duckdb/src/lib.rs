#![doc = include_str!("../README.md")]

mod arrow_columns;
mod columns;
pub mod config;
mod database;
mod deletes;
mod json_columns;
mod keys;
mod memory;
mod positions;
mod prepare;
mod schema;
mod sink;
mod typed;

use std::sync::Arc;

use sluicegate_core::{Error, Factory, Registry, Sink};

pub use config::DuckDbSinkConfig;
pub use sink::DuckDbSink;

/// Registers this crate's sink types (`duckdb`).
pub fn register(registry: &mut Registry) {
    registry.register_sink(factory());
}

/// The factory of `duckdb` sinks.
pub fn factory() -> impl Factory<Config = DuckDbSinkConfig, Output = dyn Sink> {
    sluicegate_core::factory(
        "duckdb",
        |config: &DuckDbSinkConfig, _| config.validate(),
        |config, ctx| async move {
            // Opening a database file is blocking I/O (and may replay its WAL).
            let sink = tokio::task::spawn_blocking(move || DuckDbSink::open(&config, &ctx))
                .await
                .map_err(|e| Error::sink("cannot open duckdb").with_source(e))??;
            Ok(Arc::new(sink) as Arc<dyn Sink>)
        },
    )
}
