//! The `jsonl` source: JSON Lines files (one object per line), a file or every
//! `*.jsonl` / `*.ndjson` file of a directory in name order, read a page of
//! lines at a time through core's "page after token" helper.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};
use sluicegate_core::{
    BatchStream, BuildContext, Error, ErrorKind, Factory, Page, PageContext, PageSource, Position,
    ReadRequest, Record, Result, Source, field_error, paginate,
};
use tokio::io::{AsyncBufReadExt, AsyncSeekExt, BufReader};

/// Configuration of a `jsonl` source.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JsonlSourceConfig {
    /// A file, or a directory whose `*.jsonl` and `*.ndjson` files are read in
    /// name order; relative to the configuration file.
    pub path: PathBuf,
    /// Lines per page (and batch); default 1000.
    #[serde(default = "default_lines_per_page")]
    pub lines_per_page: usize,
}

fn default_lines_per_page() -> usize {
    1000
}

/// Builds `jsonl` sources.
#[derive(Debug, Default, Clone, Copy)]
pub struct JsonlSourceFactory;

#[async_trait]
impl Factory for JsonlSourceFactory {
    type Config = JsonlSourceConfig;
    type Output = dyn Source;

    fn type_name(&self) -> &'static str {
        "jsonl"
    }

    fn validate(&self, config: &JsonlSourceConfig, _ctx: &BuildContext) -> Result<()> {
        if config.lines_per_page == 0 {
            return Err(field_error("linesPerPage", "must be at least 1"));
        }
        if config.path.as_os_str().is_empty() {
            return Err(field_error("path", "must name a file or directory"));
        }
        Ok(())
    }

    async fn build(
        &self,
        config: JsonlSourceConfig,
        ctx: &BuildContext,
    ) -> Result<Arc<dyn Source>> {
        let path = ctx.base_dir.join(&config.path);
        let files = list_files(&path).await?;
        Ok(Arc::new(JsonlSource {
            pages: Arc::new(JsonlPages {
                path,
                files,
                lines_per_page: config.lines_per_page,
            }),
        }))
    }
}

/// The files to read: `path` itself, or the JSON Lines files in it by name.
async fn list_files(path: &Path) -> Result<Vec<PathBuf>> {
    let io = |e: std::io::Error| Error::config(format!("jsonl source: {}: {e}", path.display()));
    let meta = tokio::fs::metadata(path).await.map_err(io)?;
    if meta.is_file() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files = Vec::new();
    let mut dir = tokio::fs::read_dir(path).await.map_err(io)?;
    while let Some(entry) = dir.next_entry().await.map_err(io)? {
        let p = entry.path();
        if matches!(
            p.extension().and_then(|e| e.to_str()),
            Some("jsonl" | "ndjson")
        ) {
            files.push(p);
        }
    }
    files.sort();
    Ok(files)
}

/// A JSON Lines file or directory, read a page of lines at a time.
pub struct JsonlSource {
    pages: Arc<JsonlPages>,
}

impl Source for JsonlSource {
    fn read(&self, request: ReadRequest) -> BatchStream {
        paginate(self.pages.clone(), request)
    }

    fn describe(&self) -> String {
        format!(
            "jsonl {} ({} files)",
            self.pages.path.display(),
            self.pages.files.len()
        )
    }

    /// Read whole, by one shard.
    fn splits(&self) -> bool {
        false
    }
}

struct JsonlPages {
    path: PathBuf,
    files: Vec<PathBuf>,
    lines_per_page: usize,
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[async_trait]
impl PageSource for JsonlPages {
    /// The token is `{"file": <name>, "offset": <byte>, "line": <lines read>}`.
    async fn fetch_page(&self, token: Option<&Position>, _ctx: &PageContext) -> Result<Page> {
        let Some(first) = self.files.first() else {
            return Ok(Page::default());
        };
        let (index, offset, mut line) = match token.map(Position::as_value) {
            None => (0, 0, 0),
            Some(t) => {
                let name = t["file"].as_str().unwrap_or_default();
                let index = self
                    .files
                    .iter()
                    .position(|f| file_name(f) == name)
                    .ok_or_else(|| {
                        Error::new(
                            ErrorKind::Checkpoint,
                            format!(
                                "jsonl source: the checkpoint names {name}, which is not in {}; \
                                 run with --full-refresh to start over",
                                self.path.display()
                            ),
                        )
                    })?;
                (
                    index,
                    t["offset"].as_u64().unwrap_or(0),
                    t["line"].as_u64().unwrap_or(0),
                )
            }
        };
        let path = self.files.get(index).unwrap_or(first);
        let name = file_name(path);
        let io =
            |e: std::io::Error| Error::new(ErrorKind::Io, format!("jsonl source: {name}: {e}"));
        let mut file = tokio::fs::File::open(path).await.map_err(io)?;
        file.seek(std::io::SeekFrom::Start(offset))
            .await
            .map_err(io)?;
        let mut reader = BufReader::new(file);
        let mut records: Vec<Record> = Vec::with_capacity(self.lines_per_page);
        let mut position = offset;
        let mut text = String::new();
        while records.len() < self.lines_per_page {
            text.clear();
            let n = reader.read_line(&mut text).await.map_err(io)?;
            if n == 0 {
                // This file is done: the next page starts the next file.
                let next = self
                    .files
                    .get(index + 1)
                    .map(|f| Position::new(json!({"file": file_name(f), "offset": 0, "line": 0})));
                return Ok(Page { records, next });
            }
            position += n as u64;
            line += 1;
            if text.trim().is_empty() {
                continue;
            }
            let record = match serde_json::from_str::<Value>(&text) {
                Ok(Value::Object(record)) => record,
                Ok(other) => {
                    return Err(Error::decode(format!(
                        "jsonl source: {name} line {line} is not a JSON object but {}",
                        kind_of(&other)
                    )));
                }
                Err(e) => {
                    return Err(Error::decode(format!(
                        "jsonl source: {name} line {line} is not valid JSON: {e}"
                    )));
                }
            };
            records.push(record);
        }
        let next = Position::new(json!({"file": name, "offset": position, "line": line}));
        Ok(Page {
            records,
            next: Some(next),
        })
    }

    fn page_bytes_hint(&self) -> usize {
        self.lines_per_page * 512
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
