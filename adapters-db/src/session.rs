//! What every provider implements: a connection that streams a query's rows.

use async_trait::async_trait;
use serde_json::Value;
use sluicegate_core::Result;

use crate::batcher::Batcher;

/// An open connection of one provider.
#[async_trait]
pub(crate) trait Session: Send {
    /// `name` quoted as an identifier of this SQL dialect.
    fn quote_ident(&self, name: &str) -> String;

    /// The SQL that stands for `value`, the `index`-th (from 1) of the
    /// parameters [`Session::run`] gets, in a `WHERE` clause: a placeholder
    /// bound by `run`, or a safe literal.
    fn param(&self, index: usize, value: &Value) -> Result<String>;

    /// Runs `sql` and pushes its rows into `out`, fetching at most `fetch` rows
    /// from the server ahead of the consumer; `params` are bound to the
    /// placeholders from [`Session::param`]. Returns the number of rows.
    async fn run(
        &mut self,
        sql: &str,
        params: &[Value],
        fetch: usize,
        out: &mut Batcher,
    ) -> Result<u64>;
}

/// `name` between `quote`s, doubling quotes inside it.
pub(crate) fn quote_with(name: &str, quote: char) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push(quote);
    for c in name.chars() {
        if c == quote {
            out.push(quote);
        }
        out.push(c);
    }
    out.push(quote);
    out
}

/// Column names must be unique: records are maps, and a second `id` would
/// silently replace the first.
pub(crate) fn check_unique_columns<'a>(
    names: impl IntoIterator<Item = &'a str>,
) -> std::result::Result<(), String> {
    let mut seen = std::collections::HashSet::new();
    for name in names {
        if !seen.insert(name) {
            return Err(format!(
                "the query returns two columns named '{name}'; give one an alias (AS ...)"
            ));
        }
    }
    Ok(())
}
