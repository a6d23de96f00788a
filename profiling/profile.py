#!/usr/bin/env python3
"""The memory-profiling harness.

    python3 profiling/profile.py SCENARIO [SCENARIO ...]   # scenarios/<name>.json
    python3 profiling/profile.py --compare                # classic vs streaming, 1k..1M records
    python3 profiling/profile.py --report                 # redraw RESULTS.md from the raw figures
    python3 profiling/profile.py --heap-profile SCENARIO  # also under jemalloc's heap profiler

For each scenario it starts the example shop API (release build) with the
scenario's number of orders, writes a configuration syncing the scenario's keys
into DuckDB, and runs `sluicegate sync-api` once per mode under a hard memory
limit: a memory cgroup (v2 `memory.max` or v1 `memory.limit_in_bytes`, swap
included where the kernel allows) when the machine lets it create one, otherwise
peak RSS is only measured, and the results say which. Each run writes
`--report`; the harness keeps from it and from the cgroup: peak and average
memory, rows, raw bytes received, requests by status, retries, errors, the memory
snapshots, request latency (from the report's histogram), what the memory
monitor did (samples over its threshold, partial batches flushed, sink reliefs,
batch shrinks, memory the allocator returned), and whether the kernel killed the
process (OOM). A scenario with `"sink": "contentful"` also starts the Contentful
Management API emulator (`cma-emulator`) and syncs customers into it.

`--heap-profile` builds sluicegate with jemalloc's heap profiler (cargo feature
`heap-profiling`, its own target directory), runs with `prof:true`, and keeps the
top allocation sites at the run's peak (`jeprof --text`) in the results.

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
from rest_to_cms import CONFIG as CMS_CONFIG, CONTENT_TYPE as CMS_CONTENT_TYPE  # noqa: E402

# Upper bounds (ms) of the report's latency buckets (`LATENCY_BOUNDS_MS` in core/src/stats.rs).
LATENCY_BOUNDS_MS = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000]
HEAP_TARGET = ROOT / "target" / "heap-profiling"
CMS_TOKEN = "profile-token"

WORK = HERE / "work"
RAW = WORK / "raw.json"
COMPARE_SIZES = [1_000, 10_000, 50_000, 100_000, 1_000_000]


def build(heap=False):
    subprocess.run(
        ["cargo", "build", "--release", "--locked", "-p", "sluicegate-cli", "-p", "sluicegate-examples", "--bins"],
        cwd=ROOT, check=True)
    if heap:
        subprocess.run(
            ["cargo", "build", "--release", "--locked", "-p", "sluicegate-cli", "--features", "heap-profiling"],
            cwd=ROOT, check=True, env=dict(os.environ, CARGO_TARGET_DIR=str(HEAP_TARGET)))


def jeprof():
    """jemalloc's jeprof script, built with the profiling-enabled jemalloc."""
    found = sorted(HEAP_TARGET.glob("release/build/tikv-jemalloc-sys-*/out/build/bin/jeprof"))
    return found[-1] if found else None


def heap_top(binary, work, lines=12):
    """The largest allocation sites at the run's peak: the last dump jemalloc wrote
    when its mapped memory reached a new high (`prof_gdump`), else the one at exit."""
    dumps = sorted(work.glob("heap.*.u*.heap"), key=lambda p: p.stat().st_mtime) \
        or sorted(work.glob("heap.*.heap"), key=lambda p: p.stat().st_mtime)
    script = jeprof()
    if not dumps or script is None:
        return None
    # Sorted by the bytes allocated under each function (cumulative); sluicegate's
    # own functions say which stage holds the memory (the flat figures all land in
    # jemalloc's backtrace function).
    out = subprocess.run(["perl", script, "--text", "--cum", "--show_bytes", binary, dumps[-1]],
                         capture_output=True, text=True)
    rows = [line for line in out.stdout.splitlines() if "sluicegate" in line and "(inline)" not in line]
    return rows[:lines] or [out.stderr.strip()[:300]]


