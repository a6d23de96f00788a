//! Incremental syncs: read only what changed since the last complete run.
//!
//! A sync entry's `incremental` section ([`IncrementalConfig`]) names a cursor
//! field (`updated_at`, a version number) and where the first run starts. Each
//! run reads a window: from the last complete run's high-water mark minus the
//! `lag` (or from `initialValue`) on. [`IncrementalRun`] checks every record's
//! cursor as it is read, keeps the highest one the sink acknowledged, and
//! commits it as the new high-water mark only when the stream completed with
//! every record written. So a failed or killed run never moves the mark past
//! what the sink holds, and a resumed run reads inside the same window.
//!
//! Cursor values compare by type, never as text: numbers (integers and
//! decimals, exactly), ISO-8601 timestamps with an offset (as instants),
//! timestamps without one, and dates. The type is the initial value's; a record
//! whose cursor is missing, `null` or of another type is rejected (stage
//! `read`, into the dead letters) and does not touch the mark.

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};

use bigdecimal::BigDecimal;
use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, TimeDelta};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sluicegate_core::{
    Batch, Error, ErrorKind, IncrementalWindow, Position, Record, Rejected, Result, RunObserver,
    RunStats, Stage,
};

/// The `incremental` section of a sync entry.
///
/// ```yaml
/// incremental:
///   cursorField: updated_at
///   initialValue: "2024-01-01T00:00:00Z"
///   lag: 5m
/// ```
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IncrementalConfig {
    /// The field holding each record's cursor: a top-level field, or a path
    /// of fields joined by dots (`meta.updated_at`). For a database source, the
    /// column the source filters and orders by.
    pub cursor_field: String,
    /// Where the first run (and a `--full-refresh`) starts: a number, an
    /// ISO-8601 timestamp (`2024-01-01T00:00:00Z`; with an offset, or without
    /// one for local timestamps) or a date (`2024-01-01`). It sets the
    /// cursor's type.
    pub initial_value: Value,
    /// How far before the last high-water mark the next window starts, to pick
    /// up records that arrive late: for timestamps a number of seconds or a
    /// duration (`90s`, `5m`, `2h`, `1d`), for dates a number of days (`2`,
    /// `2d`), for numbers an amount (`10`). Default: none.
    #[serde(default)]
    pub lag: Option<Value>,
}

/// The type of an incremental sync's cursor values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum CursorKind {
    /// Integers and decimals, compared exactly.
    Number,
    /// ISO-8601 timestamps with an offset (`Z`, `+02:00`), compared as instants.
    Timestamp,
    /// ISO-8601 timestamps without an offset.
    LocalTimestamp,
    /// ISO-8601 dates.
    Date,
}

impl fmt::Display for CursorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CursorKind::Number => "a number",
            CursorKind::Timestamp => "a timestamp with an offset",
            CursorKind::LocalTimestamp => "a timestamp without an offset",
            CursorKind::Date => "a date",
        })
    }
}

/// A cursor value: what it compares as, and the value as the source sent it
/// (stored and shown unchanged).
#[derive(Debug, Clone)]
pub struct Cursor {
    key: CursorKey,
    value: Value,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum CursorKey {
    Number(BigDecimal),
    Timestamp(DateTime<FixedOffset>),
    LocalTimestamp(NaiveDateTime),
    Date(NaiveDate),
}

impl CursorKey {
    fn kind(&self) -> CursorKind {
        match self {
            CursorKey::Number(_) => CursorKind::Number,
            CursorKey::Timestamp(_) => CursorKind::Timestamp,
            CursorKey::LocalTimestamp(_) => CursorKind::LocalTimestamp,
            CursorKey::Date(_) => CursorKind::Date,
        }
    }
}

impl PartialEq for Cursor {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl Cursor {
    /// Reads a cursor value: a JSON number (or, for `Number` cursors, a string
    /// holding one), or a string with an ISO-8601 timestamp or date. With
    /// `kind`, a value of another type is an error.
    pub fn parse(value: &Value, kind: Option<CursorKind>) -> std::result::Result<Self, String> {
        let key = match value {
            Value::Number(n) => BigDecimal::from_str(&n.to_string())
                .map(CursorKey::Number)
                .map_err(|_| format!("{n} is not a number this build can compare"))?,
            Value::String(s) if kind == Some(CursorKind::Number) => BigDecimal::from_str(s.trim())
                .map(CursorKey::Number)
                .map_err(|_| format!("\"{s}\" is not a number"))?,
            Value::String(s) => parse_time(s).ok_or_else(|| {
                format!("\"{s}\" is not a number, an ISO-8601 timestamp or a date")
            })?,
            Value::Null => return Err("it is null".to_owned()),
            other => {
                return Err(format!(
                    "{other} is not a number, an ISO-8601 timestamp or a date"
                ));
            }
        };
        if let Some(kind) = kind
            && key.kind() != kind
        {
            return Err(format!(
                "{value} is {}, but this sync's cursor is {kind}",
                key.kind()
            ));
        }
        Ok(Self {
            key,
            value: value.clone(),
        })
    }

