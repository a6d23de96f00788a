//! The `http` source's page decoders on arbitrary bodies: they never panic, a
//! body decodes to the same records however the network splits it, and a JSON
//! body whose `data` member is an array of objects decodes to exactly those
//! objects (checked against `serde_json`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluicegate_adapters_http::{ResultsFormat, decode_body};

fuzz_target!(|input: &[u8]| {
    let Some((&control, body)) = input.split_first() else {
        return;
    };
    let format = match control % 3 {
        0 => ResultsFormat::Json,
        1 => ResultsFormat::Ndjson,
        _ => ResultsFormat::Csv,
    };
    let chunk = usize::from(control / 3).max(1);
    let whole = decode_body(format, "data", body, body.len().max(1));
    let split = decode_body(format, "data", body, chunk);
    match (&whole, &split) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "records depend on chunking ({chunk})"),
        (Err(_), Err(_)) => {}
        _ => panic!("chunking ({chunk}) changed success: {whole:?} vs {split:?}"),
    }
    if format == ResultsFormat::Json
        && let Ok(serde_json::Value::Object(doc)) = serde_json::from_slice(body)
        && let Some(serde_json::Value::Array(items)) = doc.get("data")
        && items.iter().all(serde_json::Value::is_object)
    {
        let want: Vec<_> = items
            .iter()
            .map(|v| v.as_object().cloned().unwrap_or_default())
            .collect();
        assert_eq!(whole.as_ref().ok(), Some(&want), "differs from serde_json");
    }
});
