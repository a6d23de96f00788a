//! Downloads every page of the example shop API and discards it: the lower bound
//! a sync of the same pages can approach (used by the benchmark scripts). With
//! `--save-ndjson DIR` it keeps the records instead, one NDJSON file per
//! resource, for DuckDB's own `read_json` to load the same rows from local
//! files (`duckdb-read-json`).

use std::time::Instant;

use anyhow::{Context, bail};
use clap::Parser;

/// Fetch all pages of the six resources (or those given) sequentially, read each body, discard it.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Base URL of the shop API.
    #[arg(long, default_value = "http://127.0.0.1:8765")]
    url: String,
    /// Records per page (the `limit` parameter).
    #[arg(long, default_value_t = 1000)]
    page_size: u64,
    /// Write each resource's records to `DIR/<resource>.ndjson` (one record per
    /// line, as served) instead of discarding them.
    #[arg(long, value_name = "DIR")]
    save_ndjson: Option<std::path::PathBuf>,
    /// Only these resources, comma-separated (default: the six the API's index
    /// lists); `events,profiles` are the benchmark shapes the index leaves out.
    #[arg(long, value_delimiter = ',')]
    resources: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder().build()?;
    let mut resources = serde_json::Map::new();
    if args.resources.is_empty() {
        let index: serde_json::Value = client
            .get(format!("{}/api", args.url))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        resources = index["resources"]
            .as_object()
            .context("the API index has no resources")?
            .clone();
    }
    for name in &args.resources {
        let first: serde_json::Value = client
            .get(format!("{}/api/{name}", args.url))
            .query(&[("offset", 0), ("limit", 1)])
            .send()
            .await?
            .error_for_status()
            .with_context(|| format!("resource {name}"))?
            .json()
            .await?;
        let total = first["meta"]["total"]
            .as_u64()
            .with_context(|| format!("{name}: the page has no meta.total"))?;
        resources.insert(name.clone(), total.into());
    }
    let started = Instant::now();
    let (mut pages, mut bytes, mut rows) = (0u64, 0u64, 0u64);
    for (name, total) in resources {
        let total = total.as_u64().unwrap_or(0);
        let mut saved = match &args.save_ndjson {
            Some(dir) => Some(std::io::BufWriter::new(std::fs::File::create(
                dir.join(format!("{name}.ndjson")),
            )?)),
            None => None,
        };
        let mut offset = 0;
        loop {
            let response = client
                .get(format!("{}/api/{name}", args.url))
                .query(&[("offset", offset), ("limit", args.page_size)])
                .send()
                .await?;
            if !response.status().is_success() {
                bail!("{name} at offset {offset}: status {}", response.status());
            }
            let body = response.bytes().await?;
            bytes += body.len() as u64;
            if let Some(out) = &mut saved {
                save_records(&body, out).with_context(|| format!("{name} at offset {offset}"))?;
            }
            pages += 1;
            offset += args.page_size;
            if offset >= total {
                break;
            }
        }
        rows += total;
        if let Some(mut out) = saved {
            std::io::Write::flush(&mut out)?;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({"rows": rows, "pages": pages, "bytes": bytes, "seconds": seconds})
    );
    Ok(())
}

/// Writes the records of a page (`{"data": [...]}` or a bare array) as NDJSON.
fn save_records(body: &[u8], out: &mut impl std::io::Write) -> anyhow::Result<()> {
    let page: serde_json::Value = serde_json::from_slice(body)?;
    let records = match &page {
        serde_json::Value::Array(records) => records,
        other => other["data"]
            .as_array()
            .context("the page has no data array")?,
    };
    for record in records {
        serde_json::to_writer(&mut *out, record)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}
