//! Turning response bodies into records, incrementally where the format allows:
//! JSON (the records array streamed out of the document), NDJSON (one record per
//! line), CSV (header row, then string records), zipped CSV (the archive's first
//! file, optionally password-protected, read from a temporary file).

mod csv_stream;
mod json_stream;

use std::io::Read;

use crate::jsonpath::JsonSelector;
use serde::Deserialize;
use serde_json::Value;
use sluicegate_core::{Record, into_record};

pub(crate) use csv_stream::CsvDecoder;
pub(crate) use json_stream::ArrayScanner;

/// The shape of a response body (`resultsFormat`, case-insensitive as in `cute`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResultsFormat {
    /// A JSON document; records at `resultsJsonPath`.
    #[default]
    Json,
    /// One JSON record per line.
    Ndjson,
    /// Comma-separated values with a header row.
    Csv,
    /// A zip archive whose first file is CSV.
    ZippedCsv,
}

impl<'de> Deserialize<'de> for ResultsFormat {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        match text.to_ascii_lowercase().as_str() {
            "json" => Ok(ResultsFormat::Json),
            "ndjson" | "jsonl" | "jsonlines" => Ok(ResultsFormat::Ndjson),
            "csv" => Ok(ResultsFormat::Csv),
            "zippedcsv" | "zipped_csv" => Ok(ResultsFormat::ZippedCsv),
            other => Err(serde::de::Error::custom(format!(
                "unknown resultsFormat '{other}' (json, ndjson, csv, zippedCsv)"
            ))),
        }
    }
}

/// Decodes a whole response body into records exactly as the `http` source
/// does, feeding it in chunks of `chunk` bytes (the source feeds what the
/// network delivers). For tools, tests and benchmarks of the decoders; zipped
/// CSV is not supported here (it needs a file).
pub fn decode_body(
    format: ResultsFormat,
    results_json_path: &str,
    body: &[u8],
    chunk: usize,
) -> sluicegate_core::Result<Vec<Record>> {
    if format == ResultsFormat::ZippedCsv {
        return Err(sluicegate_core::Error::config(
            "decode_body cannot read zipped CSV; the source reads it from a file",
        ));
    }
    let selector = JsonSelector::parse(results_json_path)?;
    let mut decoder = BodyDecoder::new(format, &selector);
    let mut out = Vec::new();
    for part in body.chunks(chunk.max(1)) {
        decoder
            .feed(part, &mut out)
            .map_err(sluicegate_core::Error::decode)?;
    }
    decoder
        .finish(&mut out)
        .map_err(sluicegate_core::Error::decode)?;
    Ok(out)
}

/// Decodes one response body fed in chunks.
pub(crate) enum BodyDecoder {
    /// JSON whose records array is at a plain dotted path: streamed.
    JsonStream {
        scanner: ArrayScanner,
        selector: JsonSelector,
    },
    /// JSON with a full JSONPath selector: buffered, then selected.
    JsonBuffered {
        body: Vec<u8>,
        selector: JsonSelector,
    },
    /// NDJSON: complete lines are records.
    Ndjson { partial: Vec<u8>, line: u64 },
    /// CSV.
    Csv(Box<CsvDecoder>),
}

/// What remains after the last chunk: the document without its records (for
/// totals, cursors, next links) and whether the selector matched anything.
pub(crate) struct Tail {
    pub(crate) meta: Value,
    pub(crate) matched: bool,
}

fn parse_record(bytes: &[u8]) -> Result<Record, String> {
    serde_json::from_slice::<Value>(bytes)
        .map(into_record)
        .map_err(|e| format!("a record is not valid JSON: {e}"))
}

impl BodyDecoder {
    pub(crate) fn new(format: ResultsFormat, selector: &JsonSelector) -> Self {
        match format {
            ResultsFormat::Json => match selector.members() {
                Some(path) => BodyDecoder::JsonStream {
                    scanner: ArrayScanner::new(path.to_vec()),
                    selector: selector.clone(),
                },
                None => BodyDecoder::JsonBuffered {
                    body: Vec::new(),
                    selector: selector.clone(),
                },
            },
            ResultsFormat::Ndjson => BodyDecoder::Ndjson {
                partial: Vec::new(),
                line: 0,
            },
            ResultsFormat::Csv | ResultsFormat::ZippedCsv => {
                BodyDecoder::Csv(Box::new(CsvDecoder::new()))
            }
        }
    }

