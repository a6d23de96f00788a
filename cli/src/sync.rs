//! `sync-api`: validate every selected entry, build sinks and sources, run each
//! stream through the pipeline, print the summary.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluicegate_core::{
    BuildContext, CheckpointStore, Error, ErrorKind, FileCheckpointStore, MemoryBudget, Pipeline,
    PipelineOptions, Prepared, ReadMode, Registry, Result, RunStats, Sink, Source, StreamReport,
    StreamTarget, WhenFull, format_bytes, process_memory, template_scope_from_env,
};

use crate::args::SyncArgs;
use crate::config_file::{ConfigFile, SyncEntry, split_type};
use crate::progress::{Progress, group};

/// Everything validated and ready to build; no I/O has happened yet.
pub struct PreparedRun {
    sinks: BTreeMap<String, Box<dyn Prepared<dyn Sink>>>,
    entries: Vec<(SyncEntry, Box<dyn Prepared<dyn Source>>)>,
}

/// Parses and validates the sinks and sources the selected entries use,
/// without any network call or file write.
pub fn prepare(
    registry: &Registry,
    config: &ConfigFile,
    entries: &[&SyncEntry],
    dry_run: bool,
) -> Result<PreparedRun> {
    let file = config.path.display().to_string();
    let scope = template_scope_from_env();
    let base_dir = config.base_dir();
    let ctx = |key: &str| BuildContext {
        sync_key: key.to_owned(),
        dry_run,
        template_scope: scope.clone(),
        base_dir: base_dir.clone(),
        publish: true,
    };
    let in_file = |e: Error| Error::config(format!("{file}: {}", e.message()));
    let mut sinks = BTreeMap::new();
    for entry in entries {
        if sinks.contains_key(&entry.sink) {
            continue;
        }
        let path = format!("sinks.{}", entry.sink);
        let (kind, rest) = split_type(&config.sinks[&entry.sink], &path).map_err(in_file)?;
        let factory = registry
            .sink(&kind)
            .map_err(|e| Error::config(format!("{file}: {path}.type: {}", e.message())))?;
        let prepared = factory.prepare(rest, &path, ctx("")).map_err(in_file)?;
        sinks.insert(entry.sink.clone(), prepared);
    }
    let mut prepared_entries = Vec::new();
    for entry in entries {
        let path = entry.source_path();
        let (kind, rest) = split_type(&entry.source, &path).map_err(in_file)?;
        let factory = registry
            .source(&kind)
            .map_err(|e| Error::config(format!("{file}: {path}.type: {}", e.message())))?;
        let prepared = factory
            .prepare(rest, &path, ctx(&entry.key))
            .map_err(in_file)?;
        prepared_entries.push(((*entry).clone(), prepared));
    }
    Ok(PreparedRun {
        sinks,
        entries: prepared_entries,
    })
}

/// How a `sync-api` run ended.
pub struct Outcome {
    /// Streams that completed.
    pub reports: Vec<StreamReport>,
    /// Streams that failed, with their errors.
    pub failures: Vec<(String, Error)>,
}

/// Runs the prepared entries one after the other. A failing entry does not stop
/// the others; its error is reported at the end.
pub async fn run(prepared: PreparedRun, args: &SyncArgs, config: &ConfigFile) -> Result<Outcome> {
    let started = Instant::now();
    let mode = if args.streaming {
        ReadMode::Streaming
    } else {
        ReadMode::Classic
    };
    let policy = if args.streaming {
        WhenFull::Wait
    } else {
        WhenFull::Fail
    };
    let budget_bytes =
        usize::try_from(args.max_memory_mb.saturating_mul(1 << 20)).unwrap_or(usize::MAX);
    let budget = MemoryBudget::with_policy(budget_bytes, policy);
    let stats = Arc::new(RunStats::default());
    let checkpoints: Option<Arc<dyn CheckpointStore>> = args.apply.then(|| {
        let dir = args
            .state_dir
            .clone()
            .unwrap_or_else(|| default_state_dir(config));
        Arc::new(FileCheckpointStore::new(dir)) as Arc<dyn CheckpointStore>
    });

    let mut sinks: BTreeMap<String, Arc<dyn Sink>> = BTreeMap::new();
    for (name, sink) in prepared.sinks {
        let built = sink
            .build()
            .await
            .map_err(|e| Error::new(e.kind(), format!("sink '{name}': {e}")))?;
        sinks.insert(name, built);
    }

    let progress = Progress::start(stats.clone(), budget.clone(), args.quiet);
    let mut outcome = Outcome {
        reports: Vec::new(),
        failures: Vec::new(),
    };
    for (entry, source) in prepared.entries {
        progress.set_stream(&entry.key);
        let result = run_entry(
            &entry,
            source,
            &sinks,
            &budget,
            &stats,
            checkpoints.clone(),
            mode,
            args,
        )
        .await;
        match result {
            Ok(report) => outcome.reports.push(report),
            Err(e) => {
                let e = e.with_context("sync", &entry.key);
                tracing::error!(sync = %entry.key, error = %e, "sync failed");
                outcome.failures.push((entry.key.clone(), e));
            }
        }
    }
    progress.stop().await;
    print_summary(&outcome, args, &stats, &budget, started.elapsed());
    Ok(outcome)
}

