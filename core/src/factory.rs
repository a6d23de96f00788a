//! Building sources and sinks from configuration.
//!
//! Adapter authors implement the typed [`Factory`] trait (with a serde config
//! type); the framework uses its object-safe twin [`DynFactory`], which every
//! `Factory` implements through a blanket impl. A source factory has
//! `Output = dyn Source`, a sink factory `Output = dyn Sink`.

use std::future::Future;
use std::marker::PhantomData;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::config::{locate, parse_section};
use crate::error::Result;
use crate::incremental::IncrementalWindow;

/// Context handed to factories when they validate and build.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BuildContext {
    /// The sync key being built (empty for a sink shared by several syncs).
    pub sync_key: String,
    /// Whether the run only plans (`true`) or writes (`false`). A sink built for a
    /// dry run must not create or change anything.
    pub dry_run: bool,
    /// The scope that templates in configuration can read (`env`, `config`); see
    /// [`template_scope_from_env`].
    pub template_scope: Value,
    /// The directory relative paths in configuration are resolved against (the
    /// configuration file's directory).
    pub base_dir: PathBuf,
    /// Whether sinks with a publishing step may publish (`--no-publish` clears it).
    pub publish: bool,
    /// Where sources may cache responses on disk (`--use-filecache`); `None`: no cache.
    pub cache_dir: Option<PathBuf>,
    /// Stage sizes the run sets for every adapter; they win over the adapter's
    /// own configuration where set.
    pub tuning: StageTuning,
    /// The cursor window of an incremental sync (`None`: read everything). A
    /// source that can filter by the cursor itself reads only this window;
    /// see [`IncrementalWindow`].
    pub incremental: Option<IncrementalWindow>,
    /// The part of the work this process does when a job runs as several
    /// shards (`--shard I/N`); `None`: all of it. A source that
    /// [`splits`](crate::Source::splits) reads only its part.
    pub shard: Option<Shard>,
}

/// One of the shards a job runs as: process `index` of `count` (from 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This shard, from 0.
    pub index: u32,
    /// How many shards there are (at least 1).
    pub count: u32,
}

impl Shard {
    /// Shard `index` of `count`; `None` unless `index < count`.
    pub fn new(index: u32, count: u32) -> Option<Self> {
        (index < count).then_some(Self { index, count })
    }

    /// The contiguous slice `[lo, hi)` of `len` items this shard takes (the
    /// slices of all shards cover `0..len` once, their sizes differing by at
    /// most one).
    pub fn slice(&self, len: usize) -> (usize, usize) {
        let (i, n) = (self.index as usize, self.count as usize);
        (len * i / n, len * (i + 1) / n)
    }

    /// The shard that does work which cannot be split (a source read in
    /// sequence): the same one for the same name in every process.
    pub fn owner_of(name: &str, count: u32) -> u32 {
        // FNV-1a: stable across processes and builds.
        let mut hash: u32 = 0x811c_9dc5;
        for byte in name.bytes() {
            hash ^= u32::from(byte);
            hash = hash.wrapping_mul(0x0100_0193);
        }
        hash % count.max(1)
    }

    /// `I/N`, as the command line writes it.
    pub fn label(&self) -> String {
        format!("{}/{}", self.index, self.count)
    }
}

/// Stage sizes a run sets for all its adapters (`--page-size`,
/// `--max-concurrent-chunks`, a `--preset`); `None` leaves the choice to each
/// adapter's configuration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StageTuning {
    /// Records a source asks for per page (or fetches per query). A source whose
    /// service caps the page size (`limitMax`) keeps to the cap.
    pub page_size: Option<u64>,
    /// Requests a sink sends at once (chunks of a batch written concurrently).
    pub max_concurrency: Option<usize>,
}

impl StageTuning {
    /// Records per page and requests at once (`None`: each adapter's own).
    pub fn new(page_size: Option<u64>, max_concurrency: Option<usize>) -> Self {
        Self {
            page_size,
            max_concurrency,
        }
    }
}

