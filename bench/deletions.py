#!/usr/bin/env python3
"""Deletions benchmark: what keeping the keys a read sent costs, at a million keys.

Starts the example shop API with ORDERS orders and syncs its `orders` resource
(one key per order) into a fresh DuckDB file, alternating REPEAT times between
the entry without `deletes` and the same entry with `deletes: { mode: hard }`.
With deletes, every key the read sends goes into the temporary file of seen
keys, and after the read the table's keys are listed and each is looked up in
it (nothing is missing, so nothing is removed: the work measured is the
bookkeeping). Records wall time, CPU time and peak RSS of each run (the
kernel's rusage of the child) and writes the medians to
bench/results/deletions.md (a section of bench/RESULTS.md).

Run it through bench/run.sh, which builds the release binaries first.

Environment: ORDERS (default 1000000), REPEAT (3).
"""

import os
import statistics
import tempfile
from pathlib import Path

from benchlib import RELEASE, ROOT, commit, machine, measured, mib, start_server, today

ORDERS = int(os.environ.get("ORDERS", "1000000"))
REPEAT = int(os.environ.get("REPEAT", "3"))

CONFIG = """version: 1
sinks:
  warehouse: {{ type: duckdb, path: {db} }}
syncs:
  - key: orders
    sink: warehouse
    keyField: id
{deletes}    source:
      type: http
      endPoint: "{url}/api/orders"
      resultsJsonPath: "$.data"
      pagination: {{ skipKey: offset, limitKey: limit, pageSize: 1000, totalPath: "$.meta.total" }}
"""


def run(work, url, name, deletes):
    db = work / f"{name}.duckdb"
    for suffix in ("", ".wal"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    conf = work / f"{name}.yaml"
    conf.write_text(CONFIG.format(db=db.name, url=url, deletes=deletes))
    env = dict(os.environ)
    env.pop("SLUICEGATE_MAX_MEMORY_MB", None)
    res = measured([RELEASE / "sluicegate", "sync-api", "--key", "orders", "--streaming",
                    "--apply", "--quiet", "--config", conf], env)
    if deletes and "deletes (hard): removed 0 of the target's" not in res["out"]:
        raise SystemExit(f"the deletes run did not compare the keys:\n{res['out']}")
    return res


def main():
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        api, url = start_server([RELEASE / "shop-api", "--orders", str(ORDERS)], work)
        try:
            plain, deleting = [], []
            for _ in range(REPEAT):
                plain.append(run(work, url, "plain", ""))
                deleting.append(run(work, url, "deletes", "    deletes: { mode: hard }\n"))
        finally:
            api.kill()
    med = lambda runs, k: statistics.median(r[k] for r in runs)  # noqa: E731
    rows = [
        ("without `deletes`", plain),
        ("`deletes: { mode: hard }`", deleting),
    ]
    lines = [
        "## Deletions: the keys a read sent, at a million keys",
        "",
        f"Measured {today()} at commit {commit()} on {machine()}, by `bench/run.sh deletes` "
        f"(`bench/deletions.py`): the example shop API's `orders` ({ORDERS:,} keys) synced into a "
        f"fresh DuckDB file with default settings, {REPEAT} alternating runs each, medians. With "
        "`deletes`, every key sent is kept in the temporary SQLite file of seen keys; after the read "
        "the table's keys are listed 10,000 at a time and each is looked up there (none is missing, "
        "so nothing is removed).",
        "",
        "| entry | wall | CPU | peak RSS |",
        "|---|---|---|---|",
    ]
    for label, runs in rows:
        lines.append(f"| {label} | {med(runs, 'wall'):.2f} s | {med(runs, 'cpu'):.2f} s | "
                     f"{mib(med(runs, 'rss'))} |")
    ratio = med(deleting, "wall") / med(plain, "wall")
    rss = med(deleting, "rss") - med(plain, "rss")
    lines += [
        "",
        f"Keeping and comparing {ORDERS:,} keys took {ratio:.2f}× the wall time of the plain sync, "
        f"and {mib(abs(rss))} {'more' if rss >= 0 else 'less'} peak RSS (median against median).",
        "",
    ]
    out = ROOT / "bench" / "results" / "deletions.md"
    out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
