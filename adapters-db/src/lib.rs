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

use sluicegate_core::{Factory, Registry, Source};

pub use config::{DbSourceConfig, QueryPagination};
pub use provider::Provider;
pub use source::DbSource;

/// Registers this crate's source types: `postgres`, `mysql` (also MariaDB) and
/// `sqlite`.
pub fn register(registry: &mut Registry) {
    for provider in [Provider::Postgres, Provider::Mysql, Provider::Sqlite] {
        registry.register_source(factory(provider));
    }
}

/// The factory of `provider`'s sources (`postgres`, `mysql` or `sqlite`).
pub fn factory(provider: Provider) -> impl Factory<Config = DbSourceConfig, Output = dyn Source> {
    sluicegate_core::factory(
        provider.type_name(),
        move |config: &DbSourceConfig, ctx| config.validate(provider, ctx),
        move |config, ctx| async move {
            Ok(Arc::new(DbSource::new(provider, config, &ctx)?) as Arc<dyn Source>)
        },
    )
}
