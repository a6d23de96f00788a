#![doc = include_str!("../README.md")]

mod deletes;
mod incremental;
mod mapping;
mod monitor;
mod pipeline;
mod plan;
mod process;

pub use deletes::{DeletesConfig, DeletesMode, DeletionReport, Deletions, SeenKeys};
pub use incremental::{
    Cursor, CursorKind, IncrementalConfig, IncrementalReport, IncrementalRun, Lag,
    MemoryWindowStore, SavedWindow, WindowStore,
};
pub use mapping::{MapOutcome, Mapper, MappingConfig, MappingItem, PreMappingItem};
pub use monitor::{MemoryMonitor, MonitorSettings, MonitorSnapshot, MonitorTask, Pressure};
pub use pipeline::{ErrorLimit, Pipeline, PipelineOptions, ReadMode, StreamReport};
pub use plan::{GrowthGuard, MIN_BUDGET, MemoryPlan, RESIDENT_PER_BUDGET_BYTE, follow_sink_growth};
pub use process::{
    CgroupMemory, MemorySample, MemorySampler, ProcessMemory, cgroup_memory, process_memory,
};
