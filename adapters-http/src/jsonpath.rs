//! JSONPath selectors for picking records and figures out of responses.
//!
//! Accepts full RFC 9535 JSONPath (`$.data[*]`, `$['@odata.nextLink']`) and the
//! short dotted form `data.items` that `cute` configurations use (the `$.` prefix
//! is added). Simple dotted paths are served without cloning: the selected array
//! is moved out of the response.

use serde_json::Value;
use serde_json_path::JsonPath;

use sluicegate_core::{Error, Result};

/// A compiled selector.
#[derive(Debug, Clone)]
pub struct JsonSelector {
    text: String,
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    /// `$` or a chain of plain member names.
    Members(Vec<String>),
    /// Anything else.
    Path(JsonPath),
}

fn is_plain_name(segment: &str) -> bool {
    !segment.is_empty()
        && segment
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl JsonSelector {
    /// Parses a selector; an invalid one is a configuration error quoting it.
    pub fn parse(text: &str) -> Result<Self> {
        let trimmed = text.trim();
        let full = if trimmed.starts_with('$') {
            trimmed.to_owned()
        } else if trimmed.is_empty() {
            "$".to_owned()
        } else {
            format!("$.{trimmed}")
        };
        let members = full.strip_prefix('$').and_then(|rest| {
            if rest.is_empty() {
                return Some(Vec::new());
            }
            let rest = rest.strip_prefix('.')?;
            let segments: Vec<&str> = rest.split('.').collect();
            segments
                .iter()
                .all(|s| is_plain_name(s))
                .then(|| segments.iter().map(|s| (*s).to_owned()).collect())
        });
        let kind = match members {
            Some(members) => Kind::Members(members),
            None => Kind::Path(
                JsonPath::parse(&full)
                    .map_err(|e| Error::config(format!("invalid JSONPath '{text}': {e}")))?,
            ),
        };
        Ok(Self {
            text: text.to_owned(),
            kind,
        })
    }

    /// For a plain chain of member names (`data.items`, `$`), the names; `None`
    /// for any other JSONPath.
    pub fn members(&self) -> Option<&[String]> {
        match &self.kind {
            Kind::Members(m) => Some(m),
            Kind::Path(_) => None,
        }
    }

    /// The selector as written in configuration.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The nodes the selector matches, by reference.
    pub fn select<'a>(&self, value: &'a Value) -> Vec<&'a Value> {
        match &self.kind {
            Kind::Members(members) => {
                let mut node = value;
                for m in members {
                    match node.get(m) {
                        Some(next) => node = next,
                        None => return Vec::new(),
                    }
                }
                vec![node]
            }
            Kind::Path(path) => path.query(value).all(),
        }
    }

    /// Takes the records the selector points at out of `value`:
    /// a single matched array yields its items, a single other value yields itself
    /// (one record), several matches yield one record each. `None` when nothing
    /// matched (so callers can tell "no such key" from "empty list").
    pub fn take_records(&self, value: &mut Value) -> Option<Vec<Value>> {
        match &self.kind {
            Kind::Members(members) => {
                let mut node = value;
                for m in members {
                    node = node.get_mut(m)?;
                }
                Some(match node.take() {
                    Value::Array(items) => items,
                    Value::Null => Vec::new(),
                    other => vec![other],
                })
            }
            Kind::Path(path) => {
                let nodes = path.query(value).all();
                match nodes.as_slice() {
                    [] => None,
                    [Value::Array(items)] => Some(items.clone()),
                    [Value::Null] => Some(Vec::new()),
                    _ => Some(nodes.into_iter().cloned().collect()),
                }
            }
        }
    }

    /// The first match as an unsigned integer (numbers, or numeric strings).
    pub fn select_u64(&self, value: &Value) -> Option<u64> {
        self.select(value).into_iter().find_map(|v| match v {
            Value::Number(n) => n.as_u64().or_else(|| n.as_f64().map(|f| f as u64)),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        })
    }

    /// The first match as a string (strings as they are, numbers printed).
    pub fn select_string(&self, value: &Value) -> Option<String> {
        self.select(value).into_iter().find_map(|v| match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dotted_and_full_forms_select_the_same_records() {
        for text in ["data.items", "$.data.items", "$.data.items[*]"] {
            let mut body = json!({"data": {"items": [{"id": 1}, {"id": 2}]}});
            let sel = JsonSelector::parse(text).unwrap();
            let records = sel.take_records(&mut body).unwrap();
            assert_eq!(records, vec![json!({"id": 1}), json!({"id": 2})], "{text}");
        }
    }

    #[test]
    fn root_array_and_single_object() {
        let mut body = json!([{"id": 1}]);
        assert_eq!(
            JsonSelector::parse("$")
                .unwrap()
                .take_records(&mut body)
                .unwrap()
                .len(),
            1
        );
        let mut body = json!({"user": {"id": 9}});
        let recs = JsonSelector::parse("user")
            .unwrap()
            .take_records(&mut body)
            .unwrap();
        assert_eq!(recs, vec![json!({"id": 9})]);
    }

    #[test]
    fn missing_path_is_none_and_null_is_empty() {
        let sel = JsonSelector::parse("$.items").unwrap();
        assert!(sel.take_records(&mut json!({"other": []})).is_none());
        assert_eq!(
            sel.take_records(&mut json!({"items": null})).unwrap().len(),
            0
        );
    }

    #[test]
    fn numbers_from_numbers_or_strings() {
        let sel = JsonSelector::parse("meta.total").unwrap();
        assert_eq!(sel.select_u64(&json!({"meta": {"total": 42}})), Some(42));
        assert_eq!(sel.select_u64(&json!({"meta": {"total": "42"}})), Some(42));
        assert_eq!(sel.select_u64(&json!({"meta": {}})), None);
    }

    #[test]
    fn invalid_paths_are_config_errors() {
        let err = JsonSelector::parse("$.items[?@.x ==").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid JSONPath '$.items[?@.x =='"),
            "{err}"
        );
        assert!(JsonSelector::parse("$['@odata.nextLink']").is_ok());
    }
}
