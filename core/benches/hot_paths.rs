//! Core hot paths: mapping 1,000 records through `cute`-style templates, and the
//! upsert's classification of a 1,000-record batch against its cache (the
//! re-sync case: every record unchanged, no request).

// `criterion_group!` generates an undocumented function.
#![allow(missing_docs)]

use std::sync::Arc;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;
use sluicegate_core::testing::MemoryKeyedSink;
use sluicegate_core::{
    Batch, CacheConfig, ContentModel, FieldDef, FieldKind, Mapper, MappingConfig, MemoryBudget,
    Prefetch, Record, SinkWriter, StreamTarget, UpsertOptions, UpsertWriter, into_record,
};

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

fn model() -> ContentModel {
    let field = |id: &str, kind| FieldDef {
        id: id.into(),
        kind,
        localized: false,
        link_type: None,
        items: None,
    };
    ContentModel {
        name: "product".into(),
        display_field: Some("name".into()),
        fields: vec![
            field("sku", FieldKind::Symbol),
            field("name", FieldKind::Symbol),
            field("price", FieldKind::Number),
        ],
        locales: vec!["en-US".into()],
    }
}

fn mapped(n: usize) -> Vec<Record> {
    (0..n)
        .map(|i| {
            into_record(json!({
                "sku.en-US": format!("SKU-{i:05}"), "name.en-US": format!("Product {i}"),
                "price.en-US": format!("{}", i as f64 * 1.5),
            }))
        })
        .collect()
}

fn upsert(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let sink = Arc::new(MemoryKeyedSink::new(model(), "sku"));
    let options = UpsertOptions {
        dry_run: false,
        publish: false,
        cache: CacheConfig::default(),
        prefetch: Prefetch::Auto,
    };
    let target = StreamTarget::new("products", "product", Some("sku.en-US".into()));
    let mut writer = UpsertWriter::new(sink, target, options).unwrap();
    let budget = MemoryBudget::unlimited();
    let records = mapped(1_000);
    // The first write creates the entries and fills the cache.
    let ack = rt
        .block_on(writer.write(Batch::new(records.clone(), budget.empty_lease())))
        .unwrap();
    assert_eq!(ack.inserted, 1_000);
    let mut group = c.benchmark_group("upsert");
    group.throughput(Throughput::Elements(1_000));
    group.bench_function("classify 1000 unchanged records (cache hits)", |b| {
        b.iter_batched(
            || Batch::new(records.clone(), budget.empty_lease()),
            |batch| {
                let ack = rt.block_on(writer.write(batch)).unwrap();
                assert_eq!(ack.unchanged, 1_000);
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, mapping, upsert);
criterion_main!(benches);
