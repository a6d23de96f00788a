//! Reading `cute` sync-api entries from the space itself, so an existing `cute`
//! setup runs unchanged: entries of content type `cuteContentSyncApi` with the
//! fields `key`, `yaml` and `sourceType`.

use sluicegate_core::{BuildContext, Error, Result};

use super::client::cma_client;
use super::config::ContentfulSinkConfig;

/// A `cute` sync entry as stored in the space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CuteSyncEntry {
    /// The entry's `key`.
    pub key: String,
    /// Its `yaml` field: the adapter configuration.
    pub yaml: String,
    /// Its `sourceType` (`database` selects a database source; anything else HTTP).
    pub source_type: Option<String>,
}

fn encode(value: &str) -> String {
    sluicegate_http_client::encode_component(value)
}

/// Fetches the sync entry `key` of content type `content_type` (normally
/// `cuteContentSyncApi`) from the space the sink configuration points at.
pub async fn fetch_cute_entry(
    config: &ContentfulSinkConfig,
    ctx: &BuildContext,
    content_type: &str,
    key: &str,
) -> Result<CuteSyncEntry> {
    let resolved = config.resolve(ctx)?;
    let client = cma_client(&resolved, config)?;
    let locales = client.get("locales?limit=1000").await?;
    let default = locales["items"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|l| l["default"] == true)
        .and_then(|l| l["code"].as_str())
        .unwrap_or("en-US")
        .to_owned();
    let found = client
        .get(&format!(
            "entries?content_type={}&fields.key={}&limit=1",
            encode(content_type),
            encode(key)
        ))
        .await?;
    let Some(entry) = found["items"].as_array().and_then(|items| items.first()) else {
        return Err(Error::config(format!(
            "No API sync entry '{content_type}' with key '{key}' was found."
        )));
    };
    let field = |name: &str| entry["fields"][name][&default].as_str().map(str::to_owned);
    let yaml = field("yaml").ok_or_else(|| {
        Error::config(format!(
            "the '{content_type}' entry with key '{key}' has no yaml"
        ))
    })?;
    Ok(CuteSyncEntry {
        key: key.to_owned(),
        yaml,
        source_type: field("sourceType"),
    })
}
