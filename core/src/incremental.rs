//! Incremental reads: the window of cursor values a sync asks its source for.
//!
//! A sync entry with `incremental` reads only the records whose cursor (a field
//! such as `updated_at`) is at or after the window's start. The runner works
//! the window out from the last complete run and hands it to the source in
//! [`BuildContext::incremental`](crate::BuildContext::incremental) and to
//! templates as `incremental.*`. A source that can filter by itself (a
//! database table: `WHERE cursor >= $1`) uses it directly; a source that
//! cannot (an HTTP API) sends it in a request through its templates. Either
//! way the runner checks every record's cursor and keeps the high-water mark.

use serde_json::{Value, json};

/// The cursor window of one incremental read.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct IncrementalWindow {
    /// The field holding each record's cursor (for a database source, the
    /// column).
    pub cursor_field: String,
    /// Read the records whose cursor is at least this: the last complete run's
    /// high-water mark minus the lag, or the configured initial value.
    pub start_value: Value,
    /// The high-water mark of the last complete run (the initial value when
    /// there was none).
    pub last_value: Value,
}

impl IncrementalWindow {
    /// A window over `cursor_field` from `start_value`, after a last complete
    /// run that reached `last_value`.
    pub fn new(cursor_field: impl Into<String>, start_value: Value, last_value: Value) -> Self {
        Self {
            cursor_field: cursor_field.into(),
            start_value,
            last_value,
        }
    }

    /// What templates see as `incremental`: `cursor_field`, `start_value` and
    /// `last_value`.
    pub fn template_value(&self) -> Value {
        json!({
            "cursor_field": self.cursor_field,
            "start_value": self.start_value,
            "last_value": self.last_value,
        })
    }
}
