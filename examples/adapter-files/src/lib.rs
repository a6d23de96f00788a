#![doc = include_str!("../README.md")]

mod sink;
mod source;

use sluicegate_core::Registry;

pub use sink::{JsonFilesSink, JsonFilesSinkConfig, JsonFilesSinkFactory};
pub use source::{JsonlSource, JsonlSourceConfig, JsonlSourceFactory};

/// Registers this crate's adapters: the `jsonl` source and the `json_files` sink.
pub fn register(registry: &mut Registry) {
    registry.register_source(JsonlSourceFactory);
    registry.register_sink(JsonFilesSinkFactory);
}
