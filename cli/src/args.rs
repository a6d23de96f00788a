//! Command-line arguments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Sync paginated REST APIs and databases into DuckDB and content platforms with
/// memory that stays flat however large the dataset is.
#[derive(Debug, Parser)]
#[command(
    name = "sluicegate",
    version,
    propagate_version = true,
    after_help = "Environment: SLUICEGATE_CONFIG (--config), SLUICEGATE_LOG (log filter for stderr, e.g. \
info or debug); each sync-api tuning flag has its SLUICEGATE_* variable (SLUICEGATE_MAX_MEMORY_MB, \
SLUICEGATE_FLUSH_THRESHOLD_PERCENT, ...; see sync-api --help).\n\
Exit codes: 0 every sync completed, 1 a sync failed, 2 configuration or usage error, \
3 every sync completed but some records were rejected (see the dead-letter file)."
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,

    /// How log lines on stderr look: `text` for people, `json` (one object per
    /// line: timestamp, level, message and fields) for log collectors.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Formats of the log lines on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Sync entries of the configuration file into their sinks (a dry run unless --apply).
    #[command(name = "sync-api")]
    SyncApi(SyncArgs),
    /// Sync the records of the dead-letter file again, once their cause is fixed (a dry
    /// run unless --apply). Records rejected by the mapping are mapped again; records
    /// rejected later go to the sink as they were mapped. With --apply and no error,
    /// the file then keeps only other keys' records and those rejected again.
    Redrive(SyncArgs),
    /// Check the configuration and each entry's connectivity without syncing: the
    /// source's first batch is read, the mapping tried on it, and the sink's target
    /// opened for a dry run (credentials, content type or table). Nothing is written.
    Validate {
        /// Key of the entry to check; repeat for several [default: every entry].
        #[arg(short = 'k', long = "key", value_name = "KEY")]
        keys: Vec<String>,
        /// The configuration file.
        #[arg(
            short,
            long,
            value_name = "FILE",
            default_value = "sluicegate.yaml",
            env = "SLUICEGATE_CONFIG"
        )]
        config: PathBuf,
    },
    /// Manage the response cache of --use-filecache.
    Cache {
        /// What to do.
        #[command(subcommand)]
        action: CacheAction,
    },
    /// Show or reset the saved checkpoints that interrupted syncs resume from.
    State {
        /// What to do.
        #[command(subcommand)]
        action: StateAction,
    },
}

/// `state` subcommands.
#[derive(Debug, Subcommand)]
pub enum StateAction {
    /// List every saved checkpoint (sync key, stream, position, when committed).
    Show(StateArgs),
    /// Forget the checkpoints of the given keys, so their next run starts over; without
    /// --key, move the whole state file aside (also what to do with a corrupt one).
    Reset {
        /// Key whose checkpoints to forget; repeat for several.
        #[arg(short = 'k', long = "key", value_name = "KEY")]
        keys: Vec<String>,
        /// Where the state is.
        #[command(flatten)]
        state: StateArgs,
    },
}

/// Where `state` finds the state file.
#[derive(Debug, Clone, Args)]
pub struct StateArgs {
    /// The configuration file whose state to use.
    #[arg(
        short,
        long,
        value_name = "FILE",
        default_value = "sluicegate.yaml",
        env = "SLUICEGATE_CONFIG"
    )]
    pub config: PathBuf,

    /// The state directory, when sync-api ran with --state-dir [default:
    /// .sluicegate/state next to the configuration file].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

impl StateArgs {
    /// The state directory these arguments name.
    pub fn dir(&self) -> PathBuf {
        self.state_dir.clone().unwrap_or_else(|| {
            crate::config_file::base_dir_of(&self.config)
                .join(".sluicegate")
                .join("state")
        })
    }
}

