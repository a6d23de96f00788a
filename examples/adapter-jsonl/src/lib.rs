#![doc = include_str!("../README.md")]

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};
use sluicegate_core::{
    BatchStream, BuildContext, Error, ErrorKind, Factory, Page, PageContext, PageSource, Position,
    ReadRequest, Record, Registry, Result, Source, field_error, paginate,
};
use tokio::io::{AsyncBufReadExt, AsyncSeekExt, BufReader};

/// Configuration of a `jsonl` source.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JsonlConfig {
    /// The file, relative to the configuration file.
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
    type Config = JsonlConfig;
    type Output = dyn Source;

    fn type_name(&self) -> &'static str {
        "jsonl"
    }

    fn validate(&self, config: &JsonlConfig, _ctx: &BuildContext) -> Result<()> {
        if config.lines_per_page == 0 {
            return Err(field_error("linesPerPage", "must be at least 1"));
        }
        if config.path.as_os_str().is_empty() {
            return Err(field_error("path", "must name a file"));
        }
        Ok(())
    }

    async fn build(&self, config: JsonlConfig, ctx: &BuildContext) -> Result<Arc<dyn Source>> {
        let path = ctx.base_dir.join(&config.path);
        if !tokio::fs::try_exists(&path).await.unwrap_or(false) {
            return Err(Error::config(format!(
                "jsonl source: no file at {}",
                path.display()
            )));
        }
        Ok(Arc::new(JsonlSource {
            pages: Arc::new(JsonlPages {
                path,
                lines_per_page: config.lines_per_page,
            }),
        }))
    }
}

/// Registers the `jsonl` source type.
pub fn register(registry: &mut Registry) {
    registry.register_source(JsonlSourceFactory);
}

/// A JSON Lines file, read a page of lines at a time.
pub struct JsonlSource {
    pages: Arc<JsonlPages>,
}

impl Source for JsonlSource {
    fn read(&self, request: ReadRequest) -> BatchStream {
        paginate(self.pages.clone(), request)
    }

    fn describe(&self) -> String {
        format!("jsonl {}", self.pages.path.display())
    }
}

struct JsonlPages {
    path: PathBuf,
    lines_per_page: usize,
}

#[async_trait]
impl PageSource for JsonlPages {
    async fn fetch_page(&self, token: Option<&Position>, _ctx: &PageContext) -> Result<Page> {
        let (offset, mut line) = match token {
            Some(t) => (
                t.as_value()["offset"].as_u64().unwrap_or(0),
                t.as_value()["line"].as_u64().unwrap_or(0),
            ),
            None => (0, 0),
        };
        let io = |e: std::io::Error| {
            Error::new(
                ErrorKind::Io,
                format!("jsonl source: {}: {e}", self.path.display()),
            )
        };
        let mut file = tokio::fs::File::open(&self.path).await.map_err(io)?;
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
                return Ok(Page {
                    records,
                    next: None,
                });
            }
            position += n as u64;
            line += 1;
            if text.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Value>(&text) {
                Ok(Value::Object(record)) => records.push(record),
                Ok(other) => {
                    return Err(Error::decode(format!(
                        "jsonl source: line {line} is not a JSON object but {}",
                        kind_of(&other)
                    )));
                }
                Err(e) => {
                    return Err(Error::decode(format!(
                        "jsonl source: line {line} is not valid JSON: {e}"
                    )));
                }
            }
        }
        let next = Position::new(json!({"offset": position, "line": line}));
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
