//! The live progress display on stderr.
//!
//! On a terminal each stream gets a bar (drawn with `indicatif`): rows written,
//! percent and ETA when its source knows the total, rows/s, pages, and memory now
//! and at its peak. A finished stream's bar stays as its record; the running one
//! is redrawn in place. Anywhere else (a pipe, a log file) a plain line is
//! written every few seconds, without control characters.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use sluicegate_core::{MemoryBudget, RunStats, format_bytes};
use sluicegate_engine::MemorySampler;
use tokio::sync::watch;

/// How often a terminal display refreshes.
const TTY_EVERY: Duration = Duration::from_millis(250);
/// How often a plain progress line is written.
const LINE_EVERY: Duration = Duration::from_secs(5);

/// The stream being shown and where its counts started.
struct Current {
    name: String,
    rows_base: u64,
    pages_base: u64,
    started: Instant,
    bar: Option<ProgressBar>,
}

/// A running progress display; stops on [`Progress::stop`].
pub struct Progress {
    current: Arc<Mutex<Current>>,
    stats: Arc<RunStats>,
    sampler: MemorySampler,
    bars: Option<MultiProgress>,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    /// Starts the display (or a silent one when `quiet`), showing memory as
    /// the run's `sampler` reads it.
    pub fn start(
        stats: Arc<RunStats>,
        budget: MemoryBudget,
        sampler: MemorySampler,
        quiet: bool,
    ) -> Self {
        let current = Arc::new(Mutex::new(Current {
            name: String::new(),
            rows_base: 0,
            pages_base: 0,
            started: Instant::now(),
            bar: None,
        }));
        let tty = std::io::stderr().is_terminal();
        let bars = (!quiet && tty)
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(8)));
        let (stop, mut stopped) = watch::channel(false);
        let task = (!quiet).then(|| {
            let current = current.clone();
            let stats = stats.clone();
            let sampler = sampler.clone();
            tokio::spawn(async move {
                let every = if tty { TTY_EVERY } else { LINE_EVERY };
                let mut last = (Instant::now(), stats.rows_written());
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(every) => {}
                        _ = stopped.changed() => break,
                    }
                    let now = Instant::now();
                    let rows = stats.rows_written();
                    let rate = (rows.saturating_sub(last.1)) as f64
                        / now.duration_since(last.0).as_secs_f64().max(1e-3);
                    last = (now, rows);
                    let current = lock(&current);
                    if let Some(bar) = &current.bar {
                        update_bar(bar, &current, &stats, &sampler);
                    } else if !tty && !current.name.is_empty() {
                        let line = status_line(&current, &stats, &budget, &sampler, rate);
                        let mut err = std::io::stderr().lock();
                        let _ = writeln!(err, "progress: {line}");
                        let _ = err.flush();
                    }
                }
            })
        });
        Self {
            current,
            stats,
            sampler,
            bars,
            stop,
            task,
        }
    }

    /// Starts showing the stream `name` (the previous one's bar is finished).
    pub fn set_stream(&self, name: &str) {
        self.stats.clear_expected_rows();
        let mut current = lock(&self.current);
        if let Some(bar) = current.bar.take() {
            update_bar(&bar, &current, &self.stats, &self.sampler);
            bar.finish();
        }
        current.name = name.to_owned();
        current.rows_base = self.stats.rows_written();
        current.pages_base = self.stats.snapshot().pages;
        current.started = Instant::now();
        if let Some(bars) = &self.bars {
            let bar = bars.add(ProgressBar::no_length());
            bar.set_style(style(false));
            bar.set_prefix(name.to_owned());
            bar.enable_steady_tick(TTY_EVERY);
            current.bar = Some(bar);
        }
    }

    /// Stops the display; a terminal keeps each stream's final bar.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        let mut current = lock(&self.current);
        if let Some(bar) = current.bar.take() {
            update_bar(&bar, &current, &self.stats, &self.sampler);
            bar.finish();
            // What follows (the summary) starts below the last bar.
            eprintln!();
        }
    }
}

