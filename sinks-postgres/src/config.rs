//! Configuration of the `postgres` sink.
//!
//! ```yaml
//! sinks:
//!   warehouse:
//!     type: postgres
//!     connectionString: "postgres://loader:{{ env.PG_PASSWORD }}@127.0.0.1:5432/shop"
//!     schema: public          # where tables are created (default public)
//! ```

use serde::Deserialize;
use sluicegate_core::{BuildContext, Result, field_error};
use sluicegate_templates::render_template;

/// The `postgres` sink section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PostgresSinkConfig {
    /// The adapter type, set by the configuration file (`postgres`).
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    /// Where and how to connect: a URL (`postgres://user:pw@host:5432/db`) or
    /// PostgreSQL's `key=value` form (`host=… user=… dbname=…`). A template, so
    /// the password comes from the environment: `{{ env.PG_PASSWORD }}`. Never
    /// printed.
    pub connection_string: String,
    /// The schema tables are created in and written to (default `public`).
    #[serde(default = "default_schema")]
    pub schema: String,
}

fn default_schema() -> String {
    "public".to_owned()
}

impl PostgresSinkConfig {
    /// A configuration for `connection_string` (for building the sink in code).
    pub fn new(connection_string: impl Into<String>) -> Self {
        Self {
            kind: None,
            connection_string: connection_string.into(),
            schema: default_schema(),
        }
    }

    /// Checks the section without connecting.
    pub fn validate(&self, ctx: &BuildContext) -> Result<()> {
        if self.schema.trim().is_empty() {
            return Err(field_error("schema", "must name a schema"));
        }
        self.pg_config(ctx).map(drop)
    }

    /// The connection settings, with the template rendered. The error never
    /// shows the connection string.
    pub(crate) fn pg_config(&self, ctx: &BuildContext) -> Result<tokio_postgres::Config> {
        let rendered = render_template(
            "connectionString",
            &self.connection_string,
            &ctx.template_scope,
        )
        .map_err(|e| field_error("connectionString", e.message()))?;
        rendered.parse::<tokio_postgres::Config>().map_err(|e| {
            field_error(
                "connectionString",
                format!("is not a PostgreSQL connection string ({e})"),
            )
        })
    }
}
