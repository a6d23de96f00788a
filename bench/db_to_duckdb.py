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
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import RELEASE, ROOT, commit, machine, measured, mib, today

SIZES = [int(s) for s in os.environ.get("DB_SIZES", "100000,1000000").split(",")]
REPEAT = int(os.environ.get("REPEAT", "2"))


def start_postgres(workdir):
    out = workdir / "pg-url"
    proc = subprocess.Popen(["bash", ROOT / "scripts" / "db-server.sh", "postgres", str(os.getpid())],
                            stdout=open(out, "w"))
    for _ in range(600):
        if out.exists() and out.read_text().strip():
            return proc, out.read_text().strip()
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    sys.exit("PostgreSQL did not start (is it installed? scripts/test.sh installs it)")


def psql(url, sql):
    subprocess.run(["psql", "-q", "-v", "ON_ERROR_STOP=1", url, "-c", sql], check=True,
                   stdout=subprocess.DEVNULL)


def rows_written(out, key):
    for line in out.splitlines():
        cells = line.split()
        if cells and cells[0] == key:
            return int(cells[2].replace(",", ""))
    sys.exit(f"no summary row for {key}:\n{out}")


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
                psql(url, f"""
                    CREATE TABLE {table} (id bigint PRIMARY KEY, customer text NOT NULL, status text NOT NULL,
                        total numeric(12,2) NOT NULL, created_at timestamptz NOT NULL, items jsonb NOT NULL);
                    INSERT INTO {table}
                    SELECT i, 'customer-' || (i % 20011), (ARRAY['new','paid','shipped','returned'])[1 + i % 4],
                           (i % 100000) / 100.0, timestamptz '2024-01-01 00:00:00+00' + i * interval '7 seconds',
                           jsonb_build_array(jsonb_build_object('sku', 'sku-' || (i % 997), 'qty', 1 + i % 5))
                    FROM generate_series(1, {n}) i;""")
                psql(url, f"VACUUM ANALYZE {table}")
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
        "  default memory target (`--max-memory-mb 96`). Median of "
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
