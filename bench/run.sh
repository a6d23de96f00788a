#!/usr/bin/env bash
# Benchmarks, from a fresh clone: builds the release binaries, runs each
# benchmark and assembles bench/RESULTS.md.
#
#   bench/run.sh                          # everything (about 65 minutes)
#   SIZES=10000,100000 REPEAT=1 CMS_SIZES=1000,10000 CMS_RATE_TEST=0 bench/run.sh
#   bench/run.sh duckdb                   # only REST -> DuckDB (or: http, db, duckdb-alone, cms, deletes, shards, peers)
#   bench/run.sh peers                    # against dlt (about 45 minutes; installs it from PyPI)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./scripts/fetch-duckdb.sh
cargo build --release --locked -p sluicegate-cli -p sluicegate-examples
which="${1:-all}"
if [[ "$which" == all || "$which" == duckdb ]]; then python3 bench/rest_to_duckdb.py; fi
if [[ "$which" == all || "$which" == http ]]; then python3 bench/http_source.py; fi
if [[ "$which" == all || "$which" == db ]]; then python3 bench/db_to_duckdb.py; fi
if [[ "$which" == all || "$which" == cms ]]; then python3 bench/rest_to_cms.py; fi
if [[ "$which" == all || "$which" == deletes ]]; then python3 bench/deletions.py; fi
if [[ "$which" == all || "$which" == shards ]]; then python3 bench/shards.py; fi
if [[ "$which" == all || "$which" == peers ]]; then python3 bench/peers.py; fi
# DuckDB alone, with the peers' environment (duckdb and pyarrow from PyPI).
if [[ "$which" == all || "$which" == duckdb-alone ]]; then
  [[ -x bench/work/venv/bin/python ]] || python3 bench/peers.py --install
  bench/work/venv/bin/python bench/duckdb_alone.py
fi
python3 bench/report.py
