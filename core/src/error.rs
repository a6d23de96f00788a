//! The one public error type of Sluicegate.
//!
//! Every adapter converts its private errors into [`Error`], which carries a
//! [`ErrorKind`], whether retrying could help, key-value context (sync key, page,
//! record key, ...) and the underlying cause. Its `Display` is a single line:
//! `message (key=value, ...): cause`.

use std::fmt;

/// What went wrong, coarsely: used by callers to pick an exit code or a hint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The configuration is invalid (unknown key, missing field, bad template, ...).
    Config,
    /// A network-level failure (connection refused, reset, timeout).
    Network,
    /// The remote side answered with an error status.
    Http,
    /// Credentials were missing or rejected.
    Auth,
    /// A response, page or row could not be decoded.
    Decode,
    /// A database refused a query (syntax error, missing table or column,
    /// missing privilege).
    Query,
    /// The sink rejected or failed to write data.
    Sink,
    /// The memory budget cannot hold what the run needs (classic mode), or a
    /// sink would need more working memory than the process's hard limit (a
    /// container's) allows.
    MemoryLimit,
    /// Reading or writing checkpoints failed.
    Checkpoint,
    /// A local file-system operation failed.
    Io,
    /// A source or sink broke one of the contracts of this crate.
    Contract,
    /// The run was cancelled.
    Cancelled,
    /// More records were rejected than the run's error limit allows.
    TooManyRejected,
    /// Deletions after a complete read would remove more of the target than
    /// the sync allows (nothing was removed).
    MassDeletion,
}

impl ErrorKind {
    /// A short lowercase name, used in messages and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Config => "config",
            ErrorKind::Network => "network",
            ErrorKind::Http => "http",
            ErrorKind::Auth => "auth",
            ErrorKind::Decode => "decode",
            ErrorKind::Query => "query",
            ErrorKind::Sink => "sink",
            ErrorKind::MemoryLimit => "memory-limit",
            ErrorKind::Checkpoint => "checkpoint",
            ErrorKind::Io => "io",
            ErrorKind::Contract => "contract",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::TooManyRejected => "too-many-rejected",
            ErrorKind::MassDeletion => "mass-deletion",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Sluicegate's error: a kind, a message, retryability, context and a cause.
///
/// ```
/// use sluicegate_core::{Error, ErrorKind};
/// let err = Error::new(ErrorKind::Http, "unexpected status 404")
///     .with_context("sync", "products")
///     .with_context("page", 3);
/// assert_eq!(err.to_string(), "unexpected status 404 (sync=products, page=3)");
/// assert_eq!(err.context_value("page"), Some("3"));
/// ```
///
/// Every adapter converts its private errors into [`Error`], which carries a
/// [`ErrorKind`], whether retrying could help, key-value context (sync key, page,
/// record key, ...) and the underlying cause. Its `Display` is a single line:
/// `message (key=value, ...): cause`.
pub struct Error {
    kind: ErrorKind,
    message: String,
    retryable: bool,
    context: Vec<(&'static str, String)>,
    source: Option<BoxError>,
}

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A new, non-retryable error.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            retryable: false,
            context: Vec::new(),
            source: None,
        }
    }

    /// Shorthand for a [`ErrorKind::Config`] error.
    pub fn config(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Config, message)
    }

    /// Shorthand for a [`ErrorKind::Sink`] error.
    pub fn sink(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Sink, message)
    }

    /// Shorthand for a [`ErrorKind::Decode`] error.
    pub fn decode(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Decode, message)
    }

    /// Marks whether retrying the operation could succeed.
    #[must_use]
    pub fn retryable(mut self, retryable: bool) -> Self {
        self.retryable = retryable;
        self
    }

    /// Adds a key-value pair of context. A key given twice keeps its first value,
    /// so the innermost (most precise) context wins.
    #[must_use]
    pub fn with_context(mut self, key: &'static str, value: impl fmt::Display) -> Self {
        if !self.context.iter().any(|(k, _)| *k == key) {
            self.context.push((key, value.to_string()));
        }
        self
    }

    /// Attaches the underlying cause.
    #[must_use]
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message, without context or cause.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether retrying could succeed.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    /// All context pairs, in the order they were added.
    pub fn context(&self) -> &[(&'static str, String)] {
        &self.context
    }

    /// The value of one context key.
    pub fn context_value(&self, key: &str) -> Option<&str> {
        self.context
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Writes text with its line breaks (and the indentation after them) folded
/// into single spaces, so an error is always one line even when a cause's own
/// message spans several.
fn write_one_line(f: &mut fmt::Formatter<'_>, text: &str) -> fmt::Result {
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    if let Some(first) = lines.next() {
        f.write_str(first)?;
    }
    for line in lines {
        f.write_str(" ")?;
        f.write_str(line)?;
    }
    Ok(())
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_one_line(f, &self.message)?;
        if !self.context.is_empty() {
            f.write_str(" (")?;
            for (i, (k, v)) in self.context.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "{k}={v}")?;
            }
            f.write_str(")")?;
        }
        if let Some(source) = &self.source {
            f.write_str(": ")?;
            write_one_line(f, &source.to_string())?;
            let mut next = source.source();
            while let Some(cause) = next {
                f.write_str(": ")?;
                write_one_line(f, &cause.to_string())?;
                next = cause.source();
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.kind)
            .field("message", &self.message)
            .field("retryable", &self.retryable)
            .field("context", &self.context)
            .field("source", &self.source)
            .finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        // The cause is already part of Display; exposing it here would make
        // reporters that walk the chain print it twice.
        None
    }
}

/// Adds context to the error of a `Result` without unwrapping it.
///
/// # Contract
/// - `Ok` passes through untouched; an `Err` keeps its kind and message and
///   gains `key=value` in its context, shown after the message in the order
///   added; a key already present keeps its first (innermost) value.
pub trait ResultExt<T> {
    /// Adds a key-value pair of context to the error, if any.
    fn context(self, key: &'static str, value: impl fmt::Display) -> Result<T>;
}

impl<T> ResultExt<T> for Result<T> {
    fn context(self, key: &'static str, value: impl fmt::Display) -> Result<T> {
        self.map_err(|e| e.with_context(key, value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_one_line_with_context_and_cause_chain() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "peer reset");
        let err = Error::new(ErrorKind::Network, "request failed")
            .with_context("sync", "orders")
            .with_context("page", 7)
            .with_source(io)
            .retryable(true);
        assert_eq!(
            err.to_string(),
            "request failed (sync=orders, page=7): peer reset"
        );
        assert!(err.is_retryable());
        assert_eq!(err.kind(), ErrorKind::Network);
        assert!(!err.to_string().contains('\n'));
    }

    #[test]
    fn multi_line_causes_are_folded_into_one_line() {
        let cause = std::io::Error::other("Parser Error: syntax error\n\nLINE 1: SELECT\n    ^");
        let err = Error::sink("cannot run").with_source(cause);
        assert_eq!(
            err.to_string(),
            "cannot run: Parser Error: syntax error LINE 1: SELECT ^"
        );
    }

    #[test]
    fn innermost_context_wins() {
        let err: Result<()> = Err(Error::config("bad").with_context("page", 2));
        let err = err.context("page", 9).context("sync", "k").unwrap_err();
        assert_eq!(err.context_value("page"), Some("2"));
        assert_eq!(err.context_value("sync"), Some("k"));
    }
}
