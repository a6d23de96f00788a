//! Page decoding: one page of 1,000 shop orders (about 300 KB) decoded into
//! records from JSON (streamed at a dotted path, and buffered for a full
//! JSONPath), NDJSON and CSV, fed in 16 KiB chunks as from the network.

// `criterion_group!` generates an undocumented function.
#![allow(missing_docs)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::{Value, json};
use sluicegate_adapters_http::{ResultsFormat, decode_body};

fn orders(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            json!({
                "id": i, "customer_id": i % 997, "status": (["new", "paid", "shipped"][i % 3]),
                "total": (i as f64) * 1.25, "currency": "EUR",
                "created_at": "2024-05-01T10:00:00Z", "note": "deliver to the back door, please",
                "shipping": {"city": "Utrecht", "zip": "3511", "country": "NL"},
                "items": [{"sku": format!("SKU-{:04}", i % 500), "qty": 1 + i % 4}],
            })
        })
        .collect()
}

fn decoding(c: &mut Criterion) {
    let records = orders(1_000);
    let json_page =
        serde_json::to_vec(&json!({"data": records, "meta": {"total": 1_000_000}})).unwrap();
    let ndjson: Vec<u8> = records
        .iter()
        .flat_map(|r| {
            let mut line = serde_json::to_vec(r).unwrap();
            line.push(b'\n');
            line
        })
        .collect();
    let mut csv = b"id,customer_id,status,total,created_at\n".to_vec();
    for r in &records {
        csv.extend(
            format!(
                "{},{},{},{},{}\n",
                r["id"],
                r["customer_id"],
                r["status"].as_str().unwrap(),
                r["total"],
                r["created_at"].as_str().unwrap()
            )
            .bytes(),
        );
    }
    let mut group = c.benchmark_group("decode 1000 orders");
    group.throughput(Throughput::Elements(1_000));
    let cases: [(&str, ResultsFormat, &str, &[u8]); 4] = [
        (
            "json streamed ($.data)",
            ResultsFormat::Json,
            "$.data",
            &json_page,
        ),
        (
            "json buffered ($.data[*])",
            ResultsFormat::Json,
            "$.data[*]",
            &json_page,
        ),
        ("ndjson", ResultsFormat::Ndjson, "$", &ndjson),
        ("csv", ResultsFormat::Csv, "$", &csv),
    ];
    for (name, format, path, body) in cases {
        group.bench_function(name, |b| {
            b.iter(|| {
                let out = decode_body(format, path, body, 16 * 1024).unwrap();
                assert_eq!(out.len(), 1_000);
                out
            })
        });
    }
    group.finish();
}

criterion_group!(benches, decoding);
criterion_main!(benches);
