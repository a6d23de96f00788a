//! The database products this crate reads from.

/// The database products this crate reads from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// PostgreSQL (and wire-compatible servers).
    Postgres,
    /// MySQL and MariaDB.
    Mysql,
    /// SQLite database files.
    Sqlite,
}

impl Provider {
    /// The configuration type name (`postgres`, `mysql`, `sqlite`).
    pub fn type_name(self) -> &'static str {
        match self {
            Provider::Postgres => "postgres",
            Provider::Mysql => "mysql",
            Provider::Sqlite => "sqlite",
        }
    }
}

impl Provider {
    /// An incremental cursor value as this product compares it. MySQL and
    /// MariaDB read timestamps in UTC (the session's `time_zone`) and ignore
    /// an offset in a literal, so a timestamp with an offset other than UTC
    /// is moved to UTC first; everything else is passed as it is.
    pub(crate) fn cursor_param(self, value: &serde_json::Value) -> serde_json::Value {
        if self != Provider::Mysql {
            return value.clone();
        }
        let Some(text) = value.as_str() else {
            return value.clone();
        };
        match chrono::DateTime::parse_from_rfc3339(text) {
            Ok(t) if t.offset().local_minus_utc() != 0 => {
                serde_json::Value::String(t.naive_utc().format("%Y-%m-%dT%H:%M:%S%.fZ").to_string())
            }
            _ => value.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn mysql_cursors_with_an_offset_move_to_utc() {
        assert_eq!(
            Provider::Mysql.cursor_param(&json!("2024-03-01T01:30:00.5+02:00")),
            json!("2024-02-29T23:30:00.500Z")
        );
        assert_eq!(
            Provider::Mysql.cursor_param(&json!("2024-03-01T01:30:00Z")),
            json!("2024-03-01T01:30:00Z")
        );
        assert_eq!(
            Provider::Postgres.cursor_param(&json!("2024-03-01T01:30:00+02:00")),
            json!("2024-03-01T01:30:00+02:00")
        );
        assert_eq!(Provider::Mysql.cursor_param(&json!(7)), json!(7));
    }
}
