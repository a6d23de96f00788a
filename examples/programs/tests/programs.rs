//! Runs both example programs and checks what they print and write.

use std::path::Path;
use std::process::Command;

use serde_json::json;

fn duckdb_rows(db: &Path, sql: &str) -> Vec<Vec<String>> {
    let conn = duckdb::Connection::open(db).unwrap();
    let mut stmt = conn.prepare(sql).unwrap();
    let mut rows = stmt.query([]).unwrap();
    let mut out = Vec::new();
    while let Some(row) = rows.next().unwrap() {
        let n = row.as_ref().column_count();
        out.push((0..n).map(|i| row.get::<_, String>(i).unwrap()).collect());
    }
    out
}

#[test]
fn the_library_pipeline_loads_mapped_orders_into_duckdb() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("orders.duckdb");
    let out = Command::new(env!("CARGO_BIN_EXE_library-pipeline"))
        .arg(&db)
        .arg("3000")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let counts = duckdb_rows(
        &db,
        "SELECT CAST(count(*) AS VARCHAR), CAST(count(*) FILTER (status = 'RETURNED') AS VARCHAR) FROM orders",
    );
    let written: u64 = counts[0][0].parse().unwrap();
    assert_eq!(counts[0][1], "0", "returned orders are filtered out");
    assert!(written > 2000 && written < 3000, "{written}");
    assert!(
        stdout.starts_with(&format!(
            "orders: 3000 rows read, {} filtered out, {written} written ({written} new, 0 updated)",
            3000 - written
        )),
        "{stdout}"
    );
    assert!(stdout.contains("memory: budget peak"), "{stdout}");
    let columns = duckdb_rows(
        &db,
        "SELECT string_agg(column_name, ',' ORDER BY ordinal_position) FROM information_schema.columns WHERE table_name = 'orders'",
    );
    assert_eq!(columns[0][0], "id,customer,status,total,shipping");
}

#[test]
fn the_custom_cli_syncs_jsonl_files_into_the_json_files_store() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("data")).unwrap();
    let lines: String = (1..=120)
        .map(|i| format!("{}\n", json!({"sku": format!("sku-{i}"), "qty": i})))
        .collect();
    std::fs::write(dir.path().join("data/stock.jsonl"), lines).unwrap();
    let config = dir.path().join("files.yaml");
    std::fs::write(
        &config,
        "version: 1\nsinks:\n  store: { type: json_files, dir: store }\nsyncs:\n  - key: stock\n    sink: store\n    keyField: sku\n    source: { type: jsonl, path: data, linesPerPage: 50 }\n",
    )
    .unwrap();
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_custom-sluicegate"))
            .args([
                "sync-api",
                "--config",
                config.to_str().unwrap(),
                "--all",
                "--apply",
            ])
            .output()
            .unwrap()
    };
    let out = run();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row: Vec<&str> = stdout
        .lines()
        .find(|l| l.starts_with("stock"))
        .unwrap_or_else(|| panic!("{stdout}"))
        .split_whitespace()
        .collect();
    // key, table, rows, new, changed, unchanged, failed, ...
    assert_eq!(
        row[..7],
        ["stock", "stock", "120", "120", "0", "0", "0"],
        "{stdout}"
    );
    let stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("store/stock/sku-7.json")).unwrap())
            .unwrap();
    assert_eq!(stored, json!({"sku": "sku-7", "qty": 7}));

    // Unchanged data: nothing is written again.
    let out = run();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let row: Vec<&str> = stdout
        .lines()
        .find(|l| l.starts_with("stock"))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        row[..7],
        ["stock", "stock", "120", "0", "0", "120", "0"],
        "{stdout}"
    );
}