fn lock(current: &Mutex<Current>) -> std::sync::MutexGuard<'_, Current> {
    current
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The bar's look: with a total, a bar with percent and ETA; without, a spinner.
fn style(known_total: bool) -> ProgressStyle {
    let template = if known_total {
        "{prefix:12!} [{bar:24}] {percent:>3}% {human_pos}/{human_len} rows · ETA {eta} · {msg}"
    } else {
        "{prefix:12!} {spinner} {human_pos} rows · {msg}"
    };
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

fn update_bar(bar: &ProgressBar, current: &Current, stats: &RunStats, sampler: &MemorySampler) {
    let snap = stats.snapshot();
    let rows = snap.rows_written.saturating_sub(current.rows_base);
    if let Some(total) = stats.expected_rows()
        && bar.length() != Some(total)
    {
        bar.set_style(style(true));
        bar.set_length(total);
    }
    bar.set_position(rows);
    let mem = sampler.latest().unwrap_or_default().process;
    let rate = rows as f64 / current.started.elapsed().as_secs_f64().max(1e-3);
    bar.set_message(format!(
        "{} rows/s · {} pages{} · memory {} (peak {})",
        group(rate as u64),
        group(snap.pages.saturating_sub(current.pages_base)),
        entries(&snap),
        format_bytes(usize::try_from(mem.rss).unwrap_or(usize::MAX)),
        format_bytes(usize::try_from(mem.peak_rss).unwrap_or(usize::MAX)),
    ));
}

fn status_line(
    current: &Current,
    stats: &RunStats,
    budget: &MemoryBudget,
    sampler: &MemorySampler,
    rate: f64,
) -> String {
    let snap = stats.snapshot();
    let mem = sampler.latest().unwrap_or_default().process;
    let b = budget.snapshot();
    let rows = snap.rows_written.saturating_sub(current.rows_base);
    let of_total = match stats.expected_rows() {
        Some(total) if total > 0 => {
            let left = total.saturating_sub(rows);
            let eta = if rate > 0.0 {
                format!("{:.0}s", left as f64 / rate)
            } else {
                "-".to_owned()
            };
            format!(
                "/{} ({:.0}%, ETA {eta})",
                group(total),
                rows as f64 * 100.0 / total as f64
            )
        }
        _ => String::new(),
    };
    format!(
        "[{}] {}{of_total} rows written ({} read), {} rows/s, {} pages{}, {} requests, {} retries, memory {} (peak {}), budget {}/{}, {:.0}s",
        current.name,
        group(rows),
        group(snap.rows_read),
        group(rate as u64),
        group(snap.pages.saturating_sub(current.pages_base)),
        entries(&snap),
        group(snap.requests),
        snap.retries,
        format_bytes(mem.rss as usize),
        format_bytes(mem.peak_rss as usize),
        format_bytes(b.in_use),
        format_bytes(b.capacity),
        current.started.elapsed().as_secs_f64(),
    )
}

/// What a content-platform sink has done so far, as it happens (its rows count
/// only when a whole batch is acknowledged): records looked up, entries
/// written and published. Empty for sinks that do not look up.
fn entries(snap: &sluicegate_core::StatsSnapshot) -> String {
    let looked_up = snap.cache_hits + snap.cache_misses;
    if looked_up == 0 && snap.entries_written == 0 {
        return String::new();
    }
    format!(
        ", {} looked up, {} entries written, {} published",
        group(looked_up),
        group(snap.entries_written),
        group(snap.entries_published)
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

    #[test]
    fn plain_lines_show_the_total_and_an_eta_when_known() {
        let stats = RunStats::default();
        let current = Current {
            name: "orders".into(),
            rows_base: 0,
            pages_base: 0,
            started: Instant::now(),
            bar: None,
        };
        stats.add_rows_written(250);
        let budget = MemoryBudget::new(1 << 20);
        let sampler = MemorySampler::new();
        let line = status_line(&current, &stats, &budget, &sampler, 50.0);
        assert!(line.starts_with("[orders] 250 rows written"), "{line}");
        stats.set_expected_rows(1000);
        let line = status_line(&current, &stats, &budget, &sampler, 50.0);
        assert!(
            line.starts_with("[orders] 250/1,000 (25%, ETA 15s) rows written"),
            "{line}"
        );
        assert!(!line.contains(['\r', '\x1b']));
    }

    #[test]
    fn a_content_platform_sync_shows_lookups_writes_and_publishes_before_a_batch_is_acknowledged() {
        let stats = RunStats::default();
        let current = Current {
            name: "products".into(),
            rows_base: 0,
            pages_base: 0,
            started: Instant::now(),
            bar: None,
        };
        let budget = MemoryBudget::new(1 << 20);
        let sampler = MemorySampler::new();
        let line = status_line(&current, &stats, &budget, &sampler, 0.0);
        assert!(!line.contains("looked up"), "not for other sinks: {line}");
        stats.add_cache_lookups(3, 497);
        stats.add_entries_written(120);
        stats.add_entries_published(80);
        let line = status_line(&current, &stats, &budget, &sampler, 0.0);
        assert!(
            line.starts_with(
                "[products] 0 rows written (0 read), 0 rows/s, 0 pages, 500 looked up, 120 entries written, 80 published,"
            ),
            "{line}"
        );
    }
}
