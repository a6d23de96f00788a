//! The Directus sink (`type: directus`): collections of a Directus instance,
//! over its REST API with a static token.

pub mod config;
mod sink;

pub use config::DirectusSinkConfig;
pub use sink::DirectusSink;
