//! DuckDB appending: batches of 10,000 order-like records (integers, text, a
//! decimal-like float, a timestamp string and a nested object stored as JSON)
//! appended to an in-memory database by the `duckdb` sink, without upsert
//! (every batch is new rows) and with it (keyed on `id`, every batch replaces
//! the same rows).

// `criterion_group!` generates an undocumented function.
#![allow(missing_docs)]

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;
use sluicegate_core::{Batch, BuildContext, MemoryBudget, Record, Sink, StreamTarget, into_record};
use sluicegate_sinks_duckdb::{DuckDbSink, DuckDbSinkConfig};

const ROWS: usize = 10_000;

fn orders(from: usize) -> Vec<Record> {
    (from..from + ROWS)
        .map(|i| {
            into_record(json!({
                "id": i, "customer_id": i % 997, "status": (["new", "paid", "shipped"][i % 3]),
                "total": i as f64 * 1.25, "created_at": "2024-05-01T10:00:00Z",
                "shipping": {"city": "Utrecht", "zip": "3511"},
            }))
        })
        .collect()
}

fn appending(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let ctx = BuildContext::new("bench", false);
    let mut group = c.benchmark_group("duckdb");
    group.throughput(Throughput::Elements(ROWS as u64));
    group.sample_size(20);
    for (name, key) in [
        ("append 10000 new rows", None),
        ("upsert 10000 rows by id", Some("id")),
    ] {
        let sink = DuckDbSink::open(&DuckDbSinkConfig::new(":memory:"), &ctx).unwrap();
        let target = StreamTarget::new("orders", "orders", key.map(str::to_owned));
        let mut writer = rt.block_on(sink.open(target)).unwrap();
        let budget = MemoryBudget::unlimited();
        let mut next = 0;
        group.bench_function(name, |b| {
            b.iter_batched(
                || {
                    // New ids for appends; the same ids again for upserts.
                    let from = if key.is_some() { 0 } else { next };
                    next += ROWS;
                    Batch::new(orders(from), budget.empty_lease())
                },
                |batch| rt.block_on(writer.write(batch)).unwrap(),
                BatchSize::LargeInput,
            )
        });
        rt.block_on(writer.finish()).unwrap();
    }
    group.finish();
}

criterion_group!(benches, appending);
criterion_main!(benches);
