#!/usr/bin/env python3
"""Assembles bench/RESULTS.md from the sections in bench/results/."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = [
    "peers.md",
    "rest_to_duckdb.md",
    "http_source.md",
    "db_to_duckdb.md",
    "duckdb_alone.md",
    "rest_to_cms.md",
    "deletions.md",
    "shards.md",
]

parts = [
    "# Benchmark results",
    "",
    "Produced by `bench/run.sh` (do not edit by hand; each section is written by its script).",
    "",
]
for name in SECTIONS:
    path = ROOT / "bench" / "results" / name
    if path.exists():
        parts += [path.read_text().rstrip(), ""]
(ROOT / "bench" / "RESULTS.md").write_text("\n".join(parts))
