//! The Contentful Management API sink (`type: contentful`).

mod client;
pub mod config;
mod cute;
mod sink;

pub use config::ContentfulSinkConfig;
pub use cute::{CuteSyncEntry, fetch_cute_entry};
pub use sink::ContentfulSink;
