//! Incremental decoding of a JSON document's records array.
//!
//! [`ArrayScanner`] is fed the response body chunk by chunk and hands out each
//! element of the array at a dotted path (`data.items`, or the root) as soon as
//! its last byte has arrived, so records flow to the sink while a response of
//! hundreds of megabytes is still downloading. Everything outside that array (the
//! "skeleton": totals, cursors, next links) is kept, with the array left empty,
//! and parsed at the end for the pagination metadata.
//!
//! The scanner accepts exactly the documents `serde_json` accepts (RFC 8259),
//! however the body is split: each element is parsed by `serde_json` on its
//! own, the skeleton is parsed at the end, and the array's own grammar (a
//! comma between elements and nowhere else, JSON whitespace only) is checked
//! here, so the three together are the document.

use serde_json::Value;

/// The most bytes of skeleton kept; metadata beyond this is not expected.
const SKELETON_CAP: usize = 1 << 20;

/// JSON's insignificant whitespace (RFC 8259 section 2): not form feed or
/// vertical tab, which `u8::is_ascii_whitespace` would also take.
pub(crate) fn is_json_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// The deepest nesting `serde_json` accepts in a document (its recursion
/// limit): the records array's depth plus an element's own must stay within it.
const MAX_DEPTH: usize = 127;

/// What may come next between two elements of the records array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Right after `[`: an element or `]`.
    FirstOrEnd,
    /// After an element: `,` or `]`.
    CommaOrEnd,
    /// After a comma: an element.
    Element,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Frame {
    /// An object; `true` while a key is expected next.
    Object {
        expect_key: bool,
    },
    Array,
}

#[derive(Debug, PartialEq, Eq)]
enum Mode {
    /// Outside the target array.
    Outside,
    /// Inside the target array, between elements.
    Between(Expect),
    /// Inside one element of the target array.
    Element { depth: usize, container: bool },
}

/// Finds the records array in a JSON byte stream and yields its elements.
#[derive(Debug)]
pub(crate) struct ArrayScanner {
    path: Vec<String>,
    stack: Vec<Frame>,
    /// The last key read at each object depth (index = stack depth).
    keys: Vec<Option<String>>,
    mode: Mode,
    in_string: bool,
    escape: bool,
    /// Raw bytes of a key being read (only along the path).
    key_bytes: Option<Vec<u8>>,
    element: Vec<u8>,
    skeleton: Vec<u8>,
    found: bool,
    finished_target: bool,
    /// Bytes fed so far (for error messages).
    offset: u64,
    /// Elements handed out so far (for error messages).
    elements: u64,
    /// The first grammar error; nothing is scanned after it.
    error: Option<String>,
}

impl ArrayScanner {
    /// A scanner for the array at `path` (empty: the document itself).
    pub(crate) fn new(path: Vec<String>) -> Self {
        Self {
            path,
            stack: Vec::new(),
            keys: Vec::new(),
            mode: Mode::Outside,
            in_string: false,
            escape: false,
            key_bytes: None,
            element: Vec::new(),
            skeleton: Vec::new(),
            found: false,
            finished_target: false,
            offset: 0,
            elements: 0,
            error: None,
        }
    }

    /// Whether the records array was found.
    pub(crate) fn found(&self) -> bool {
        self.found
    }

    fn on_path(&self) -> bool {
        self.stack.len() == self.path.len()
            && self.stack.iter().all(|f| matches!(f, Frame::Object { .. }))
            && self
                .keys
                .iter()
                .zip(&self.path)
                .all(|(k, p)| k.as_deref() == Some(p.as_str()))
    }

    fn keep(&mut self, b: u8) {
        if self.skeleton.len() < SKELETON_CAP {
            self.skeleton.push(b);
        }
    }

