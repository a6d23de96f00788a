//! Stage knobs and presets: how much memory a run may use, when the memory
//! monitor acts, and how large pages, transform chunks, sink batches and
//! concurrent writes are.
//!
//! Each knob is settable by flag (or its `SLUICEGATE_*` environment variable),
//! by the configuration file's `tuning` section, or by a preset; the first of
//! those that sets it wins, in that order, and what none sets keeps the
//! adapters' own choice. `docs/tuning.md` says when to use which preset.
//!
//! ```yaml
//! tuning:
//!   preset: low-memory          # low-memory | balanced | throughput
//!   maxMemoryMb: 128
//!   flushThresholdPercent: 0.8  # act at 80% of maxMemoryMb
//!   memoryCheckInterval: 1      # seconds
//!   pageSize: 200               # records per source page
//!   transformBatchSize: 100     # records mapped per step
//!   loadBatchSize: 1000         # records per sink batch
//!   maxConcurrentChunks: 4      # sink requests at once
//! ```

use std::fmt::Write as _;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sluicegate_core::{Error, Result, StageTuning};
use sluicegate_engine::MonitorSettings;

/// Named sets of knobs for the common cases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    /// Small containers (64 MiB): small pages, chunks and batches, one write at
    /// a time, the monitor acting early and often.
    LowMemory,
    /// The default: 128 MiB, the adapters' own page and batch sizes.
    #[default]
    Balanced,
    /// Large machines and fast APIs: 512 MiB, batches four times the sink's
    /// usual size, eight concurrent writes, the monitor acting late.
    Throughput,
}

impl Preset {
    /// The preset's name as written in flags and configuration.
    pub fn name(self) -> &'static str {
        match self {
            Preset::LowMemory => "low-memory",
            Preset::Balanced => "balanced",
            Preset::Throughput => "throughput",
        }
    }

    fn knobs(self) -> Knobs {
        match self {
            Preset::LowMemory => Knobs {
                max_memory_mb: Some(64),
                flush_threshold: Some(0.7),
                check_interval: Some(0.5),
                page_size: Some(100),
                transform_rows: Some(100),
                load_batch: None,
                load_batch_factor: Some(0.2),
                max_concurrency: Some(1),
            },
            Preset::Balanced => Knobs {
                max_memory_mb: Some(128),
                flush_threshold: Some(0.8),
                check_interval: Some(1.0),
                ..Knobs::default()
            },
            Preset::Throughput => Knobs {
                max_memory_mb: Some(512),
                flush_threshold: Some(0.9),
                check_interval: Some(2.0),
                load_batch_factor: Some(4.0),
                max_concurrency: Some(8),
                ..Knobs::default()
            },
        }
    }
}

/// The configuration file's `tuning` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TuningConfig {
    /// The preset the other knobs start from.
    #[serde(default)]
    pub preset: Option<Preset>,
    /// The memory the run aims to stay within, in MiB.
    #[serde(default)]
    pub max_memory_mb: Option<u64>,
    /// The share of `maxMemoryMb` (0.05–1) above which the memory monitor acts.
    #[serde(default)]
    pub flush_threshold_percent: Option<f64>,
    /// Seconds between memory samples.
    #[serde(default)]
    pub memory_check_interval: Option<f64>,
    /// Records a source asks for per page.
    #[serde(default)]
    pub page_size: Option<u64>,
    /// Records mapped per step.
    #[serde(default)]
    pub transform_batch_size: Option<u64>,
    /// Records per sink batch.
    #[serde(default)]
    pub load_batch_size: Option<u64>,
    /// Sink requests at once.
    #[serde(default)]
    pub max_concurrent_chunks: Option<u64>,
}

/// Knobs from one layer (flags, file or preset); `None`: not set there.
#[derive(Debug, Clone, Copy, Default)]
struct Knobs {
    max_memory_mb: Option<u64>,
    flush_threshold: Option<f64>,
    check_interval: Option<f64>,
    page_size: Option<u64>,
    transform_rows: Option<u64>,
    load_batch: Option<u64>,
    /// Load batch as a multiple of the sink's preferred size (presets only).
    load_batch_factor: Option<f64>,
    max_concurrency: Option<u64>,
}

/// Where a knob's value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// A flag or its environment variable.
    Flag,
    /// The configuration file's `tuning` section.
    File,
    /// The preset.
    Preset,
    /// Nothing set it: the built-in default or the adapter's own choice.
    Default,
    /// Lowered to the memory limit of the container (cgroup) the run is in.
    Container,
}

