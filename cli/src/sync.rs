//! `sync-api`: validate every selected entry, build sinks and sources, run each
//! stream through the pipeline, print the summary.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluicegate_core::{
    BuildContext, CheckpointStore, Error, ErrorKind, IncrementalWindow, MemoryBudget, Prepared,
    Registry, Result, RunObserver, RunStats, Shard, Sink, Source, StreamTarget, WhenFull,
    format_bytes, template_scope_from_env,
};
use sluicegate_engine::{
    Deletions, IncrementalRun, Mapper, MemoryMonitor, MemoryPlan, MemorySample, MemorySampler,
    Pipeline, PipelineOptions, ReadMode, StreamReport, WindowStore, follow_sink_growth,
};

use crate::args::{SyncArgs, Verbosity};
use crate::config_file::{ConfigFile, SyncEntry, split_type};
use crate::metrics::{MetricsServer, RunCollector};
use crate::observer::CliObserver;
use crate::pg_state::{PgStateStore, StateConfig};
use crate::progress::{Progress, group};
use crate::report::{self, MemoryWatch};
use crate::state::SqliteStateStore;
use crate::tuning::Tuning;

/// One entry, validated and ready to build.
pub(crate) struct PreparedEntry {
    pub(crate) entry: SyncEntry,
    pub(crate) source: Box<dyn Prepared<dyn Source>>,
    pub(crate) mapper: Option<Arc<Mapper>>,
    /// The cursor window of an incremental entry.
    pub(crate) window: Option<IncrementalWindow>,
}

/// Everything validated and ready to build; no I/O has happened yet.
pub struct PreparedRun {
    pub(crate) sinks: BTreeMap<String, Box<dyn Prepared<dyn Sink>>>,
    pub(crate) entries: Vec<PreparedEntry>,
    pub(crate) tuning: Tuning,
    /// The shard this process runs as (`--shard`), if the run is sharded.
    pub(crate) shard: Option<Shard>,
}

/// Parses and validates the sinks, sources and mappings the selected entries
/// use, without any network call or file write.
pub fn prepare(
    registry: &Registry,
    config: &ConfigFile,
    entries: &[&SyncEntry],
    args: &SyncArgs,
) -> Result<PreparedRun> {
    let scope = template_scope_from_env();
    let base_dir = config.base_dir();
    let tuning = Tuning::resolve(&args.tuning_flags(), &config.tuning, &|m| config.at(m))?;
    let stage = tuning.stage();
    let shard = args.shard()?;
    let ctx = |key: &str| {
        BuildContext::new(key, !args.apply)
            .with_shard(shard)
            .with_template_scope(scope.clone())
            .with_base_dir(base_dir.clone())
            .with_publish(!args.no_publish)
            .with_cache_dir(args.use_filecache.then(|| default_cache_dir(config)))
            .with_tuning(stage)
    };
    let in_file = |e: Error| Error::config(config.at(e.message()));
    if let StateConfig::Postgres(pg) = &config.state {
        pg.validate(&ctx("")).map_err(in_file)?;
    }
    let mut sinks = BTreeMap::new();
    for entry in entries {
        if sinks.contains_key(&entry.sink) {
            continue;
        }
        let path = format!("sinks.{}", entry.sink);
        let (kind, rest) = split_type(&config.sinks[&entry.sink], &path).map_err(in_file)?;
        let factory = registry
            .sink(&kind)
            .map_err(|e| Error::config(config.at(&format!("{path}.type: {}", e.message()))))?;
        let prepared = factory.prepare(rest, &path, ctx("")).map_err(in_file)?;
        sinks.insert(entry.sink.clone(), prepared);
    }
    // Incremental windows start at the saved high-water marks (read only: a
    // dry run or `validate` writes nothing).
    let saved: Option<Box<dyn WindowStore>> = if entries.iter().any(|e| e.incremental.is_some())
        && !args.full_refresh
    {
        match &config.state {
            StateConfig::Sqlite => {
                let dir = args
                    .state_dir
                    .clone()
                    .unwrap_or_else(|| default_state_dir(config));
                SqliteStateStore::open_read_only(&dir)?.map(|s| Box::new(s) as Box<dyn WindowStore>)
            }
            StateConfig::Postgres(pg) => Some(Box::new(PgStateStore::connect(pg, &scope, false)?)),
        }
    } else {
        None
    };
    let mut prepared_entries = Vec::new();
    for entry in entries {
        let path = entry.source_path();
        let (kind, rest) = split_type(&entry.source, &path).map_err(in_file)?;
        let factory = registry
            .source(&kind)
            .map_err(|e| Error::config(config.at(&format!("{path}.type: {}", e.message()))))?;
        let window = match &entry.incremental {
            Some(incremental) => {
                let in_entry =
                    |e: Error| Error::config(config.at(&format!("syncs[{}].{e}", entry.key)));
                incremental.validate().map_err(in_entry)?;
                let last = match &saved {
                    Some(store) => {
                        store
                            .load(&entry.key, &state_stream(entry, shard))?
                            .last_value
                    }
                    None => None,
                };
                Some(incremental.window(last.as_ref()).map_err(|e| {
                    if e.kind() == ErrorKind::Checkpoint {
                        e.with_context("sync", &entry.key)
                    } else {
                        in_entry(e)
                    }
                })?)
            }
            None => None,
        };
        let mut source_ctx = ctx(&entry.key);
        if let Some(window) = &window {
            let mut scope = scope.clone();
            if let Some(map) = scope.as_object_mut() {
                map.insert("incremental".to_owned(), window.template_value());
            }
            source_ctx = source_ctx
                .with_template_scope(scope)
                .with_incremental(Some(window.clone()));
        }
        let source = factory.prepare(rest, &path, source_ctx).map_err(in_file)?;
        let mapper = match entry.mapping() {
            Some(mapping) => Some(Arc::new(Mapper::new(&mapping, &scope).map_err(|e| {
                Error::config(config.at(&format!("syncs[{}].{}", entry.key, e.message())))
            })?)),
            None => None,
        };
        prepared_entries.push(PreparedEntry {
            entry: (*entry).clone(),
            source,
            mapper,
            window,
        });
    }
    Ok(PreparedRun {
        sinks,
        entries: prepared_entries,
        tuning,
        shard,
    })
}

