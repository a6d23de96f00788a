#![doc = include_str!("../README.md")]

mod convert;
mod writer;

pub use convert::{Converted, comparable, convert};
pub use writer::{CacheConfig, Prefetch, UpsertOptions, UpsertWriter};
