#!/usr/bin/env bash
# Benchmarks, from a fresh clone: builds the release binaries and runs the
# REST -> DuckDB benchmark, writing bench/RESULTS.md.
#
#   bench/run.sh                          # 100k and 1M orders, 3 runs each
#   SIZES=10000,100000 REPEAT=1 bench/run.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./scripts/fetch-duckdb.sh
cargo build --release --locked -p sluicegate-cli -p sluicegate-examples
python3 bench/rest_to_duckdb.py
