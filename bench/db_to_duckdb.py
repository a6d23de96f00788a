#!/usr/bin/env python3
"""PostgreSQL -> DuckDB benchmark.

Starts a throwaway PostgreSQL (scripts/db-server.sh), fills an `orders` table of
100,000 and one of 1,000,000 rows (bigint key, text, numeric, timestamptz, jsonb),
and syncs each into DuckDB with `sluicegate sync-api --streaming --apply`
(keyset paging on id, default memory target). Reports rows/s and peak RSS; the
target is a 1M-row peak RSS within 25% of the 100k-row run. As a floor, psql's
COPY of the same table to /dev/null (the server's own fastest export, no
conversion and no writes).

Writes bench/results/db_to_duckdb.md (a section of bench/RESULTS.md).
Environment: DB_SIZES (100000,1000000), REPEAT (2).
"""

import os
import statistics
import sys
import tempfile
from pathlib import Path

from benchlib import (RELEASE, ROOT, commit, create_orders_table, machine, measured, mib, rows_written,
                      start_postgres, today)

SIZES = [int(s) for s in os.environ.get("DB_SIZES", "100000,1000000").split(",")]
REPEAT = int(os.environ.get("REPEAT", "2"))


def main():
    env = dict(os.environ)
    env.pop("SLUICEGATE_MAX_MEMORY_MB", None)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        server, url = start_postgres(work)
        try:
            for n in SIZES:
                table = f"orders_{n}"
                create_orders_table(url, table, n)
                conf = work / f"{table}.yaml"
                conf.write_text(
                    f"version: 1\nsinks:\n  db: {{ type: duckdb, path: {table}.duckdb }}\nsyncs:\n"
                    f"  - key: orders\n    sink: db\n    keyField: id\n"
                    f"    source: {{ type: postgres, connectionString: '{url}', table: {table}, orderBy: id }}\n")
                runs = []
                for _ in range(REPEAT):
                    for f in work.glob(f"{table}.duckdb*"):
                        f.unlink()
                    run = measured([RELEASE / "sluicegate", "sync-api", "--config", conf, "--key", "orders",
                                    "--streaming", "--apply", "--quiet"], env)
                    got = rows_written(run["out"], "orders")
                    if got != n:
                        sys.exit(f"expected {n} rows, got {got}")
                    runs.append(run)
                copy = measured(["psql", "-q", url, "-c", f"\\copy {table} TO '/dev/null' CSV"], env)
                results[n] = (runs, copy)
        finally:
            server.terminate()

    lines = [
        "## PostgreSQL → DuckDB",
        "",
        f"- Machine: {machine()}",
        f"- Commit: `{commit()}`, date: {today()}",
        "- Table: `id bigint` key, `customer text`, `status text`, `total numeric(12,2)`, `created_at timestamptz`,",
        "  `items jsonb` (one-element array). Command: `sluicegate sync-api --key orders --streaming --apply`",
        "  with `type: postgres, table: orders_N, orderBy: id` (keyset paging, 1000 rows per fetch) and the",
        "  default memory target (the `balanced` preset, 128 MiB). Median of "
        f"{REPEAT} run(s); peak RSS is the largest of them.",
        "- Floor: `psql \\copy orders_N TO '/dev/null' CSV`, the server's own export with nothing converted or written.",
        "",
        "| rows | wall | rows/s | CPU | peak RSS | psql COPY floor |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    peaks = {}
    for n, (runs, copy) in results.items():
        wall = statistics.median(r["wall"] for r in runs)
        cpu = statistics.median(r["cpu"] for r in runs)
        peak = max(r["rss"] for r in runs)
        peaks[n] = peak
        lines.append(f"| {n:,} | {wall:.2f} s | {n / wall:,.0f} | {cpu:.2f} s | {mib(peak)} | {copy['wall']:.2f} s |")
    lines.append("")
    if len(peaks) >= 2:
        small, large = min(peaks), max(peaks)
        growth = peaks[large] / peaks[small] - 1
        lines += [
            f"Target: the {large:,}-row peak RSS within 25% of the {small:,}-row run → "
            f"{growth * 100:+.1f}%, {'met' if growth <= 0.25 else 'missed'}.",
            "",
        ]
    out = ROOT / "bench" / "results" / "db_to_duckdb.md"
    out.write_text("\n".join(lines))
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