/// The stream name checkpoints and high-water marks are kept under: the
/// table, and in a sharded run the shard (`items#2/4`), so each shard resumes
/// on its own.
pub(crate) fn state_stream(entry: &SyncEntry, shard: Option<Shard>) -> String {
    match shard {
        Some(shard) => format!("{}#{}", entry.table(), shard.label()),
        None => entry.table().to_owned(),
    }
}

/// How a `sync-api` run ended.
pub struct Outcome {
    /// Streams that completed.
    pub reports: Vec<StreamReport>,
    /// Streams that failed, with their errors.
    pub failures: Vec<(String, Error)>,
    /// Records rejected (in the dead-letter file).
    pub rejected: u64,
}

/// The default state directory for a configuration file.
pub fn default_state_dir(config: &ConfigFile) -> PathBuf {
    config.base_dir().join(".sluicegate").join("state")
}

/// The response cache of `--use-filecache` for a configuration file.
pub fn default_cache_dir(config: &ConfigFile) -> PathBuf {
    config.base_dir().join(".sluicegate").join("http-cache")
}

/// The default dead-letter file for a configuration file.
pub fn default_dead_letter(config: &ConfigFile) -> PathBuf {
    config
        .base_dir()
        .join(".sluicegate")
        .join("dead-letters.ndjson")
}

/// What every stream of a run shares.
struct RunContext<'a> {
    args: &'a SyncArgs,
    /// The dead-letter file (where rejected records end up).
    dead_letter: PathBuf,
    /// A re-drive: the entries read the dead-letter file instead of their sources.
    redrive: bool,
    sinks: BTreeMap<String, Arc<dyn Sink>>,
    budget: MemoryBudget,
    monitor: MemoryMonitor,
    tuning: Tuning,
    stats: Arc<RunStats>,
    checkpoints: Option<Arc<dyn CheckpointStore>>,
    /// The shard this process runs as (`--shard`), if the run is sharded.
    shard: Option<Shard>,
    /// Where incremental entries keep their high-water marks (the same file).
    windows: Option<Arc<dyn WindowStore>>,
    observer: Arc<CliObserver>,
    /// The memory limit of the container the run is in, in bytes, if any:
    /// sinks refuse to plan past it (see `StreamTarget::memory_limit`).
    container_limit: Option<u64>,
}