    /// The cursor's type.
    pub fn kind(&self) -> CursorKind {
        self.key.kind()
    }

    /// The value as the source sent it.
    pub fn value(&self) -> &Value {
        &self.value
    }

    /// This cursor moved back by `lag`, written the way this value is written
    /// (a timestamp keeps its separator, fraction and offset).
    pub fn minus(&self, lag: &Lag) -> std::result::Result<Cursor, String> {
        let value = match (&self.key, lag) {
            (CursorKey::Number(n), Lag::Amount(amount)) => {
                let moved = (n - amount).normalized();
                let text = if moved.is_integer() {
                    moved.with_scale(0).to_string()
                } else {
                    moved.to_plain_string()
                };
                match &self.value {
                    Value::String(_) => Value::String(text),
                    _ => Value::Number(
                        serde_json::Number::from_str(&text).map_err(|e| e.to_string())?,
                    ),
                }
            }
            (CursorKey::Timestamp(t), Lag::Seconds(s)) => {
                let moved = t
                    .checked_sub_signed(TimeDelta::seconds(*s))
                    .ok_or("the lag moves the cursor out of range")?;
                Value::String(rewrite_time(
                    self.value.as_str().unwrap_or_default(),
                    &moved.naive_local(),
                ))
            }
            (CursorKey::LocalTimestamp(t), Lag::Seconds(s)) => {
                let moved = t
                    .checked_sub_signed(TimeDelta::seconds(*s))
                    .ok_or("the lag moves the cursor out of range")?;
                Value::String(rewrite_time(
                    self.value.as_str().unwrap_or_default(),
                    &moved,
                ))
            }
            (CursorKey::Date(d), Lag::Seconds(s)) if s % 86_400 == 0 => {
                let moved = d
                    .checked_sub_signed(TimeDelta::days(s / 86_400))
                    .ok_or("the lag moves the cursor out of range")?;
                Value::String(moved.format("%Y-%m-%d").to_string())
            }
            (key, lag) => {
                return Err(format!("a lag of {lag} does not apply to {}", key.kind()));
            }
        };
        Cursor::parse(&value, Some(self.kind()))
    }
}

impl PartialOrd for Cursor {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        self.key.partial_cmp(&other.key)
    }
}

/// Parses an ISO-8601 timestamp (with or without an offset; `T` or a space
/// between date and time) or date.
fn parse_time(s: &str) -> Option<CursorKey> {
    let s = s.trim();
    let normalized = match s.as_bytes().get(10) {
        Some(b' ' | b't') => format!("{}T{}", &s[..10], &s[11..]),
        _ => s.to_owned(),
    };
    if let Ok(t) = DateTime::parse_from_rfc3339(&normalized) {
        return Some(CursorKey::Timestamp(t));
    }
    if let Ok(t) = NaiveDateTime::parse_from_str(&normalized, "%Y-%m-%dT%H:%M:%S%.f") {
        return Some(CursorKey::LocalTimestamp(t));
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .map(CursorKey::Date)
}

/// `original` (a timestamp) with its date and time of day replaced by `moved`'s
/// (whole seconds moved, so the fraction and the offset stay as written).
fn rewrite_time(original: &str, moved: &NaiveDateTime) -> String {
    let sep = original.get(10..11).unwrap_or("T");
    let rest = original.get(19..).unwrap_or_default();
    format!(
        "{}{sep}{}{rest}",
        moved.format("%Y-%m-%d"),
        moved.format("%H:%M:%S")
    )
}

/// How far a window starts before the last high-water mark.
#[derive(Debug, Clone, PartialEq)]
pub enum Lag {
    /// For numbers: an amount.
    Amount(BigDecimal),
    /// For timestamps and dates: whole seconds (dates: whole days of them).
    Seconds(i64),
}

impl fmt::Display for Lag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Lag::Amount(a) => write!(f, "{a}"),
            Lag::Seconds(s) if s % 86_400 == 0 => write!(f, "{}d", s / 86_400),
            Lag::Seconds(s) => write!(f, "{s}s"),
        }
    }
}

