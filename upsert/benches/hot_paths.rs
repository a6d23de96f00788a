//! Upsert hot path: classifying a 1,000-record batch against the lookup cache
//! (the re-sync case: every record unchanged, no request).

// `criterion_group!` generates an undocumented function.
#![allow(missing_docs)]

use std::sync::Arc;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;
use sluicegate_core::{
    Batch, ContentModel, FieldDef, FieldKind, MemoryBudget, Record, SinkWriter, StreamTarget,
    into_record,
};
use sluicegate_testkit::doubles::MemoryKeyedSink;
use sluicegate_upsert::{UpsertOptions, UpsertWriter};

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
    let options = UpsertOptions::new(false, false);
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

criterion_group!(benches, upsert);
criterion_main!(benches);