/// The knobs a run uses, resolved.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Tuning {
    /// The preset the knobs started from.
    pub preset: Preset,
    /// The memory the run aims to stay within, in MiB.
    pub max_memory_mb: u64,
    /// The share of it above which the monitor acts.
    pub flush_threshold: f64,
    /// Seconds between memory samples.
    pub memory_check_interval: f64,
    /// Records per source page; `None`: each source's own.
    pub page_size: Option<u64>,
    /// Records mapped per step; `None`: a page at a time.
    pub transform_batch_size: Option<u64>,
    /// Records per sink batch; `None`: the sink's preferred size (times
    /// `load_batch_factor`).
    pub load_batch_size: Option<u64>,
    /// Multiple of the sink's preferred batch size, when no size is set.
    pub load_batch_factor: f64,
    /// Sink requests at once; `None`: each sink's own.
    pub max_concurrent_chunks: Option<u64>,
    /// Where each knob came from, by name.
    pub origins: std::collections::BTreeMap<&'static str, Origin>,
}

const DEFAULT_MAX_MEMORY_MB: u64 = 128;

/// The tuning flags of a run (`--preset`, `--max-memory-mb`, ...), as given.
#[derive(Debug, Clone, Default)]
pub struct TuningFlags {
    /// `--preset`.
    pub preset: Option<Preset>,
    /// `--max-memory-mb`.
    pub max_memory_mb: Option<u64>,
    /// `--flush-threshold-percent`.
    pub flush_threshold_percent: Option<f64>,
    /// `--memory-check-interval`.
    pub memory_check_interval: Option<f64>,
    /// `--page-size`.
    pub page_size: Option<u64>,
    /// `--transform-batch-size`.
    pub transform_batch_size: Option<u64>,
    /// `--batch-size`.
    pub batch_size: Option<u64>,
    /// `--max-concurrent-chunks`.
    pub max_concurrent_chunks: Option<u64>,
}

impl TuningConfig {
    /// The section's knobs, once their values are checked (`at` names where
    /// the section is, for the error).
    fn checked(&self, at: &dyn Fn(&str) -> String) -> Result<Knobs> {
        let file = self;
        let section_errors = [
            ("maxMemoryMb", file.max_memory_mb.is_some_and(|n| n == 0)),
            ("pageSize", file.page_size.is_some_and(|n| n == 0)),
            (
                "transformBatchSize",
                file.transform_batch_size.is_some_and(|n| n == 0),
            ),
            (
                "loadBatchSize",
                file.load_batch_size.is_some_and(|n| n == 0),
            ),
            (
                "maxConcurrentChunks",
                file.max_concurrent_chunks.is_some_and(|n| n == 0 || n > 64),
            ),
        ];
        for (name, bad) in section_errors {
            if bad {
                let range = if name == "maxConcurrentChunks" {
                    "between 1 and 64"
                } else {
                    "at least 1"
                };
                return Err(Error::config(at(&format!(
                    "tuning.{name}: must be {range}"
                ))));
            }
        }
        if let Some(f) = file.flush_threshold_percent {
            check_threshold(f)
                .map_err(|e| Error::config(at(&format!("tuning.flushThresholdPercent: {e}"))))?;
        }
        if let Some(s) = file.memory_check_interval {
            check_interval(s)
                .map_err(|e| Error::config(at(&format!("tuning.memoryCheckInterval: {e}"))))?;
        }
        Ok(Knobs {
            max_memory_mb: file.max_memory_mb,
            flush_threshold: file.flush_threshold_percent,
            check_interval: file.memory_check_interval,
            page_size: file.page_size,
            transform_rows: file.transform_batch_size,
            load_batch: file.load_batch_size,
            load_batch_factor: None,
            max_concurrency: file.max_concurrent_chunks,
        })
    }
}