impl Lag {
    /// Reads a configured lag for cursors of `kind` (see [`IncrementalConfig::lag`]).
    pub fn parse(value: &Value, kind: CursorKind) -> std::result::Result<Self, String> {
        let text = match value {
            Value::Number(n) => n.to_string(),
            Value::String(s) => s.trim().to_owned(),
            other => return Err(format!("{other} is not a number or a duration")),
        };
        let lag = match kind {
            CursorKind::Number => Lag::Amount(
                BigDecimal::from_str(&text)
                    .map_err(|_| format!("\"{text}\" is not a number (the cursor is a number)"))?,
            ),
            CursorKind::Timestamp | CursorKind::LocalTimestamp => {
                Lag::Seconds(duration_seconds(&text, 1)?)
            }
            CursorKind::Date => {
                let seconds = duration_seconds(&text, 86_400)?;
                if seconds % 86_400 != 0 {
                    return Err(format!(
                        "\"{text}\" is not a whole number of days (the cursor is a date)"
                    ));
                }
                Lag::Seconds(seconds)
            }
        };
        let negative = match &lag {
            Lag::Amount(a) => a < &BigDecimal::from(0),
            Lag::Seconds(s) => *s < 0,
        };
        if negative {
            return Err(format!("\"{text}\" is negative"));
        }
        Ok(lag)
    }
}

/// Seconds in `text`: a whole number of `unit` seconds, or a number with one of
/// the suffixes `s`, `m`, `h`, `d`.
fn duration_seconds(text: &str, unit: i64) -> std::result::Result<i64, String> {
    let (digits, factor) = match text.char_indices().last() {
        Some((i, 's')) => (&text[..i], 1),
        Some((i, 'm')) => (&text[..i], 60),
        Some((i, 'h')) => (&text[..i], 3_600),
        Some((i, 'd')) => (&text[..i], 86_400),
        _ => (text, unit),
    };
    digits
        .trim()
        .parse::<i64>()
        .ok()
        .and_then(|n| n.checked_mul(factor))
        .ok_or_else(|| {
            format!("\"{text}\" is not a duration (a whole number, optionally with s, m, h or d)")
        })
}

impl IncrementalConfig {
    /// Checks the section: the initial value's type, and a lag that fits it.
    pub fn validate(&self) -> Result<CursorKind> {
        if self.cursor_field.trim().is_empty() {
            return Err(sluicegate_core::field_error(
                "incremental.cursorField",
                "must name a field",
            ));
        }
        let initial = Cursor::parse(&self.initial_value, None)
            .map_err(|e| sluicegate_core::field_error("incremental.initialValue", e))?;
        if let Some(lag) = &self.lag {
            let lag = Lag::parse(lag, initial.kind())
                .map_err(|e| sluicegate_core::field_error("incremental.lag", e))?;
            initial
                .minus(&lag)
                .map_err(|e| sluicegate_core::field_error("incremental.lag", e))?;
        }
        Ok(initial.kind())
    }

