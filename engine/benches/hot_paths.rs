//! Engine hot path: mapping 1,000 records through `cute`-style templates.

// `criterion_group!` generates an undocumented function.
#![allow(missing_docs)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;
use sluicegate_core::{Record, into_record};
use sluicegate_engine::{Mapper, MappingConfig};

fn products(n: usize) -> Vec<Record> {
    (0..n)
        .map(|i| {
            into_record(json!({
                "sku": format!("SKU-{i:05}"), "name": format!("Product {i}"), "price": i as f64 * 1.5,
                "type": (["mug", "plate", "bowl"][i % 3]), "tags": ["red", "blue"],
                "dimensions": {"width_cm": 5 + i % 30},
            }))
        })
        .collect()
}

fn mapping(c: &mut Criterion) {
    let config: MappingConfig = serde_json::from_value(json!({
        "mapping": [
            {"fieldName": "sku.en-US", "expression": "{{ row.sku }}"},
            {"fieldName": "name.en-US", "expression": "{{ row.name | upper }}"},
            {"fieldName": "price.en-US", "expression": "{{ row.price }}"},
            {"fieldName": "kind.en-US", "expression": "{{ row.type }}"},
            {"fieldName": "tags.en-US[]", "expression": "{{ row.tags | join('|') }}"},
            {"fieldName": "width.en-US", "expression": "{{ row.dimensions.width_cm }}"},
        ],
        "filterExpression": "{{ row.type != 'bowl' }}",
    }))
    .unwrap();
    let mapper = Mapper::new(&config, &json!({})).unwrap();
    let rows = products(1_000);
    let mut group = c.benchmark_group("mapping");
    group.throughput(Throughput::Elements(1_000));
    group.bench_function("6 fields and a filter, 1000 records", |b| {
        b.iter(|| rows.iter().filter_map(|r| mapper.map(r).unwrap()).count())
    });
    group.finish();
}

criterion_group!(benches, mapping);
criterion_main!(benches);
