//! Template mapping on arbitrary templates and records: compiling a mapping
//! either fails with an error or gives a mapper that maps any record to a result
//! or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::json;
use sluicegate_core::into_record;
use sluicegate_engine::{Mapper, MappingConfig, MappingItem};

fuzz_target!(|input: &str| {
    // Field name, expression and record, separated by NUL characters.
    let mut parts = input.splitn(3, '\0');
    let (Some(field), Some(expression)) = (parts.next(), parts.next()) else {
        return;
    };
    let record = parts
        .next()
        .and_then(|r| serde_json::from_str(r).ok())
        .unwrap_or_else(|| json!({"id": 1, "name": "Mug", "tags": ["a", "b"], "price": 9.5}));
    let config = MappingConfig {
        pre_mapping: Vec::new(),
        mapping: vec![MappingItem::new(field, expression)],
        filter_expression: None,
    };
    let scope = json!({"env": {}, "config": {}});
    if let Ok(mapper) = Mapper::new(&config, &scope) {
        let _ = mapper.map(&into_record(record));
    }
});