    /// The window a run reads after a last complete run that reached `last`
    /// (`None`: the first run, or a full refresh).
    pub fn window(&self, last: Option<&Value>) -> Result<IncrementalWindow> {
        let kind = self.validate()?;
        let Some(last) = last else {
            return Ok(IncrementalWindow::new(
                self.cursor_field.clone(),
                self.initial_value.clone(),
                self.initial_value.clone(),
            ));
        };
        let last_cursor = Cursor::parse(last, Some(kind)).map_err(|e| {
            Error::new(
                ErrorKind::Checkpoint,
                format!(
                    "the saved high-water mark of incremental.cursorField '{}' cannot be used: {e}; \
                     run with --full-refresh to start from initialValue",
                    self.cursor_field
                ),
            )
        })?;
        let start = match &self.lag {
            Some(lag) => {
                let lag = Lag::parse(lag, kind).map_err(Error::config)?;
                last_cursor.minus(&lag).map_err(Error::config)?
            }
            None => last_cursor.clone(),
        };
        Ok(IncrementalWindow::new(
            self.cursor_field.clone(),
            start.value,
            last.clone(),
        ))
    }
}

/// Where the high-water marks of incremental syncs are kept.
///
/// # Contract
/// - [`WindowStore::progress`] records the highest cursor of the records the
///   sink acknowledged so far in a window that has not completed; a resumed
///   run starts from it, so the mark covers the records written before the
///   interruption too.
/// - [`WindowStore::complete`] sets the high-water mark and forgets the
///   progress, atomically.
pub trait WindowStore: Send + Sync {
    /// The saved mark and progress of a stream.
    fn load(&self, sync_key: &str, stream: &str) -> Result<SavedWindow>;

    /// Records the highest acknowledged cursor of the window being read.
    fn progress(&self, sync_key: &str, stream: &str, highest: &Value) -> Result<()>;

    /// Ends a window: `last_value` is the new high-water mark.
    fn complete(&self, sync_key: &str, stream: &str, last_value: &Value) -> Result<()>;

    /// Forgets the mark and the progress (a full refresh).
    fn clear(&self, sync_key: &str, stream: &str) -> Result<()>;
}

/// What a [`WindowStore`] holds for a stream.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct SavedWindow {
    /// The high-water mark of the last complete run.
    pub last_value: Option<Value>,
    /// The highest acknowledged cursor of a window that did not complete.
    pub progress: Option<Value>,
}

impl SavedWindow {
    /// A saved mark and progress.
    pub fn new(last_value: Option<Value>, progress: Option<Value>) -> Self {
        Self {
            last_value,
            progress,
        }
    }
}

/// Windows in memory, for tests and programs that do not keep state.
#[derive(Debug, Default)]
pub struct MemoryWindowStore {
    windows: Mutex<std::collections::BTreeMap<(String, String), SavedWindow>>,
}

impl WindowStore for MemoryWindowStore {
    fn load(&self, sync_key: &str, stream: &str) -> Result<SavedWindow> {
        let map = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(map
            .get(&(sync_key.to_owned(), stream.to_owned()))
            .cloned()
            .unwrap_or_default())
    }

    fn progress(&self, sync_key: &str, stream: &str, highest: &Value) -> Result<()> {
        let mut map = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        map.entry((sync_key.to_owned(), stream.to_owned()))
            .or_default()
            .progress = Some(highest.clone());
        Ok(())
    }

    fn complete(&self, sync_key: &str, stream: &str, last_value: &Value) -> Result<()> {
        let mut map = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        map.insert(
            (sync_key.to_owned(), stream.to_owned()),
            SavedWindow::new(Some(last_value.clone()), None),
        );
        Ok(())
    }

    fn clear(&self, sync_key: &str, stream: &str) -> Result<()> {
        let mut map = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        map.remove(&(sync_key.to_owned(), stream.to_owned()));
        Ok(())
    }
}

/// What an incremental stream reports.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct IncrementalReport {
    /// The cursor field.
    pub cursor_field: String,
    /// Where the window started (the last mark minus the lag, or the initial value).
    pub from: Value,
    /// The high-water mark after the run: the highest cursor written, or the
    /// previous mark when nothing newer came (or the mark was held).
    pub to: Value,
    /// Records read in the window with a usable cursor.
    pub rows: u64,
    /// Records rejected for a missing or unusable cursor.
    pub rejected_cursor: u64,
    /// Whether the new mark was saved (`false` in a dry run, or when held).
    pub committed: bool,
    /// Why the mark was not moved, when it was held back.
    pub held: Option<String>,
}

