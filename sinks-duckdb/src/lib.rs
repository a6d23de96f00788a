#![doc = include_str!("../README.md")]

pub mod config;
mod database;
mod keys;
mod memory;
mod positions;
mod schema;
mod sink;

use std::sync::Arc;

use async_trait::async_trait;
use sluicegate_core::{BuildContext, Factory, Registry, Result, Sink};

pub use config::DuckDbSinkConfig;
pub use sink::DuckDbSink;

/// Builds `duckdb` sinks.
#[derive(Debug, Default, Clone, Copy)]
pub struct DuckDbSinkFactory;

#[async_trait]
impl Factory for DuckDbSinkFactory {
    type Config = DuckDbSinkConfig;
    type Output = dyn Sink;

    fn type_name(&self) -> &'static str {
        "duckdb"
    }

    fn validate(&self, config: &DuckDbSinkConfig, _ctx: &BuildContext) -> Result<()> {
        config.validate()
    }

    async fn build(&self, config: DuckDbSinkConfig, ctx: &BuildContext) -> Result<Arc<dyn Sink>> {
        let ctx = ctx.clone();
        // Opening a database file is blocking I/O (and may replay its WAL).
        let sink = tokio::task::spawn_blocking(move || DuckDbSink::open(&config, &ctx))
            .await
            .map_err(|e| sluicegate_core::Error::sink("cannot open duckdb").with_source(e))??;
        Ok(Arc::new(sink))
    }
}

/// Registers this crate's sink types (`duckdb`).
pub fn register(registry: &mut Registry) {
    registry.register_sink(DuckDbSinkFactory);
}
