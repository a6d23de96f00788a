//! The JSON page decoders against JSONTestSuite (`tests/data/json-test-suite`):
//! the streaming decoder accepts exactly the documents `serde_json` accepts,
//! whatever the chunking, at the root and under a member path, and yields the
//! same records; the issue's hand-found cases are rejected.

use serde_json::Value;
use sluicegate_adapters_http::{ResultsFormat, decode_body};
use sluicegate_core::into_record;

#[derive(serde::Deserialize)]
struct Case {
    name: String,
    input: String,
}

fn corpus() -> Vec<Case> {
    let text = include_str!("data/json-test-suite/parsing.json");
    serde_json::from_str(text).expect("the corpus is a JSON array")
}

/// The records `serde_json` sees in `body` at `path` (members only), or `None`
/// when it rejects the document.
fn oracle(body: &[u8], path: &[&str]) -> Option<Vec<Value>> {
    let mut doc: Value = serde_json::from_slice(body).ok()?;
    let mut node = &mut doc;
    for p in path {
        match node.get_mut(*p) {
            Some(n) => node = n,
            None => return Some(Vec::new()),
        }
    }
    Some(match node.take() {
        Value::Array(items) => items,
        Value::Null => Vec::new(),
        other => vec![other],
    })
}

fn check(name: &str, body: &[u8], path: &[&str]) -> bool {
    let want = oracle(body, path);
    let selector = path.join(".");
    for chunk in [1, 2, 3, 7, 64, body.len().max(1)] {
        let got = decode_body(ResultsFormat::Json, &selector, body, chunk);
        match (&want, &got) {
            (Some(want), Ok(got)) => {
                let want: Vec<_> = want.iter().cloned().map(into_record).collect();
                assert_eq!(
                    &want, got,
                    "{name} (path '{selector}', chunks of {chunk}): other records than serde_json"
                );
            }
            (None, Err(_)) => {}
            (Some(_), Err(e)) => {
                panic!(
                    "{name} (path '{selector}', chunks of {chunk}): serde_json accepts it, the decoder says: {e}"
                )
            }
            (None, Ok(records)) => panic!(
                "{name} (path '{selector}', chunks of {chunk}): serde_json rejects it, the decoder gave {records:?}"
            ),
        }
    }
    want.is_some()
}

#[test]
fn the_streaming_decoder_accepts_exactly_what_serde_json_accepts() {
    let cases = corpus();
    assert!(cases.len() > 300, "the corpus is there");
    let (mut accepted, mut rejected) = (0, 0);
    for case in &cases {
        let body = case.input.as_bytes();
        let ok = check(&case.name, body, &[]);
        if case.name.starts_with("y_") {
            assert!(ok, "{} must be accepted", case.name);
        }
        if case.name.starts_with("n_") && !case.input.contains('\u{FFFD}') {
            assert!(!ok, "{} must be rejected", case.name);
        }
        if ok {
            accepted += 1
        } else {
            rejected += 1
        }
        // The same document as the records member of an envelope.
        let mut wrapped = b"{\"meta\": {\"total\": 1}, \"data\": ".to_vec();
        wrapped.extend_from_slice(body);
        wrapped.extend_from_slice(b"}");
        check(&case.name, &wrapped, &["data"]);
    }
    assert!(
        accepted > 90 && rejected > 180,
        "{accepted} accepted, {rejected} rejected"
    );
}

#[test]
fn the_cases_found_by_hand_are_rejected_at_every_chunking() {
    for (body, path) in [
        (r#"[{"id":1} {"id":2}]"#, ""),
        (r#"[{"id":1},,{"id":2}]"#, ""),
        (r#"[{"id":1},]"#, ""),
        (r#"[,{"id":1}]"#, ""),
        ("[1 true]", ""),
        (r#"{"data":[1 2]}"#, "data"),
        ("", ""),
        ("  \n\t ", ""),
        ("", "data"),
        ("[\u{c}]", ""),
        ("[1,\u{c}2]", ""),
        (r#"{"data":[{"id":1}]} x"#, "data"),
        (r#"{"data":[{"id":1}],}"#, "data"),
        (r#"{"data":[{"id":1}}"#, "data"),
        (r#"["a" "b"]"#, ""),
    ] {
        let segments: Vec<&str> = path.split('.').filter(|s| !s.is_empty()).collect();
        assert!(
            oracle(body.as_bytes(), &segments).is_none(),
            "{body:?} is invalid JSON"
        );
        assert!(!check(body, body.as_bytes(), &segments));
    }
}

#[test]
fn nesting_is_limited_like_serde_json_counting_the_envelope() {
    for n in 120..132 {
        let nested = format!("{}{}", "[".repeat(n), "]".repeat(n));
        check(&format!("{n} levels"), nested.as_bytes(), &[]);
        let doc = format!(r#"{{"data": [{nested}, 1]}}"#);
        check(&format!("{n} levels under data"), doc.as_bytes(), &["data"]);
        let doc = format!(r#"{{"data": [{{"a": {nested}}}]}}"#);
        check(
            &format!("{n} levels in a record"),
            doc.as_bytes(),
            &["data"],
        );
    }
}

#[test]
fn a_grammar_error_names_what_was_expected_and_where() {
    let err = decode_body(
        ResultsFormat::Json,
        "data",
        br#"{"data":[{"id":1} {"id":2}]}"#,
        4,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("expected ',' or ']' after a record but found '{' at byte 18 (after 1 record"),
        "{err}"
    );
    let err = decode_body(ResultsFormat::Json, "data", b"  ", 1)
        .unwrap_err()
        .to_string();
    assert!(err.contains("the response body is empty"), "{err}");
}
