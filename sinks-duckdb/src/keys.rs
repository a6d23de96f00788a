//! Record keys: merging duplicates within a batch, and the order facts that let
//! a first load skip the upsert machinery.

use std::cmp::Ordering;
use std::collections::HashMap;

use serde_json::Value;
use sluicegate_core::Record;

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

/// A record the sink cannot hold: its key (when it has one), why, and the record.
pub(crate) type Refused = (Option<String>, String, Record);

/// A batch after merging duplicate keys.
pub(crate) struct Merged {
    pub(crate) records: Vec<Record>,
    pub(crate) duplicates: u64,
    /// Records without a key, or with a field name DuckDB cannot hold.
    pub(crate) refused: Vec<Refused>,
    /// Smallest and largest key, when every key is of one orderable kind.
    pub(crate) range: Option<(Key, Key)>,
}

/// Why DuckDB cannot hold a field name as a column, if it cannot.
fn bad_name(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("a field name is empty")
    } else if name.contains('\0') {
        Some("a field name holds a NUL character")
    } else {
        None
    }
}

/// Keeps the last record of each key, in first-seen order. A batch whose keys
/// strictly increase (the common case for paginated sources) is passed through
/// without hashing. A record without a key, or with a field name that cannot be
/// a column, is refused alone (the rest of the batch goes on).
pub(crate) fn merge_duplicate_keys(records: Vec<Record>, key: Option<&str>) -> Merged {
    let mut refused = Vec::new();
    let records = refuse_bad_names(records, key, &mut refused);
    let Some(field) = key else {
        return Merged {
            records,
            duplicates: 0,
            refused,
            range: None,
        };
    };
    let records = refuse_missing_keys(records, field, &mut refused);
    let keys: Vec<Key> = records
        .iter()
        .filter_map(|r| r.get(field).and_then(Key::of))
        .collect();
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
        return Merged {
            records,
            duplicates: 0,
            refused,
            range,
        };
    }
    let (records, duplicates, range) = last_wins(records, keys);
    Merged {
        records,
        duplicates,
        refused,
        range,
    }
}

/// Refuses the records with a field DuckDB cannot name a column after.
fn refuse_bad_names(
    records: Vec<Record>,
    key: Option<&str>,
    refused: &mut Vec<Refused>,
) -> Vec<Record> {
    if !records
        .iter()
        .any(|r| r.keys().any(|k| bad_name(k).is_some()))
    {
        return records;
    }
    records
        .into_iter()
        .filter_map(|r| match r.keys().find_map(|k| bad_name(k)) {
            Some(why) => {
                let key = key
                    .and_then(|f| r.get(f))
                    .and_then(Key::of)
                    .map(|k| k.text());
                refused.push((
                    key,
                    format!("{why}; DuckDB cannot name a column so (rename it in a mapping)"),
                    r,
                ));
                None
            }
            None => Some(r),
        })
        .collect()
}

/// Refuses the records without a value for the key field.
fn refuse_missing_keys(
    records: Vec<Record>,
    field: &str,
    refused: &mut Vec<Refused>,
) -> Vec<Record> {
    if records
        .iter()
        .all(|r| r.get(field).and_then(Key::of).is_some())
    {
        return records;
    }
    records
        .into_iter()
        .filter(|r| {
            if r.get(field).and_then(Key::of).is_some() {
                return true;
            }
            refused.push((
                None,
                format!("no value for the key field '{field}' (missing or null)"),
                r.clone(),
            ));
            false
        })
        .collect()
}

/// One record per key, the last of each in the place of the first; the count
/// of records replaced, and the keys' range when they are all comparable.
fn last_wins(records: Vec<Record>, keys: Vec<Key>) -> (Vec<Record>, u64, Option<(Key, Key)>) {
    let mut index: HashMap<String, usize> = HashMap::with_capacity(records.len());
    let mut out: Vec<Record> = Vec::with_capacity(records.len());
    let mut duplicates = 0;
    let mut range: Option<(Key, Key)> = None;
    let mut orderable = true;
    for (record, key) in records.into_iter().zip(keys) {
        if orderable {
            range = widen(range, &key);
            orderable = range.is_some();
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
    (out, duplicates, range)
}

/// `range` widened to hold `key`; `None` when a key cannot be ordered.
fn widen(range: Option<(Key, Key)>, key: &Key) -> Option<(Key, Key)> {
    match range {
        None if !matches!(key, Key::Other(_)) => Some((key.clone(), key.clone())),
        None => None,
        Some((lo, hi)) => match (key.compare(&lo), key.compare(&hi)) {
            (Some(l), Some(h)) => Some((
                if l == Ordering::Less { key.clone() } else { lo },
                if h == Ordering::Greater {
                    key.clone()
                } else {
                    hi
                },
            )),
            _ => None,
        },
    }
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
        );
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
        );
        assert_eq!(m.duplicates, 1);
        assert_eq!(m.records.len(), 2);
        assert_eq!(m.records[0]["v"], json!(2));
        assert_eq!(
            m.range,
            Some((Key::Text("a".into()), Key::Text("b".into())))
        );
    }

    #[test]
    fn records_without_a_key_or_with_unusable_names_are_refused_alone() {
        let m = merge_duplicate_keys(
            recs(vec![
                json!({"id": 1}),
                json!({"id": null}),
                json!({"name": "no id"}),
                json!({"id": 4, "": "empty name"}),
                json!({"id": 5, "a\u{0}b": 1}),
                json!({"id": 6}),
            ]),
            Some("id"),
        );
        let kept: Vec<&Value> = m.records.iter().map(|r| &r["id"]).collect();
        assert_eq!(kept, [&json!(1), &json!(6)]);
        let refused: Vec<(Option<String>, &str)> = m
            .refused
            .iter()
            .map(|(k, why, _)| (k.clone(), why.as_str()))
            .collect();
        assert_eq!(refused.len(), 4);
        assert_eq!(refused[0].0, Some("4".into()));
        assert!(refused[0].1.starts_with("a field name is empty"));
        assert!(refused[1].1.starts_with("a field name holds a NUL"));
        assert_eq!(
            refused[2],
            (None, "no value for the key field 'id' (missing or null)")
        );
        // Without a key field, only the names matter.
        let m = merge_duplicate_keys(recs(vec![json!({"": 1}), json!({"a": 1})]), None);
        assert_eq!((m.records.len(), m.refused.len()), (1, 1));
    }

    #[test]
    fn mixed_kinds_have_no_range() {
        let m = merge_duplicate_keys(recs(vec![json!({"id": 2}), json!({"id": "1"})]), Some("id"));
        assert_eq!(m.range, None);
        let m = merge_duplicate_keys(
            recs(vec![json!({"id": 1.5}), json!({"id": 2.5})]),
            Some("id"),
        );
        assert_eq!(m.range, None);
    }
}
