//! The `json_files` sink: a simple keyed store, one pretty-printed JSON file per
//! record at `<dir>/<table>/<key>.json`. Writing a record whose file already
//! holds the same value changes nothing (it is reported unchanged), so re-runs
//! and resumed runs end exact.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::Value;
use sluicegate_core::{
    Batch, BatchAck, BuildContext, Error, ErrorKind, Factory, Record, Rejected, Result, Sink,
    SinkCapabilities, SinkWriter, Stage, StreamTarget, WriterExtension, WriterSummary, field_error,
};

/// Configuration of a `json_files` sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JsonFilesSinkConfig {
    /// The store's directory, relative to the configuration file.
    pub dir: PathBuf,
}

/// Builds `json_files` sinks.
#[derive(Debug, Default, Clone, Copy)]
pub struct JsonFilesSinkFactory;

#[async_trait]
impl Factory for JsonFilesSinkFactory {
    type Config = JsonFilesSinkConfig;
    type Output = dyn Sink;

    fn type_name(&self) -> &'static str {
        "json_files"
    }

    fn validate(&self, config: &JsonFilesSinkConfig, _ctx: &BuildContext) -> Result<()> {
        if config.dir.as_os_str().is_empty() {
            return Err(field_error("dir", "must name a directory"));
        }
        Ok(())
    }

    async fn build(
        &self,
        config: JsonFilesSinkConfig,
        ctx: &BuildContext,
    ) -> Result<Arc<dyn Sink>> {
        Ok(Arc::new(JsonFilesSink {
            dir: ctx.base_dir.join(config.dir),
            dry_run: ctx.dry_run,
        }))
    }
}

/// A directory of JSON files, one per record.
pub struct JsonFilesSink {
    dir: PathBuf,
    dry_run: bool,
}

#[async_trait]
impl Sink for JsonFilesSink {
    async fn open(&self, target: StreamTarget) -> Result<Box<dyn SinkWriter>> {
        let Some(key_field) = target.key_field.clone() else {
            return Err(Error::config(format!(
                "json_files sink: sync '{}' needs keyField (the record field that names each file)",
                target.sync_key
            )));
        };
        Ok(Box::new(JsonFilesWriter {
            dir: self.dir.join(file_safe(&target.table)),
            dry_run: self.dry_run,
            key_field,
            target,
        }))
    }

    fn describe(&self) -> String {
        format!("json_files {}", self.dir.display())
    }

    fn capabilities(&self) -> SinkCapabilities {
        SinkCapabilities::none().with_preferred_batch_rows(500)
    }
}

struct JsonFilesWriter {
    dir: PathBuf,
    dry_run: bool,
    key_field: String,
    target: StreamTarget,
}

/// Keys become file names: anything but letters, digits, `-` and `_` is
/// percent-encoded, so distinct keys never share a file.
fn file_safe(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn key_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[async_trait]
impl SinkWriter for JsonFilesWriter {
    async fn write(&mut self, batch: Batch) -> Result<BatchAck> {
        let mut ack = BatchAck::default();
        // Duplicate keys in one batch: the last record wins.
        let mut latest: BTreeMap<String, &Record> = BTreeMap::new();
        for record in batch.records() {
            match record.get(&self.key_field).and_then(key_text) {
                Some(key) => {
                    if latest.insert(key, record).is_some() {
                        ack.duplicates += 1;
                    }
                }
                None => {
                    ack.failed += 1;
                    self.target.observer.rejected(
                        &self.target.sync_key,
                        Rejected {
                            stage: Stage::Write,
                            key: None,
                            reason: format!("no usable key in field '{}'", self.key_field),
                            record: record.clone(),
                        },
                    );
                }
            }
        }
        if !self.dry_run {
            tokio::fs::create_dir_all(&self.dir)
                .await
                .map_err(|e| io_error(&self.dir, e))?;
        }
        for (key, record) in latest {
            ack.rows += 1;
            let path = self.dir.join(format!("{}.json", file_safe(&key)));
            let value = Value::Object(record.clone());
            match tokio::fs::read(&path).await {
                Ok(bytes)
                    if serde_json::from_slice::<Value>(&bytes).ok().as_ref() == Some(&value) =>
                {
                    ack.unchanged += 1;
                    continue;
                }
                Ok(_) => ack.updated += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => ack.inserted += 1,
                Err(e) => return Err(io_error(&path, e)),
            }
            if !self.dry_run {
                write_atomically(&path, &value).await?;
            }
        }
        Ok(ack)
    }

    async fn finish(self: Box<Self>) -> Result<WriterSummary> {
        let mut total = 0;
        if let Ok(mut dir) = tokio::fs::read_dir(&self.dir).await {
            while let Some(entry) = dir.next_entry().await.map_err(|e| io_error(&self.dir, e))? {
                if entry.path().extension().is_some_and(|e| e == "json") {
                    total += 1;
                }
            }
        }
        Ok(WriterSummary::default()
            .with_total_rows(total)
            .comparing_content())
    }

    fn extension(&mut self) -> Option<&mut dyn WriterExtension> {
        None
    }
}

/// Writes to a temporary file and renames it over the target, so a killed run
/// never leaves half a file.
async fn write_atomically(path: &Path, value: &Value) -> Result<()> {
    let text = serde_json::to_vec_pretty(value)
        .map_err(|e| Error::sink(format!("json_files sink: {e}")))?;
    let tmp = path.with_extension("json.tmp");
    tokio::fs::write(&tmp, text)
        .await
        .map_err(|e| io_error(&tmp, e))?;
    tokio::fs::rename(&tmp, path)
        .await
        .map_err(|e| io_error(path, e))
}

fn io_error(path: &Path, e: std::io::Error) -> Error {
    Error::new(
        ErrorKind::Sink,
        format!("json_files sink: {}: {e}", path.display()),
    )
}

#[cfg(test)]
mod tests {
    use super::file_safe;

    #[test]
    fn keys_map_to_distinct_safe_names() {
        assert_eq!(file_safe("sku-1_a"), "sku-1_a");
        assert_eq!(file_safe("a/b"), "a%2Fb");
        assert_ne!(file_safe("a b"), file_safe("a_b"));
        assert_eq!(file_safe("ü"), "%C3%BC");
    }
}
