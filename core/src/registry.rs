//! The registry of adapter types, filled by explicit `register` calls.
//!
//! Each adapter crate exposes `pub fn register(registry: &mut Registry)`; a binary
//! calls the ones it wants. There is no link-time magic: what is registered is
//! what the binary's `main` says.
//!
//! ```
//! use sluicegate_core::Registry;
//! let registry = Registry::new();
//! let err = registry.source("ftp").err().unwrap();
//! assert!(err.to_string().contains("unknown source type 'ftp'"));
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::factory::{DynFactory, Factory};
use crate::sink::Sink;
use crate::source::Source;

/// Source and sink factories by type name.
///
/// Each adapter crate exposes `pub fn register(registry: &mut Registry)`; a binary
/// calls the ones it wants. There is no link-time magic: what is registered is
/// what the binary's `main` says.
///
/// ```
/// use sluicegate_core::Registry;
/// let registry = Registry::new();
/// let err = registry.source("ftp").err().unwrap();
/// assert!(err.to_string().contains("unknown source type 'ftp'"));
/// ```
#[derive(Default, Clone)]
pub struct Registry {
    sources: BTreeMap<&'static str, Arc<dyn DynFactory<dyn Source>>>,
    sinks: BTreeMap<&'static str, Arc<dyn DynFactory<dyn Sink>>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a source factory under its type name, replacing any earlier one.
    pub fn register_source<F: Factory<Output = dyn Source>>(&mut self, factory: F) -> &mut Self {
        let name = Factory::type_name(&factory);
        if self.sources.insert(name, Arc::new(factory)).is_some() {
            tracing::warn!(
                source_type = name,
                "source type registered twice; the later one wins"
            );
        }
        self
    }

    /// Registers a sink factory under its type name, replacing any earlier one.
    pub fn register_sink<F: Factory<Output = dyn Sink>>(&mut self, factory: F) -> &mut Self {
        let name = Factory::type_name(&factory);
        if self.sinks.insert(name, Arc::new(factory)).is_some() {
            tracing::warn!(
                sink_type = name,
                "sink type registered twice; the later one wins"
            );
        }
        self
    }

    /// The source factory for a type name; an unknown name is a configuration
    /// error listing the known ones.
    pub fn source(&self, type_name: &str) -> Result<Arc<dyn DynFactory<dyn Source>>> {
        self.sources
            .get(type_name)
            .cloned()
            .ok_or_else(|| unknown("source", type_name, self.source_types()))
    }

    /// The sink factory for a type name; an unknown name is a configuration error
    /// listing the known ones.
    pub fn sink(&self, type_name: &str) -> Result<Arc<dyn DynFactory<dyn Sink>>> {
        self.sinks
            .get(type_name)
            .cloned()
            .ok_or_else(|| unknown("sink", type_name, self.sink_types()))
    }

    /// Registered source type names, sorted.
    pub fn source_types(&self) -> Vec<&'static str> {
        self.sources.keys().copied().collect()
    }

    /// Registered sink type names, sorted.
    pub fn sink_types(&self) -> Vec<&'static str> {
        self.sinks.keys().copied().collect()
    }
}

fn unknown(what: &str, name: &str, known: Vec<&'static str>) -> Error {
    let known = if known.is_empty() {
        "none are registered".to_owned()
    } else {
        format!("known types: {}", known.join(", "))
    };
    Error::config(format!("unknown {what} type '{name}' ({known})"))
}