/// `cache` subcommands.
#[derive(Debug, Subcommand)]
pub enum CacheAction {
    /// Remove every cached response.
    Clear {
        /// The configuration file whose cache to clear.
        #[arg(
            short,
            long,
            value_name = "FILE",
            default_value = "sluicegate.yaml",
            env = "SLUICEGATE_CONFIG"
        )]
        config: PathBuf,
    },
}

/// Arguments of `sync-api`.
#[derive(Debug, Clone, Args)]
pub struct SyncArgs {
    /// Key of the sync entry to run; repeat to run several, in the order given.
    #[arg(
        short = 'k',
        long = "key",
        value_name = "KEY",
        required_unless_present = "all"
    )]
    pub keys: Vec<String>,

    /// Run every sync entry of the configuration, in file order.
    #[arg(long, conflicts_with = "keys")]
    pub all: bool,

    /// The configuration file; relative paths inside it are resolved against its directory.
    #[arg(
        short,
        long,
        value_name = "FILE",
        default_value = "sluicegate.yaml",
        env = "SLUICEGATE_CONFIG"
    )]
    pub config: PathBuf,

    /// Write to the sinks. Without it the run is a dry run: everything is read and
    /// compared, and what would be written is reported, but nothing is written.
    #[arg(short, long)]
    pub apply: bool,

    /// Stream: read and write concurrently under the memory budget, so memory stays
    /// flat whatever the data size. Without it each source is read completely before
    /// it is written (fine for small data; stops with an error when it does not fit
    /// the budget).
    #[arg(long)]
    pub streaming: bool,

    /// A set of the knobs below for a common case: `low-memory` (64 MiB, small pages
    /// and batches, one write at a time), `balanced` (128 MiB, the adapters' own sizes)
    /// or `throughput` (512 MiB, 4× batches, 8 concurrent writes). Knobs set by flag or
    /// in the file's `tuning` section win over the preset [default: balanced].
    #[arg(long, value_enum, env = "SLUICEGATE_PRESET", help_heading = "Tuning")]
    pub preset: Option<crate::tuning::Preset>,

    /// The memory the run aims to stay within, in MiB, planned at the start: what the
    /// process uses once its sinks are open and the sinks' own working memory (DuckDB:
    /// its memory limit plus what it allocates outside it) are taken off, and the flush
    /// threshold's share of the rest (80%) is the budget for records in flight (pages
    /// being decoded, batches waiting and being written), each budget byte counted as
    /// 1.25 resident bytes. When the budget is full the sources wait (streaming) or the
    /// run stops with an error (classic mode). The memory monitor acts beyond the plan.
    /// A target too small for the process and its sinks is announced at the start
    /// [default: 128, or the preset's].
    #[arg(long, value_name = "MB", env = "SLUICEGATE_MAX_MEMORY_MB", value_parser = clap::value_parser!(u64).range(1..), help_heading = "Tuning")]
    pub max_memory_mb: Option<u64>,

    /// The share of what --max-memory-mb leaves beyond the process and its sinks that
    /// records in flight may fill. When the process's resident memory passes the plan
    /// (process + sinks + this share; this share of --max-memory-mb when the target
    /// cannot hold the process and its sinks), the memory monitor flushes partial
    /// batches and sink caches, halves the batch size (it grows back once memory eases)
    /// and has the allocator return freed memory [default: 0.8].
    #[arg(long, value_name = "FRACTION", env = "SLUICEGATE_FLUSH_THRESHOLD_PERCENT", value_parser = crate::tuning::parse_threshold, help_heading = "Tuning")]
    pub flush_threshold_percent: Option<f64>,

    /// Seconds between the memory monitor's samples [default: 1].
    #[arg(long, value_name = "SECONDS", env = "SLUICEGATE_MEMORY_CHECK_INTERVAL", value_parser = crate::tuning::parse_interval, help_heading = "Tuning")]
    pub memory_check_interval: Option<f64>,

    /// Records each source asks for per page (extract stage); never more than the API
    /// serves per page (a source's `limitMax` caps it) [default: each source's pageSize].
    #[arg(long, value_name = "N", env = "SLUICEGATE_PAGE_SIZE", value_parser = clap::value_parser!(u64).range(1..), help_heading = "Tuning")]
    pub page_size: Option<u64>,

    /// Records mapped in one step (transform stage): larger pages are split and each
    /// part goes on by itself [default: a whole page, up to --batch-size].
    #[arg(long, value_name = "N", env = "SLUICEGATE_TRANSFORM_BATCH_SIZE", value_parser = clap::value_parser!(u64).range(1..), help_heading = "Tuning")]
    pub transform_batch_size: Option<u64>,

    /// Most records written per sink batch (load stage; one transaction per batch): a
    /// maximum, larger source pages are split [default: the sink's preferred size:
    /// DuckDB 10000 (or 4 MiB of records, whichever comes first), Contentful and
    /// Directus 500].
    #[arg(long, visible_alias = "load-batch-size", value_name = "N", env = "SLUICEGATE_LOAD_BATCH_SIZE", value_parser = clap::value_parser!(u64).range(1..), help_heading = "Tuning")]
    pub batch_size: Option<u64>,

    /// Requests a content-platform sink sends at once (chunks of a batch looked up,
    /// written and published concurrently) [default: the sink's maxConcurrency].
    #[arg(long, value_name = "N", env = "SLUICEGATE_MAX_CONCURRENT_CHUNKS", value_parser = clap::value_parser!(u64).range(1..=64), help_heading = "Tuning")]
    pub max_concurrent_chunks: Option<u64>,

    /// Ignore saved checkpoints and start every stream from the beginning; incremental
    /// entries start from their initialValue again.
    #[arg(long)]
    pub full_refresh: bool,

    /// Let deletions remove more of a target than its deletes.maxFraction (after a
    /// source really lost that much).
    #[arg(long)]
    pub allow_mass_delete: bool,

    /// Run as shard I of N (`--shard 2/4`, from 0): an entry whose source splits
    /// (offset or page-number pages with a total; a parent/child endpoint, by
    /// parent; a database table read by orderBy) reads its part; any other entry
    /// is run whole by one shard.
    /// Checkpoints and run locks are per shard (docs/scale-out.md).
    #[arg(
        long,
        value_name = "I/N",
        env = "SLUICEGATE_SHARD",
        conflicts_with = "shards"
    )]
    pub shard: Option<String>,

    /// Run as one of N shards, this one being JOB_COMPLETION_INDEX (what a
    /// Kubernetes Indexed Job sets in each pod).
    #[arg(long, value_name = "N", env = "SLUICEGATE_SHARDS")]
    pub shards: Option<u32>,

    /// Where checkpoints of interrupted runs are kept, with the SQLite state (the
    /// file's `state` section can put them in PostgreSQL) [default: .sluicegate/state
    /// next to the configuration file].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// No progress display; errors and the final summary only (same as --verbosity quiet).
    #[arg(short, long)]
    pub quiet: bool,

    /// How much to print: `quiet` (summary and errors), `normal` (plus progress),
    /// `detailed` (plus every entry that is or would be created or updated, with each
    /// changed field, old and new value), `debug` (plus debug log lines).
    #[arg(long, value_enum, default_value_t = Verbosity::Normal)]
    pub verbosity: Verbosity,

    /// Do not publish what was written (sinks with a publishing step, e.g. Contentful).
    /// Dry runs never publish.
    #[arg(long)]
    pub no_publish: bool,

    /// Cache source responses on disk and replay them while fresh (`fileCache` on a
    /// source sets the time-to-live and size), so repeated runs during development
    /// do not hit the network; kept in .sluicegate/http-cache next to the configuration.
    /// `sluicegate cache clear` empties it.
    #[arg(short = 'u', long)]
    pub use_filecache: bool,

    /// Stop a sync once more records were rejected than this: a count (`10`) or a
    /// percentage of the records read (`2.5%`, judged once 100 were read and at the
    /// end) [default: no limit]. The stopped sync fails (exit code 1); what was
    /// written before stays and it resumes from its checkpoint.
    #[arg(long, value_name = "N|P%")]
    pub max_errors: Option<sluicegate_engine::ErrorLimit>,

    /// Write every figure of the run to this JSON file at the end: per stream
    /// counts, requests by status, retries, budget use and waits, and memory (peak,
    /// average, snapshots at the start, first page, every 20 batches and the end).
    #[arg(long, value_name = "FILE.json")]
    pub report: Option<PathBuf>,

    /// Serve Prometheus metrics at http://HOST:PORT/metrics while the run goes on
    /// (rows, pages, batches, bytes, requests by status, retries, memory, budget).
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_addr: Option<String>,

    /// Where rejected records go, one JSON object per line (sync key, stage, record
    /// key, reason, record) [default: .sluicegate/dead-letters.ndjson next to the
    /// configuration file].
    #[arg(long, value_name = "FILE")]
    pub dead_letter: Option<PathBuf>,
}

