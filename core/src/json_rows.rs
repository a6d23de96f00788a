//! Records still as the JSON text a source received.
//!
//! A source that reads JSON can hand a batch's records on as their text
//! instead of decoding each into a [`Record`] (a map per record, a string per
//! field name and value): one buffer and where each record ends. A sink that
//! decodes JSON text straight into its own form (columns, say) skips the maps
//! altogether; anything else gets records ([`JsonRows::decode`], or
//! [`Batch::decode_records`](crate::Batch::decode_records)).
//!
//! Every text in a [`JsonRows`] was checked when it was pushed: it is UTF-8
//! (as JSON text must be, strings included) and one complete JSON object, as
//! `serde_json` parses it (a source wraps any other value as
//! `{"value": ...}`, as [`into_record`](crate::into_record) does). Rows pushed
//! unchecked ([`JsonRows::push_trusted`]) are checked for UTF-8 only. So a
//! reader can parse each text as a `&str` ([`JsonRows::get_str`]), without
//! checking its strings' bytes again.

use serde::de::IgnoredAny;
use serde_json::Value;

use crate::error::{Error, ErrorKind, Result};
use crate::record::{Record, into_record};

/// Records as JSON object texts, back to back in one buffer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JsonRows {
    text: String,
    /// Where each record's text ends in `text`.
    ends: Vec<usize>,
}

impl JsonRows {
    /// No records.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one record's text after checking that it is one JSON object
    /// (whitespace around it is allowed). Any other JSON value is wrapped as
    /// `{"value": ...}` first, as [`into_record`] wraps it. Invalid JSON is an
    /// error (the message says why, not where: the caller knows where).
    pub fn push(&mut self, text: &[u8]) -> std::result::Result<(), String> {
        let text = utf8(text)?;
        serde_json::from_str::<IgnoredAny>(text)
            .map_err(|e| format!("a record is not valid JSON: {e}"))?;
        let first = text
            .bytes()
            .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
        if first == Some(b'{') {
            self.text.push_str(text);
        } else {
            self.text.push_str("{\"value\":");
            self.text.push_str(text);
            self.text.push('}');
        }
        self.ends.push(self.text.len());
        Ok(())
    }

    /// Adds one record's text as it is, without the JSON check
    /// [`JsonRows::push`] makes: for text the caller wrote itself as one JSON
    /// object (a serializer's output, as the database sources write their
    /// rows). Only that it is UTF-8 is checked (a database's text values
    /// need not be); the rows are parsed where they are read, and text that
    /// is not JSON fails there ([`JsonRows::decode`] names the record).
    pub fn push_trusted(&mut self, text: &[u8]) -> std::result::Result<(), String> {
        self.text.push_str(utf8(text)?);
        self.ends.push(self.text.len());
        Ok(())
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The text of record `i` (a JSON object, possibly with whitespace around).
    pub fn get(&self, i: usize) -> Option<&[u8]> {
        self.get_str(i).map(str::as_bytes)
    }

    /// The text of record `i` as a string (it was checked to be UTF-8).
    pub fn get_str(&self, i: usize) -> Option<&str> {
        let end = *self.ends.get(i)?;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        self.text.get(start..end)
    }

    /// Each record's text, in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &[u8]> + '_ {
        self.iter_str().map(str::as_bytes)
    }

    /// Each record's text as a string, in order.
    pub fn iter_str(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        (0..self.len()).map(|i| self.get_str(i).unwrap_or_default())
    }

    /// Heap bytes held: the text and the table of record ends, as allocated.
    pub fn heap_bytes(&self) -> usize {
        self.text.capacity() + self.ends.capacity() * std::mem::size_of::<usize>()
    }

    /// Moves the records of `later` after these.
    pub fn append(&mut self, later: &mut JsonRows) {
        let base = self.text.len();
        self.text.push_str(&std::mem::take(&mut later.text));
        self.ends.extend(later.ends.drain(..).map(|end| end + base));
    }

    /// Takes the first `n` records off into rows of their own; these keep the rest.
    pub fn take_front(&mut self, n: usize) -> JsonRows {
        let n = n.min(self.len());
        if n == 0 {
            return JsonRows::new();
        }
        let cut = self.ends[n - 1];
        let rest_text = self.text.split_off(cut);
        let text = std::mem::replace(&mut self.text, rest_text);
        let rest_ends: Vec<usize> = self.ends[n..].iter().map(|end| end - cut).collect();
        let mut ends = std::mem::replace(&mut self.ends, rest_ends);
        ends.truncate(n);
        JsonRows { text, ends }
    }

