//! Errors of database sources: one line that names the provider and the server
//! (never the password), says what went wrong and what to check.

use sluicegate_core::{Error, ErrorKind};

use crate::connstr::ConnectionParams;
use crate::provider::Provider;

/// Where an error happened, for the message and its context.
#[derive(Clone)]
pub(crate) struct Origin {
    pub(crate) provider: Provider,
    pub(crate) params: ConnectionParams,
}

impl Origin {
    /// An error of `kind`: `"<provider> source: <message>"`, the password scrubbed
    /// and the server named in the context.
    pub(crate) fn error(&self, kind: ErrorKind, message: impl AsRef<str>) -> Error {
        let text = format!("{} source: {}", self.provider.type_name(), message.as_ref());
        Error::new(kind, self.params.redact(&text)).with_context("server", self.params.describe())
    }

    /// `err` with the `"<provider> source: "` prefix if it lacks one (errors
    /// raised outside the provider code, like a NULL key).
    pub(crate) fn label(&self, err: Error) -> Error {
        let prefix = format!("{} source: ", self.provider.type_name());
        if err.kind() == ErrorKind::Cancelled || err.message().starts_with(&prefix) {
            return err;
        }
        let mut labelled = Error::new(err.kind(), format!("{prefix}{}", err.message()))
            .retryable(err.is_retryable());
        for (k, v) in err.context() {
            labelled = labelled.with_context(k, v);
        }
        labelled.with_context("server", self.params.describe())
    }

    /// A connection failure (retrying later may help).
    pub(crate) fn unreachable(&self, detail: impl std::fmt::Display) -> Error {
        self.error(
            ErrorKind::Network,
            format!(
                "cannot connect to {}: {detail}; check the host and port in connectionString \
                 and that the server is running",
                self.params.describe()
            ),
        )
        .retryable(true)
    }

    /// Rejected credentials.
    pub(crate) fn rejected_login(&self, detail: impl std::fmt::Display) -> Error {
        self.error(
            ErrorKind::Auth,
            format!(
                "the server rejected the login: {detail}; check the user and password in connectionString"
            ),
        )
    }

    /// A query the server refused, with a hint on what to fix.
    pub(crate) fn query_failed(&self, detail: impl std::fmt::Display, hint: &str) -> Error {
        self.error(
            ErrorKind::Query,
            format!("the query failed: {detail}; {hint}"),
        )
    }

    /// A value the source cannot convert, in the row `at` names (see
    /// [`Batcher::locate`](crate::batcher::Batcher::locate)).
    pub(crate) fn undecodable(
        &self,
        column: &str,
        at: &str,
        detail: impl std::fmt::Display,
    ) -> Error {
        self.error(
            ErrorKind::Decode,
            format!("column '{column}' of {at}: {detail}"),
        )
    }
}

/// A hint for a query error, by what the server said.
pub(crate) fn query_hint(message: &str) -> &'static str {
    let m = message.to_ascii_lowercase();
    if m.contains("syntax") {
        "fix the SQL in query"
    } else if m.contains("column") {
        "check the column names in query and orderBy"
    } else if m.contains("relation")
        || m.contains("table")
        || m.contains("no such")
        || m.contains("doesn't exist")
    {
        "check the table name (table, or the tables in query) and the schema"
    } else if m.contains("permission") || m.contains("denied") {
        "grant SELECT on the tables to the user in connectionString"
    } else {
        "check the query, table and orderBy settings"
    }
}