def latency(stats):
    """p50, p95, p99 (ms, bucket bounds) and the mean (ms) of the report's request latency."""
    count = stats.get("latencyCount") or 0
    if not count:
        return None
    def quantile(q):
        want = count * q
        for bound, n in zip(LATENCY_BOUNDS_MS, stats["latencyBuckets"]):
            if n >= want:
                return bound
        return f">{LATENCY_BOUNDS_MS[-1]}"
    return {"p50": quantile(0.5), "p95": quantile(0.95), "p99": quantile(0.99),
            "mean": stats["latencyTotalUs"] / count / 1000}


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


def write_config(work, url, keys, page_size, cma_url=None):
    if cma_url is not None:
        # The bench's customers-into-Contentful configuration, at this page size.
        path = work / "sluicegate.yaml"
        path.write_text(CMS_CONFIG.format(cma=cma_url, shop=url).replace("pageSize: 1000", f"pageSize: {page_size}"))
        return path
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


def one_run(scenario, orders, keys, mode, work, heap=False):
    """Starts the API (and the CMS emulator), runs one mode, returns its figures."""
    cms = scenario.get("sink") == "contentful"
    # Port files of an earlier run in `work` would name a server that is gone.
    for stale in (f"port-{orders}-{mode}", f"cma-port-{mode}"):
        (work / stale).unlink(missing_ok=True)
    shop, url = start_server([RELEASE / "shop-api", "--orders", orders], work, name=f"port-{orders}-{mode}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICEGATE_")}
    env.update(CMA_EMULATOR_TOKEN=CMS_TOKEN, CMA_TOKEN=CMS_TOKEN)
    cma = cma_url = None
    try:
        if cms:
            (work / "ct.json").write_text(json.dumps([CMS_CONTENT_TYPE]))
            cma, cma_url = start_server(
                [RELEASE / "cma-emulator", "--rate-limit", str(scenario.get("cmaRateLimit", 100)),
                 "--content-types", work / "ct.json"], work, env=env, name=f"cma-port-{mode}")
        config = write_config(work, url, keys, scenario["pageSize"], cma_url)
        totals = api_totals(url, keys)
        report = work / f"report-{mode}.json"
        kept = ("shop.duckdb", "shop.duckdb.wal") if scenario.get("keepFile") else ()
        for stale in (report, work / "shop.duckdb", work / "shop.duckdb.wal"):
            if stale.name not in kept:
                stale.unlink(missing_ok=True)
        # `classic-4g`: classic mode with a memory target so high that the byte
        # budget never stops it, to show what holding everything costs.
        target = 4096 if mode == "classic-4g" else scenario["maxMemoryMb"]
        binary = (HEAP_TARGET / "release" / "sluicegate") if heap else (RELEASE / "sluicegate")
        for stale in work.glob("heap.*.heap"):
            stale.unlink()
        run_env = dict(env)
        if heap:
            # Sample about every 256 KiB allocated; dump the heap at each new peak and at exit.
            run_env["_RJEM_MALLOC_CONF"] = (
                f"prof:true,prof_gdump:true,prof_final:true,lg_prof_sample:18,prof_prefix:{work}/heap")
        cmd = [binary, "sync-api", "--config", config, "--apply", "--quiet",
               "--max-memory-mb", target, "--report", report, "--full-refresh",
               *(["--streaming"] if mode == "streaming" else []), *scenario["extraArgs"]]
        for key in keys:
            cmd += ["--key", key]
        res = run_limited(cmd, scenario.get("limitMb"), run_env)
    finally:
        for server in (shop, cma):
            if server is not None:
                server.kill()
                server.wait()
    rep = json.loads(report.read_text()) if report.exists() else None
    if cms:
        # A content platform has no row count: every record acknowledged and none failed.
        rows_in_tables = {s["syncKey"]: s["ack"]["rows"] - s["ack"]["failed"] for s in rep["streams"]} if rep else {}
    else:
        rows_in_tables = {s["syncKey"]: s["totalRows"] for s in rep["streams"]} if rep else {}
    killed = res["rc"] in (-9, 137) or res.get("oomKills", 0) > 0
    error = next((line[len("error: "):] for line in res["err"].splitlines() if line.startswith("error: ")), None)
    complete = rep is not None and not killed and all(
        rows_in_tables.get(k) == totals[k] for k in keys)
    return {
        "mode": mode, "orders": orders, "keys": keys, "rc": res["rc"], "wall": res["wall"],
        "limit": res["limit"], "enforced": res["enforced"], "oomKilled": killed,
        "complete": complete, "expectedRows": sum(totals.values()),
        "rowsInTables": sum(v or 0 for v in rows_in_tables.values()),
        "peakRss": rep["memory"]["peakRss"] if rep else res["maxRss"],
        "averageRss": rep["memory"]["averageRss"] if rep else None,
        "cgroupPeak": res.get("cgroupPeak"),
        "rawBytes": rep["stats"]["bytesReceived"] if rep else None,
        "requests": rep["stats"]["requests"] if rep else None,
        "statuses": rep["stats"]["statuses"] if rep else None,
        "retries": rep["stats"]["retries"] if rep else None,
        "rowsPerSec": (rep["stats"]["rowsWritten"] / res["wall"]) if rep else None,
        "processMaxRss": res["maxRss"],
        "budgetWaits": rep["budget"]["waits"] if rep else None,
        "growthSuspected": rep["memory"]["growthSuspected"] if rep else None,
        "snapshots": rep["memory"]["snapshots"] if rep else [],
        "latency": latency(rep["stats"]) if rep else None,
        "monitor": rep.get("memoryMonitor") if rep else None,
        "sink": "contentful" if cms else "duckdb",
        "heapTop": heap_top(binary, work) if heap else None,
        "error": error,
    }


