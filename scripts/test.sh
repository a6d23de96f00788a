#!/usr/bin/env bash
# The whole test suite, from a fresh clone: fetches the prebuilt DuckDB library,
# checks formatting and lints, builds every crate, example and benchmark script,
# and runs every test (unit, integration, end-to-end CLI against local servers).
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

step "benchmark scripts"
bash -n bench/run.sh
python3 -m py_compile bench/rest_to_duckdb.py

step "all tests passed"
