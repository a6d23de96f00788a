//! Sluicegate as a library: a pipeline assembled in Rust code, with no command
//! line and no configuration file.
//!
//! The example shop API runs in this process; its orders are read by the `http`
//! source (offset pagination, 500 per page), mapped with `cute`-style templates,
//! and written by the `duckdb` sink, under a 16 MiB memory budget. Progress is
//! printed to stderr while it runs, the summary to stdout.
//!
//! ```sh
//! library-pipeline [DUCKDB_FILE] [ORDERS]     # defaults: library.duckdb 20000
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluicegate_adapters_http::{HttpSource, HttpSourceConfig, OffsetPaging, Pagination};
use sluicegate_core::{
    BuildContext, MemoryBudget, RunStats, Sink, StreamTarget, format_bytes, template_scope_from_env,
};
use sluicegate_engine::{
    Mapper, MappingConfig, MappingItem, Pipeline, PipelineOptions, process_memory,
};
use sluicegate_examples::shop::{ShopConfig, ShopServer};
use sluicegate_sinks_duckdb::{DuckDbSink, DuckDbSinkConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args.next().unwrap_or_else(|| "library.duckdb".to_owned());
    let orders: u64 = match args.next() {
        Some(n) => n
            .parse()
            .map_err(|_| format!("ORDERS must be a number, not '{n}'"))?,
        None => 20_000,
    };

    // The data: the example shop API on a free local port.
    let config = ShopConfig {
        orders,
        ..ShopConfig::default()
    };
    let api = ShopServer::start(config, "127.0.0.1:0").await?;

    // The source: GET /api/orders?offset=..&limit=500 until meta.total is reached.
    let ctx = BuildContext::new("orders", false);
    let mut source = HttpSourceConfig::new(format!("{}/api/orders", api.url()));
    source.results_json_path = Some("$.data".to_owned());
    source.pagination = Some(Pagination::Offset(OffsetPaging {
        page_size: 500,
        total_path: Some("$.meta.total".to_owned()),
        ..OffsetPaging::default()
    }));
    let source = Arc::new(HttpSource::new(&source, &ctx)?);

    // The mapping: which fields to keep, renamed and reshaped.
    let mapping = MappingConfig {
        mapping: vec![
            MappingItem::new("id", "{{ row.id }}"),
            MappingItem::new("customer", "{{ row.customer_id }}"),
            MappingItem::new("status", "{{ row.status | upper }}"),
            MappingItem::new("total", "{{ row.order_total }}"),
            MappingItem::new("shipping", "{{ row.shipping.method }}"),
        ],
        filter_expression: Some("{{ row.status != 'returned' }}".to_owned()),
        ..MappingConfig::default()
    };
    let mapper = Arc::new(Mapper::new(&mapping, &template_scope_from_env())?);

    // The sink: a DuckDB file; rows are upserted on `id`.
    let sink = DuckDbSink::open(&DuckDbSinkConfig::new(path.clone()), &ctx)?;
    let stats = Arc::new(RunStats::default());
    let mut target = StreamTarget::new("orders", "orders", Some("id".to_owned()));
    target.stats = stats.clone();
    let writer = sink.open(target).await?;

    // The pipeline, with a memory budget and live counters.
    let budget = MemoryBudget::from_mb(16);
    let pipeline = Pipeline::new("orders", "orders", source, writer)
        .budget(budget.clone())
        .stats(stats.clone())
        .mapper(mapper)
        .options(
            PipelineOptions::default()
                .with_batch_rows(2000)
                .with_transform_rows(None),
        );
    let started = Instant::now();
    let progress = {
        let stats = stats.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let s = stats.snapshot();
                eprintln!(
                    "progress: {} rows read, {} written, {} pages",
                    s.rows_read, s.rows_written, s.pages
                );
            }
        })
    };
    let report = pipeline.run().await;
    progress.abort();
    let report = report?;

    let s = stats.snapshot();
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "orders: {} rows read, {} filtered out, {} written ({} new, {} updated) into {path} in {elapsed:.2}s",
        s.rows_read, s.rows_filtered, report.ack.rows, report.ack.inserted, report.ack.updated
    );
    println!(
        "memory: budget peak {} of {}, process peak {}",
        format_bytes(budget.snapshot().peak),
        format_bytes(budget.capacity()),
        process_memory().map_or_else(
            || "unknown".to_owned(),
            |m| format_bytes(usize::try_from(m.peak_rss).unwrap_or(usize::MAX))
        ),
    );
    Ok(())
}