impl SyncArgs {
    /// The tuning flags, for [`Tuning::resolve`](crate::tuning::Tuning::resolve).
    pub fn tuning_flags(&self) -> crate::tuning::TuningFlags {
        crate::tuning::TuningFlags {
            preset: self.preset,
            max_memory_mb: self.max_memory_mb,
            flush_threshold_percent: self.flush_threshold_percent,
            memory_check_interval: self.memory_check_interval,
            page_size: self.page_size,
            transform_batch_size: self.transform_batch_size,
            batch_size: self.batch_size,
            max_concurrent_chunks: self.max_concurrent_chunks,
        }
    }
}

/// Output levels of `sync-api`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Verbosity {
    /// Summary and errors.
    Quiet,
    /// Plus progress.
    Normal,
    /// Plus each change.
    Detailed,
    /// Plus debug log lines (unless `SLUICEGATE_LOG` sets the log filter).
    Debug,
}

impl SyncArgs {
    /// The shard this process runs as, from `--shard I/N`, or `--shards N`
    /// with `JOB_COMPLETION_INDEX`; `None` when the job is not sharded.
    pub fn shard(&self) -> sluicegate_core::Result<Option<sluicegate_core::Shard>> {
        use sluicegate_core::{Error, Shard};
        let bad = |what: String| Error::config(what);
        if let Some(text) = &self.shard {
            let (i, n) = text
                .split_once('/')
                .ok_or_else(|| bad(format!("--shard {text}: write it as I/N, e.g. 2/4")))?;
            let (i, n) = (i.trim().parse::<u32>(), n.trim().parse::<u32>());
            return match (i, n) {
                (Ok(i), Ok(n)) => Shard::new(i, n).map(Some).ok_or_else(|| {
                    bad(format!(
                        "--shard {text}: the index must be below the count (0 to {})",
                        n.saturating_sub(1)
                    ))
                }),
                _ => Err(bad(format!("--shard {text}: write it as I/N, e.g. 2/4"))),
            };
        }
        let Some(n) = self.shards else {
            return Ok(None);
        };
        let index = std::env::var("JOB_COMPLETION_INDEX").map_err(|_| {
            bad("--shards needs JOB_COMPLETION_INDEX (set in each pod of a Kubernetes Indexed Job), or use --shard I/N".to_owned())
        })?;
        let i = index
            .trim()
            .parse::<u32>()
            .map_err(|_| bad(format!("JOB_COMPLETION_INDEX={index} is not a shard index")))?;
        Shard::new(i, n).map(Some).ok_or_else(|| {
            bad(format!(
                "JOB_COMPLETION_INDEX={i} is not below --shards {n}"
            ))
        })
    }

    /// The effective verbosity (`--quiet` wins).
    pub fn verbosity(&self) -> Verbosity {
        if self.quiet {
            Verbosity::Quiet
        } else {
            self.verbosity
        }
    }
}
