#![doc = include_str!("../README.md")]

pub mod batch;
pub mod budget;
pub mod checkpoint;
pub mod config;
pub mod content;
pub mod error;
pub mod factory;
pub mod keyed;
pub mod observe;
pub mod paginate;
pub mod record;
pub mod registry;
pub mod sink;
pub mod source;
pub mod stats;

pub use batch::{Batch, Position};
pub use budget::{BudgetSnapshot, MemoryBudget, MemoryLease, WhenFull, format_bytes};
pub use checkpoint::{CheckpointStore, MemoryCheckpointStore};
pub use config::{Secret, field_error, locate, parse_section};
pub use content::{ContentModel, EntryFields, FieldDef, FieldKind};
pub use error::{Error, ErrorKind, Result, ResultExt};
pub use factory::{
    BuildContext, DynFactory, Factory, Prepared, StageTuning, template_scope_from_env,
};
pub use keyed::{
    ExistingEntry, KeyedCapabilities, KeyedSink, Lookup, LookupPage, WriteOp, Written,
};
pub use observe::{NoObserver, Rejected, RunObserver, Stage};
pub use paginate::{Page, PageContext, PageSource, paginate};
pub use record::{Record, approx_record_size, approx_value_size, into_record};
pub use registry::Registry;
pub use sink::{
    BatchAck, MemoryRelief, Sink, SinkPosition, SinkWriter, StreamTarget, WriterSummary,
};
pub use source::{BatchSender, BatchStream, ReadRequest, Source, channel_stream, panicked};
pub use stats::{CacheStats, InFlight, LATENCY_BOUNDS_MS, RunStats, StatsSnapshot};