    /// Feeds a chunk; complete records are pushed to `out`.
    pub(crate) fn feed(&mut self, chunk: &[u8], out: &mut Vec<Record>) -> Result<(), String> {
        match self {
            BodyDecoder::JsonStream { .. } | BodyDecoder::Ndjson { .. } => {
                // The records' texts, each parsed (those before a grammar
                // error first: a bad record is the error to report).
                let mut texts = Vec::new();
                let scanned = self.feed_text(chunk, &mut texts);
                parse_texts(texts, out)?;
                scanned
            }
            BodyDecoder::JsonBuffered { body, .. } => {
                body.extend_from_slice(chunk);
                Ok(())
            }
            BodyDecoder::Csv(csv) => csv.feed(chunk, out),
        }
    }

    /// Whether [`BodyDecoder::feed_text`] can hand records on as their JSON
    /// text: a streamed records array, or NDJSON.
    pub(crate) fn yields_text(&self) -> bool {
        matches!(
            self,
            BodyDecoder::JsonStream { .. } | BodyDecoder::Ndjson { .. }
        )
    }

    /// Feeds a chunk; the text of each complete record is pushed to `out`,
    /// undecoded (the caller checks it), with its NDJSON line number. A
    /// buffered JSON document yields its records at the end
    /// ([`BodyDecoder::finish_text`]); CSV has no texts (an error).
    pub(crate) fn feed_text(
        &mut self,
        chunk: &[u8],
        out: &mut Vec<RecordText>,
    ) -> Result<(), String> {
        match self {
            BodyDecoder::JsonStream { scanner, .. } => {
                let mut raw = Vec::new();
                let scanned = scanner.feed(chunk, &mut raw);
                out.extend(raw.into_iter().map(|text| RecordText { text, line: None }));
                scanned
            }
            BodyDecoder::Ndjson { partial, line } => {
                let mut start = 0;
                for (i, b) in chunk.iter().enumerate() {
                    if *b == b'\n' {
                        partial.extend_from_slice(&chunk[start..i]);
                        *line += 1;
                        ndjson_text(partial, *line, out);
                        start = i + 1;
                    }
                }
                partial.extend_from_slice(&chunk[start..]);
                Ok(())
            }
            BodyDecoder::JsonBuffered { body, .. } => {
                body.extend_from_slice(chunk);
                Ok(())
            }
            BodyDecoder::Csv(_) => Err("a CSV body has no JSON texts to hand on".to_owned()),
        }
    }

    /// Ends a body fed with [`BodyDecoder::feed_text`]: NDJSON's last line
    /// goes to `out`; records that only the end of the document reveals (a
    /// single object at the path) go to `records`.
    pub(crate) fn finish_text(
        self,
        out: &mut Vec<RecordText>,
        records: &mut Vec<Record>,
    ) -> Result<Tail, String> {
        match self {
            BodyDecoder::Ndjson { mut partial, line } => {
                ndjson_text(&mut partial, line + 1, out);
                Ok(Tail {
                    meta: Value::Null,
                    matched: true,
                })
            }
            other => other.finish(records),
        }
    }

    /// Ends the body.
    pub(crate) fn finish(self, out: &mut Vec<Record>) -> Result<Tail, String> {
        match self {
            BodyDecoder::JsonStream { scanner, selector } => {
                let matched = scanner.found();
                let mut meta = scanner.finish()?;
                if !matched {
                    // Not an array at the path (a single object, say): select in the
                    // (small) document as a whole, as `cute` does.
                    return Ok(match selector.take_records(&mut meta) {
                        Some(records) => {
                            out.extend(records.into_iter().map(into_record));
                            Tail {
                                meta,
                                matched: true,
                            }
                        }
                        None => Tail {
                            meta,
                            matched: false,
                        },
                    });
                }
                Ok(Tail { meta, matched })
            }
            BodyDecoder::JsonBuffered { body, selector } => {
                let mut doc: Value = serde_json::from_slice(&body)
                    .map_err(|e| format!("the response is not valid JSON: {e}"))?;
                let matched = match selector.take_records(&mut doc) {
                    Some(records) => {
                        out.extend(records.into_iter().map(into_record));
                        true
                    }
                    None => false,
                };
                Ok(Tail { meta: doc, matched })
            }
            BodyDecoder::Ndjson { mut partial, line } => {
                let mut texts = Vec::new();
                ndjson_text(&mut partial, line + 1, &mut texts);
                parse_texts(texts, out)?;
                Ok(Tail {
                    meta: Value::Null,
                    matched: true,
                })
            }
            BodyDecoder::Csv(csv) => {
                csv.finish(out)?;
                Ok(Tail {
                    meta: Value::Null,
                    matched: true,
                })
            }
        }
    }
}

/// One record's JSON text as it arrived, and its NDJSON line number.
pub(crate) struct RecordText {
    pub(crate) text: Vec<u8>,
    pub(crate) line: Option<u64>,
}

