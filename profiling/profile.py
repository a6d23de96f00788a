#!/usr/bin/env python3
"""The memory-profiling harness.

    python3 profiling/profile.py SCENARIO [SCENARIO ...]   # scenarios/<name>.json
    python3 profiling/profile.py --compare                # classic vs streaming, 1k..1M records
    python3 profiling/profile.py --report                 # redraw RESULTS.md from the raw figures

For each scenario it starts the example shop API (release build) with the
scenario's number of orders, writes a configuration syncing the scenario's keys
into DuckDB, and runs `sluicegate sync-api` once per mode under a hard memory
limit: a memory cgroup (v2 `memory.max` or v1 `memory.limit_in_bytes`, swap
included where the kernel allows) when the machine lets it create one, otherwise
peak RSS is only measured, and the results say which. Each run writes
`--report`; the harness keeps from it and from the cgroup: peak and average
memory, rows, raw bytes received, requests by status, retries, errors, the memory
snapshots, and whether the kernel killed the process (OOM).

A streaming run must end with every row of every key in DuckDB (checked against
the API's own totals); `--compare` is the side-by-side of classic and streaming
mode at 1k, 10k, 50k, 100k and 1M records under 128 MB.

Raw figures go to profiling/work/raw.json (kept between runs, one entry per
scenario); profiling/RESULTS.md is redrawn from them.
"""

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "bench"))
from benchlib import RELEASE, commit, machine, mib, start_server, today  # noqa: E402

WORK = HERE / "work"
RAW = WORK / "raw.json"
COMPARE_SIZES = [1_000, 10_000, 50_000, 100_000, 1_000_000]


def build():
    subprocess.run(
        ["cargo", "build", "--release", "--locked", "-p", "sluicegate-cli", "-p", "sluicegate-examples", "--bins"],
        cwd=ROOT, check=True)


class Limit:
    """A memory cgroup of `mb` MiB for one process, or None where none can be made."""

    def __init__(self, mb):
        self.mb, self.path, self.version = mb, None, None
        if mb is None:
            return
        name = f"sluicegate-profile-{os.getpid()}-{time.monotonic_ns()}"
        for version, base in (("v2", Path("/sys/fs/cgroup")), ("v1", Path("/sys/fs/cgroup/memory"))):
            marker = base / ("cgroup.controllers" if version == "v2" else "memory.limit_in_bytes")
            if not marker.exists():
                continue
            try:
                path = base / name
                path.mkdir()
                limit = str(mb << 20)
                if version == "v2":
                    (path / "memory.max").write_text(limit)
                    (path / "memory.swap.max").write_text("0")
                else:
                    (path / "memory.limit_in_bytes").write_text(limit)
                    swap = path / "memory.memsw.limit_in_bytes"
                    if swap.exists():
                        swap.write_text(limit)
                self.path, self.version = path, version
                return
            except OSError:
                continue

    def describe(self):
        if self.mb is None:
            return "no limit"
        if self.path is None:
            return f"{self.mb} MiB not enforced (no memory cgroup could be created; peak RSS measured only)"
        return f"{self.mb} MiB hard limit (memory cgroup {self.version})"

    def wrap(self, cmd):
        if self.path is None:
            return cmd
        return ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(self.path / "cgroup.procs"), *cmd]

    def figures(self):
        if self.path is None:
            return {}
        if self.version == "v2":
            events = dict(line.split() for line in (self.path / "memory.events").read_text().splitlines())
            peak = self.path / "memory.peak"
            return {"cgroupPeak": int(peak.read_text()) if peak.exists() else None,
                    "oomKills": int(events.get("oom_kill", 0))}
        oom = dict(line.split() for line in (self.path / "memory.oom_control").read_text().splitlines())
        return {"cgroupPeak": int((self.path / "memory.max_usage_in_bytes").read_text()),
                "oomKills": int(oom.get("oom_kill", 0))}

    def remove(self):
        if self.path is not None:
            for _ in range(50):
                try:
                    self.path.rmdir()
                    return
                except OSError:
                    time.sleep(0.1)


def run_limited(cmd, limit_mb, env):
    """Runs cmd under the limit; returns exit code, output, wall time, its peak RSS and cgroup figures."""
    limit = Limit(limit_mb)
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(limit.wrap([str(c) for c in cmd]), env=env, stdout=out, stderr=err, text=True)
        # wait4: this process's own peak RSS (the shell execs into sluicegate).
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        texts = out.read(), err.read()
    figures = limit.figures()
    limit.remove()
    return {"rc": proc.returncode, "out": texts[0], "err": texts[1], "wall": wall,
            "maxRss": usage.ru_maxrss * 1024, "limit": limit.describe(), "enforced": limit.path is not None,
            **figures}


def api_totals(url, keys):
    totals = {}
    for key in keys:
        with urllib.request.urlopen(f"{url}/api/{key}?offset=0&limit=1") as r:
            totals[key] = json.load(r)["meta"]["total"]
    return totals


