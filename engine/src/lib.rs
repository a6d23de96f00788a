#![doc = include_str!("../README.md")]

pub mod mapping;
pub mod monitor;
pub mod pipeline;
pub mod plan;
pub mod process;

pub use mapping::{MapOutcome, Mapper, MappingConfig, MappingItem, PreMappingItem};
pub use monitor::{MemoryMonitor, MonitorSettings, MonitorSnapshot, MonitorTask, Pressure};
pub use pipeline::{ErrorLimit, Pipeline, PipelineOptions, ReadMode, StreamReport};
pub use plan::{GrowthGuard, MemoryPlan, follow_sink_growth};
pub use process::{ProcessMemory, process_memory};