/// Runs the prepared entries one after the other. A failing entry does not stop
/// the others; its error is reported at the end.
///
/// With `redrive`, each entry's records come from the dead-letter file (see
/// [`crate::redrive`]) and no checkpoints are used.
pub async fn run(
    prepared: PreparedRun,
    args: &SyncArgs,
    config: &ConfigFile,
    redrive: bool,
) -> Result<Outcome> {
    let started = Instant::now();
    // Every key this run syncs is locked before anything opens: a second run of
    // one of them is refused with that message (held until the run ends).
    let shard = prepared.shard;
    let keys: Vec<String> = prepared
        .entries
        .iter()
        .map(|p| match shard {
            Some(shard) => format!("{}#{}", p.entry.key, shard.label()),
            None => p.entry.key.clone(),
        })
        .collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let state = if args.apply {
        Some(open_state(config, args, &keys)?)
    } else {
        None
    };
    let sinks = build_sinks(prepared.sinks).await?;
    let mut tuning = prepared.tuning;
    let sampler = MemorySampler::new();
    let now = sampler.sample();
    let plan = plan_memory(&mut tuning, &sinks, now);
    let container_limit = now.and_then(|m| m.cgroup).map(|c| c.limit);
    let dead_letter = args
        .dead_letter
        .clone()
        .unwrap_or_else(|| default_dead_letter(config));
    let stores = state.as_ref().filter(|_| !redrive);
    let ctx = RunContext {
        args,
        observer: Arc::new(
            CliObserver::new(
                observer_path(&dead_letter, redrive),
                args.verbosity() >= Verbosity::Detailed,
            )
            .dry_run(!args.apply),
        ),
        dead_letter,
        redrive,
        sinks,
        budget: MemoryBudget::with_policy(
            plan.records,
            if args.streaming {
                WhenFull::Wait
            } else {
                WhenFull::Fail
            },
        ),
        monitor: match crate::allocator_release() {
            Some(release) => MemoryMonitor::with_sampler(tuning.monitor(), sampler)
                .with_allocator_release(release),
            None => MemoryMonitor::with_sampler(tuning.monitor(), sampler),
        },
        tuning,
        stats: Arc::new(RunStats::default()),
        checkpoints: stores.map(|s| s.checkpoints.clone()),
        shard,
        windows: stores.map(|s| s.windows.clone()),
        container_limit,
    };
    let progress = Progress::start(
        ctx.stats.clone(),
        ctx.budget.clone(),
        ctx.monitor.sampler().clone(),
        args.verbosity() == Verbosity::Quiet,
    );
    ctx.monitor.set_threshold_bytes(plan.monitor_threshold());
    let memory = MemoryWatch::start(
        ctx.stats.clone(),
        ctx.budget.clone(),
        ctx.tuning.max_memory_bytes(),
        ctx.monitor.clone(),
    );
    let _sampling = ctx.monitor.spawn();
    let _growth = follow_sink_growth(
        plan,
        ctx.sinks.values().cloned().collect(),
        ctx.monitor.clone(),
        ctx.tuning.monitor().check_interval,
    );
    let running = Arc::new(std::sync::Mutex::new(String::new()));
    let _metrics = start_metrics(&ctx, &running).await?;
    let keys: Vec<String> = prepared
        .entries
        .iter()
        .map(|p| p.entry.key.clone())
        .collect();
    let mut outcome = run_entries(prepared.entries, &ctx, &progress, &running).await;
    progress.stop().await;
    ctx.observer.flush();
    if redrive {
        finish_redrive(&ctx, &outcome, &keys)?;
    }
    outcome.rejected = ctx.stats.snapshot().rows_rejected;
    let memory = memory.finish().await;
    print_summary(&outcome, &ctx, started.elapsed());
    if let Some(path) = &args.report {
        report::write_report(path, &run_report(&outcome, &ctx, started.elapsed(), memory))?;
    }
    Ok(outcome)
}

/// The run's state: where checkpoints and high-water marks go, and the run
/// locks of its keys (held while it lives).
struct RunState {
    checkpoints: Arc<dyn CheckpointStore>,
    windows: Arc<dyn WindowStore>,
    _locks: Vec<Box<dyn std::any::Any + Send>>,
}

/// Opens the configured state and locks `keys` in it: a SQLite file with
/// lock files beside it, or PostgreSQL with session advisory locks.
fn open_state(config: &ConfigFile, args: &SyncArgs, keys: &[&str]) -> Result<RunState> {
    let mut locks: Vec<Box<dyn std::any::Any + Send>> = Vec::new();
    match &config.state {
        StateConfig::Sqlite => {
            let dir = args
                .state_dir
                .clone()
                .unwrap_or_else(|| default_state_dir(config));
            for key in keys {
                locks.push(Box::new(crate::lock::lock(&dir, key)?));
            }
            let store = Arc::new(SqliteStateStore::open(&dir)?);
            Ok(RunState {
                checkpoints: store.clone(),
                windows: store,
                _locks: locks,
            })
        }
        StateConfig::Postgres(pg) => {
            let store = Arc::new(PgStateStore::connect(pg, &template_scope_from_env(), true)?);
            for key in keys {
                locks.push(Box::new(store.lock(key)?));
            }
            Ok(RunState {
                checkpoints: store.clone(),
                windows: store,
                _locks: locks,
            })
        }
    }
}