impl Tuning {
    /// Resolves the knobs from the flags, the file's section and the preset.
    pub fn resolve(
        args: &TuningFlags,
        file: &TuningConfig,
        at: &dyn Fn(&str) -> String,
    ) -> Result<Self> {
        let chosen = args.preset.or(file.preset);
        let preset = chosen.unwrap_or_default();
        // The default preset's values are plain defaults.
        let preset_origin = if chosen.is_some() {
            Origin::Preset
        } else {
            Origin::Default
        };
        let flags = Knobs {
            max_memory_mb: args.max_memory_mb,
            flush_threshold: args.flush_threshold_percent,
            check_interval: args.memory_check_interval,
            page_size: args.page_size,
            transform_rows: args.transform_batch_size,
            load_batch: args.batch_size,
            load_batch_factor: None,
            max_concurrency: args.max_concurrent_chunks,
        };
        let from_file = file.checked(at)?;
        let preset_knobs = preset.knobs();
        let mut origins = std::collections::BTreeMap::new();
        macro_rules! pick {
            ($name:literal, $field:ident) => {{
                let (value, origin) = if flags.$field.is_some() {
                    (flags.$field, Origin::Flag)
                } else if from_file.$field.is_some() {
                    (from_file.$field, Origin::File)
                } else if preset_knobs.$field.is_some() {
                    (preset_knobs.$field, preset_origin)
                } else {
                    (None, Origin::Default)
                };
                origins.insert($name, origin);
                value
            }};
        }
        let max_memory_mb = pick!("maxMemoryMb", max_memory_mb).unwrap_or(DEFAULT_MAX_MEMORY_MB);
        let flush_threshold = pick!("flushThresholdPercent", flush_threshold).unwrap_or(0.8);
        let memory_check_interval = pick!("memoryCheckInterval", check_interval).unwrap_or(1.0);
        let page_size = pick!("pageSize", page_size);
        let transform_batch_size = pick!("transformBatchSize", transform_rows);
        let load_batch_size = pick!("loadBatchSize", load_batch);
        let max_concurrent_chunks = pick!("maxConcurrentChunks", max_concurrency);
        // A size set anywhere wins over the preset's factor.
        let load_batch_factor = if load_batch_size.is_some() {
            1.0
        } else {
            preset_knobs.load_batch_factor.unwrap_or(1.0)
        };
        if load_batch_size.is_none() && preset_knobs.load_batch_factor.is_some() {
            origins.insert("loadBatchSize", preset_origin);
        }
        Ok(Self {
            preset,
            max_memory_mb,
            flush_threshold,
            memory_check_interval,
            page_size,
            transform_batch_size,
            load_batch_size,
            load_batch_factor,
            max_concurrent_chunks,
            origins,
        })
    }

    /// What sources and sinks are built with.
    pub fn stage(&self) -> StageTuning {
        StageTuning::new(
            self.page_size,
            self.max_concurrent_chunks
                .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
        )
    }

    /// The memory monitor's settings.
    pub fn monitor(&self) -> MonitorSettings {
        MonitorSettings::new(
            self.max_memory_bytes(),
            self.flush_threshold,
            Duration::from_secs_f64(self.memory_check_interval),
        )
    }

    /// The memory target in bytes.
    pub fn max_memory_bytes(&self) -> u64 {
        self.max_memory_mb.saturating_mul(1 << 20)
    }

    /// Records per sink batch for a sink preferring `preferred` (5000 when it
    /// has no preference).
    pub fn load_batch_rows(&self, preferred: Option<usize>) -> usize {
        match self.load_batch_size {
            Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
            None => self.scaled(preferred.unwrap_or(5000)),
        }
    }

    /// A sink's preferred size scaled by the preset's factor (at least 1).
    fn scaled(&self, preferred: usize) -> usize {
        ((preferred as f64 * self.load_batch_factor).round() as usize).max(1)
    }

    /// The bytes at which a sink batch is full before it has its rows, for
    /// a sink preferring `preferred` (scaled like the rows by a preset's
    /// factor); `None` when a batch size is set (the rows asked for are the
    /// batch, the budget bounding its bytes) or the sink has no preference.
    pub fn load_batch_bytes(&self, preferred: Option<usize>) -> Option<usize> {
        if self.load_batch_size.is_some() {
            return None;
        }
        preferred.map(|bytes| self.scaled(bytes))
    }

    /// Records mapped per step, if pages are split.
    pub fn transform_rows(&self) -> Option<usize> {
        self.transform_batch_size
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
    }

    /// Lowers the memory target to `limit_bytes`, the memory limit of the
    /// container the run is in, when the target is above it (a process cannot
    /// use more than its container allows: planning for more plans for an
    /// out-of-memory kill). Returns the target it had, if it lowered it.
    pub fn fit_container(&mut self, limit_bytes: u64) -> Option<u64> {
        let limit_mb = (limit_bytes >> 20).max(1);
        if self.max_memory_mb <= limit_mb {
            return None;
        }
        let before = self.max_memory_mb;
        self.max_memory_mb = limit_mb;
        self.origins.insert("maxMemoryMb", Origin::Container);
        Some(before)
    }

