#!/usr/bin/env bash
# The whole test suite, from a fresh clone: fetches the prebuilt DuckDB library,
# checks formatting and lints, builds every crate, example and benchmark script,
# and runs every test (unit, integration, end-to-end CLI against local servers),
# and proves the Contentful emulator's fidelity with the official npm client.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*" >&2; }

step "fetching DuckDB"
./scripts/fetch-duckdb.sh

step "formatting"
cargo fmt --all -- --check

step "lints"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "tests"
cargo test --workspace --all-targets --locked
cargo test --workspace --doc --locked

step "CMA emulator fidelity (official contentful-management client)"
(cd examples/cma-fidelity && npm ci --no-audit --no-fund --silent)
cargo build --locked -p sluicegate-examples --bin cma-emulator
CMA_EMULATOR_BIN="$PWD/target/debug/cma-emulator" node --test examples/cma-fidelity/

step "benchmark scripts"
bash -n bench/run.sh
python3 -m py_compile bench/benchlib.py bench/rest_to_duckdb.py bench/rest_to_cms.py bench/http_source.py bench/report.py

step "all tests passed"
