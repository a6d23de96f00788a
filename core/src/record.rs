//! Records and their memory accounting.
//!
//! A record is a JSON object (field order preserved). Sources that read other
//! shapes (CSV rows, database rows) convert into it; a non-object value from a
//! source is wrapped as `{"value": ...}` by [`into_record`].

use serde_json::{Map, Value};

/// One record: a JSON object whose field order is preserved.
pub type Record = Map<String, Value>;

/// Converts any JSON value into a record: objects as they are, anything else
/// wrapped as `{"value": <v>}`.
pub fn into_record(value: Value) -> Record {
    match value {
        Value::Object(map) => map,
        other => {
            let mut map = Map::with_capacity(1);
            map.insert("value".to_owned(), other);
            map
        }
    }
}

/// Size of a `serde_json::Value` slot (the enum itself).
const VALUE_SLOT: usize = std::mem::size_of::<Value>();
/// Per-entry overhead of an object map: key `String`, value slot, hash and index.
const ENTRY_OVERHEAD: usize = std::mem::size_of::<String>() + VALUE_SLOT + 16;

/// Approximate heap bytes held by a value, including its own slot.
///
/// This is what the memory budget accounts for a decoded record. It follows the
/// allocations of `serde_json` with `preserve_order` (an index map per object),
/// rounding capacities up the way growth strategies do, so it tends to
/// over-estimate slightly rather than under-estimate.
pub fn approx_value_size(value: &Value) -> usize {
    VALUE_SLOT
        + match value {
            Value::Null | Value::Bool(_) | Value::Number(_) => 0,
            Value::String(s) => s.capacity(),
            Value::Array(items) => {
                items.capacity() * VALUE_SLOT + items.iter().map(approx_value_size).sum::<usize>()
                    - items.len() * VALUE_SLOT
            }
            Value::Object(map) => approx_map_size(map),
        }
}

/// Approximate heap bytes held by a record (see [`approx_value_size`]).
pub fn approx_record_size(record: &Record) -> usize {
    std::mem::size_of::<Record>() + approx_map_size(record)
}

fn approx_map_size(map: &Map<String, Value>) -> usize {
    map.iter()
        .map(|(k, v)| ENTRY_OVERHEAD + k.capacity() + approx_value_size(v) - VALUE_SLOT)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn non_objects_are_wrapped() {
        assert_eq!(into_record(json!(3)), into_record(json!({"value": 3})));
        let rec = into_record(json!({"a": 1}));
        assert_eq!(rec.get("a"), Some(&json!(1)));
    }

    #[test]
    fn size_grows_with_content() {
        let small = into_record(json!({"id": 1}));
        let big = into_record(json!({"id": 1, "name": "x".repeat(1000), "tags": ["a", "b"]}));
        assert!(approx_record_size(&small) > 0);
        assert!(approx_record_size(&big) > approx_record_size(&small) + 1000);
    }
}