/// Builds the run's sinks (each opens its connection or checks its API).
async fn build_sinks(
    prepared: BTreeMap<String, Box<dyn Prepared<dyn Sink>>>,
) -> Result<BTreeMap<String, Arc<dyn Sink>>> {
    let mut sinks = BTreeMap::new();
    for (name, sink) in prepared {
        let built = sink
            .build()
            .await
            .map_err(|e| Error::new(e.kind(), format!("sink '{name}': {e}")))?;
        sinks.insert(name, built);
    }
    Ok(sinks)
}

/// The memory plan: what the target leaves for records in flight once the
/// process and its sinks are up (measured now) and the sinks' own working
/// memory is set aside, under the monitor's threshold. A container limit below
/// the target lowers the target to it.
fn plan_memory(
    tuning: &mut Tuning,
    sinks: &BTreeMap<String, Arc<dyn Sink>>,
    now: Option<MemorySample>,
) -> MemoryPlan {
    if let Some(cgroup) = now.and_then(|m| m.cgroup)
        && let Some(target) = tuning.fit_container(cgroup.limit)
    {
        tracing::warn!(
            container_limit = %format_bytes(usize::try_from(cgroup.limit).unwrap_or(usize::MAX)),
            target_mb = target,
            "the container's memory limit is below the memory target: the run plans for the container's limit"
        );
    }
    tracing::info!(tuning = %tuning.describe(), "tuning");
    let plan = MemoryPlan::new(
        tuning.max_memory_bytes(),
        tuning.flush_threshold,
        now.map(|m| m.process.rss),
        sinks
            .values()
            .map(|s| s.capabilities().working_memory_bytes())
            .sum(),
    );
    tracing::info!(plan = %plan.describe(), "memory plan");
    if !plan.fits() {
        tracing::warn!(
            plan = %plan.describe(),
            "the memory target is too small for this process and its sinks: the run will pass it (raise --max-memory-mb; docs/tuning.md)"
        );
    }
    plan
}

/// Where rejected records go: the dead-letter file, or for a re-drive a file
/// of its own (it replaces the dead-letter file's lines of these keys once all
/// went well).
fn observer_path(dead_letter: &Path, redrive: bool) -> PathBuf {
    if redrive {
        let again = crate::redrive::new_letters_path(dead_letter);
        let _ = std::fs::remove_file(&again);
        again
    } else {
        dead_letter.to_path_buf()
    }
}

/// Serves `/metrics` when `--metrics-addr` asks for it (until dropped).
async fn start_metrics(
    ctx: &RunContext<'_>,
    running: &Arc<std::sync::Mutex<String>>,
) -> Result<Option<MetricsServer>> {
    let Some(addr) = &ctx.args.metrics_addr else {
        return Ok(None);
    };
    let collector = RunCollector::new(
        ctx.stats.clone(),
        ctx.budget.clone(),
        ctx.monitor.clone(),
        running.clone(),
    );
    let server = MetricsServer::start(addr, collector).await?;
    eprintln!("metrics: http://{}/metrics", server.addr());
    Ok(Some(server))
}

