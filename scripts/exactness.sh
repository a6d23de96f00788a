#!/usr/bin/env bash
# Runs the differential property suite (cli/tests/exactness.rs) on new seeds for
# as long as asked: every batch of cases starts at a random seed. Stops at the
# first failure, which names the seed that reproduces it.
#
#   scripts/exactness.sh [MINUTES]     # default 30
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
minutes="${1:-30}"
./scripts/fetch-duckdb.sh
cargo test --locked -p sluicegate-cli --test exactness --no-run >&2
end=$(( $(date +%s) + minutes * 60 ))
cases=0
while (( $(date +%s) < end )); do
  seed=$(( (RANDOM << 30) ^ (RANDOM << 15) ^ RANDOM ))
  if ! SLUICEGATE_EXACTNESS_SEED="$seed" SLUICEGATE_EXACTNESS_CASES=50 \
    cargo test --locked -q -p sluicegate-cli --test exactness >/tmp/exactness.$$.log 2>&1; then
    grep -E "seed [0-9]+|panicked" /tmp/exactness.$$.log >&2 || tail -40 /tmp/exactness.$$.log >&2
    rm -f /tmp/exactness.$$.log
    echo "exactness: failed after $cases cases" >&2
    exit 1
  fi
  cases=$(( cases + 50 ))
done
rm -f /tmp/exactness.$$.log
echo "exactness: $cases cases in $minutes minutes, no failure" >&2
