//! The live progress display on stderr: one rewritten line on a terminal, a
//! plain log line every few seconds otherwise.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluicegate_core::{MemoryBudget, RunStats, format_bytes, process_memory};
use tokio::sync::watch;

/// A running progress display; stops (and clears its line) on [`Progress::stop`].
pub struct Progress {
    stream: Arc<Mutex<String>>,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    /// Starts the display (or a silent one when `quiet`).
    pub fn start(stats: Arc<RunStats>, budget: MemoryBudget, quiet: bool) -> Self {
        let stream = Arc::new(Mutex::new(String::new()));
        let (stop, mut stopped) = watch::channel(false);
        let task = (!quiet).then(|| {
            let stream = stream.clone();
            tokio::spawn(async move {
                let tty = std::io::stderr().is_terminal();
                let every = if tty {
                    Duration::from_millis(500)
                } else {
                    Duration::from_secs(5)
                };
                let started = Instant::now();
                let mut last = (Instant::now(), 0u64);
                let mut drew = false;
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(every) => {}
                        _ = stopped.changed() => break,
                    }
                    let rows = stats.rows_written();
                    let now = Instant::now();
                    let rate =
                        (rows - last.1) as f64 / now.duration_since(last.0).as_secs_f64().max(1e-3);
                    last = (now, rows);
                    let name = stream
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .clone();
                    let line = status_line(&name, &stats, &budget, rate, started.elapsed());
                    let mut err = std::io::stderr().lock();
                    if tty {
                        let _ = write!(err, "\r\x1b[2K{line}");
                        drew = true;
                    } else {
                        let _ = writeln!(err, "progress: {line}");
                    }
                    let _ = err.flush();
                }
                if tty && drew {
                    let _ = write!(std::io::stderr(), "\r\x1b[2K");
                }
            })
        });
        Self { stream, stop, task }
    }

    /// Names the stream now running.
    pub fn set_stream(&self, name: &str) {
        *self
            .stream
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = name.to_owned();
    }

    /// Stops the display and clears its line.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

fn status_line(
    stream: &str,
    stats: &RunStats,
    budget: &MemoryBudget,
    rate: f64,
    elapsed: Duration,
) -> String {
    let snap = stats.snapshot();
    let mem = process_memory().unwrap_or_default();
    let b = budget.snapshot();
    format!(
        "[{stream}] {} rows written ({} read), {} rows/s, {} requests, {} retries, memory {} (peak {}), budget {}/{}, {:.0}s",
        group(snap.rows_written),
        group(snap.rows_read),
        group(rate as u64),
        group(snap.requests),
        snap.retries,
        format_bytes(mem.rss as usize),
        format_bytes(mem.peak_rss as usize),
        format_bytes(b.in_use),
        format_bytes(b.capacity),
        elapsed.as_secs_f64(),
    )
}

/// Formats an integer with thousands separators: `1234567` → `1,234,567`.
pub fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_thousands() {
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(1000), "1,000");
        assert_eq!(group(1234567), "1,234,567");
    }
}