/// One stream's incremental read: checks cursors, follows the acknowledged
/// high-water mark, and commits it at the end (see the module docs).
pub struct IncrementalRun {
    cursor_field: String,
    path: Vec<String>,
    kind: CursorKind,
    window: IncrementalWindow,
    last: Cursor,
    store: Option<(Arc<dyn WindowStore>, String, String)>,
    state: Mutex<Tracking>,
}

#[derive(Default)]
struct Tracking {
    /// Per source batch, in order: its position and its highest cursor.
    read: VecDeque<(Option<Position>, Option<Cursor>)>,
    /// The highest cursor of the records the sink acknowledged.
    acked: Option<Cursor>,
    /// What the store holds as progress.
    saved: Option<Cursor>,
    rows: u64,
    rejected_cursor: u64,
    /// Records rejected after the read (mapping, sink).
    rejected_later: u64,
}

impl IncrementalRun {
    /// A read of `window` (from [`IncrementalConfig::window`]); `progress` is
    /// what the store holds of an interrupted run of the same window.
    pub fn new(
        config: &IncrementalConfig,
        window: IncrementalWindow,
        progress: Option<&Value>,
    ) -> Result<Self> {
        let kind = config.validate()?;
        let last = Cursor::parse(&window.last_value, Some(kind)).map_err(Error::config)?;
        let acked = progress.and_then(|p| Cursor::parse(p, Some(kind)).ok());
        let path = if config.cursor_field.contains('.') {
            config.cursor_field.split('.').map(str::to_owned).collect()
        } else {
            Vec::new()
        };
        Ok(Self {
            cursor_field: config.cursor_field.clone(),
            path,
            kind,
            window,
            last,
            store: None,
            state: Mutex::new(Tracking {
                saved: acked.clone(),
                acked,
                ..Tracking::default()
            }),
        })
    }

    /// Keeps progress and the final mark of `sync_key`/`stream` in `store`
    /// (without one, as in a dry run, nothing is saved).
    #[must_use]
    pub fn with_store(
        mut self,
        store: Arc<dyn WindowStore>,
        sync_key: impl Into<String>,
        stream: impl Into<String>,
    ) -> Self {
        self.store = Some((store, sync_key.into(), stream.into()));
        self
    }