def write_config(work, url, keys, page_size):
    lines = ["version: 1", "sinks:", "  warehouse: { type: duckdb, path: shop.duckdb }", "syncs:"]
    for key in keys:
        lines += [
            f"  - key: {key}", "    sink: warehouse", "    keyField: id", "    source:",
            "      type: http", f'      endPoint: "{url}/api/{key}"', '      resultsJsonPath: "$.data"',
            f'      pagination: {{ skipKey: offset, limitKey: limit, pageSize: {page_size}, totalPath: "$.meta.total" }}',
        ]
    path = work / "sluicegate.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def one_run(scenario, orders, keys, mode, work):
    """Starts the API, runs one mode, returns its figures."""
    shop, url = start_server([RELEASE / "shop-api", "--orders", orders], work, name=f"port-{orders}-{mode}")
    try:
        config = write_config(work, url, keys, scenario["pageSize"])
        totals = api_totals(url, keys)
        report = work / f"report-{mode}.json"
        for stale in (report, work / "shop.duckdb", work / "shop.duckdb.wal"):
            stale.unlink(missing_ok=True)
        # `classic-4g`: classic mode with a memory target so high that the byte
        # budget never stops it, to show what holding everything costs.
        target = 4096 if mode == "classic-4g" else scenario["maxMemoryMb"]
        cmd = [RELEASE / "sluicegate", "sync-api", "--config", config, "--apply", "--quiet",
               "--max-memory-mb", target, "--report", report, "--full-refresh",
               *(["--streaming"] if mode == "streaming" else []), *scenario["extraArgs"]]
        for key in keys:
            cmd += ["--key", key]
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICEGATE_")}
        res = run_limited(cmd, scenario.get("limitMb"), env)
    finally:
        shop.kill()
        shop.wait()
    rep = json.loads(report.read_text()) if report.exists() else None
    rows_in_tables = {s["sync_key"]: s["total_rows"] for s in rep["streams"]} if rep else {}
    complete = rep is not None and all(rows_in_tables.get(k) == totals[k] for k in keys)
    killed = res["rc"] in (-9, 137) or res.get("oomKills", 0) > 0
    error = next((line[len("error: "):] for line in res["err"].splitlines() if line.startswith("error: ")), None)
    return {
        "mode": mode, "orders": orders, "keys": keys, "rc": res["rc"], "wall": res["wall"],
        "limit": res["limit"], "enforced": res["enforced"], "oomKilled": killed,
        "complete": complete, "expectedRows": sum(totals.values()),
        "rowsInTables": sum(v or 0 for v in rows_in_tables.values()),
        "peakRss": rep["memory"]["peakRss"] if rep else res["maxRss"],
        "averageRss": rep["memory"]["averageRss"] if rep else None,
        "cgroupPeak": res.get("cgroupPeak"),
        "rawBytes": rep["stats"]["bytes_received"] if rep else None,
        "requests": rep["stats"]["requests"] if rep else None,
        "statuses": rep["stats"]["statuses"] if rep else None,
        "retries": rep["stats"]["retries"] if rep else None,
        "rowsPerSec": (rep["stats"]["rows_written"] / res["wall"]) if rep else None,
        "processMaxRss": res["maxRss"],
        "budgetWaits": rep["budget"]["waits"] if rep else None,
        "growthSuspected": rep["memory"]["growthSuspected"] if rep else None,
        "snapshots": rep["memory"]["snapshots"] if rep else [],
        "error": error,
    }


def run_scenario(name):
    scenario = json.loads((HERE / "scenarios" / f"{name}.json").read_text())
    results = []
    with tempfile.TemporaryDirectory(prefix=f"profile-{name}-") as tmp:
        for mode in scenario["modes"]:
            r = one_run(scenario, scenario["orders"], scenario["keys"], mode, Path(tmp))
            print(f"{name} {mode}: rc {r['rc']}, complete {r['complete']}, peak {mib(r['peakRss'])}, "
                  f"{r['wall']:.1f} s, {r['limit']}" + (f", error: {r['error']}" if r["error"] else ""))
            results.append(r)
    streaming = [r for r in results if r["mode"] == "streaming"]
    if any(not r["complete"] for r in streaming):
        sys.exit(f"{name}: a streaming run did not sync every row")
    min_raw = scenario.get("minRawBytes")
    if min_raw and streaming and streaming[0]["rawBytes"] < min_raw:
        sys.exit(f"{name}: only {streaming[0]['rawBytes']} bytes of raw JSON; the scenario asks for {min_raw}")
    return {"scenario": name, "description": scenario["description"], "config": scenario, "runs": results}


def run_compare():
    scenario = {"pageSize": 1000, "maxMemoryMb": 96, "limitMb": 128, "extraArgs": []}
    rows = []
    with tempfile.TemporaryDirectory(prefix="profile-compare-") as tmp:
        for n in COMPARE_SIZES:
            for mode in ("classic", "classic-4g", "streaming"):
                r = one_run(scenario, n, ["orders"], mode, Path(tmp))
                print(f"compare {n} {mode}: rc {r['rc']}, complete {r['complete']}, peak {mib(r['peakRss'])}, {r['wall']:.1f} s")
                rows.append(r)
    return {"scenario": "compare", "description": "classic vs streaming, orders only, 128 MB", "runs": rows}


