#![doc = include_str!("../README.md")]

mod batcher;
pub mod config;
mod connstr;
mod error;
mod mysql;
mod postgres;
mod provider;
mod session;
mod source;
mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use sluicegate_core::{BuildContext, Factory, Registry, Result, Source};

pub use config::{DbSourceConfig, QueryPagination};
pub use provider::Provider;
pub use source::DbSource;

/// Builds database sources of one provider (`postgres`, `mysql` or `sqlite`).
#[derive(Debug, Clone, Copy)]
pub struct DbSourceFactory {
    provider: Provider,
}

impl DbSourceFactory {
    /// A factory for `provider`'s sources.
    pub fn new(provider: Provider) -> Self {
        Self { provider }
    }
}

#[async_trait]
impl Factory for DbSourceFactory {
    type Config = DbSourceConfig;
    type Output = dyn Source;

    fn type_name(&self) -> &'static str {
        self.provider.type_name()
    }

    fn validate(&self, config: &DbSourceConfig, ctx: &BuildContext) -> Result<()> {
        config.validate(self.provider, ctx)
    }

    async fn build(&self, config: DbSourceConfig, ctx: &BuildContext) -> Result<Arc<dyn Source>> {
        Ok(Arc::new(DbSource::new(self.provider, config, ctx)?))
    }
}

/// Registers this crate's source types: `postgres`, `mysql` (also MariaDB) and
/// `sqlite`.
pub fn register(registry: &mut Registry) {
    for provider in [Provider::Postgres, Provider::Mysql, Provider::Sqlite] {
        registry.register_source(DbSourceFactory::new(provider));
    }
}
