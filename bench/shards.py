#!/usr/bin/env python3
"""Sharded runs: an API that answers each page after 50 ms, read by 1, 2 and 4 shards.

Starts the example shop API with ORDERS orders and `--latency-ms 50`, and a
throwaway PostgreSQL (the sink, and the run state: `state: { type: postgres }`).
Then, REPEAT times, alternating: the `orders` resource (pages of 1,000 with a total)
synced into a fresh PostgreSQL table by 1 process, by 2 shards at once
(`--shard 0/2`, `--shard 1/2`) and by 4. Records the wall time from the start of the
first shard to the end of the last, rows per second, and each shard's peak RSS (the
kernel's rusage of each child), checks that the table holds every order exactly
once, and writes the medians to bench/results/shards.md (a section of
bench/RESULTS.md).

Run it through bench/run.sh, which builds the release binaries first.

Environment: ORDERS (default 400000), REPEAT (3), LATENCY_MS (50).
"""

import os
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from benchlib import RELEASE, ROOT, commit, machine, measured, mib, start_postgres, start_server, today

ORDERS = int(os.environ.get("ORDERS", "400000"))
REPEAT = int(os.environ.get("REPEAT", "3"))
LATENCY_MS = int(os.environ.get("LATENCY_MS", "50"))
SHARDS = [1, 2, 4]

CONFIG = """version: 1
state: {{ type: postgres, connectionString: "{pg}" }}
sinks:
  pg: {{ type: postgres, connectionString: "{pg}" }}
syncs:
  - key: orders
    sink: pg
    table: {table}
    keyField: id
    source:
      type: http
      endPoint: "{url}/api/orders"
      resultsJsonPath: "$.data"
      pagination: {{ skipKey: offset, limitKey: limit, pageSize: 1000, totalPath: "$.meta.total" }}
"""


def count(pg, table):
    out = subprocess.run(["psql", "-At", pg, "-c", f"SELECT count(*), count(DISTINCT id) FROM {table}"],
                         check=True, stdout=subprocess.PIPE, text=True).stdout.strip()
    return tuple(int(x) for x in out.split("|"))


def run(work, pg, url, shards, rep):
    table = f"orders_{shards}_{rep}"
    conf = work / f"{table}.yaml"
    conf.write_text(CONFIG.format(pg=pg, url=url, table=table))
    env = dict(os.environ)
    env.pop("SLUICEGATE_MAX_MEMORY_MB", None)
    results = [None] * shards

    def one(i):
        cmd = [RELEASE / "sluicegate", "sync-api", "--key", "orders", "--streaming", "--apply", "--quiet",
               "--config", conf]
        if shards > 1:
            cmd += ["--shard", f"{i}/{shards}"]
        results[i] = measured(cmd, env)

    start = time.perf_counter()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(shards)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if any(r is None for r in results):
        raise SystemExit(f"a shard of the {shards}-shard run failed")
    rows, distinct = count(pg, table)
    if rows != ORDERS or distinct != ORDERS:
        raise SystemExit(f"{shards} shards wrote {rows} rows ({distinct} keys), expected {ORDERS}")
    return {"wall": wall, "rss": [r["rss"] for r in results]}


def main():
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        pg_server, pg = start_postgres(work)
        api, url = start_server([RELEASE / "shop-api", "--orders", str(ORDERS), "--latency-ms",
                                 str(LATENCY_MS)], work)
        try:
            runs = {n: [] for n in SHARDS}
            for rep in range(REPEAT):
                for n in SHARDS:
                    runs[n].append(run(work, pg, url, n, rep))
        finally:
            api.kill()
            pg_server.terminate()
    one = statistics.median(r["wall"] for r in runs[1])
    lines = [
        "## Sharded runs: an API with 50 ms per page",
        "",
        f"Measured {today()} at commit {commit()} on {machine()}, by `bench/run.sh shards` "
        f"(`bench/shards.py`): the example shop API's `orders` ({ORDERS:,} rows, pages of 1,000 with a "
        f"total, each answered after {LATENCY_MS} ms) synced into a fresh PostgreSQL table with the run "
        f"state in PostgreSQL, by 1 process and by 2 and 4 shards at once (`--shard I/N`), {REPEAT} "
        "alternating runs each, medians; every run checked to hold each order once.",
        "",
        "| shards | wall | rows/s | speed-up | peak RSS per shard (median, max) |",
        "|---|---|---|---|---|",
    ]
    for n in SHARDS:
        wall = statistics.median(r["wall"] for r in runs[n])
        rss = [x for r in runs[n] for x in r["rss"]]
        lines.append(f"| {n} | {wall:.2f} s | {ORDERS / wall:,.0f} | {one / wall:.2f}× | "
                     f"{mib(statistics.median(rss))}, {mib(max(rss))} |")
    four = statistics.median(r["wall"] for r in runs[4])
    lines += [
        "",
        f"Four shards read {one / four:.2f}× the rows per second of one process (target: 3.5×). The "
        "machine has 2 cores: the shards' CPU work (decoding, PostgreSQL's inserts on the same machine) "
        "competes, while the 50 ms waits overlap.",
        "",
    ]
    out = ROOT / "bench" / "results" / "shards.md"
    out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