impl BuildContext {
    /// A context for `sync_key` with the process environment as template scope.
    pub fn new(sync_key: impl Into<String>, dry_run: bool) -> Self {
        Self {
            sync_key: sync_key.into(),
            dry_run,
            template_scope: template_scope_from_env(),
            base_dir: PathBuf::from("."),
            publish: true,
            cache_dir: None,
            tuning: StageTuning::default(),
            incremental: None,
            shard: None,
        }
    }

    /// With relative paths resolved against `dir`.
    pub fn with_base_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.base_dir = dir.into();
        self
    }

    /// With `scope` as what configuration templates read.
    pub fn with_template_scope(mut self, scope: Value) -> Self {
        self.template_scope = scope;
        self
    }

    /// With publishing allowed (`true`) or not.
    pub fn with_publish(mut self, publish: bool) -> Self {
        self.publish = publish;
        self
    }

    /// With sources caching responses on disk in `dir`.
    pub fn with_cache_dir(mut self, dir: Option<PathBuf>) -> Self {
        self.cache_dir = dir;
        self
    }

    /// With the run's stage sizes.
    pub fn with_tuning(mut self, tuning: StageTuning) -> Self {
        self.tuning = tuning;
        self
    }

    /// As one shard of a job.
    pub fn with_shard(mut self, shard: Option<Shard>) -> Self {
        self.shard = shard;
        self
    }

    /// With the cursor window of an incremental sync.
    pub fn with_incremental(mut self, window: Option<IncrementalWindow>) -> Self {
        self.incremental = window;
        self
    }
}

/// Builds adapters of one type from configuration: the typed trait for authors.
///
/// # Contract
/// - `validate` is pure and synchronous: it must not do I/O, because every entry is
///   validated before the run makes its first network call. Report problems with
///   [`field_error`](crate::field_error) so messages name the failing key.
/// - `build` may do I/O (open files, connect, read remote metadata).
/// - The config type should use `#[serde(deny_unknown_fields)]`.
///
/// Adapter authors implement the typed [`Factory`] trait (with a serde config
/// type); the framework uses its object-safe twin [`DynFactory`], which every
/// `Factory` implements through a blanket impl. A source factory has
/// `Output = dyn Source`, a sink factory `Output = dyn Sink`.
#[async_trait]
pub trait Factory: Send + Sync + 'static {
    /// The adapter's configuration, a serde struct with `deny_unknown_fields`.
    type Config: DeserializeOwned + Send + Sync + 'static;
    /// What it builds: `dyn Source` or `dyn Sink`.
    type Output: ?Sized + Send + Sync + 'static;

    /// The adapter type name used in configuration (`type: http`), snake_case.
    fn type_name(&self) -> &'static str;

    /// Checks a parsed configuration without doing any I/O.
    fn validate(&self, config: &Self::Config, ctx: &BuildContext) -> Result<()>;

    /// Builds the adapter (may do I/O).
    async fn build(&self, config: Self::Config, ctx: &BuildContext) -> Result<Arc<Self::Output>>;
}

/// A configuration that was parsed and validated, ready to build.
///
/// # Contract
/// - Produced by [`DynFactory::prepare`] only after the configuration parsed and
///   validated, so `build` fails only for reasons that need I/O to discover
///   (unreachable server, missing file, wrong credentials), with context.
#[async_trait]
pub trait Prepared<T: ?Sized>: Send + Sync {
    /// Builds the adapter (may do I/O).
    async fn build(self: Box<Self>) -> Result<Arc<T>>;
}

/// A [`Factory`] made of two functions, for adapters whose factory holds
/// nothing but what the functions capture: `validate` checks a parsed
/// configuration without I/O, `build` builds the adapter (and may do I/O).
/// Make one with [`factory`].
pub struct FnFactory<C, O: ?Sized, V, B> {
    type_name: &'static str,
    validate: V,
    build: B,
    _made: PhantomData<fn(C) -> Arc<O>>,
}

