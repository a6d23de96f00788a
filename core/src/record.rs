//! Records and their memory accounting.
//!
//! A record is a JSON object (field order preserved). Sources that read other
//! shapes (CSV rows, database rows) convert into it; a non-object value from a
//! source is wrapped as `{"value": ...}` by [`into_record`].

use serde_json::{Map, Value};

/// One record: a JSON object whose field order is preserved.
///
/// A record is a JSON object (field order preserved). Sources that read other
/// shapes (CSV rows, database rows) convert into it; a non-object value from a
/// source is wrapped as `{"value": ...}` by [`into_record`].
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
/// One entry of an object (`indexmap` bucket): hash, key `String`, value slot.
const ENTRY: usize = 8 + std::mem::size_of::<String>() + VALUE_SLOT;

/// What the allocator really takes for a request of `n` bytes: glibc malloc
/// chunks carry an 8-byte header, are 16-byte aligned and at least 32 bytes.
fn chunk(n: usize) -> usize {
    if n == 0 {
        0
    } else {
        (n + 8).div_ceil(16).max(2) * 16
    }
}

/// Heap bytes of an object map: its entries vector and its hash index
/// (power-of-two buckets of 8 bytes plus a control byte each).
fn map_overhead(len: usize, capacity: usize) -> usize {
    if capacity == 0 {
        return 0;
    }
    let buckets = (len.max(capacity) * 8 / 7).next_power_of_two().max(4);
    chunk(capacity * ENTRY) + chunk(buckets * 9 + 16)
}

/// Approximate heap bytes held by a value, excluding its own slot.
///
/// This is what the memory budget accounts for a decoded record. It follows the
/// allocations of `serde_json` with `preserve_order` (an index map per object)
/// and the allocator's chunk overhead, so it tracks what the process really
/// holds (calibrated by the `record_size` test) rather than payload bytes.
pub fn approx_value_size(value: &Value) -> usize {
    match value {
        Value::Null | Value::Bool(_) | Value::Number(_) => 0,
        Value::String(s) => chunk(s.capacity()),
        Value::Array(items) => {
            chunk(items.capacity() * VALUE_SLOT)
                + items.iter().map(approx_value_size).sum::<usize>()
        }
        Value::Object(map) => approx_map_size(map),
    }
}

/// Approximate heap bytes held by a record (see [`approx_value_size`]).
pub fn approx_record_size(record: &Record) -> usize {
    std::mem::size_of::<Record>() + approx_map_size(record)
}

fn approx_map_size(map: &Map<String, Value>) -> usize {
    map_overhead(map.len(), map.len())
        + map
            .iter()
            .map(|(k, v)| chunk(k.capacity()) + approx_value_size(v))
            .sum::<usize>()
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