    /// One line for the log: every knob and where it came from.
    pub fn describe(&self) -> String {
        let origin = |name: &str| match self.origins.get(name) {
            Some(Origin::Flag) => " (flag)",
            Some(Origin::File) => " (file)",
            Some(Origin::Preset) => " (preset)",
            Some(Origin::Container) => " (the container's limit)",
            _ => "",
        };
        let mut out = format!("preset {}", self.preset.name());
        let _ = write!(
            out,
            " · max memory {} MiB{} · flush at {:.0}%{} every {}s{}",
            self.max_memory_mb,
            origin("maxMemoryMb"),
            self.flush_threshold * 100.0,
            origin("flushThresholdPercent"),
            self.memory_check_interval,
            origin("memoryCheckInterval"),
        );
        let or_own =
            |v: Option<u64>, own: &str| v.map_or_else(|| own.to_owned(), |n| n.to_string());
        let load = match (self.load_batch_size, self.load_batch_factor) {
            (Some(n), _) => n.to_string(),
            (None, f) if (f - 1.0).abs() < f64::EPSILON => "the sink's".to_owned(),
            (None, f) => format!("{f}× the sink's"),
        };
        let _ = write!(
            out,
            " · page size {}{} · transform {}{} · load batch {load}{} · concurrent chunks {}{}",
            or_own(self.page_size, "the source's"),
            origin("pageSize"),
            or_own(self.transform_batch_size, "a page"),
            origin("transformBatchSize"),
            origin("loadBatchSize"),
            or_own(self.max_concurrent_chunks, "the sink's"),
            origin("maxConcurrentChunks"),
        );
        out
    }
}

/// Checks a flush threshold (a fraction of the memory target).
pub fn check_threshold(f: f64) -> std::result::Result<f64, String> {
    if (0.05..=1.0).contains(&f) {
        Ok(f)
    } else {
        Err(format!(
            "{f} is not a fraction between 0.05 and 1 (0.8 acts at 80% of the memory target)"
        ))
    }
}

/// Checks a sampling interval in seconds.
pub fn check_interval(s: f64) -> std::result::Result<f64, String> {
    if (0.05..=3600.0).contains(&s) {
        Ok(s)
    } else {
        Err(format!(
            "{s} is not a number of seconds between 0.05 and 3600"
        ))
    }
}

/// Parses `--flush-threshold-percent`.
pub fn parse_threshold(s: &str) -> std::result::Result<f64, String> {
    let f: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a number (0.8 acts at 80% of the memory target)"))?;
    check_threshold(f)
}

