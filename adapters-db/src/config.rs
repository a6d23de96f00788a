//! The database source's configuration (`type: postgres | mysql | sqlite`).
//!
//! ```yaml
//! source:
//!   type: postgres
//!   connectionString: "postgres://reader:{{ env.PG_PASSWORD }}@127.0.0.1:5432/shop"
//!   table: public.orders      # or `query: SELECT ...`
//!   orderBy: id               # keyset paging: resumable, one streamed query
//!   fetchSize: 1000
//! ```
//!
//! Three ways to read, chosen by the keys present:
//! - **keyset** (`orderBy`): one query ordered by a unique, non-null column,
//!   streamed; every batch's checkpoint is its last key, and a resumed run reads
//!   `WHERE key > last`.
//! - **templated pages** (`pagination`, as `cute` does): the `query` template is
//!   rendered per page with the offset in `skipKey` and the page size in
//!   `limitKey`; reading stops at the first empty page. Resumes at the offset.
//! - **one query** (neither): streamed once; a killed run starts over.
//!
//! In an incremental sync (the entry's `incremental` section) the read is
//! limited to the window: `WHERE <cursorField> >= $1`, the start bound as a
//! parameter, ordered by the cursor and then by `orderBy`, and resumed after
//! the last `(cursor, key)` pair (`WHERE (cursor, key) > ($2, $3)`), so an
//! index on `(cursor, key)` serves it. Rows whose cursor is SQL NULL are in
//! no window: a read from the start reads them first, without a position, and
//! the run rejects each (a dead letter naming it) until it gets a cursor.

use serde::Deserialize;
use serde_json::{Map, Value};
use sluicegate_core::{BuildContext, Result, field_error};
use sluicegate_templates::render_template;

use crate::connstr::ConnectionParams;
use crate::provider::Provider;

/// Configuration of a database source; see the module documentation.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DbSourceConfig {
    /// The adapter type, set by the configuration file (`postgres`, ...).
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    /// Where and how to connect: a URL (`postgres://user:pw@host:5432/db`,
    /// `mysql://...`, a SQLite file path) or an ADO.NET-style string as `cute`
    /// uses (`Host=...;Username=...;Password=...;Database=...`). A template, so
    /// secrets come from the environment: `{{ env.DB_PASSWORD }}`.
    pub connection_string: String,
    /// A table (optionally `schema.table`) to read whole; or use `query`.
    #[serde(default)]
    pub table: Option<String>,
    /// A SQL query (a template) to read; or use `table`.
    #[serde(default)]
    pub query: Option<String>,
    /// A unique, non-null column to page by (keyset paging, resumable).
    #[serde(default)]
    pub order_by: Option<String>,
    /// `cute`'s paging variables for a templated `query`.
    #[serde(default)]
    pub pagination: Option<QueryPagination>,
    /// Columns holding JSON text to read as JSON values (for MariaDB's `JSON`,
    /// which is `LONGTEXT`, or JSON kept in text columns).
    #[serde(default)]
    pub json_columns: Vec<String>,
    /// Rows per fetch from the server and per batch (default 1000).
    #[serde(default = "default_fetch_size")]
    pub fetch_size: usize,
}

/// `cute`'s paging of a templated query: the query is rendered for every page with
/// `{{ <skipKey> }}` (the offset, growing by `limitMax`) and `{{ <limitKey> }}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QueryPagination {
    /// The template variable holding the offset (default `skip`).
    #[serde(default = "default_skip_key")]
    pub skip_key: String,
    /// The template variable holding the page size (default `limit`).
    #[serde(default = "default_limit_key")]
    pub limit_key: String,
    /// Rows per page.
    #[serde(default)]
    pub limit_max: Option<u64>,
    /// Rows per page when `limitMax` is not set (`cute` accepts both).
    #[serde(default)]
    pub page_size: Option<u64>,
}

impl QueryPagination {
    /// The page size in effect.
    pub fn limit(&self) -> u64 {
        self.limit_max.or(self.page_size).unwrap_or(1000)
    }
}

fn default_fetch_size() -> usize {
    1000
}

fn default_skip_key() -> String {
    "skip".into()
}

fn default_limit_key() -> String {
    "limit".into()
}

/// The largest accepted `fetchSize`.
pub const MAX_FETCH_SIZE: usize = 100_000;