    /// The records decoded, in order.
    pub fn decode(&self) -> Result<Vec<Record>> {
        self.iter_str()
            .enumerate()
            .map(|(i, text)| {
                serde_json::from_str::<Value>(text)
                    .map(into_record)
                    .map_err(|e| {
                        Error::new(
                            ErrorKind::Decode,
                            format!("record {} of the batch is not valid JSON: {e}", i + 1),
                        )
                    })
            })
            .collect()
    }
}

/// `text` as a string, or why a record that is not UTF-8 is not JSON.
fn utf8(text: &[u8]) -> std::result::Result<&str, String> {
    std::str::from_utf8(text).map_err(|e| {
        format!(
            "a record is not valid JSON: its text is not UTF-8 (byte {} is not; {e})",
            e.valid_up_to() + 1
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rows(texts: &[&str]) -> JsonRows {
        let mut rows = JsonRows::new();
        for t in texts {
            rows.push(t.as_bytes()).unwrap();
        }
        rows
    }

    #[test]
    fn trusted_text_is_kept_as_written_and_a_bad_one_fails_where_it_is_read() {
        let mut rows = JsonRows::new();
        rows.push_trusted(br#"{"a":1}"#).unwrap();
        rows.push_trusted(br#"{"b":"x"}"#).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows.get(1), Some(&br#"{"b":"x"}"#[..]));
        assert_eq!(rows.decode().unwrap()[1]["b"], json!("x"));
        // Only UTF-8 is checked: a byte that is not is refused at once.
        let err = rows.push_trusted(b"{\"b\":\"\xe9\"}").unwrap_err();
        assert!(err.contains("not UTF-8 (byte 7"), "{err}");
        assert_eq!(rows.len(), 2);
        rows.push_trusted(b"{\"c\":").unwrap();
        let err = rows.decode().unwrap_err().to_string();
        assert!(
            err.contains("record 3 of the batch is not valid JSON"),
            "{err}"
        );
    }

    #[test]
    fn text_that_is_not_utf8_is_not_json_even_inside_a_string() {
        // serde_json skips over a string's bytes without reading them as
        // characters when it only checks the syntax; JSON text is UTF-8.
        let mut r = JsonRows::new();
        for bad in [
            &b"{\"name\":\"caf\xe9\"}"[..],
            b"{\"\xff\":1}",
            b"{\"a\":\"\xed\xa0\x80\"}",
            b"\"\xc3\"",
        ] {
            let err = r.push(bad).unwrap_err();
            assert!(
                err.contains("not valid JSON") && err.contains("not UTF-8"),
                "{err}"
            );
        }
        assert!(r.is_empty(), "nothing was kept");
        r.push("{\"name\":\"café ☕ 𝄞\"}".as_bytes()).unwrap();
        assert_eq!(r.get_str(0), Some("{\"name\":\"café ☕ 𝄞\"}"));
        assert_eq!(r.decode().unwrap()[0]["name"], json!("café ☕ 𝄞"));
    }

    #[test]
    fn objects_are_kept_and_other_values_wrapped() {
        let r = rows(&[r#"{"id": 1}"#, " 7 ", r#""x""#]);
        assert_eq!(r.len(), 3);
        let decoded = r.decode().unwrap();
        assert_eq!(Value::Object(decoded[0].clone()), json!({"id": 1}));
        assert_eq!(Value::Object(decoded[1].clone()), json!({"value": 7}));
        assert_eq!(Value::Object(decoded[2].clone()), json!({"value": "x"}));
    }

    #[test]
    fn invalid_json_is_refused() {
        let mut r = JsonRows::new();
        for bad in [
            r#"{"id": 1"#,
            r#"{"id": 01}"#,
            "{} {}",
            "nul",
            r#"{"a": NaN}"#,
            "",
        ] {
            let err = r.push(bad.as_bytes()).unwrap_err();
            assert!(err.contains("not valid JSON"), "{bad}: {err}");
        }
        assert!(r.is_empty(), "nothing was kept");
    }

    #[test]
    fn split_and_append_keep_every_record() {
        let mut r = rows(&[r#"{"a":1}"#, r#"{"a":22}"#, r#"{"a":333}"#, r#"{"a":4}"#]);
        let front = r.take_front(3);
        assert_eq!(front.len(), 3);
        assert_eq!(front.get(2), Some(&br#"{"a":333}"#[..]));
        assert_eq!(r.get(0), Some(&br#"{"a":4}"#[..]));
        let mut joined = front;
        joined.append(&mut r);
        assert!(r.is_empty());
        assert_eq!(
            joined.iter().collect::<Vec<_>>(),
            [
                &br#"{"a":1}"#[..],
                br#"{"a":22}"#,
                br#"{"a":333}"#,
                br#"{"a":4}"#
            ]
        );
        assert_eq!(joined.take_front(0).len(), 0);
        assert_eq!(joined.take_front(9).len(), 4);
        assert!(joined.is_empty());
    }
}