    /// The window being read.
    pub fn window(&self) -> &IncrementalWindow {
        &self.window
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Tracking> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn cursor_of<'a>(&self, record: &'a Record) -> Option<&'a Value> {
        if let Some(v) = record.get(&self.cursor_field) {
            return Some(v);
        }
        let (first, rest) = self.path.split_first()?;
        rest.iter()
            .try_fold(record.get(first)?, |v, field| v.get(field))
    }

    /// Checks the cursor of every record of a source batch (before mapping):
    /// records without a usable one leave the batch and go to `observer`.
    pub(crate) fn check(
        &self,
        batch: &mut Batch,
        sync_key: &str,
        observer: &dyn RunObserver,
        stats: &RunStats,
    ) {
        let records = std::mem::take(batch.records_mut());
        let mut kept = Vec::with_capacity(records.len());
        let mut highest: Option<Cursor> = None;
        let mut rejected = 0u64;
        for record in records {
            let parsed = match self.cursor_of(&record) {
                Some(v) => Cursor::parse(v, Some(self.kind)),
                None => Err("the record has no such field".to_owned()),
            };
            match parsed {
                Ok(cursor) => {
                    if highest.as_ref().is_none_or(|h| cursor > *h) {
                        highest = Some(cursor);
                    }
                    kept.push(record);
                }
                Err(why) => {
                    rejected += 1;
                    observer.rejected(
                        sync_key,
                        Rejected {
                            stage: Stage::Read,
                            key: None,
                            reason: format!(
                                "incremental.cursorField '{}': {why}; records without a usable \
                                 cursor cannot be placed in a window (fix the source, or change \
                                 cursorField)",
                                self.cursor_field
                            ),
                            record,
                        },
                    );
                }
            }
        }
        *batch.records_mut() = kept;
        stats.add_rows_rejected(rejected);
        let mut state = self.state();
        state.rows += batch.len() as u64;
        state.rejected_cursor += rejected;
        let position = batch.position().cloned();
        state.read.push_back((position, highest));
    }

    /// Counts records rejected after the read (by the mapping or the sink):
    /// the mark is then held, so the next run reads them again.
    pub(crate) fn note_rejected(&self, n: u64) {
        if n > 0 {
            self.state().rejected_later += n;
        }
    }

    /// The sink acknowledged everything up to `position`: the source batches
    /// up to the one ending there count towards the mark.
    pub(crate) fn acknowledged(&self, position: &Position) -> Result<()> {
        let mut state = self.state();
        if !state.read.iter().any(|(p, _)| p.as_ref() == Some(position)) {
            return Ok(());
        }
        while let Some((p, highest)) = state.read.pop_front() {
            fold(&mut state.acked, highest);
            if p.as_ref() == Some(position) {
                break;
            }
        }
        let moved = match (&state.acked, &state.saved) {
            (Some(a), Some(s)) => a > s,
            (Some(_), None) => true,
            _ => false,
        };
        if moved && let Some((store, key, stream)) = &self.store {
            let acked = state.acked.clone().expect("moved implies a cursor");
            store.progress(key, stream, acked.value())?;
            state.saved = Some(acked);
        }
        Ok(())
    }

    /// The stream completed and every batch was acknowledged: commits the new
    /// high-water mark (unless records were rejected after the read) and says
    /// what the window held.
    pub(crate) fn finish(&self) -> Result<IncrementalReport> {
        let mut state = self.state();
        while let Some((_, highest)) = state.read.pop_front() {
            fold(&mut state.acked, highest);
        }
        let reached = match &state.acked {
            Some(a) if *a > self.last => a.clone(),
            _ => self.last.clone(),
        };
        let held = (state.rejected_later > 0).then(|| {
            format!(
                "{} records were rejected after they were read (see the dead-letter file); the \
                 next run reads this window again",
                state.rejected_later
            )
        });
        let to = if held.is_some() {
            self.last.clone()
        } else {
            reached
        };
        let committed = match (&self.store, &held) {
            (Some((store, key, stream)), None) => {
                store.complete(key, stream, to.value())?;
                true
            }
            (Some((store, key, stream)), Some(_)) => {
                // The progress stays: what was written counts on the next try.
                if let Some(acked) = &state.acked {
                    store.progress(key, stream, acked.value())?;
                }
                false
            }
            (None, _) => false,
        };
        Ok(IncrementalReport {
            cursor_field: self.cursor_field.clone(),
            from: self.window.start_value.clone(),
            to: to.value,
            rows: state.rows,
            rejected_cursor: state.rejected_cursor,
            committed,
            held,
        })
    }
}