impl DbSourceConfig {
    /// Checks the configuration without connecting.
    pub fn validate(&self, provider: Provider, ctx: &BuildContext) -> Result<()> {
        match (&self.table, &self.query) {
            (Some(_), Some(_)) => {
                return Err(field_error("query", "set either table or query, not both"));
            }
            (None, None) => {
                return Err(field_error(
                    "table",
                    "set table (a table to read) or query (a SQL query)",
                ));
            }
            (Some(t), None) if split_table(t).is_none() => {
                return Err(field_error(
                    "table",
                    format!("'{t}' is not a table name; write table or schema.table"),
                ));
            }
            _ => {}
        }
        if let Some(column) = &self.order_by {
            if column.trim().is_empty() {
                return Err(field_error("orderBy", "must name a column"));
            }
            if self.pagination.is_some() {
                return Err(field_error(
                    "pagination",
                    "orderBy (keyset paging) and pagination (templated pages) exclude each other; keep one",
                ));
            }
        }
        if let Some(p) = &self.pagination {
            if self.query.is_none() {
                return Err(field_error(
                    "pagination",
                    "needs a query that uses the paging variables; with table, use orderBy",
                ));
            }
            if p.limit() == 0 {
                return Err(field_error("pagination.limitMax", "must be at least 1"));
            }
            if p.skip_key == p.limit_key {
                return Err(field_error(
                    "pagination.limitKey",
                    "must differ from skipKey",
                ));
            }
        }
        if let Some(window) = &ctx.incremental {
            if self.pagination.is_some() {
                return Err(field_error(
                    "pagination",
                    format!(
                        "an incremental sync reads its window with a bound parameter \
                         ({} >= the window's start), ordered by orderBy; templated pages cannot \
                         do that: use table or query with orderBy",
                        window.cursor_field
                    ),
                ));
            }
            if self.order_by.as_deref() == Some(window.cursor_field.as_str()) {
                return Err(field_error(
                    "orderBy",
                    "must be the unique key, not incremental.cursorField: the read is ordered \
                     by the cursor, then by orderBy",
                ));
            }
        }
        if self.fetch_size == 0 || self.fetch_size > MAX_FETCH_SIZE {
            return Err(field_error(
                "fetchSize",
                format!("must be between 1 and {MAX_FETCH_SIZE}"),
            ));
        }
        let rendered = self.render_connection(ctx)?;
        ConnectionParams::parse(provider, &rendered, &ctx.base_dir)
            .map_err(|e| field_error("connectionString", e.message()))?;
        if let Some(q) = &self.query {
            // Renders once with page variables so template errors surface now.
            self.render_query(q, ctx, 0)
                .map_err(|e| field_error("query", e.message()))?;
        }
        Ok(())
    }

    /// The connection string with its templates rendered. Never print it.
    pub(crate) fn render_connection(&self, ctx: &BuildContext) -> Result<String> {
        render_template(
            "connectionString",
            &self.connection_string,
            &ctx.template_scope,
        )
        .map_err(|e| field_error("connectionString", e.message()))
    }

    /// Renders `query` for the page starting at `skip` (the paging variables are
    /// in scope only with `pagination`).
    pub(crate) fn render_query(
        &self,
        query: &str,
        ctx: &BuildContext,
        skip: u64,
    ) -> Result<String> {
        let mut scope = match &ctx.template_scope {
            Value::Object(m) => m.clone(),
            _ => Map::new(),
        };
        if let Some(p) = &self.pagination {
            scope.insert(p.skip_key.clone(), Value::from(skip));
            scope.insert(p.limit_key.clone(), Value::from(p.limit()));
        }
        render_template("query", query, &Value::Object(scope))
    }
}

/// Splits `schema.table` (or `table`) into its parts; `None` for empty parts.
pub(crate) fn split_table(name: &str) -> Option<Vec<&str>> {
    let parts: Vec<&str> = name.split('.').map(str::trim).collect();
    (parts.len() <= 3 && parts.iter().all(|p| !p.is_empty())).then_some(parts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use sluicegate_core::parse_section;

    fn ctx() -> BuildContext {
        let mut ctx = BuildContext::new("k", true);
        ctx.template_scope = json!({"env": {"PW": "s3cret"}, "config": {}});
        ctx
    }

    fn check(raw: Value) -> Result<()> {
        let config: DbSourceConfig = parse_section(raw, "s")?;
        config
            .validate(Provider::Postgres, &ctx())
            .map_err(|e| sluicegate_core::locate(e, "s"))
    }

    #[test]
    fn a_keyset_table_source_is_valid() {
        check(json!({
            "type": "postgres",
            "connectionString": "postgres://u:{{ env.PW }}@127.0.0.1/db",
            "table": "public.orders",
            "orderBy": "id",
        }))
        .unwrap();
    }

    #[test]
    fn conflicting_and_missing_keys_name_the_field() {
        let base = || json!({"connectionString": "postgres://u@127.0.0.1/db", "table": "t"});
        let mut both = base();
        both["query"] = json!("SELECT 1");
        assert_eq!(
            check(both).unwrap_err().message(),
            "s.query: set either table or query, not both"
        );
        let mut paged_table = base();
        paged_table["pagination"] = json!({"limitMax": 10});
        assert!(
            check(paged_table)
                .unwrap_err()
                .message()
                .starts_with("s.pagination: needs a query")
        );
        let mut unknown = base();
        unknown["orderby"] = json!("id");
        assert!(
            check(unknown)
                .unwrap_err()
                .message()
                .contains("unknown field `orderby`")
        );
        let mut bad_fetch = base();
        bad_fetch["fetchSize"] = json!(0);
        assert!(
            check(bad_fetch)
                .unwrap_err()
                .message()
                .starts_with("s.fetchSize")
        );
    }

    #[test]
    fn template_errors_do_not_show_the_connection_string() {
        let err = check(json!({
            "connectionString": "postgres://u:{{ env.MISSING }}@h/db",
            "table": "t",
        }))
        .unwrap_err();
        assert!(
            err.message()
                .starts_with("s.connectionString: cannot render"),
            "{err}"
        );
        assert!(!err.to_string().contains("postgres://"), "{err}");
    }

    #[test]
    fn paged_queries_render_their_variables() {
        let config: DbSourceConfig = parse_section(
            json!({
                "connectionString": "postgres://u@h/db",
                "query": "SELECT * FROM t ORDER BY id OFFSET {{ offset }} LIMIT {{ size }}",
                "pagination": {"skipKey": "offset", "limitKey": "size", "limitMax": 50},
            }),
            "s",
        )
        .unwrap();
        let q = config.query.clone().unwrap();
        assert_eq!(
            config.render_query(&q, &ctx(), 100).unwrap(),
            "SELECT * FROM t ORDER BY id OFFSET 100 LIMIT 50"
        );
    }
}
