"""Helpers shared by the benchmark scripts."""

import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RELEASE = ROOT / "target" / "release"


def measured(cmd, env=None):
    """Runs cmd in a fresh Python child so ru_maxrss belongs to cmd alone."""
    wrapper = (
        "import resource,subprocess,sys,time,json\n"
        "t=time.perf_counter()\n"
        "p=subprocess.run(sys.argv[1:],stdout=subprocess.PIPE,stderr=subprocess.PIPE,text=True)\n"
        "w=time.perf_counter()-t\n"
        "r=resource.getrusage(resource.RUSAGE_CHILDREN)\n"
        "print(json.dumps({'rc':p.returncode,'out':p.stdout,'err':p.stderr,'wall':w,"
        "'cpu':r.ru_utime+r.ru_stime,'rss':r.ru_maxrss*1024}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", wrapper, *map(str, cmd)], env=env,
                          stdout=subprocess.PIPE, text=True, check=True)
    res = json.loads(proc.stdout)
    if res["rc"] != 0:
        sys.exit(f"command failed ({res['rc']}): {' '.join(map(str, cmd))}\n{res['err']}")
    return res


def start_server(cmd, workdir, env=None, name="port"):
    """Starts a server binary with `--addr 127.0.0.1:0 --port-file`; returns (process, base URL)."""
    port_file = workdir / name
    proc = subprocess.Popen(
        [*map(str, cmd), "--addr", "127.0.0.1:0", "--port-file", str(port_file)],
        stdout=subprocess.DEVNULL,
        env=env,
    )
    for _ in range(200):
        if port_file.exists() and port_file.read_text():
            return proc, f"http://127.0.0.1:{port_file.read_text().strip()}"
        time.sleep(0.05)
    proc.kill()
    sys.exit(f"{cmd[0]} did not start")


def machine():
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        mem = f", {kb / 1024 / 1024:.0f} GiB RAM"
    except (OSError, AttributeError):
        pass
    return f"{os.cpu_count()} cores ({cpu}){mem}, {platform.system()} {platform.release()}"


def mib(b):
    return f"{b / 1024 / 1024:.1f} MiB"


def commit():
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, stdout=subprocess.PIPE,
                          text=True).stdout.strip() or "unknown"


def today():
    return time.strftime("%Y-%m-%d")


def rows_written(out, key):
    """Rows written for sync `key`, from sluicegate's summary table."""
    for line in out.splitlines():
        cells = line.split()
        if cells and cells[0] == key:
            return int(cells[2].replace(",", ""))
    sys.exit(f"no summary row for {key}:\n{out}")


def total_rows_written(out):
    """Rows written by every sync of a run, from sluicegate's summary table."""
    return sum(int(n.replace(",", "")) for n in re.findall(
        r"^(?!rows read|peak memory|memory monitor)\S+\s+\S+\s+([\d,]+)\s", out, re.M))


def start_postgres(workdir):
    """A throwaway PostgreSQL (scripts/db-server.sh), stopped with this process; (process, URL)."""
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


def create_orders_table(url, table, n):
    """The benchmarks' `orders` table of n rows: bigint key, text, numeric, timestamptz, jsonb."""
    psql(url, f"""
        CREATE TABLE {table} (id bigint PRIMARY KEY, customer text NOT NULL, status text NOT NULL,
            total numeric(12,2) NOT NULL, created_at timestamptz NOT NULL, items jsonb NOT NULL);
        INSERT INTO {table}
        SELECT i, 'customer-' || (i % 20011), (ARRAY['new','paid','shipped','returned'])[1 + i % 4],
               (i % 100000) / 100.0, timestamptz '2024-01-01 00:00:00+00' + i * interval '7 seconds',
               jsonb_build_array(jsonb_build_object('sku', 'sku-' || (i % 997), 'qty', 1 + i % 5))
        FROM generate_series(1, {n}) i;""")
    psql(url, f"VACUUM ANALYZE {table}")
