//! Loads NDJSON files into a new DuckDB database with DuckDB's own
//! `read_json`, one table per file, at DuckDB's default settings: what DuckDB
//! itself takes to load the rows a sync fetches, from local files (used by the
//! benchmark scripts beside `shop-download --save-ndjson`). The schema is
//! inferred from every row (`sample_size = -1`): with DuckDB's default sample
//! (20,480 rows) a field that first appears later fails the load
//! ("has unknown key").

use std::time::Instant;

use anyhow::{Context, bail};
use clap::Parser;

/// Load every DIR/*.ndjson into DB as a table named after the file.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Directory of `<table>.ndjson` files.
    #[arg(long)]
    dir: std::path::PathBuf,
    /// The DuckDB database file to create (it must not exist).
    #[arg(long)]
    db: std::path::PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.db.exists() {
        bail!("{} exists; give a new file", args.db.display());
    }
    let mut files: Vec<_> = std::fs::read_dir(&args.dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "ndjson"))
        .collect();
    files.sort();
    let started = Instant::now();
    let conn = duckdb::Connection::open(&args.db)?;
    let mut rows = 0i64;
    for file in &files {
        let table = file
            .file_stem()
            .and_then(|s| s.to_str())
            .context("a file name that is not UTF-8")?;
        let path = file.display().to_string().replace('\'', "''");
        conn.execute_batch(&format!(
            "CREATE TABLE \"{table}\" AS SELECT * FROM read_json('{path}', format = 'newline_delimited', sample_size = -1)"
        ))
        .with_context(|| format!("loading {}", file.display()))?;
        rows += conn.query_row(&format!("SELECT count(*) FROM \"{table}\""), [], |r| {
            r.get::<_, i64>(0)
        })?;
    }
    drop(conn);
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({"rows": rows, "tables": files.len(), "seconds": seconds})
    );
    Ok(())
}
