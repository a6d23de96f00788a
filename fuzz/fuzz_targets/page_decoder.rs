//! The `http` source's page decoders on arbitrary bodies: they never panic, a
//! body decodes to the same records however the network splits it, and a JSON
//! body decodes exactly when `serde_json` accepts it (both directions), to the
//! records `serde_json` sees at `data`.
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
    if format == ResultsFormat::Json {
        match serde_json::from_slice::<serde_json::Value>(body) {
            Err(e) => assert!(
                whole.is_err(),
                "serde_json rejects the body ({e}), the decoder accepted it: {whole:?}"
            ),
            Ok(mut doc) => {
                let items = match doc.get_mut("data").map(serde_json::Value::take) {
                    Some(serde_json::Value::Array(items)) => items,
                    None | Some(serde_json::Value::Null) => Vec::new(),
                    Some(other) => vec![other],
                };
                let want: Vec<_> = items.into_iter().map(sluicegate_core::into_record).collect();
                assert_eq!(whole.as_ref().ok(), Some(&want), "differs from serde_json");
            }
        }
    }
});
