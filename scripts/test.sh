#!/usr/bin/env bash
# The whole test suite, from a fresh clone: fetches the prebuilt DuckDB library,
# checks formatting and lints, builds every crate, example and benchmark script,
# and runs every test (unit, integration, end-to-end CLI against local servers),
# and proves the Contentful emulator's fidelity with the official npm client.
# Starts throwaway PostgreSQL, MariaDB and Directus servers for the tests.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*" >&2; }

step "fetching DuckDB"
./scripts/fetch-duckdb.sh

step "database servers (PostgreSQL, MariaDB)"
# Debian's server packages, installed when missing; the servers themselves are
# throwaway instances on free ports, stopped when this script exits.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || ! command -v mariadbd >/dev/null; then
  sudo=()
  [[ "$(id -u)" == 0 ]] || sudo=(sudo)
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
    postgresql mariadb-server >/dev/null
fi
servers=()
trap 'for p in "${servers[@]}"; do kill "$p" 2>/dev/null || true; done' EXIT
start_server() { # kind, variable to export its URL in
  local out
  out="$(mktemp)"
  ./scripts/db-server.sh "$1" $$ >"$out" &
  servers+=($!)
  for _ in $(seq 1 600); do
    [[ -s "$out" ]] && break
    kill -0 "${servers[-1]}" 2>/dev/null || { echo "the $1 server did not start" >&2; exit 1; }
    sleep 0.1
  done
  export "$2=$(head -1 "$out")"
  rm -f "$out"
  echo "$1 server ready at ${!2##*@}" >&2
}
start_server postgres SLUICEGATE_TEST_POSTGRES_URL
start_server mariadb SLUICEGATE_TEST_MYSQL_URL

step "Directus (pinned in examples/directus-server; npm packages from its lockfile)"
directus_out="$(mktemp)"
./scripts/directus-server.sh $$ >"$directus_out" &
servers+=($!)
for _ in $(seq 1 3000); do
  [[ -s "$directus_out" ]] && break
  kill -0 "${servers[-1]}" 2>/dev/null || { echo "Directus did not start" >&2; exit 1; }
  sleep 0.1
done
export SLUICEGATE_TEST_DIRECTUS="$(head -1 "$directus_out")"
rm -f "$directus_out"
echo "Directus ready at ${SLUICEGATE_TEST_DIRECTUS%% *}" >&2

step "formatting"
cargo fmt --all -- --check

step "lints"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "API docs (no warnings)"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --workspace --locked

step "tests"
cargo test --workspace --all-targets --locked
cargo test --workspace --doc --locked

step "CMA emulator fidelity (official contentful-management client)"
(cd examples/cma-fidelity && npm ci --no-audit --no-fund --silent)
cargo build --locked -p sluicegate-examples --bin cma-emulator
CMA_EMULATOR_BIN="$PWD/target/debug/cma-emulator" node --test examples/cma-fidelity/

step "fuzzing (page decoder, configuration parser, template mapping; 20 s each)"
./scripts/fuzz.sh 20

step "benchmark and profiling scripts"
bash -n bench/run.sh
python3 -m py_compile bench/benchlib.py bench/rest_to_duckdb.py bench/rest_to_cms.py bench/http_source.py bench/db_to_duckdb.py bench/report.py profiling/profile.py

step "all tests passed"
