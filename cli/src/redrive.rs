//! `sluicegate redrive`: sync the records of the dead-letter file again, once
//! their cause is fixed.
//!
//! For each key, two passes over the file read its dead letters lazily, a page of
//! lines at a time: records rejected by the mapping or when read (`stage: map`
//! or `read`, kept as read from the source) go through the key's mapping and sink; records rejected later
//! (`convert`, `write`, `publish`, kept as mapped) go to the sink directly.
//! Records rejected again are written to a new file; when every key re-drove
//! without an error (and with `--apply`), the dead-letter file is replaced
//! atomically by the other keys' lines plus the records rejected again. On an
//! error, or in a dry run, it is left as it was.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Map, Value, json};
use sluicegate_core::{
    BatchStream, Error, ErrorKind, Page, PageContext, PageSource, Position, ReadRequest, Record,
    Result, Source, paginate,
};

/// Dead letters read per page.
const LINES_PER_PAGE: usize = 500;

/// Which dead letters a pass reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// Rejected by the mapping or when read: source records, mapped again.
    Unmapped,
    /// Rejected after the mapping: mapped records, sent to the sink as they are.
    Mapped,
}

impl Pass {
    fn takes(self, stage: &str) -> bool {
        match self {
            Pass::Unmapped => stage == "map" || stage == "read",
            Pass::Mapped => stage != "map" && stage != "read",
        }
    }
}

/// The dead letters of one key and pass, as a source.
pub struct DeadLetterSource {
    pages: Arc<DeadLetterPages>,
}

impl DeadLetterSource {
    /// Reads the dead letters of `sync_key` in `path` taken by `pass`.
    pub fn new(path: PathBuf, sync_key: &str, pass: Pass) -> Self {
        Self {
            pages: Arc::new(DeadLetterPages {
                path,
                sync_key: sync_key.to_owned(),
                pass,
            }),
        }
    }
}

impl Source for DeadLetterSource {
    fn read(&self, request: ReadRequest) -> BatchStream {
        paginate(self.pages.clone(), request)
    }

    fn describe(&self) -> String {
        format!(
            "dead letters of '{}' in {}",
            self.pages.sync_key,
            self.pages.path.display()
        )
    }

    /// Read whole, by one shard.
    fn splits(&self) -> bool {
        false
    }
}

struct DeadLetterPages {
    path: PathBuf,
    sync_key: String,
    pass: Pass,
}

#[async_trait]
impl PageSource for DeadLetterPages {
    /// The token is `{"offset": <byte>, "line": <lines read>}`.
    async fn fetch_page(&self, token: Option<&Position>, _ctx: &PageContext) -> Result<Page> {
        let t = token.map(Position::as_value);
        let offset = t.and_then(|t| t["offset"].as_u64()).unwrap_or(0);
        let line = t.and_then(|t| t["line"].as_u64()).unwrap_or(0);
        let (path, key, pass) = (self.path.clone(), self.sync_key.clone(), self.pass);
        tokio::task::spawn_blocking(move || read_page(&path, &key, pass, offset, line))
            .await
            .map_err(|e| Error::new(ErrorKind::Io, "reading dead letters stopped").with_source(e))?
    }

    fn page_bytes_hint(&self) -> usize {
        LINES_PER_PAGE * 1024
    }
}

fn io_error(path: &Path, err: std::io::Error) -> Error {
    Error::new(
        ErrorKind::Io,
        format!("cannot read the dead-letter file {}", path.display()),
    )
    .with_source(err)
}

/// Reads from byte `offset` (line `line`) until a page of this key's letters
/// of this pass, or the end.
fn read_page(path: &Path, key: &str, pass: Pass, offset: u64, mut line: u64) -> Result<Page> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Page::default()),
        Err(e) => return Err(io_error(path, e)),
    };
    file.seek(SeekFrom::Start(offset))
        .map_err(|e| io_error(path, e))?;
    let mut reader = BufReader::new(file);
    let (mut records, mut offset) = (Vec::new(), offset);
    let mut text = String::new();
    while records.len() < LINES_PER_PAGE {
        text.clear();
        let n = reader.read_line(&mut text).map_err(|e| io_error(path, e))?;
        if n == 0 {
            return Ok(Page {
                records,
                next: None,
            });
        }
        offset += n as u64;
        line += 1;
        if text.trim().is_empty() {
            continue;
        }
        let letter = parse_letter(&text).map_err(|why| {
            Error::decode(format!(
                "{} line {line}: {why}; fix or remove that line, then run again",
                path.display()
            ))
        })?;
        if letter.sync_key == key && pass.takes(&letter.stage) {
            records.push(letter.record);
        }
    }
    Ok(Page {
        records,
        next: Some(Position::new(json!({ "offset": offset, "line": line }))),
    })
}

/// One dead letter's parts that matter here.
struct Letter {
    sync_key: String,
    stage: String,
    record: Record,
}

fn parse_letter(line: &str) -> std::result::Result<Letter, String> {
    let mut value: Map<String, Value> =
        serde_json::from_str(line).map_err(|e| format!("not a JSON object ({e})"))?;
    let text = |value: &Map<String, Value>, name: &str| -> std::result::Result<String, String> {
        value
            .get(name)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| format!("no \"{name}\" string"))
    };
    let (sync_key, stage) = (text(&value, "syncKey")?, text(&value, "stage")?);
    let record = match value.remove("record") {
        Some(Value::Object(record)) => record,
        _ => return Err("no \"record\" object".to_owned()),
    };
    Ok(Letter {
        sync_key,
        stage,
        record,
    })
}