def run_scenario(name, heap=False):
    scenario = json.loads((HERE / "scenarios" / f"{name}.json").read_text())
    results = []
    with tempfile.TemporaryDirectory(prefix=f"profile-{name}-") as tmp:
        # `variants`: the same streaming run with different flags, side by side.
        plan = [(mode, mode, scenario) for mode in scenario["modes"]]
        plan += [("streaming", f"streaming, {label}", dict(scenario, extraArgs=scenario["extraArgs"] + args))
                 for label, args in scenario.get("variants", {}).items()]
        # `resync`: the streaming run again into the file the one before left
        # (every row already there: upserts).
        if scenario.get("resync"):
            plan += [("streaming", "streaming, re-sync", dict(scenario, keepFile=True))]
        for mode, label, settings in plan:
            r = one_run(settings, scenario["orders"], scenario["keys"], mode, Path(tmp), heap)
            r["mode"] = label
            print(f"{name} {label}: rc {r['rc']}, complete {r['complete']}, peak {mib(r['peakRss'])}, "
                  f"{r['wall']:.1f} s, {r['limit']}" + (f", error: {r['error']}" if r["error"] else ""))
            results.append(r)
    streaming = [r for r in results if r["mode"].startswith("streaming")]
    if any(not r["complete"] for r in streaming):
        sys.exit(f"{name}: a streaming run did not sync every row")
    min_raw = scenario.get("minRawBytes")
    if min_raw and streaming and streaming[0]["rawBytes"] < min_raw:
        sys.exit(f"{name}: only {streaming[0]['rawBytes']} bytes of raw JSON; the scenario asks for {min_raw}")
    # A heap-profiled run is kept apart from the scenario's plain figures.
    return {"scenario": f"{name}+heap" if heap else name, "name": name, "description": scenario["description"],
            "config": scenario, "runs": results, "heapProfiled": heap}


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
        out += run_table(tiny["runs"]) + [""] + detail_table(tiny["runs"])
        for r in tiny["runs"]:
            if r["mode"] == "classic":
                out += ["", f"Classic mode: {'killed by the kernel (OOM)' if r['oomKilled'] else 'stopped'}"
                        + (f" with `error: {r['error']}`" if r["error"] else "") + "."]
        out += [""]
    compare = raw.get("compare")
    if compare:
        out += ["## Classic against streaming under 128 MB", "",
                "`python3 profiling/profile.py --compare`: the `orders` resource alone, N records, 128 MiB hard limit.",
                "`classic` and `streaming` run with `--max-memory-mb 96` (the default until the memory plan; now 128): classic mode stops with a",
                "clear memory error as soon as the source does not fit its byte budget. `classic-4g` is classic",
                "mode with `--max-memory-mb 4096`: inside the container the run lowers its target to the",
                "container's 128 MiB, so it holds the whole source up to that and then stops with the same clear",
                "error instead of being killed by the kernel.", "",
                "| records | mode | result | peak RSS | time | rows/s |", "|---:|---|---|---:|---:|---:|"]
        for r in compare["runs"]:
            rate = f"{r['rowsPerSec']:,.0f}" if r["complete"] else "-"
            out.append(f"| {r['orders']:,} | {r['mode']} | {result(r)} | {mib(r['peakRss'])} | {r['wall']:.1f} s | {rate} |")
        out += [""]
    names = ("baseline", "low-memory", "wide-container", "high-throughput", "stress", "cms", "pressure")
    for key in [*names, *(f"{n}+heap" for n in names)]:
        s = raw.get(key)
        if s:
            name = s.get("name", key)
            heap = s.get("heapProfiled")
            command = f"python3 profiling/profile.py {'--heap-profile ' if heap else ''}{name}"
            title = f"## Heap profile of `{name}`" if heap else f"## Scenario `{name}`"
            note = " Run under jemalloc's heap profiler (sampling costs some speed)." if heap else ""
            out += [title, "", s["description"] + note, "", f"`{command}`", ""]
            out += run_table(s["runs"]) + [""] + detail_table(s["runs"]) + [""]
            for r in s["runs"]:
                if r.get("heapTop"):
                    out += [f"Largest allocation sites at the peak ({r['mode']}, `jeprof --text --show_bytes`):",
                            "", "```text", *r["heapTop"], "```", ""]
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


