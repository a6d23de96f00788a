//! Serves the example shop API on 127.0.0.1 until interrupted.

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use sluicegate_examples::shop::{Resource, ShopConfig, ShopServer};

/// The example shop API: customers, orders, items, products, supplies and stores,
/// deterministic data, offset pagination with totals.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Number of orders; the other resources scale from it.
    #[arg(long, default_value_t = 10_000)]
    orders: u64,
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8765")]
    addr: String,
    /// Largest page served, whatever `limit` asks for.
    #[arg(long, default_value_t = 1000)]
    max_limit: u64,
    /// Require `Authorization: Bearer <token>` with the token from this environment variable.
    #[arg(long)]
    token_env: Option<String>,
    /// Latency added to every response, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Write the bound port to this file once listening (for scripts using port 0).
    #[arg(long)]
    port_file: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let token = match &args.token_env {
        Some(var) => Some(
            std::env::var(var).with_context(|| format!("environment variable {var} is not set"))?,
        ),
        None => None,
    };
    let config = ShopConfig {
        orders: args.orders,
        max_limit: args.max_limit,
        token,
        latency: Duration::from_millis(args.latency_ms),
        faults: Vec::new(),
    };
    let server = ShopServer::start(config, &args.addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.addr))?;
    if let Some(path) = &args.port_file {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, server.addr().port().to_string())?;
        std::fs::rename(&tmp, path)?;
    }
    let ds = server.dataset();
    let sizes: Vec<String> = Resource::ALL
        .iter()
        .map(|r| format!("{}={}", r.name(), ds.total(*r)))
        .collect();
    println!(
        "shop api listening on {} ({})",
        server.url(),
        sizes.join(", ")
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    server.shutdown().await;
    Ok(())
}
