#![doc = include_str!("../README.md")]

pub mod doubles;
mod sink;
mod source;

pub use sink::{CountFn, SinkCase, check_sink};
pub use source::{SourceCase, check_failing_source, check_source};

/// Writing an adapter: the guide, whose code blocks are this crate's doctests.
#[doc = include_str!("../../docs/writing-an-adapter.md")]
pub mod guide {}
