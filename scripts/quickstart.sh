#!/usr/bin/env bash
# The main job on the bundled example data, with no other service needed:
# builds sluicegate, starts the example shop API on 127.0.0.1, syncs all six
# resources into examples/shop.duckdb (streaming, applied) and prints the summary.
#
#   ORDERS=1000000 scripts/quickstart.sh         # a bigger dataset (default 100000)
#   scripts/quickstart.sh --max-memory-mb 16     # extra flags go to sync-api
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ORDERS="${ORDERS:-100000}"

./scripts/fetch-duckdb.sh
cargo build --release --locked -p sluicegate-cli -p sluicegate-examples

WORK="$(mktemp -d)"
API_PID=""
cleanup() {
  if [[ -n "$API_PID" ]]; then kill "$API_PID" 2>/dev/null || true; wait "$API_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

target/release/shop-api --orders "$ORDERS" --addr 127.0.0.1:0 --port-file "$WORK/port" &
API_PID=$!
for _ in $(seq 1 100); do [[ -s "$WORK/port" ]] && break; sleep 0.1; done
[[ -s "$WORK/port" ]] || { echo "quickstart: the example API did not start" >&2; exit 1; }

export SHOP_API_URL="http://127.0.0.1:$(cat "$WORK/port")"
target/release/sluicegate sync-api --config examples/sluicegate.yaml --all --streaming --apply "$@"
echo
echo "quickstart: the data is in examples/shop.duckdb (tables customers, orders, items, products, supplies, stores)"
