#![doc = include_str!("../README.md")]

pub mod convert;
pub mod writer;

pub use convert::{Converted, comparable, convert};
pub use writer::{CacheConfig, Prefetch, UpsertOptions, UpsertWriter};
