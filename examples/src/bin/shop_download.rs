//! Downloads every page of the example shop API and discards it: the lower bound
//! a sync of the same pages can approach (used by the benchmark scripts).

use std::time::Instant;

use anyhow::{Context, bail};
use clap::Parser;

/// Fetch all pages of all six resources sequentially, read each body, discard it.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Base URL of the shop API.
    #[arg(long, default_value = "http://127.0.0.1:8765")]
    url: String,
    /// Records per page (the `limit` parameter).
    #[arg(long, default_value_t = 1000)]
    page_size: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder().build()?;
    let index: serde_json::Value = client
        .get(format!("{}/api", args.url))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let resources = index["resources"]
        .as_object()
        .context("the API index has no resources")?
        .clone();
    let started = Instant::now();
    let (mut pages, mut bytes, mut rows) = (0u64, 0u64, 0u64);
    for (name, total) in resources {
        let total = total.as_u64().unwrap_or(0);
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
            bytes += response.bytes().await?.len() as u64;
            pages += 1;
            offset += args.page_size;
            if offset >= total {
                break;
            }
        }
        rows += total;
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({"rows": rows, "pages": pages, "bytes": bytes, "seconds": seconds})
    );
    Ok(())
}