    /// Feeds a chunk; complete elements are pushed to `out` as raw JSON bytes.
    /// An error says where the records array breaks JSON's grammar; the
    /// elements pushed before it are valid, but the document as a whole is not.
    pub(crate) fn feed(&mut self, chunk: &[u8], out: &mut Vec<Vec<u8>>) -> Result<(), String> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        let mut i = 0;
        while i < chunk.len() {
            match self.mode {
                Mode::Element { depth, container } => {
                    let n = self.element_run(&chunk[i..], depth, container, out);
                    self.offset += n as u64;
                    i += n;
                }
                Mode::Between(expect) => {
                    self.between_byte(chunk[i], expect);
                    self.offset += 1;
                    i += 1;
                }
                Mode::Outside => {
                    self.outside_byte(chunk[i]);
                    self.offset += 1;
                    i += 1;
                }
            }
            if let Some(e) = &self.error {
                return Err(e.clone());
            }
        }
        Ok(())
    }

    fn fail(&mut self, b: u8, what: &str) {
        let found = if b.is_ascii_graphic() {
            format!("'{}'", b as char)
        } else {
            format!("byte 0x{b:02x}")
        };
        self.error = Some(format!(
            "the response is not valid JSON: {what} but found {found} at byte {} (after {} record{} of the array)",
            self.offset,
            self.elements,
            if self.elements == 1 { "" } else { "s" }
        ));
    }

    /// An element's bytes are complete.
    fn element_done(&mut self, out: &mut Vec<Vec<u8>>) {
        // Copied out at its size; the buffer is kept for the next element.
        out.push(self.element.clone());
        self.element.clear();
        self.elements += 1;
    }

    /// Scans `bytes` inside an element for as long as it lasts, a run at a
    /// time (strings are searched for their closing quote or an escape)
    /// instead of byte by byte, and returns how many bytes it took. The byte
    /// after an element is taken too when it is a comma or whitespace; a `]`
    /// or `}` ending a scalar element is left for the caller.
    fn element_run(
        &mut self,
        bytes: &[u8],
        mut depth: usize,
        container: bool,
        out: &mut Vec<Vec<u8>>,
    ) -> usize {
        let mut i = 0;
        while i < bytes.len() {
            if self.in_string {
                if self.escape {
                    self.escape = false;
                    i += 1;
                    continue;
                }
                let Some(p) = memchr::memchr2(b'"', b'\\', &bytes[i..]) else {
                    i = bytes.len();
                    break;
                };
                i += p + 1;
                if bytes[i - 1] == b'\\' {
                    self.escape = true;
                    continue;
                }
                self.in_string = false;
                if !container && depth == 0 {
                    // A string element ends with its closing quote.
                    self.element.extend_from_slice(&bytes[..i]);
                    self.element_done(out);
                    self.mode = Mode::Between(Expect::CommaOrEnd);
                    return i;
                }
                continue;
            }
            let b = bytes[i];
            match b {
                b'"' => self.in_string = true,
                b'{' | b'[' => {
                    if self.stack.len() + depth + 1 > MAX_DEPTH {
                        self.element.extend_from_slice(&bytes[..i]);
                        // The message names this byte's offset.
                        let at = self.offset;
                        self.offset += i as u64;
                        self.fail(b, "nesting deeper than 127 levels");
                        self.offset = at;
                        return i;
                    }
                    depth += 1;
                }
                b'}' | b']' if depth == 0 => {
                    // A scalar element followed by the end of the array.
                    self.element.extend_from_slice(&bytes[..i]);
                    self.element_done(out);
                    self.mode = Mode::Between(Expect::CommaOrEnd);
                    return i;
                }
                b'}' | b']' => {
                    depth -= 1;
                    if depth == 0 {
                        self.element.extend_from_slice(&bytes[..=i]);
                        self.element_done(out);
                        self.mode = Mode::Between(Expect::CommaOrEnd);
                        return i + 1;
                    }
                }
                b',' if depth == 0 => {
                    self.element.extend_from_slice(&bytes[..i]);
                    self.element_done(out);
                    self.mode = Mode::Between(Expect::Element);
                    return i + 1;
                }
                b if is_json_space(b) && depth == 0 => {
                    self.element.extend_from_slice(&bytes[..i]);
                    self.element_done(out);
                    self.mode = Mode::Between(Expect::CommaOrEnd);
                    return i + 1;
                }
                _ => {}
            }
            i += 1;
        }
        self.element.extend_from_slice(&bytes[..i]);
        self.mode = Mode::Element { depth, container };
        i
    }

    fn between_byte(&mut self, b: u8, expect: Expect) {
        match b {
            b if is_json_space(b) => {}
            b',' if expect == Expect::CommaOrEnd => self.mode = Mode::Between(Expect::Element),
            b',' => self.fail(b, "expected a record"),
            b']' if expect == Expect::Element => {
                self.fail(b, "expected a record after the comma (a trailing comma)")
            }
            b']' => {
                // The records array ends; the skeleton keeps it empty.
                self.mode = Mode::Outside;
                self.finished_target = true;
                self.stack.pop();
                self.keys.pop();
                self.keep(b']');
                self.after_value();
            }
            _ if expect == Expect::CommaOrEnd => self.fail(b, "expected ',' or ']' after a record"),
            b'"' => {
                self.element.push(b);
                self.in_string = true;
                self.mode = Mode::Element {
                    depth: 0,
                    container: false,
                };
            }
            b'{' | b'[' => {
                if self.stack.len() + 1 > MAX_DEPTH {
                    self.fail(b, "nesting deeper than 127 levels");
                    return;
                }
                self.element.push(b);
                self.mode = Mode::Element {
                    depth: 1,
                    container: true,
                };
            }
            _ => {
                self.element.push(b);
                self.mode = Mode::Element {
                    depth: 0,
                    container: false,
                };
            }
        }
    }

    /// A value just ended in the current container.
    fn after_value(&mut self) {
        if let Some(Frame::Object { expect_key }) = self.stack.last_mut() {
            *expect_key = false;
        }
    }

    fn outside_byte(&mut self, b: u8) {
        self.keep(b);
        if self.in_string {
            if let Some(key) = &mut self.key_bytes {
                key.push(b);
            }
            if self.escape {
                self.escape = false;
            } else if b == b'\\' {
                self.escape = true;
            } else if b == b'"' {
                self.in_string = false;
                if let Some(raw) = self.key_bytes.take() {
                    let key: Option<String> = serde_json::from_slice(&raw).ok();
                    if let Some(slot) = self.keys.last_mut() {
                        *slot = key;
                    }
                }
            }
            return;
        }
        match b {
            b'"' => {
                self.in_string = true;
                let expecting_key =
                    matches!(self.stack.last(), Some(Frame::Object { expect_key: true }));
                if expecting_key {
                    self.key_bytes = Some(vec![b'"']);
                }
            }
            b'{' => {
                self.stack.push(Frame::Object { expect_key: true });
                self.keys.push(None);
            }
            b'[' => {
                let target = !self.found && !self.finished_target && self.on_path();
                self.stack.push(Frame::Array);
                self.keys.push(None);
                if target {
                    self.found = true;
                    self.mode = Mode::Between(Expect::FirstOrEnd);
                }
            }
            b'}' | b']' => {
                self.stack.pop();
                self.keys.pop();
                self.after_value();
            }
            b',' => {
                if let Some(Frame::Object { expect_key }) = self.stack.last_mut() {
                    *expect_key = true;
                }
            }
            b':' => {
                if let Some(Frame::Object { expect_key }) = self.stack.last_mut() {
                    *expect_key = false;
                }
            }
            _ => {}
        }
    }

    /// Ends the document: the skeleton, parsed (for totals, cursors, links).
    pub(crate) fn finish(self) -> Result<Value, String> {
        if self.in_string || self.mode != Mode::Outside || !self.stack.is_empty() {
            return Err(
                "the response ended in the middle of the document (truncated body?)".to_owned(),
            );
        }
        if self.skeleton.iter().all(|b| is_json_space(*b)) {
            return Err("the response body is empty (no JSON document)".to_owned());
        }
        serde_json::from_slice(&self.skeleton).map_err(|e| {
            let start: String =
                String::from_utf8_lossy(&self.skeleton[..self.skeleton.len().min(120)])
                    .chars()
                    .map(|c| if c.is_control() { ' ' } else { c })
                    .collect();
            format!("the response is not valid JSON ({e}); it starts with: {start}")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn scan(doc: &str, path: &[&str], chunk: usize) -> (Vec<Value>, Result<Value, String>, bool) {
        let mut s = ArrayScanner::new(path.iter().map(|p| (*p).to_owned()).collect());
        let mut out = Vec::new();
        for c in doc.as_bytes().chunks(chunk.max(1)) {
            s.feed(c, &mut out).unwrap();
        }
        let found = s.found();
        let values = out
            .iter()
            .map(|e| serde_json::from_slice(e).unwrap())
            .collect();
        (values, s.finish(), found)
    }

    const DOC: &str = r#"{"meta": {"total": 3, "next": "x,y]"}, "data": {"items": [ {"id": 1, "s": "a\"}],["}, [2, {"n": null}], "three", 4.5e1 , true, null ], "after": {"cursor": "c1"}}}"#;

    #[test]
    fn yields_every_element_at_every_chunking() {
        for chunk in [1, 2, 3, 7, 64, 10_000] {
            let (values, skeleton, found) = scan(DOC, &["data", "items"], chunk);
            assert!(found);
            assert_eq!(
                values,
                vec![
                    json!({"id": 1, "s": "a\"}],["}),
                    json!([2, {"n": null}]),
                    json!("three"),
                    serde_json::from_str::<Value>("4.5e1").unwrap(),
                    json!(true),
                    json!(null)
                ],
                "chunk {chunk}"
            );
            assert_eq!(values[3].as_f64(), Some(45.0), "numbers keep their text");
            let skeleton = skeleton.unwrap();
            assert_eq!(skeleton["meta"]["total"], json!(3));
            assert_eq!(skeleton["data"]["items"], json!([]));
            assert_eq!(skeleton["data"]["after"]["cursor"], json!("c1"));
        }
    }

    #[test]
    fn root_arrays_and_missing_paths() {
        let (values, skeleton, found) = scan("[{\"a\":1},{\"a\":2}]", &[], 3);
        assert!(found);
        assert_eq!(values.len(), 2);
        assert_eq!(skeleton.unwrap(), json!([]));
        let (values, _, found) = scan("{\"other\": [1, 2]}", &["data"], 4);
        assert!(!found);
        assert!(values.is_empty());
        let (values, _, found) = scan("{\"data\": []}", &["data"], 1);
        assert!(found && values.is_empty());
    }

    #[test]
    fn a_truncated_body_is_an_error() {
        let (values, skeleton, _) = scan("{\"data\": [{\"a\": 1}, {\"a\":", &["data"], 5);
        assert_eq!(values.len(), 1);
        assert!(skeleton.unwrap_err().contains("truncated"));
    }

    #[test]
    fn keys_with_escapes_and_nested_same_names() {
        let doc = r#"{"x": {"data": [9]}, "da\u0074a": [1, 2]}"#;
        let (values, _, _) = scan(doc, &["data"], 2);
        assert_eq!(
            values,
            vec![json!(1), json!(2)],
            "only the top-level path matches"
        );
    }
}
