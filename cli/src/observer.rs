//! What the CLI does with rejected records and change notes: rejected records
//! go to the dead-letter file (one JSON object per line, created owner-only on
//! the first one) — in a dry run, which writes nothing anywhere, they are only
//! listed on stderr — and change notes to stdout at `--verbosity detailed`.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::json;
use sluicegate_core::{Rejected, RunObserver};

/// The CLI's observer.
pub struct CliObserver {
    path: PathBuf,
    file: Mutex<Option<BufWriter<File>>>,
    rejected: AtomicU64,
    detailed: bool,
    dry_run: bool,
}

/// Records a dry run lists one by one; the rest are only counted.
const DRY_RUN_LISTED: u64 = 20;

impl CliObserver {
    /// An observer writing dead letters to `path`, printing changes if `detailed`.
    pub fn new(path: PathBuf, detailed: bool) -> Self {
        Self {
            path,
            file: Mutex::new(None),
            rejected: AtomicU64::new(0),
            detailed,
            dry_run: false,
        }
    }

    /// A dry run's observer: rejected records are listed on stderr (the first
    /// few) and counted, never written to the dead-letter file.
    #[must_use]
    pub fn dry_run(mut self, dry_run: bool) -> Self {
        self.dry_run = dry_run;
        self
    }

    /// Whether rejected records go to the dead-letter file.
    pub fn writes_letters(&self) -> bool {
        !self.dry_run
    }

    /// Records rejected so far.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// The dead-letter file.
    pub fn path(&self) -> &PathBuf {
        &self.path
    }

    /// Flushes the dead-letter file.
    pub fn flush(&self) {
        if let Some(f) = self
            .file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_mut()
            && let Err(e) = f.flush()
        {
            tracing::error!(path = %self.path.display(), error = %e, "cannot write the dead-letter file");
        }
    }

    fn open(&self) -> std::io::Result<BufWriter<File>> {
        if let Some(dir) = self.path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)?;
        }
        let mut options = std::fs::OpenOptions::new();
        options.create(true).append(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        Ok(BufWriter::new(options.open(&self.path)?))
    }
}

impl RunObserver for CliObserver {
    fn wants_changes(&self) -> bool {
        self.detailed
    }

    fn change(&self, sync_key: &str, line: &str) {
        println!("{sync_key}: {line}");
    }

    fn rejected(&self, sync_key: &str, rejected: Rejected) {
        let n = self.rejected.fetch_add(1, Ordering::Relaxed) + 1;
        if self.dry_run {
            if n <= DRY_RUN_LISTED {
                let key = rejected
                    .key
                    .as_ref()
                    .map_or_else(|| "(no key)".to_owned(), ToString::to_string);
                let stage = json!(rejected.stage);
                let stage = stage.as_str().unwrap_or("?");
                eprintln!(
                    "{sync_key}: a dry run would reject record {key} at the {stage} stage: {}",
                    rejected.reason
                );
            } else if n == DRY_RUN_LISTED + 1 {
                eprintln!("{sync_key}: more records would be rejected; the summary counts them");
            }
            return;
        }
        let line = json!({
            "syncKey": sync_key,
            "stage": rejected.stage,
            "key": rejected.key,
            "reason": rejected.reason,
            "record": rejected.record,
        });
        let mut file = self
            .file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if file.is_none() {
            match self.open() {
                Ok(f) => *file = Some(f),
                Err(e) => {
                    tracing::error!(path = %self.path.display(), error = %e, "cannot open the dead-letter file; the record is only logged");
                    tracing::warn!(record = %line, "rejected record");
                    return;
                }
            }
        }
        if let Some(f) = file.as_mut()
            && let Err(e) = writeln!(f, "{line}")
        {
            tracing::error!(path = %self.path.display(), error = %e, "cannot write the dead-letter file");
        }
    }
}
