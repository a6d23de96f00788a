//! Record keys: merging duplicates within a batch, and the order facts that let
//! a first load skip the upsert machinery.

use std::cmp::Ordering;
use std::collections::HashMap;

use serde_json::Value;
use sluicegate_core::{Error, ErrorKind, Record, Result};

/// A key value that can be ordered: integers numerically, strings by bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Key {
    Int(i64),
    Text(String),
    /// Any other JSON value (floats, booleans, large numbers): comparable for
    /// equality only, through its JSON text.
    Other(String),
}

impl Key {
    pub(crate) fn of(value: &Value) -> Option<Key> {
        match value {
            Value::Null => None,
            Value::Number(n) => Some(
                n.as_i64()
                    .map_or_else(|| Key::Other(n.to_string()), Key::Int),
            ),
            Value::String(s) => Some(Key::Text(s.clone())),
            other => Some(Key::Other(other.to_string())),
        }
    }

    /// Order between keys of the same kind; `None` across kinds or for `Other`.
    pub(crate) fn compare(&self, other: &Key) -> Option<Ordering> {
        match (self, other) {
            (Key::Int(a), Key::Int(b)) => Some(a.cmp(b)),
            (Key::Text(a), Key::Text(b)) => Some(a.cmp(b)),
            _ => None,
        }
    }

    fn text(&self) -> String {
        match self {
            Key::Int(i) => i.to_string(),
            Key::Text(s) | Key::Other(s) => s.clone(),
        }
    }
}

/// A batch after merging duplicate keys.
pub(crate) struct Merged {
    pub(crate) records: Vec<Record>,
    pub(crate) duplicates: u64,
    /// Smallest and largest key, when every key is of one orderable kind.
    pub(crate) range: Option<(Key, Key)>,
}

/// Keeps the last record of each key, in first-seen order. A batch whose keys
/// strictly increase (the common case for paginated sources) is passed through
/// without hashing. A record without a key is an error showing the record.
pub(crate) fn merge_duplicate_keys(records: Vec<Record>, key: Option<&str>) -> Result<Merged> {
    let Some(field) = key else {
        return Ok(Merged {
            records,
            duplicates: 0,
            range: None,
        });
    };
    let mut keys = Vec::with_capacity(records.len());
    for record in &records {
        match record.get(field).and_then(Key::of) {
            Some(k) => keys.push(k),
            None => {
                let shown: String = Value::Object(record.clone())
                    .to_string()
                    .chars()
                    .take(200)
                    .collect();
                return Err(Error::new(
                    ErrorKind::Sink,
                    format!("a record has no value for the key field '{field}'; fix keyField or the data"),
                )
                .with_context("record", shown));
            }
        }
    }
    let increasing = keys
        .windows(2)
        .all(|w| w[0].compare(&w[1]) == Some(Ordering::Less));
    if increasing {
        let range = match (keys.first(), keys.last()) {
            (Some(first), Some(last)) if !matches!(first, Key::Other(_)) => {
                Some((first.clone(), last.clone()))
            }
            _ => None,
        };
        return Ok(Merged {
            records,
            duplicates: 0,
            range,
        });
    }
    let mut index: HashMap<String, usize> = HashMap::with_capacity(records.len());
    let mut out: Vec<Record> = Vec::with_capacity(records.len());
    let mut duplicates = 0;
    let mut range: Option<(Key, Key)> = None;
    let mut orderable = true;
    for (record, key) in records.into_iter().zip(keys) {
        if orderable {
            range = match range.take() {
                None if !matches!(key, Key::Other(_)) => Some((key.clone(), key.clone())),
                None => {
                    orderable = false;
                    None
                }
                Some((lo, hi)) => match (key.compare(&lo), key.compare(&hi)) {
                    (Some(l), Some(h)) => Some((
                        if l == Ordering::Less { key.clone() } else { lo },
                        if h == Ordering::Greater {
                            key.clone()
                        } else {
                            hi
                        },
                    )),
                    _ => {
                        orderable = false;
                        None
                    }
                },
            };
        }
        match index.get(&key.text()) {
            Some(&at) => {
                out[at] = record;
                duplicates += 1;
            }
            None => {
                index.insert(key.text(), out.len());
                out.push(record);
            }
        }
    }
    Ok(Merged {
        records: out,
        duplicates,
        range,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use sluicegate_core::into_record;

    fn recs(values: Vec<Value>) -> Vec<Record> {
        values.into_iter().map(into_record).collect()
    }

    #[test]
    fn increasing_keys_pass_through_with_their_range() {
        let m = merge_duplicate_keys(
            recs(vec![json!({"id": 1}), json!({"id": 5}), json!({"id": 9})]),
            Some("id"),
        )
        .unwrap();
        assert_eq!(m.duplicates, 0);
        assert_eq!(m.range, Some((Key::Int(1), Key::Int(9))));
    }

    #[test]
    fn duplicates_keep_the_last_record_in_first_seen_order() {
        let m = merge_duplicate_keys(
            recs(vec![
                json!({"id": "b", "v": 1}),
                json!({"id": "a"}),
                json!({"id": "b", "v": 2}),
            ]),
            Some("id"),
        )
        .unwrap();
        assert_eq!(m.duplicates, 1);
        assert_eq!(m.records.len(), 2);
        assert_eq!(m.records[0]["v"], json!(2));
        assert_eq!(
            m.range,
            Some((Key::Text("a".into()), Key::Text("b".into())))
        );
    }

    #[test]
    fn mixed_kinds_have_no_range() {
        let m = merge_duplicate_keys(recs(vec![json!({"id": 2}), json!({"id": "1"})]), Some("id"))
            .unwrap();
        assert_eq!(m.range, None);
        let m = merge_duplicate_keys(
            recs(vec![json!({"id": 1.5}), json!({"id": 2.5})]),
            Some("id"),
        )
        .unwrap();
        assert_eq!(m.range, None);
    }
}