/// The key of a dead-letter line (`None` for a line that is not one).
fn key_of(line: &str) -> Option<String> {
    let value: Value = serde_json::from_str(line).ok()?;
    value["syncKey"].as_str().map(str::to_owned)
}

/// Where a re-drive writes the records rejected again.
pub fn new_letters_path(dead_letter: &Path) -> PathBuf {
    let mut name = dead_letter.as_os_str().to_owned();
    name.push(".redrive");
    PathBuf::from(name)
}

/// Replaces `dead_letter` by its lines of keys other than `keys` followed by
/// the lines of `again` (the records rejected again), atomically; removes
/// `again`. Returns how many lines were kept from the old file.
pub fn replace_letters(dead_letter: &Path, again: &Path, keys: &[String]) -> Result<u64> {
    let mut tmp_name = dead_letter.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let write_error = |e: std::io::Error| {
        Error::new(ErrorKind::Io, format!("cannot write {}", tmp.display())).with_source(e)
    };
    let mut out = BufWriter::new(options.open(&tmp).map_err(write_error)?);
    let mut kept = 0;
    if let Ok(old) = File::open(dead_letter) {
        for line in BufReader::new(old).lines() {
            let line = line.map_err(|e| io_error(dead_letter, e))?;
            let theirs = key_of(&line).is_none_or(|k| !keys.contains(&k));
            if theirs && !line.trim().is_empty() {
                writeln!(out, "{line}").map_err(write_error)?;
                kept += 1;
            }
        }
    }
    if let Ok(new) = File::open(again) {
        for line in BufReader::new(new).lines() {
            writeln!(out, "{}", line.map_err(|e| io_error(again, e))?).map_err(write_error)?;
        }
    }
    out.into_inner()
        .map_err(|e| write_error(e.into_error()))?
        .sync_all()
        .map_err(write_error)?;
    std::fs::rename(&tmp, dead_letter).map_err(|e| {
        Error::new(
            ErrorKind::Io,
            format!("cannot replace {}", dead_letter.display()),
        )
        .with_source(e)
    })?;
    let _ = std::fs::remove_file(again);
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;
    use sluicegate_core::MemoryBudget;

    fn letter(key: &str, stage: &str, id: u64) -> String {
        json!({"syncKey": key, "stage": stage, "key": id.to_string(), "reason": "x",
               "record": {"id": id}})
        .to_string()
    }

    async fn ids(path: &Path, key: &str, pass: Pass) -> Result<Vec<u64>> {
        let source = DeadLetterSource::new(path.to_path_buf(), key, pass);
        let batches: Vec<_> = source
            .read(ReadRequest::new(key, MemoryBudget::new(1 << 20)))
            .try_collect()
            .await?;
        Ok(batches
            .iter()
            .flat_map(|b| b.records().iter().map(|r| r["id"].as_u64().unwrap()))
            .collect())
    }

    #[tokio::test]
    async fn each_pass_reads_its_key_and_stages_across_pages() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dead.ndjson");
        let mut lines = Vec::new();
        for id in 0..1200 {
            let stage = if id % 3 == 0 { "map" } else { "write" };
            let key = if id % 2 == 0 { "a" } else { "b" };
            lines.push(letter(key, stage, id));
        }
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        let unmapped = ids(&path, "a", Pass::Unmapped).await.unwrap();
        let want: Vec<u64> = (0..1200).filter(|i| i % 2 == 0 && i % 3 == 0).collect();
        assert_eq!(unmapped, want);
        let mapped = ids(&path, "a", Pass::Mapped).await.unwrap();
        assert_eq!(mapped.len(), 600 - want.len());
        assert!(ids(&path, "c", Pass::Mapped).await.unwrap().is_empty());
        assert!(
            ids(&dir.path().join("none"), "a", Pass::Mapped)
                .await
                .unwrap()
                .is_empty(),
            "no file, nothing to re-drive"
        );
    }

    #[tokio::test]
    async fn a_broken_line_is_named_by_number() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dead.ndjson");
        std::fs::write(&path, format!("{}\n{{broken\n", letter("a", "map", 1))).unwrap();
        let err = ids(&path, "a", Pass::Unmapped)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("dead.ndjson line 2: not a JSON object"),
            "{err}"
        );
    }

    #[test]
    fn replacing_keeps_other_keys_and_appends_the_new_rejections() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dead.ndjson");
        std::fs::write(
            &path,
            [
                letter("a", "map", 1),
                letter("b", "write", 2),
                letter("a", "write", 3),
            ]
            .join("\n"),
        )
        .unwrap();
        let again = new_letters_path(&path);
        std::fs::write(&again, letter("a", "write", 3) + "\n").unwrap();
        assert_eq!(
            replace_letters(&path, &again, &["a".to_owned()]).unwrap(),
            1
        );
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            format!("{}\n{}\n", letter("b", "write", 2), letter("a", "write", 3))
        );
        assert!(!again.exists());
    }
}
