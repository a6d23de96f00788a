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
