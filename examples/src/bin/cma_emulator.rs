//! Serves the Contentful Management API emulator on 127.0.0.1 until interrupted,
//! so a sync into "Contentful" can be tried locally.

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use serde_json::Value;
use sluicegate_examples::cma::{CmaConfig, CmaServer};

/// An emulator of the Contentful Management API: spaces, environments, locales,
/// content types, entries (queries, versions, publishing, bulk publish), rate
/// limits with the real headers.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8787")]
    addr: String,
    /// Environment variable holding the management token clients must send.
    #[arg(long, default_value = "CMA_EMULATOR_TOKEN")]
    token_env: String,
    /// The space id.
    #[arg(long, default_value = "space1")]
    space: String,
    /// The environment id.
    #[arg(long, default_value = "master")]
    environment: String,
    /// Locale codes, the default first.
    #[arg(long, value_delimiter = ',', default_value = "en-US")]
    locales: Vec<String>,
    /// A JSON file with an array of content types to start with
    /// (`{"sys": {"id": ...}, "name", "displayField", "fields": [...]}`).
    #[arg(long)]
    content_types: Option<std::path::PathBuf>,
    /// Requests per second allowed (announced in `X-Contentful-RateLimit-*` headers).
    #[arg(long, default_value_t = 7)]
    rate_limit: u32,
    /// Latency added to every response, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Write the bound port to this file once listening.
    #[arg(long)]
    port_file: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let token = std::env::var(&args.token_env).with_context(|| {
        format!(
            "environment variable {} is not set (the token clients must send)",
            args.token_env
        )
    })?;
    let content_types: Vec<Value> = match &args.content_types {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            serde_json::from_str(&text).with_context(|| {
                format!("{} is not a JSON array of content types", path.display())
            })?
        }
        None => Vec::new(),
    };
    let config = CmaConfig {
        token,
        space: args.space,
        environment: args.environment,
        locales: args
            .locales
            .iter()
            .enumerate()
            .map(|(i, l)| (l.clone(), i == 0))
            .collect(),
        content_types,
        rate_limit: Some(args.rate_limit),
        latency: Duration::from_millis(args.latency_ms),
        faults: Vec::new(),
        ..CmaConfig::default()
    };
    let server = CmaServer::start(config, &args.addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.addr))?;
    if let Some(path) = &args.port_file {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, server.addr().port().to_string())?;
        std::fs::rename(&tmp, path)?;
    }
    println!("cma emulator listening on {}", server.url());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    Ok(())
}