/// Runs each entry in turn, collecting reports and failures (a failing entry
/// does not stop the others).
async fn run_entries(
    entries: Vec<PreparedEntry>,
    ctx: &RunContext<'_>,
    progress: &Progress,
    running: &std::sync::Mutex<String>,
) -> Outcome {
    let mut outcome = Outcome {
        reports: Vec::new(),
        failures: Vec::new(),
        rejected: 0,
    };
    for prepared in entries {
        progress.set_stream(&prepared.entry.key);
        prepared.entry.key.clone_into(
            &mut running
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let key = prepared.entry.key.clone();
        match run_entry(prepared, ctx).await {
            Ok(Some(report)) => outcome.reports.push(report),
            Ok(None) => {}
            Err(e) => {
                let e = e.with_context("sync", &key);
                // The error itself is printed once, after the summary.
                tracing::error!(sync = %key, "sync failed; the error follows the summary");
                outcome.failures.push((key, e));
            }
        }
    }
    outcome
}

/// Ends a re-drive: the records rejected again replace the dead-letter file's
/// lines of `keys` when every key went well in an applied run; otherwise the
/// dead-letter file stays as it was.
fn finish_redrive(ctx: &RunContext<'_>, outcome: &Outcome, keys: &[String]) -> Result<()> {
    let again = ctx.observer.path();
    if ctx.args.apply && outcome.failures.is_empty() {
        crate::redrive::replace_letters(&ctx.dead_letter, again, keys)?;
    } else {
        let _ = std::fs::remove_file(again);
    }
    Ok(())
}

/// Every figure of the run, for `--report FILE.json`.
fn run_report(
    outcome: &Outcome,
    ctx: &RunContext<'_>,
    elapsed: Duration,
    memory: report::MemoryFigures,
) -> serde_json::Value {
    let args = ctx.args;
    serde_json::json!({
        "command": if ctx.redrive { "redrive" } else { "sync-api" },
        "apply": args.apply,
        "mode": if args.streaming { "streaming" } else { "classic" },
        "maxMemoryMb": ctx.tuning.max_memory_mb,
        "tuning": ctx.tuning,
        "memoryMonitor": ctx.monitor.snapshot(),
        "elapsedSecs": elapsed.as_secs_f64(),
        "streams": outcome.reports,
        "failures": outcome
            .failures
            .iter()
            .map(|(key, e)| serde_json::json!({"key": key, "kind": e.kind().as_str(), "error": e.to_string()}))
            .collect::<Vec<_>>(),
        "rejected": outcome.rejected,
        "deadLetterFile": ctx.dead_letter,
        "stats": ctx.stats.snapshot(),
        "budget": report::budget_json(&ctx.budget),
        "memory": memory,
    })
}

/// Runs one entry; `None` when, in a sharded run, another shard runs it.
async fn run_entry(prepared: PreparedEntry, ctx: &RunContext<'_>) -> Result<Option<StreamReport>> {
    let PreparedEntry {
        entry,
        source,
        mapper,
        window,
    } = prepared;
    let sink = ctx
        .sinks
        .get(&entry.sink)
        .ok_or_else(|| Error::config(format!("no sink named '{}'", entry.sink)))?;
    if ctx.redrive {
        return redrive_entry(&entry, mapper, sink, ctx).await.map(Some);
    }
    let source = source.build().await?;
    let shard = ctx.shard;
    if let Some(shard) = shard {
        if source.splits() {
            if entry
                .deletes
                .as_ref()
                .is_some_and(|d| d.mode.delete_mode().is_some())
            {
                return Err(Error::config(format!(
                    "syncs[{}].deletes: a sharded run reads this source in parts, and deletions \
                     need one complete read; run the deletions as one unsharded run",
                    entry.key
                )));
            }
            eprintln!(
                "{}: shard {} reads its part of {}",
                entry.key,
                shard.label(),
                source.describe()
            );
        } else {
            let owner = Shard::owner_of(&entry.key, shard.count);
            if owner != shard.index {
                eprintln!(
                    "{}: read whole by shard {owner}/{} (its source reads in sequence), not by this one",
                    entry.key, shard.count
                );
                return Ok(None);
            }
            eprintln!(
                "{}: read whole by this shard ({}): its source reads in sequence",
                entry.key,
                shard.label()
            );
        }
    }
    let stream = state_stream(&entry, shard);
    let mut pipeline = pipeline(&entry, &stream, source, sink, ctx).await?;
    if let Some(mapper) = mapper {
        pipeline = pipeline.mapper(mapper);
    }
    if let Some(store) = &ctx.checkpoints {
        pipeline = pipeline.checkpoints(store.clone());
        if ctx.args.full_refresh {
            pipeline = pipeline.fresh_start();
        }
    }
    if let (Some(deletes), Some(key_field)) = (&entry.deletes, &entry.key_field)
        && let Some(mode) = deletes.mode.delete_mode()
    {
        pipeline = pipeline.deletions(
            Deletions::new(
                mode,
                deletes,
                key_field.clone(),
                ctx.args.allow_mass_delete,
                !ctx.args.apply,
            )
            .map_err(|e| e.with_context("sync", &entry.key))?,
        );
    }
    if let (Some(incremental), Some(window)) = (&entry.incremental, window) {
        pipeline =
            pipeline.incremental(Arc::new(incremental_run(&entry, incremental, window, ctx)?));
    }
    // The checkpoint store's position, or the sink's where the sink commits
    // positions with its batches (DuckDB): decided before anything is read.
    if let Some(position) = pipeline.resume_point().await? {
        eprintln!(
            "{}: resuming after checkpoint {position} (use --full-refresh to start over)",
            entry.key
        );
    }
    if ctx.checkpoints.is_some() && entry.key_field.is_none() && !pipeline.exactly_once_resume() {
        // Said before anything is written: appends are not replayed exactly.
        eprintln!(
            "{}: no keyField, so rows are appended: if this run stops early, the run that resumes \
             it may append the rows written after the last checkpoint again (at-least-once); set \
             keyField for exact re-runs",
            entry.key
        );
    }
    pipeline.run().await.map(Some)
}

/// The incremental read of `entry`'s `window`, keeping its mark in the run's
/// state (none in a dry run). A resumed window counts what the interrupted run
/// wrote; a full refresh forgets the saved mark first.
fn incremental_run(
    entry: &SyncEntry,
    incremental: &sluicegate_engine::IncrementalConfig,
    window: IncrementalWindow,
    ctx: &RunContext<'_>,
) -> Result<IncrementalRun> {
    let stream = state_stream(entry, ctx.shard);
    let stream = stream.as_str();
    let show = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut progress = None;
    if let Some(store) = &ctx.windows {
        if ctx.args.full_refresh {
            store.clear(&entry.key, stream)?;
        } else {
            progress = store.load(&entry.key, stream)?.progress;
        }
    }
    eprintln!(
        "{}: incremental on {} from {}{}",
        entry.key,
        window.cursor_field,
        show(&window.start_value),
        match &progress {
            Some(p) => format!(" (resuming a window written up to {})", show(p)),
            None => String::new(),
        }
    );
    let run = IncrementalRun::new(incremental, window, progress.as_ref())
        .map_err(|e| e.with_context("sync", &entry.key))?;
    Ok(match &ctx.windows {
        Some(store) => run.with_store(store.clone(), entry.key.clone(), stream),
        None => run,
    })
}

/// The two passes of a re-drive of `entry`: its records rejected by the mapping
/// (mapped again), then those rejected later (as they were mapped). One report.
async fn redrive_entry(
    entry: &SyncEntry,
    mapper: Option<Arc<Mapper>>,
    sink: &Arc<dyn Sink>,
    ctx: &RunContext<'_>,
) -> Result<StreamReport> {
    use crate::redrive::{DeadLetterSource, Pass};
    let mut report: Option<StreamReport> = None;
    for (pass, mapper) in [(Pass::Unmapped, mapper), (Pass::Mapped, None)] {
        let source = Arc::new(DeadLetterSource::new(
            ctx.dead_letter.clone(),
            &entry.key,
            pass,
        ));
        let mut pipeline = pipeline(entry, entry.table(), source, sink, ctx).await?;
        if let Some(mapper) = mapper {
            pipeline = pipeline.mapper(mapper);
        }
        let done = pipeline.run().await?;
        report = Some(match report {
            None => done,
            Some(mut first) => {
                first.ack.add(&done.ack);
                first.batches += done.batches;
                first.elapsed += done.elapsed;
                first.total_rows = done.total_rows;
                first.writer = done.writer;
                first
            }
        });
    }
    report.ok_or_else(|| Error::new(ErrorKind::Contract, "a re-drive ran no pass"))
}

/// A pipeline from `source` into a new writer of `sink` for `entry`, with the
/// run's budget, counters, observer and options (no mapping, no checkpoints).
async fn pipeline(
    entry: &SyncEntry,
    stream: &str,
    source: Arc<dyn Source>,
    sink: &Arc<dyn Sink>,
    ctx: &RunContext<'_>,
) -> Result<Pipeline> {
    let mut target = StreamTarget::new(entry.key.clone(), entry.table(), entry.key_field.clone())
        .with_memory_limit(ctx.container_limit);
    target.stats = ctx.stats.clone();
    target.observer = ctx.observer.clone() as Arc<dyn RunObserver>;
    let capabilities = sink.capabilities();
    let batch_rows = ctx
        .tuning
        .load_batch_rows(capabilities.preferred_batch_rows);
    let batch_bytes = ctx
        .tuning
        .load_batch_bytes(capabilities.preferred_batch_bytes);
    let writer = sink.open(target).await?;
    Ok(Pipeline::new(entry.key.clone(), stream, source, writer)
        .budget(ctx.budget.clone())
        .stats(ctx.stats.clone())
        .observer(ctx.observer.clone() as Arc<dyn RunObserver>)
        .monitor(ctx.monitor.clone())
        .options(
            PipelineOptions::default()
                .with_mode(if ctx.args.streaming {
                    ReadMode::Streaming
                } else {
                    ReadMode::Classic
                })
                .with_batch_rows(batch_rows)
                .with_batch_bytes(batch_bytes)
                .with_transform_rows(ctx.tuning.transform_rows())
                .with_linger(Duration::from_millis(500))
                .with_max_errors(ctx.args.max_errors),
        ))
}

/// A hint to print under an error, where one helps.
pub fn hint(err: &Error, args: &SyncArgs) -> Option<String> {
    match err.kind() {
        ErrorKind::MemoryLimit if !args.streaming => Some(format!(
            "classic mode holds a whole source in memory; add --streaming to keep memory flat, or raise --max-memory-mb{}",
            args.max_memory_mb
                .map(|mb| format!(" (now {mb})"))
                .unwrap_or_default()
        )),
        ErrorKind::TooManyRejected => Some(format!(
            "the rejected records are in {}; fix their cause and run again, or raise --max-errors",
            args.dead_letter.as_ref().map_or_else(
                || ".sluicegate/dead-letters.ndjson".to_owned(),
                |p| p.display().to_string()
            )
        )),
        ErrorKind::Auth => {
            Some("check the credentials the configuration reads from the environment".to_owned())
        }
        ErrorKind::MassDeletion => Some(
            "a dry run (without --apply) lists what would be removed; --allow-mass-delete \
             removes it"
                .to_owned(),
        ),
        ErrorKind::Sink
            if err.to_string().contains("failed to pin block")
                || err.to_string().contains("Out of Memory") =>
        {
            Some(
                "DuckDB ran out of its memory limit; raise memoryLimitMb on the duckdb sink"
                    .to_owned(),
            )
        }
        _ => None,
    }
}

fn print_summary(outcome: &Outcome, ctx: &RunContext<'_>, elapsed: Duration) {
    let args = ctx.args;
    let mut out = String::new();
    let mode = if args.streaming {
        "streaming"
    } else {
        "classic"
    };
    let command = if ctx.redrive { "redrive" } else { "sync-api" };
    if args.apply {
        let _ = writeln!(out, "{command}: applied ({mode} mode)");
    } else {
        let _ = writeln!(
            out,
            "{command}: dry run ({mode} mode), nothing was written; add --apply to write"
        );
    }
    stream_table(outcome, &mut out);
    for report in &outcome.reports {
        if let Some(incremental) = &report.incremental {
            let _ = writeln!(
                out,
                "{}: {}",
                report.sync_key,
                incremental_line(incremental, args.apply)
            );
        }
        if let Some(deletions) = &report.deletions {
            let _ = writeln!(out, "{}: {}", report.sync_key, deletion_line(deletions));
        }
    }
    cache_lines(outcome, &mut out);
    run_lines(ctx, elapsed, &mut out);
    print!("{out}");
}

/// "incremental on F from X to Y (N rows in the window…)" for the summary.
fn incremental_line(report: &sluicegate_engine::IncrementalReport, apply: bool) -> String {
    let value = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut line = format!(
        "incremental on {} from {} to {} ({} rows in the window",
        report.cursor_field,
        value(&report.from),
        value(&report.to),
        group(report.rows)
    );
    if report.rejected_cursor > 0 {
        let _ = write!(
            line,
            ", {} rejected without a usable cursor",
            group(report.rejected_cursor)
        );
    }
    line.push(')');
    if let Some(why) = &report.held {
        let _ = write!(line, "; high-water mark held: {why}");
    } else if !report.committed {
        line.push_str(if apply {
            " (not saved)"
        } else {
            " (dry run: not saved)"
        });
    }
    line
}

/// "deletes (hard): removed N of the target's M keys …" for the summary.
fn deletion_line(report: &sluicegate_engine::DeletionReport) -> String {
    let mode = report.mode.as_str();
    if let Some(why) = &report.skipped {
        return format!("deletes ({mode}) skipped: {why}");
    }
    let mut line = if report.dry_run {
        format!(
            "deletes ({mode}): would remove {} of the target's {} keys (not in the source)",
            group(report.missing),
            group(report.target_keys)
        )
    } else {
        format!(
            "deletes ({mode}): removed {} of the target's {} keys (not in the source)",
            group(report.deleted),
            group(report.target_keys)
        )
    };
    if !report.sample.is_empty() {
        let more = if report.missing > report.sample.len() as u64 {
            ", …"
        } else {
            ""
        };
        let _ = write!(line, ": {}{more}", report.sample.join(", "));
    }
    line
}

/// One row per stream (and per failed stream), columns aligned.
fn stream_table(outcome: &Outcome, out: &mut String) {
    let header = [
        "key",
        "table",
        "rows",
        "new",
        "changed",
        "unchanged",
        "failed",
        "duplicates",
        "rows in table",
        "time",
    ];
    let mut rows: Vec<[String; 10]> = outcome
        .reports
        .iter()
        .map(|r| {
            [
                r.sync_key.clone(),
                r.stream.clone(),
                group(r.ack.rows),
                group(r.ack.inserted),
                group(r.ack.updated),
                if r.writer.compares_content {
                    group(r.ack.unchanged)
                } else {
                    "-".to_owned()
                },
                group(r.ack.failed),
                group(r.ack.duplicates),
                r.total_rows.map_or_else(|| "-".to_owned(), group),
                format!("{:.1}s", r.elapsed.as_secs_f64()),
            ]
        })
        .collect();
    for (key, _) in &outcome.failures {
        let mut row: [String; 10] = std::array::from_fn(|_| "-".to_owned());
        row[0] = key.clone();
        row[1] = "FAILED".to_owned();
        rows.push(row);
    }
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: &[String]| -> String {
        let parts: Vec<String> = cells
            .iter()
            .zip(widths)
            .enumerate()
            .map(|(i, (c, w))| {
                if i < 2 {
                    format!("{c:<w$}")
                } else {
                    format!("{c:>w$}")
                }
            })
            .collect();
        parts.join("  ").trim_end().to_owned()
    };
    let _ = writeln!(out, "{}", line(&header.map(str::to_owned)));
    for row in &rows {
        let _ = writeln!(out, "{}", line(row));
    }
}

/// For streams written through a lookup cache: what was written and
/// published, and the cache's figures.
fn cache_lines(outcome: &Outcome, out: &mut String) {
    for r in &outcome.reports {
        if let Some(c) = &r.writer.cache {
            let _ = writeln!(
                out,
                "{}: {} new, {} changed, {} unchanged, {} failed{} · cache {} hits, {} misses, {} evictions, {} entries ({}){}",
                r.sync_key,
                group(r.ack.inserted),
                group(r.ack.updated),
                group(r.ack.unchanged),
                group(r.ack.failed),
                // Sinks without a publishing step (and runs that publish nothing) say nothing.
                if r.writer.published > 0 {
                    format!(" · published {}", group(r.writer.published))
                } else {
                    String::new()
                },
                group(c.hits),
                group(c.misses),
                group(c.evictions),
                group(c.entries),
                format_bytes(usize::try_from(c.bytes).unwrap_or(usize::MAX)),
                if c.prefetched { ", prefetched" } else { "" },
            );
        }
    }
}

/// The run's totals: reads and requests, filtered and rejected rows, memory,
/// and what the memory monitor did.
fn run_lines(ctx: &RunContext<'_>, elapsed: Duration, out: &mut String) {
    let snap = ctx.stats.snapshot();
    let statuses: Vec<String> = snap
        .statuses
        .iter()
        .map(|(s, n)| format!("{s}×{n}"))
        .collect();
    let b = ctx.budget.snapshot();
    let peak = ctx.monitor.memory().map_or_else(
        || "unknown".to_owned(),
        |m| format_bytes(m.process.peak_rss as usize),
    );
    let secs = elapsed.as_secs_f64();
    let _ = writeln!(
        out,
        "rows read {} in {} pages · requests {} (retries {}{}) · {:.1}s · {} rows/s",
        group(snap.rows_read),
        group(snap.pages),
        group(snap.requests),
        snap.retries,
        if statuses.is_empty() {
            String::new()
        } else {
            format!("; {}", statuses.join(", "))
        },
        secs,
        group((snap.rows_written as f64 / secs.max(1e-3)) as u64),
    );
    if snap.rows_filtered > 0 || snap.rows_rejected > 0 {
        let _ = writeln!(
            out,
            "filtered out {} · rejected {}{}",
            group(snap.rows_filtered),
            group(snap.rows_rejected),
            if ctx.observer.rejected() > 0 && ctx.observer.writes_letters() {
                format!(" (written to {})", ctx.dead_letter.display())
            } else if ctx.observer.rejected() > 0 {
                " (a dry run: listed above, not written)".to_owned()
            } else {
                String::new()
            },
        );
    }
    let _ = writeln!(
        out,
        "peak memory {peak} · budget peak {} of {} ({} waits)",
        format_bytes(b.peak),
        format_bytes(b.capacity),
        b.waits,
    );
    let m = ctx.monitor.snapshot();
    if m.over_threshold > 0 {
        let _ = writeln!(
            out,
            "memory monitor: {} of {} samples over {} · {} flush requests · {} partial batches flushed ({} rows) · sinks relieved {}× ({} cache entries dropped, {} buffers flushed) · batch size halved {}× (smallest {}), grown back {}× · allocator returned {}",
            m.over_threshold,
            m.checks,
            format_bytes(usize::try_from(m.threshold_bytes).unwrap_or(usize::MAX)),
            m.flush_requests,
            m.batches_flushed,
            group(m.rows_flushed),
            m.sink_reliefs,
            group(m.cache_entries_dropped),
            m.buffers_flushed,
            m.batch_shrinks,
            scale_text(m.min_batch_scale),
            m.batch_grows,
            format_bytes(usize::try_from(m.bytes_returned).unwrap_or(usize::MAX)),
        );
    }
}

/// A batch scale as a fraction (`1/4`).
fn scale_text(scale: f64) -> String {
    if scale >= 1.0 {
        "1".to_owned()
    } else {
        format!("1/{}", (1.0 / scale).round())
    }
}