def load_raw():
    return json.loads(RAW.read_text()) if RAW.exists() else {}


def report():
    raw = load_raw()
    meta = raw.get("_meta", {})
    out = ["# Memory profiling results", "",
           "Produced by `profiling/profile.py` (do not edit by hand). Every run syncs the example shop",
           "API into DuckDB with the release build, `--apply`, and writes `--report`; peak RSS is the",
           "kernel's high-water mark of the sluicegate process, average RSS its 250 ms samples. The",
           "cgroup peak also counts the page cache of the DuckDB file being written, which the kernel",
           "reclaims under the limit (so it can sit at the limit without any process memory pressure).",
           "For a run the kernel killed there is no report: its peak RSS is the process's `ru_maxrss`, which",
           "also counts the shared, file-backed pages of the mapped DuckDB library that the cgroup does",
           "not charge to it — hence figures above the limit.", ""]
    if meta:
        out += [f"- Machine: {meta['machine']}", f"- Commit: `{meta['commit']}`, date: {meta['date']}", ""]
    tiny = raw.get("tiny-container")
    if tiny:
        out += ["## Tiny container: 128 MB, more than 1 GB of raw JSON", "",
                "`python3 profiling/profile.py tiny-container` (scenario `profiling/scenarios/tiny-container.json`).", ""]
        out += run_table(tiny["runs"])
        for r in tiny["runs"]:
            if r["mode"] == "classic":
                out += ["", f"Classic mode: {'killed by the kernel (OOM)' if r['oomKilled'] else 'stopped'}"
                        + (f" with `error: {r['error']}`" if r["error"] else "") + "."]
        out += [""]
    compare = raw.get("compare")
    if compare:
        out += ["## Classic against streaming under 128 MB", "",
                "`python3 profiling/profile.py --compare`: the `orders` resource alone, N records, 128 MiB hard limit.",
                "`classic` and `streaming` run with the default `--max-memory-mb 96`: classic mode stops with a",
                "clear memory error as soon as the source does not fit its byte budget. `classic-4g` is classic",
                "mode with `--max-memory-mb 4096`, so the budget never stops it: it shows what holding the whole",
                "source costs, and the kernel kills it once that passes the container's 128 MiB.", "",
                "| records | mode | result | peak RSS | time | rows/s |", "|---:|---|---|---:|---:|---:|"]
        for r in compare["runs"]:
            rate = f"{r['rowsPerSec']:,.0f}" if r["complete"] else "-"
            out.append(f"| {r['orders']:,} | {r['mode']} | {result(r)} | {mib(r['peakRss'])} | {r['wall']:.1f} s | {rate} |")
        out += [""]
    for name in ("baseline", "high-throughput", "stress"):
        s = raw.get(name)
        if s:
            out += [f"## Scenario `{name}`", "", s["description"], "",
                    f"`python3 profiling/profile.py {name}`", ""]
            out += run_table(s["runs"]) + [""]
    (HERE / "RESULTS.md").write_text("\n".join(out))
    print(f"wrote {HERE / 'RESULTS.md'}")


def result(r):
    if r["complete"]:
        return "complete"
    if r["oomKilled"]:
        return "killed (OOM)"
    # The error's first clause (its figures are in the runs' raw data).
    return "stopped: " + (r["error"] or f"exit {r['rc']}").split(": ")[0]


def run_table(runs):
    lines = ["| mode | limit | result | rows | raw JSON | peak RSS | average RSS | cgroup peak | time | rows/s | requests | retries | budget waits |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        rate = f"{r['rowsPerSec']:,.0f}" if r["rowsPerSec"] else "-"
        raw_json = mib(r["rawBytes"]) if r["rawBytes"] else "-"
        average = mib(r["averageRss"]) if r["averageRss"] else "-"
        retries = r["retries"] if r["retries"] is not None else "-"
        waits = r["budgetWaits"] if r["budgetWaits"] is not None else "-"
        cgroup = mib(r["cgroupPeak"]) if r.get("cgroupPeak") else "-"
        lines.append(
            f"| {r['mode']} | {r['limit']} | {result(r)} | {r['rowsInTables']:,} of {r['expectedRows']:,} | "
            f"{raw_json} | {mib(r['peakRss'])} | {average} | {cgroup} | {r['wall']:.1f} s | {rate} | "
            f"{r['requests'] or '-'} | {retries} | {waits} |")
    return lines


def main():
    args = sys.argv[1:]
    if not args:
        sys.exit(__doc__)
    WORK.mkdir(parents=True, exist_ok=True)
    if args != ["--report"]:
        build()
        raw = load_raw()
        for arg in args:
            entry = run_compare() if arg == "--compare" else run_scenario(arg)
            raw[entry["scenario"]] = entry
            raw["_meta"] = {"machine": machine(), "commit": commit(), "date": today()}
            RAW.write_text(json.dumps(raw, indent=1))
    report()


if __name__ == "__main__":
    main()