#[allow(clippy::too_many_arguments)]
async fn run_entry(
    entry: &SyncEntry,
    source: Box<dyn Prepared<dyn Source>>,
    sinks: &BTreeMap<String, Arc<dyn Sink>>,
    budget: &MemoryBudget,
    stats: &Arc<RunStats>,
    checkpoints: Option<Arc<dyn CheckpointStore>>,
    mode: ReadMode,
    args: &SyncArgs,
) -> Result<StreamReport> {
    let sink = sinks
        .get(&entry.sink)
        .ok_or_else(|| Error::config(format!("no sink named '{}'", entry.sink)))?;
    let source = source.build().await?;
    let mut target = StreamTarget::new(entry.key.clone(), entry.table(), entry.key_field.clone());
    target.stats = stats.clone();
    if let Some(store) = &checkpoints {
        if args.full_refresh {
            store.clear(&entry.key, entry.table())?;
        } else if let Some(position) = store.load(&entry.key, entry.table())? {
            eprintln!(
                "{}: resuming after checkpoint {position} (use --full-refresh to start over)",
                entry.key
            );
        }
    }
    let writer = sink.open(target).await?;
    let mut pipeline = Pipeline::new(entry.key.clone(), entry.table(), source, writer)
        .budget(budget.clone())
        .stats(stats.clone())
        .options(PipelineOptions {
            mode,
            batch_rows: usize::try_from(args.batch_size).unwrap_or(usize::MAX),
            linger: Duration::from_millis(500),
        });
    if let Some(store) = checkpoints {
        pipeline = pipeline.checkpoints(store);
    }
    pipeline.run().await
}

/// A hint to print under an error, where one helps.
pub fn hint(err: &Error, args: &SyncArgs) -> Option<String> {
    match err.kind() {
        ErrorKind::MemoryLimit if !args.streaming => Some(format!(
            "classic mode holds a whole source in memory; add --streaming to keep memory flat, or raise --max-memory-mb (now {})",
            args.max_memory_mb
        )),
        ErrorKind::Auth => {
            Some("check the credentials the configuration reads from the environment".to_owned())
        }
        _ => None,
    }
}

fn print_summary(
    outcome: &Outcome,
    args: &SyncArgs,
    stats: &RunStats,
    budget: &MemoryBudget,
    elapsed: Duration,
) {
    let mut out = String::new();
    let mode = if args.streaming {
        "streaming"
    } else {
        "classic"
    };
    if args.apply {
        let _ = writeln!(out, "sync-api: applied ({mode} mode)");
    } else {
        let _ = writeln!(
            out,
            "sync-api: dry run ({mode} mode), nothing was written; add --apply to write"
        );
    }
    let (new_label, old_label) = if args.apply {
        ("inserted", "updated")
    } else {
        ("new", "existing")
    };
    let header = [
        "key",
        "table",
        "rows",
        new_label,
        old_label,
        "duplicates",
        "rows in table",
        "time",
    ];
    let mut rows: Vec<[String; 8]> = outcome
        .reports
        .iter()
        .map(|r| {
            [
                r.sync_key.clone(),
                r.stream.clone(),
                group(r.ack.rows),
                group(r.ack.inserted),
                group(r.ack.updated),
                group(r.ack.duplicates),
                r.total_rows.map_or_else(|| "-".to_owned(), group),
                format!("{:.1}s", r.elapsed.as_secs_f64()),
            ]
        })
        .collect();
    for (key, _) in &outcome.failures {
        rows.push([
            key.clone(),
            "FAILED".into(),
            "-".into(),
            "-".into(),
            "-".into(),
            "-".into(),
            "-".into(),
            "-".into(),
        ]);
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
    let snap = stats.snapshot();
    let statuses: Vec<String> = snap
        .statuses
        .iter()
        .map(|(s, n)| format!("{s}×{n}"))
        .collect();
    let b = budget.snapshot();
    let peak = process_memory().map_or_else(
        || "unknown".to_owned(),
        |m| format_bytes(m.peak_rss as usize),
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
    let _ = writeln!(
        out,
        "peak memory {peak} · budget peak {} of {} ({} waits)",
        format_bytes(b.peak),
        format_bytes(b.capacity),
        b.waits,
    );
    print!("{out}");
}

/// The default state directory for a configuration file.
pub fn default_state_dir(config: &ConfigFile) -> PathBuf {
    config.base_dir().join(".sluicegate").join("state")
}