def detail_table(runs):
    """Requests and their latency, and what the memory monitor did."""
    lines = ["| mode | requests | latency p50 / p95 / p99 (mean) | samples over threshold | flush requests | partial batches flushed | "
             "sink reliefs (cache entries dropped) | batch halved / grown back | allocator returned |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        lat = r.get("latency")
        lat_text = f"≤{lat['p50']} / ≤{lat['p95']} / ≤{lat['p99']} ms ({lat['mean']:.1f} ms)" if lat else "-"
        m = r.get("monitor") or {}
        if m:
            over = f"{m['overThreshold']} of {m['checks']}"
            requests = m.get("flushRequests", "-")
            flushed = f"{m['batchesFlushed']} ({m['rowsFlushed']:,} rows)"
            reliefs = f"{m['sinkReliefs']} ({m['cacheEntriesDropped']:,})"
            shrinks = f"{m['batchShrinks']} / {m['batchGrows']}"
            returned = f"{mib(m['bytesReturned'])} in {m['allocatorReleases']} purges"
        else:
            over = requests = flushed = reliefs = shrinks = returned = "-"
        lines.append(f"| {r['mode']} | {r['requests'] or '-'} | {lat_text} | {over} | {requests} | {flushed} | {reliefs} | "
                     f"{shrinks} | {returned} |")
    return lines


def main():
    args = sys.argv[1:]
    if not args:
        sys.exit(__doc__)
    WORK.mkdir(parents=True, exist_ok=True)
    heap = "--heap-profile" in args
    args = [a for a in args if a != "--heap-profile"]
    if args != ["--report"]:
        build(heap)
        raw = load_raw()
        for arg in args:
            entry = run_compare() if arg == "--compare" else run_scenario(arg, heap)
            raw[entry["scenario"]] = entry
            raw["_meta"] = {"machine": machine(), "commit": commit(), "date": today()}
            RAW.write_text(json.dumps(raw, indent=1))
    report()


if __name__ == "__main__":
    main()