/// A factory for the adapter type `type_name` from a `validate` and a `build`
/// function:
///
/// ```
/// # use std::sync::Arc;
/// # use sluicegate_core::{BuildContext, Registry, Result, Source, factory};
/// # #[derive(serde::Deserialize)] struct MyConfig { url: String }
/// # impl MyConfig { fn validate(&self, _: &BuildContext) -> Result<()> { Ok(()) } }
/// # async fn open(config: MyConfig, ctx: BuildContext) -> Result<Arc<dyn Source>> { unimplemented!() }
/// let mut registry = Registry::new();
/// registry.register_source(factory("my_api", MyConfig::validate, open));
/// ```
pub fn factory<C, O, V, B, F>(
    type_name: &'static str,
    validate: V,
    build: B,
) -> FnFactory<C, O, V, B>
where
    O: ?Sized,
    V: Fn(&C, &BuildContext) -> Result<()>,
    B: Fn(C, BuildContext) -> F,
    F: Future<Output = Result<Arc<O>>>,
{
    FnFactory {
        type_name,
        validate,
        build,
        _made: PhantomData,
    }
}

#[async_trait]
impl<C, O, V, B, F> Factory for FnFactory<C, O, V, B>
where
    C: DeserializeOwned + Send + Sync + 'static,
    O: ?Sized + Send + Sync + 'static,
    V: Fn(&C, &BuildContext) -> Result<()> + Send + Sync + 'static,
    B: Fn(C, BuildContext) -> F + Send + Sync + 'static,
    F: Future<Output = Result<Arc<O>>> + Send + 'static,
{
    type Config = C;
    type Output = O;

    fn type_name(&self) -> &'static str {
        self.type_name
    }

    fn validate(&self, config: &C, ctx: &BuildContext) -> Result<()> {
        (self.validate)(config, ctx)
    }

    async fn build(&self, config: C, ctx: &BuildContext) -> Result<Arc<O>> {
        (self.build)(config, ctx.clone()).await
    }
}

/// The object-safe twin of [`Factory`], used by the [`Registry`](crate::Registry).
/// Implemented for every `Factory`; never implement it by hand.
///
/// # Contract
/// - `prepare` parses the raw section into the factory's config type (unknown
///   keys and wrong types are errors naming `path` and the key), runs
///   [`Factory::validate`], and does no I/O.
/// - `type_name` is the factory's [`Factory::type_name`]; registering a second
///   factory with the same name replaces the first (with a warning).
pub trait DynFactory<T: ?Sized>: Send + Sync + 'static {
    /// The adapter type name.
    fn type_name(&self) -> &'static str;

    /// Parses and validates a raw configuration section without I/O. `path` names
    /// the section in error messages, for example `syncs[orders].source`.
    fn prepare(
        self: Arc<Self>,
        raw: Value,
        path: &str,
        ctx: BuildContext,
    ) -> Result<Box<dyn Prepared<T>>>;
}

struct PreparedConfig<F: Factory> {
    factory: Arc<F>,
    config: F::Config,
    ctx: BuildContext,
}

#[async_trait]
impl<F: Factory> Prepared<F::Output> for PreparedConfig<F> {
    async fn build(self: Box<Self>) -> Result<Arc<F::Output>> {
        let PreparedConfig {
            factory,
            config,
            ctx,
        } = *self;
        factory.build(config, &ctx).await
    }
}

impl<F: Factory> DynFactory<F::Output> for F {
    fn type_name(&self) -> &'static str {
        Factory::type_name(self)
    }

    fn prepare(
        self: Arc<Self>,
        raw: Value,
        path: &str,
        ctx: BuildContext,
    ) -> Result<Box<dyn Prepared<F::Output>>> {
        let config: F::Config = parse_section(raw, path)?;
        self.validate(&config, &ctx).map_err(|e| locate(e, path))?;
        Ok(Box::new(PreparedConfig {
            factory: self,
            config,
            ctx,
        }))
    }
}

/// The default template scope: `{"env": {...}, "config": {...}}` from the process
/// environment.
pub fn template_scope_from_env() -> Value {
    let vars: Map<String, Value> = std::env::vars()
        .map(|(k, v)| (k, Value::String(v)))
        .collect();
    let mut scope = Map::new();
    scope.insert("env".to_owned(), Value::Object(vars.clone()));
    scope.insert("config".to_owned(), Value::Object(vars));
    Value::Object(scope)
}
