#![doc = include_str!("../README.md")]

pub mod batch;
pub mod budget;
pub mod checkpoint;
pub mod config;
pub mod content;
pub mod error;
pub mod factory;
pub mod jsonpath;
pub mod keyed;
pub mod mapping;
pub mod memory;
pub mod monitor;
pub mod observe;
pub mod pace;
pub mod paginate;
pub mod pipeline;
pub mod record;
pub mod registry;
pub mod sink;
pub mod source;
pub mod stats;
pub mod template;
pub mod testing;
pub mod upsert;

pub use batch::{Batch, Position};
pub use budget::{BudgetSnapshot, MemoryBudget, MemoryLease, WhenFull, format_bytes};
pub use checkpoint::{CheckpointStore, FileCheckpointStore, MemoryCheckpointStore};
pub use config::{Secret, field_error, locate, parse_section};
pub use content::{ContentModel, Converted, EntryFields, FieldDef, FieldKind, convert};
pub use error::{Error, ErrorKind, Result, ResultExt};
pub use factory::{BuildContext, DynFactory, Factory, Prepared, StageTuning};
pub use jsonpath::JsonSelector;
pub use keyed::{
    ExistingEntry, KeyedCapabilities, KeyedSink, Lookup, LookupPage, WriteOp, Written,
};
pub use mapping::{
    MapOutcome, Mapper, MappingConfig, MappingItem, PreMappingItem, scriban_to_jinja,
};
pub use memory::{ProcessMemory, process_memory};
pub use monitor::{
    MemoryMonitor, MemoryRelief, MonitorSettings, MonitorSnapshot, MonitorTask, Pressure,
};
pub use observe::{NoObserver, Rejected, RunObserver, Stage};
pub use pace::Pacer;
pub use paginate::{Page, PageContext, PageSource, paginate};
pub use pipeline::{ErrorLimit, Pipeline, PipelineOptions, ReadMode, StreamReport};
pub use record::{Record, approx_record_size, approx_value_size, into_record};
pub use registry::Registry;
pub use sink::{BatchAck, Sink, SinkPosition, SinkWriter, StreamTarget, WriterSummary};
pub use source::{BatchSender, BatchStream, ReadRequest, Source, channel_stream};
pub use stats::{InFlight, LATENCY_BOUNDS_MS, RunStats, StatsSnapshot};
pub use template::{Templates, render_template, template_scope_from_env};
pub use upsert::{CacheConfig, CacheStats, Prefetch, UpsertOptions, UpsertWriter};
