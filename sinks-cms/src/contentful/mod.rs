//! The Contentful Management API sink (`type: contentful`).

mod client;
pub mod config;
mod sink;

pub use config::ContentfulSinkConfig;
pub use sink::ContentfulSink;