impl RecordText {
    /// Where the record is, for an error message: `NDJSON line 3: ` or nothing.
    pub(crate) fn place(&self) -> String {
        self.line
            .map_or_else(String::new, |line| format!("NDJSON line {line}: "))
    }
}

/// An NDJSON line as a record's text (blank lines are none); clears `line`.
fn ndjson_text(line: &mut Vec<u8>, number: u64, out: &mut Vec<RecordText>) {
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    if line.iter().all(|b| json_stream::is_json_space(*b)) {
        line.clear();
        return;
    }
    out.push(RecordText {
        text: std::mem::take(line),
        line: Some(number),
    });
}

/// Parses records' texts into `out`; an error names the record's NDJSON line.
fn parse_texts(texts: Vec<RecordText>, out: &mut Vec<Record>) -> Result<(), String> {
    for text in texts {
        out.push(parse_record(&text.text).map_err(|e| format!("{}{e}", text.place()))?);
    }
    Ok(())
}

/// Reads the first file of a zip archive as CSV, `on_rows` receiving rows in
/// chunks of `chunk` (so a large archive never sits in memory decoded).
pub(crate) fn read_zipped_csv(
    file: std::fs::File,
    password: Option<&str>,
    chunk: usize,
    mut on_rows: impl FnMut(Vec<Record>) -> bool,
) -> Result<(), String> {
    let mut archive = zip::ZipArchive::new(file)
        .map_err(|e| format!("the response is not a zip archive: {e}"))?;
    if archive.is_empty() {
        return Err("the zip archive is empty".to_owned());
    }
    let mut entry = match password {
        Some(p) => archive
            .by_index_decrypt(0, p.as_bytes())
            .map_err(|e| format!("cannot decrypt the zip archive (check resultsSecret): {e}"))?,
        None => archive.by_index(0).map_err(|e| {
            format!(
                "cannot read the zip archive (is it password-protected? set resultsSecret): {e}"
            )
        })?,
    };
    let mut decoder = CsvDecoder::new();
    let mut rows = Vec::new();
    let mut buf = vec![0; 64 * 1024];
    loop {
        let n = entry
            .read(&mut buf)
            .map_err(|e| format!("cannot unzip: {e}"))?;
        if n == 0 {
            break;
        }
        decoder.feed(&buf[..n], &mut rows)?;
        if rows.len() >= chunk && !on_rows(std::mem::take(&mut rows)) {
            return Ok(());
        }
    }
    decoder.finish(&mut rows)?;
    if !rows.is_empty() {
        on_rows(rows);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(format: ResultsFormat, path: &str, body: &str) -> (Vec<Value>, Tail) {
        let selector = JsonSelector::parse(path).unwrap();
        let mut d = BodyDecoder::new(format, &selector);
        let mut out = Vec::new();
        for c in body.as_bytes().chunks(3) {
            d.feed(c, &mut out).unwrap();
        }
        let tail = d.finish(&mut out).unwrap();
        (out.into_iter().map(Value::Object).collect(), tail)
    }

    #[test]
    fn json_streams_plain_paths_and_buffers_jsonpath() {
        let body = r#"{"data": [{"id": 1}, {"id": 2}], "total": 2}"#;
        let (records, tail) = run(ResultsFormat::Json, "data", body);
        assert_eq!(records, vec![json!({"id": 1}), json!({"id": 2})]);
        assert_eq!(tail.meta["total"], 2);
        let (records, tail) = run(ResultsFormat::Json, "$.data[?@.id > 1]", body);
        assert_eq!(records, vec![json!({"id": 2})]);
        assert!(tail.matched);
        let (records, _) = run(ResultsFormat::Json, "user", r#"{"user": {"id": 9}}"#);
        assert_eq!(
            records,
            vec![json!({"id": 9})],
            "a single object is one record"
        );
        let (records, tail) = run(ResultsFormat::Json, "data", r#"{"items": []}"#);
        assert!(records.is_empty() && !tail.matched);
    }

    #[test]
    fn ndjson_lines() {
        let (records, _) = run(
            ResultsFormat::Ndjson,
            "$",
            "{\"a\":1}\r\n\n{\"a\":2}\n{\"a\":3}",
        );
        assert_eq!(
            records,
            vec![json!({"a": 1}), json!({"a": 2}), json!({"a": 3})]
        );
        let selector = JsonSelector::parse("$").unwrap();
        let mut d = BodyDecoder::new(ResultsFormat::Ndjson, &selector);
        let err = d.feed(b"{\"a\":1}\n{oops}\n", &mut Vec::new()).unwrap_err();
        assert!(err.starts_with("NDJSON line 2:"), "{err}");
    }
}
