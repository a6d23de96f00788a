#!/usr/bin/env python3
"""DuckDB alone, loading the PostgreSQL benchmark's `orders` rows the way the sink does.

What the DuckDB sink's choices cost inside DuckDB, without Sluicegate around it: 1M rows
of the `orders` shape (bigint key, two short texts, a decimal, a timestamp, a small JSON
list) appended from Arrow in transactions of 5,000, 10,000 or 40,000 rows, into a file with 64 KiB
blocks, one thread and a 128 MiB limit, with a `CHECKPOINT` whenever the committed rows
DuckDB holds in memory reach 8 MiB (the sink's schedule). Each case prints its wall time,
the time spent in those checkpoints, and the row groups the table ends in:

- `vacuum`: DuckDB's default, checkpoints merge row groups (what the sink did after
  appends to narrow tables before);
- `no vacuum`: `max_vacuum_tasks = 0` (what the sink does after appends), with the
  decimal and the timestamp as exact text in `VARCHAR` columns (how the sink stored
  them before database sources declared their types);
- `typed`: no vacuum, with the decimal and the timestamp as `DECIMAL(12,2)` and
  `TIMESTAMPTZ` (what the sink stores now for PostgreSQL's `numeric(12,2)` and
  `timestamptz`).

Runs with the peers' environment (it has duckdb and pyarrow), and writes
bench/results/duckdb_alone.md (medians):
    bench/work/venv/bin/python bench/duckdb_alone.py       # after `bench/run.sh peers`
Environment: ROWS (1000000), REPEAT (3).
"""

import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import duckdb

ROWS = int(os.environ.get("ROWS", "1000000"))
REPEAT = int(os.environ.get("REPEAT", "3"))
ROOT = Path(__file__).resolve().parent.parent

SOURCE = (
    "SELECT i AS id, 'customer-' || (i % 20011) AS customer, "
    "['new', 'paid', 'shipped', 'returned'][1 + i % 4] AS status, {total} AS total, "
    "{created} AS created_at, "
    "'[{{\"qty\":' || (1 + i % 5) || ',\"sku\":\"sku-' || (i % 997) || '\"}}]' AS items "
    f"FROM range(1, {ROWS} + 1) t(i)"
)
TEXT = SOURCE.format(
    total="((i % 100000) / 100.0)::DECIMAL(12,2)::VARCHAR",
    created="strftime(TIMESTAMP '2024-01-01' + to_seconds(i * 7), '%Y-%m-%dT%H:%M:%SZ')",
)
TYPED = SOURCE.format(
    total="((i % 100000) / 100.0)::DECIMAL(12,2)",
    created="TIMESTAMPTZ '2024-01-01 00:00:00+00' + to_seconds(i * 7)",
)
COLUMNS = {
    "text": "id BIGINT, customer VARCHAR, status VARCHAR, total VARCHAR, created_at VARCHAR, items JSON",
    "typed": "id BIGINT, customer VARCHAR, status VARCHAR, total DECIMAL(12,2), created_at TIMESTAMPTZ, items JSON",
}
CHECKPOINT_AT = 8 << 20


def load(rows, columns, batch, vacuum, path):
    """Appends `rows` (an Arrow table) in transactions of `batch` rows."""
    con = duckdb.connect(path, config={"memory_limit": "128MB", "threads": 1,
                                       "default_block_size": "65536"})
    con.execute(f"CREATE TABLE orders ({columns})")
    if not vacuum:
        con.execute("SET max_vacuum_tasks = 0")
    started, in_checkpoints = time.perf_counter(), 0.0
    for start in range(0, rows.num_rows, batch):
        chunk = rows.slice(start, batch)  # noqa: F841 (read by the INSERT below)
        con.execute("BEGIN")
        con.execute("INSERT INTO orders SELECT * FROM chunk")
        con.execute("COMMIT")
        held = con.execute("SELECT coalesce(sum(memory_usage_bytes), 0) FROM duckdb_memory() "
                           "WHERE tag = 'IN_MEMORY_TABLE'").fetchone()[0]
        if held >= CHECKPOINT_AT:
            t = time.perf_counter()
            con.execute("CHECKPOINT")
            in_checkpoints += time.perf_counter() - t
    t = time.perf_counter()
    con.execute("CHECKPOINT")
    in_checkpoints += time.perf_counter() - t
    wall = time.perf_counter() - started
    groups = con.execute("SELECT count(DISTINCT row_group_id) FROM pragma_storage_info('orders')").fetchone()[0]
    con.close()
    return wall, in_checkpoints, groups, os.path.getsize(path)


def main():
    gen = duckdb.connect()
    tables = {"text": gen.sql(TEXT).to_arrow_table(), "typed": gen.sql(TYPED).to_arrow_table()}
    cases = [("vacuum", "text", True), ("no vacuum", "text", False), ("typed", "typed", False)]
    print(f"{ROWS:,} rows, DuckDB {duckdb.__version__}; wall s, of it in checkpoints s, row groups, file MiB")
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for batch in (5000, 10000, 40000):
            for rep in range(REPEAT):
                for name, kind, vacuum in cases:
                    path = os.path.join(tmp, f"{name.replace(' ', '-')}-{batch}-{rep}.duckdb")
                    run = load(tables[kind], COLUMNS[kind], batch, vacuum, path)
                    runs.setdefault((batch, name), []).append(run)
                    wall, ckpt, groups, size = run
                    print(f"batch {batch:>6,}  {name:<10} run {rep + 1}: {wall:5.2f} s, "
                          f"{ckpt:5.2f} s, {groups} row groups, {size / 2**20:5.1f} MiB", flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE).stdout.strip()
    lines = [
        "## DuckDB alone: what the sink's settings cost inside DuckDB",
        "",
        f"{ROWS:,} rows of the PostgreSQL benchmark's `orders` shape appended from Arrow by DuckDB "
        f"{duckdb.__version__} (Python) in transactions of 5,000, 10,000 (the sink's batches now) or 40,000 "
        "rows (`--preset throughput`'s), 64 KiB blocks, one "
        "thread, 128 MiB, a `CHECKPOINT` whenever committed rows held in memory reach 8 MiB (the "
        "sink's schedule). `vacuum`: DuckDB's default; `no vacuum`: `max_vacuum_tasks = 0`, what the "
        "sink sets before appended batches, the decimal and the timestamp as exact text in `VARCHAR` "
        "columns (how the sink stored them before); `typed`: no vacuum, the decimal and the timestamp "
        "as `DECIMAL(12,2)` and `TIMESTAMPTZ` (how the sink stores PostgreSQL's `numeric(12,2)` and "
        "`timestamptz` now). Medians of "
        f"{REPEAT} runs (`bench/work/venv/bin/python bench/duckdb_alone.py`, commit `{commit}`).",
        "",
        "| rows per transaction | case | wall | of it in checkpoints | row groups | file |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for (batch, name), got in runs.items():
        wall, ckpt = (statistics.median(r[i] for r in got) for i in (0, 1))
        lines.append(f"| {batch:,} | {name} | {wall:.2f} s | {ckpt:.2f} s | {got[-1][2]} | "
                     f"{got[-1][3] / 2**20:.1f} MiB |")
    (ROOT / "bench" / "results" / "duckdb_alone.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
