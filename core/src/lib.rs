#![doc = include_str!("../README.md")]

mod batch;
mod budget;
mod builder;
mod checkpoint;
mod columns;
mod config;
mod content;
mod error;
mod factory;
mod incremental;
mod json_rows;
mod keyed;
mod observe;
mod paginate;
mod record;
mod registry;
mod sink;
mod source;
mod stats;

pub use batch::{Batch, FieldType, FieldTypes, JsonFields, Position};
pub use budget::{BudgetSnapshot, MemoryBudget, MemoryLease, WhenFull, format_bytes};
pub use builder::{BatchBuilder, BatchLimits, PageLoopGuard};
pub use checkpoint::{CheckpointStore, MemoryCheckpointStore};
pub use columns::{ColumnDecoder, ColumnRows, RecordBatch};
pub use config::{Secret, field_error, locate, parse_section};
pub use content::{ContentModel, EntryFields, FieldDef, FieldKind};
pub use error::{Error, ErrorKind, Result, ResultExt};
pub use factory::{
    BuildContext, DynFactory, Factory, FnFactory, Prepared, Shard, StageTuning, factory,
    template_scope_from_env,
};
pub use incremental::IncrementalWindow;
pub use json_rows::JsonRows;
pub use keyed::{
    ExistingEntry, KeyedCapabilities, KeyedSink, Lookup, LookupPage, WriteOp, Written,
};
pub use observe::{NoObserver, Rejected, RunObserver, Stage};
pub use paginate::{Page, PageContext, PageSource, paginate};
pub use record::{Record, approx_record_size, approx_value_size, into_record};
pub use registry::Registry;
pub use sink::{
    BatchAck, DeleteMode, MemoryRelief, PrepareBatch, Sink, SinkCapabilities, SinkPosition,
    SinkWriter, StreamTarget, TargetKeys, WorkingMemory, WriterExtension, WriterSummary, key_text,
};
pub use source::{BatchSender, BatchStream, ReadRequest, Source, channel_stream, panicked};
pub use stats::{CacheStats, InFlight, LATENCY_BOUNDS_MS, RunStats, StatsSnapshot};