fn fold(acked: &mut Option<Cursor>, highest: Option<Cursor>) {
    if let Some(h) = highest
        && acked.as_ref().is_none_or(|a| h > *a)
    {
        *acked = Some(h);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cursor(v: Value) -> Cursor {
        Cursor::parse(&v, None).unwrap()
    }

    #[test]
    fn numbers_compare_exactly_and_not_as_text() {
        assert!(cursor(json!(10)) > cursor(json!(9)));
        assert!(cursor(json!(9)) < cursor(json!(10.5)));
        let big: Value = serde_json::from_str("123456789012345678901234567891").unwrap();
        let bigger: Value = serde_json::from_str("123456789012345678901234567892").unwrap();
        assert!(cursor(bigger) > cursor(big));
        let a: Value = serde_json::from_str("0.30000000000000004").unwrap();
        assert!(cursor(a) > cursor(json!(0.3)));
        assert!(cursor(json!(1e3)) == cursor(json!(1000)));
    }

    #[test]
    fn timestamps_compare_as_instants_across_offsets() {
        let utc = cursor(json!("2024-03-01T10:00:00Z"));
        let berlin = cursor(json!("2024-03-01T11:30:00+01:00"));
        assert!(berlin > utc, "11:30+01 is 10:30Z");
        assert!(cursor(json!("2024-03-01 10:00:00.000001Z")) > utc);
        assert_eq!(utc.kind(), CursorKind::Timestamp);
        assert_eq!(
            cursor(json!("2024-03-01T10:00:00.5")).kind(),
            CursorKind::LocalTimestamp
        );
        assert_eq!(cursor(json!("2024-03-01")).kind(), CursorKind::Date);
    }

    #[test]
    fn values_of_another_type_are_refused_with_the_reason() {
        let err = Cursor::parse(&json!("2024-03-01"), Some(CursorKind::Timestamp)).unwrap_err();
        assert!(
            err.contains("is a date, but this sync's cursor is a timestamp"),
            "{err}"
        );
        assert!(Cursor::parse(&json!(null), Some(CursorKind::Number)).is_err());
        assert!(Cursor::parse(&json!("soon"), None).is_err());
        assert!(Cursor::parse(&json!({"a": 1}), None).is_err());
        assert_eq!(
            Cursor::parse(&json!("42"), Some(CursorKind::Number))
                .unwrap()
                .kind(),
            CursorKind::Number
        );
    }

    #[test]
    fn a_lag_moves_the_start_back_and_keeps_the_format() {
        let lag = |v: Value, kind| Lag::parse(&v, kind).unwrap();
        let t = cursor(json!("2024-03-01 00:02:00.250+02:00"));
        assert_eq!(
            t.minus(&lag(json!("5m"), CursorKind::Timestamp))
                .unwrap()
                .value(),
            &json!("2024-02-29 23:57:00.250+02:00")
        );
        let z = cursor(json!("2024-03-01T00:00:00Z"));
        assert_eq!(
            z.minus(&lag(json!(3600), CursorKind::Timestamp))
                .unwrap()
                .value(),
            &json!("2024-02-29T23:00:00Z")
        );
        let d = cursor(json!("2024-03-01"));
        assert_eq!(
            d.minus(&lag(json!(2), CursorKind::Date)).unwrap().value(),
            &json!("2024-02-28")
        );
        assert!(Lag::parse(&json!("36h"), CursorKind::Date).is_err());
        let n = cursor(json!(100));
        assert_eq!(
            n.minus(&lag(json!(10), CursorKind::Number))
                .unwrap()
                .value(),
            &json!(90)
        );
        let x: Value = serde_json::from_str("1.25").unwrap();
        assert_eq!(
            cursor(x)
                .minus(&lag(json!("0.5"), CursorKind::Number))
                .unwrap()
                .value()
                .to_string(),
            "0.75"
        );
        assert!(Lag::parse(&json!("-5"), CursorKind::Number).is_err());
        assert!(Lag::parse(&json!("5 minutes"), CursorKind::Timestamp).is_err());
    }

    fn config(initial: Value, lag: Option<Value>) -> IncrementalConfig {
        IncrementalConfig {
            cursor_field: "updated_at".into(),
            initial_value: initial,
            lag,
        }
    }

    #[test]
    fn the_window_starts_at_the_initial_value_then_at_the_mark_minus_the_lag() {
        let c = config(json!("2024-01-01T00:00:00Z"), Some(json!("1h")));
        let first = c.window(None).unwrap();
        assert_eq!(first.start_value, json!("2024-01-01T00:00:00Z"));
        let next = c.window(Some(&json!("2024-05-01T12:00:00Z"))).unwrap();
        assert_eq!(next.start_value, json!("2024-05-01T11:00:00Z"));
        assert_eq!(next.last_value, json!("2024-05-01T12:00:00Z"));
        let err = c.window(Some(&json!(12))).unwrap_err();
        assert!(err.message().contains("--full-refresh"), "{err}");
        let bad = config(json!("yesterday"), None).validate().unwrap_err();
        assert!(
            bad.to_string().contains("incremental.initialValue"),
            "{bad}"
        );
        let bad_lag = config(json!(5), Some(json!("5m"))).validate().unwrap_err();
        assert!(bad_lag.to_string().contains("incremental.lag"), "{bad_lag}");
    }

    fn batch(records: Vec<Value>, position: u64) -> Batch {
        let budget = sluicegate_core::MemoryBudget::unlimited();
        let lease = budget.try_acquire(1).unwrap();
        Batch::new(
            records
                .into_iter()
                .map(|r| r.as_object().unwrap().clone())
                .collect(),
            lease,
        )
        .with_position(Some(Position::new(json!({"after": position}))))
    }

    #[derive(Default)]
    struct Collect(Mutex<Vec<Rejected>>);
    impl RunObserver for Collect {
        fn rejected(&self, _: &str, r: Rejected) {
            self.0.lock().unwrap().push(r);
        }
    }

    #[test]
    fn the_mark_follows_acknowledged_batches_only_and_commits_at_the_end() {
        let c = config(json!(0), None);
        let store = Arc::new(MemoryWindowStore::default());
        let run = IncrementalRun::new(&c, c.window(None).unwrap(), None)
            .unwrap()
            .with_store(store.clone(), "k", "t");
        let observer = Collect::default();
        let stats = RunStats::default();
        let mut first = batch(vec![json!({"updated_at": 7}), json!({"id": 1})], 1);
        run.check(&mut first, "k", &observer, &stats);
        assert_eq!(first.len(), 1, "the record without a cursor left the batch");
        let rejected = observer.0.lock().unwrap();
        assert_eq!(rejected[0].stage, Stage::Read);
        assert!(rejected[0].reason.contains("'updated_at'"));
        drop(rejected);
        let mut second = batch(vec![json!({"updated_at": 12}), json!({"updated_at": 3})], 2);
        run.check(&mut second, "k", &observer, &stats);
        run.acknowledged(&Position::new(json!({"after": 1})))
            .unwrap();
        assert_eq!(store.load("k", "t").unwrap().progress, Some(json!(7)));
        assert_eq!(store.load("k", "t").unwrap().last_value, None);
        run.acknowledged(&Position::new(json!({"after": 2})))
            .unwrap();
        assert_eq!(store.load("k", "t").unwrap().progress, Some(json!(12)));
        let report = run.finish().unwrap();
        assert_eq!(report.to, json!(12));
        assert_eq!((report.rows, report.rejected_cursor), (3, 1));
        assert!(report.committed);
        assert_eq!(
            store.load("k", "t").unwrap(),
            SavedWindow::new(Some(json!(12)), None)
        );
    }

    #[test]
    fn records_rejected_later_hold_the_mark_and_keep_the_progress() {
        let c = config(json!(5), None);
        let store = Arc::new(MemoryWindowStore::default());
        let run = IncrementalRun::new(&c, c.window(None).unwrap(), None)
            .unwrap()
            .with_store(store.clone(), "k", "t");
        let mut b = batch(vec![json!({"updated_at": 9})], 1);
        run.check(&mut b, "k", &Collect::default(), &RunStats::default());
        run.note_rejected(1);
        let report = run.finish().unwrap();
        assert_eq!(report.to, json!(5));
        assert!(!report.committed);
        assert!(
            report
                .held
                .unwrap()
                .contains("next run reads this window again")
        );
        assert_eq!(
            store.load("k", "t").unwrap(),
            SavedWindow::new(None, Some(json!(9)))
        );
    }

    #[test]
    fn progress_of_an_interrupted_run_counts_and_an_older_mark_never_wins() {
        let c = config(json!("2024-01-01"), None);
        let window = c.window(Some(&json!("2024-02-01"))).unwrap();
        let run = IncrementalRun::new(&c, window, Some(&json!("2024-02-10"))).unwrap();
        let mut b = batch(vec![json!({"updated_at": "2024-02-05"})], 1);
        run.check(&mut b, "k", &Collect::default(), &RunStats::default());
        assert_eq!(run.finish().unwrap().to, json!("2024-02-10"));
        let run =
            IncrementalRun::new(&c, c.window(Some(&json!("2024-02-01"))).unwrap(), None).unwrap();
        let mut b = batch(vec![json!({"updated_at": "2024-01-20"})], 1);
        run.check(&mut b, "k", &Collect::default(), &RunStats::default());
        let report = run.finish().unwrap();
        assert_eq!(report.to, json!("2024-02-01"), "never below the last mark");
        assert!(!report.committed, "no store: nothing saved");
    }

    #[test]
    fn a_dotted_cursor_field_reads_a_nested_value() {
        let c = IncrementalConfig {
            cursor_field: "meta.version".into(),
            initial_value: json!(0),
            lag: None,
        };
        let run = IncrementalRun::new(&c, c.window(None).unwrap(), None).unwrap();
        let mut b = batch(vec![json!({"meta": {"version": 4}})], 1);
        run.check(&mut b, "k", &Collect::default(), &RunStats::default());
        assert_eq!(b.len(), 1);
        assert_eq!(run.finish().unwrap().to, json!(4));
    }
}