/// Parses `--memory-check-interval`.
pub fn parse_interval(s: &str) -> std::result::Result<f64, String> {
    let f: f64 = s
        .trim()
        .trim_end_matches('s')
        .parse()
        .map_err(|_| format!("'{s}' is not a number of seconds"))?;
    check_interval(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(extra: &[&str]) -> TuningFlags {
        let mut argv = vec!["sluicegate", "sync-api", "-k", "x"];
        argv.extend_from_slice(extra);
        match crate::args::Cli::parse_from(argv).command {
            crate::args::Command::SyncApi(a) => a.tuning_flags(),
            _ => unreachable!(),
        }
    }

    fn at(m: &str) -> String {
        format!("sluicegate.yaml: {m}")
    }

    #[test]
    fn flags_win_over_the_file_which_wins_over_the_preset() {
        let file = TuningConfig {
            preset: Some(Preset::LowMemory),
            max_memory_mb: Some(80),
            page_size: Some(50),
            ..TuningConfig::default()
        };
        let t = Tuning::resolve(&args(&["--page-size", "70"]), &file, &at).unwrap();
        assert_eq!(t.preset, Preset::LowMemory);
        assert_eq!(t.page_size, Some(70));
        assert_eq!(t.origins["pageSize"], Origin::Flag);
        assert_eq!(t.max_memory_mb, 80);
        assert_eq!(t.origins["maxMemoryMb"], Origin::File);
        assert_eq!(t.transform_batch_size, Some(100));
        assert_eq!(t.origins["transformBatchSize"], Origin::Preset);
        assert!((t.flush_threshold - 0.7).abs() < 1e-9);
        assert_eq!(
            t.load_batch_rows(Some(5000)),
            1000,
            "a fifth of the sink's size"
        );
        assert_eq!(
            t.load_batch_bytes(Some(4 << 20)),
            Some(838_861),
            "a fifth, rounded"
        );
        assert_eq!(t.stage().max_concurrency, Some(1));
    }

    #[test]
    fn without_anything_set_the_adapters_choose() {
        let t = Tuning::resolve(&args(&[]), &TuningConfig::default(), &at).unwrap();
        assert_eq!(t.preset, Preset::Balanced);
        assert_eq!(t.max_memory_mb, 128);
        assert_eq!(t.stage(), StageTuning::default());
        assert_eq!(t.load_batch_rows(Some(500)), 500);
        assert_eq!(t.load_batch_rows(None), 5000);
        assert_eq!(t.load_batch_bytes(Some(4 << 20)), Some(4 << 20));
        assert_eq!(t.load_batch_bytes(None), None);
        assert_eq!(t.transform_rows(), None);
        assert_eq!(t.monitor().check_interval, Duration::from_secs(1));
        assert!(
            t.describe()
                .starts_with("preset balanced · max memory 128 MiB · flush at 80% every 1s"),
            "{}",
            t.describe()
        );
    }

    #[test]
    fn throughput_scales_the_sinks_batches_unless_a_size_is_set() {
        let t = Tuning::resolve(
            &args(&["--preset", "throughput"]),
            &TuningConfig::default(),
            &at,
        )
        .unwrap();
        assert_eq!(t.load_batch_rows(Some(500)), 2000);
        assert_eq!(t.max_memory_mb, 512);
        let t = Tuning::resolve(
            &args(&["--preset", "throughput", "--batch-size", "300"]),
            &TuningConfig::default(),
            &at,
        )
        .unwrap();
        assert_eq!(t.load_batch_rows(Some(500)), 300);
        assert_eq!(
            t.load_batch_bytes(Some(4 << 20)),
            None,
            "the rows asked for are the batch"
        );
    }

    #[test]
    fn a_bad_value_in_the_file_names_its_line() {
        let text =
            "version: 1\ntuning:\n  preset: low-memory\n  flushThresholdPercent: 5\nsyncs: []\n";
        let config =
            crate::config_file::ConfigFile::parse(text, std::path::Path::new("s.yaml")).unwrap();
        let err = Tuning::resolve(&args(&[]), &config.tuning, &|m| config.at(m)).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("s.yaml:4: tuning.flushThresholdPercent: 5 is not a fraction"),
            "{err}"
        );
    }

    #[test]
    fn bad_values_name_their_place() {
        let file = TuningConfig {
            flush_threshold_percent: Some(80.0),
            ..TuningConfig::default()
        };
        let err = Tuning::resolve(&args(&[]), &file, &at).unwrap_err();
        assert!(
            err.to_string()
                .contains("tuning.flushThresholdPercent: 80 is not a fraction between 0.05 and 1"),
            "{err}"
        );
        let file = TuningConfig {
            max_concurrent_chunks: Some(0),
            ..TuningConfig::default()
        };
        let err = Tuning::resolve(&args(&[]), &file, &at).unwrap_err();
        assert!(
            err.to_string()
                .contains("tuning.maxConcurrentChunks: must be between 1 and 64"),
            "{err}"
        );
        let flag_error = |flag: &str, value: &str| {
            crate::args::Cli::try_parse_from(["sluicegate", "sync-api", "-k", "x", flag, value])
                .unwrap_err()
                .to_string()
        };
        let err = flag_error("--flush-threshold-percent", "1.5");
        assert!(err.contains("not a fraction between 0.05 and 1"), "{err}");
        let err = flag_error("--memory-check-interval", "soon");
        assert!(err.contains("not a number of seconds"), "{err}");
    }

    #[test]
    fn a_container_limit_below_the_target_lowers_it() {
        let mut t = Tuning::resolve(
            &args(&["--max-memory-mb", "512"]),
            &TuningConfig::default(),
            &at,
        )
        .unwrap();
        assert_eq!(
            t.fit_container(1 << 30),
            None,
            "a limit above the target changes nothing"
        );
        assert_eq!(t.max_memory_mb, 512);
        assert_eq!(t.fit_container(256 << 20), Some(512));
        assert_eq!(t.max_memory_bytes(), 256 << 20);
        assert_eq!(t.origins.get("maxMemoryMb"), Some(&Origin::Container));
        assert!(
            t.describe()
                .contains("max memory 256 MiB (the container's limit)"),
            "{}",
            t.describe()
        );
    }
}
