//! Helpers for adapter configuration: typed parsing with the failing key's path,
//! and secrets that never print.

use std::fmt;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{Error, ErrorKind, Result};

/// Parses a raw configuration section into an adapter's typed config.
///
/// On failure the error is one line naming the full key path, for example
/// `syncs[orders].source.pagination.pageSize: invalid type: string "ten", expected u32`.
pub fn parse_section<T: DeserializeOwned>(raw: Value, path: &str) -> Result<T> {
    serde_path_to_error::deserialize(raw).map_err(|err| {
        let inner = err.path().to_string();
        let at = if inner.is_empty() || inner == "." {
            path.to_owned()
        } else {
            format!("{path}.{inner}")
        };
        Error::config(format!("{at}: {}", err.inner()))
    })
}

/// An error about one field of a configuration section; [`locate`] turns it into
/// a message that names the full path.
pub fn field_error(field: &str, message: impl fmt::Display) -> Error {
    Error::config(message.to_string()).with_context("field", field)
}

/// Prefixes a configuration error with the path of its section (and field, if the
/// error names one), so the message says where the problem is.
pub fn locate(err: Error, path: &str) -> Error {
    let located_already = err
        .message()
        .strip_prefix(path)
        .is_some_and(|rest| rest.starts_with(['.', ':', '[']));
    if err.kind() != ErrorKind::Config || located_already {
        return err;
    }
    let at = match err.context_value("field") {
        Some(field) => format!("{path}.{field}"),
        None => path.to_owned(),
    };
    let mut located = Error::config(format!("{at}: {}", err.message()));
    for (k, v) in err.context() {
        if *k != "field" {
            located = located.with_context(k, v);
        }
    }
    located
}

/// A secret value (token, password). Its `Debug` and `Display` print `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// Reads a secret from a file (surrounding white space, such as the final
    /// newline, is not part of it); a file that cannot be read or is empty is
    /// a configuration error that names it.
    pub fn from_file(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::config(format!("cannot read {}: {e}", path.display())))?;
        let value = text.trim();
        if value.is_empty() {
            return Err(Error::config(format!("{} is empty", path.display())));
        }
        Ok(Self(value.to_owned()))
    }

    /// Reads a secret from an environment variable; a missing or empty variable
    /// is a configuration error that names it.
    pub fn from_env(var: &str) -> Result<Self> {
        match std::env::var(var) {
            Ok(v) if !v.is_empty() => Ok(Self(v)),
            Ok(_) => Err(Error::config(format!(
                "environment variable {var} is empty; set it to the secret"
            ))),
            Err(_) => Err(Error::config(format!(
                "environment variable {var} is not set; export it with the secret"
            ))),
        }
    }

    /// The secret itself. Call only where it is sent, never where it is logged.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    #[allow(dead_code)]
    struct Pagination {
        page_size: u32,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Section {
        pagination: Pagination,
    }

    #[test]
    fn parse_errors_name_the_full_path() {
        let err = parse_section::<Section>(
            json!({"pagination": {"pageSize": "ten"}}),
            "syncs[orders].source",
        )
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(
            err.to_string()
                .starts_with("syncs[orders].source.pagination.pageSize: invalid type"),
            "{err}"
        );
        let err = parse_section::<Section>(
            json!({"pagination": {"pageSize": 1, "pageSzie": 2}}),
            "syncs[orders].source",
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("unknown field `pageSzie`"),
            "{err}"
        );
        assert!(
            err.to_string().contains("syncs[orders].source.pagination"),
            "{err}"
        );
    }

    #[test]
    fn located_field_errors_name_the_path() {
        let err = locate(field_error("auth.tokenEnv", "not set"), "syncs[a].source");
        assert_eq!(err.to_string(), "syncs[a].source.auth.tokenEnv: not set");
    }

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s} {s:?}"), "*** Secret(***)");
        assert_eq!(s.expose(), "hunter2");
    }
}
