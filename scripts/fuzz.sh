#!/usr/bin/env bash
# Runs each cargo fuzz target (fuzz/fuzz_targets) for SECONDS seconds (default 60),
# starting from the committed seeds (fuzz/seeds/<target>). A crash stops the
# script with libFuzzer's report; the input that crashed is in fuzz/artifacts/.
#
# libFuzzer's instrumentation flags are nightly-only in rustc; RUSTC_BOOTSTRAP
# lets the project's pinned stable toolchain accept them. The targets are built
# in the dev profile (`--dev`): a few minutes instead of a long optimised build,
# fast enough for a brief run. Installs cargo-fuzz when it is missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
seconds="${1:-60}"

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz" >&2
  cargo install cargo-fuzz --version 0.13.2 --locked --quiet
fi
./scripts/fetch-duckdb.sh
export RUSTC_BOOTSTRAP=1
# The targets link the prebuilt DuckDB library (through the CLI crate).
export LD_LIBRARY_PATH="$PWD/.duckdb/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
for target in page_decoder config_parser template_mapping; do
  echo "fuzz: $target for ${seconds}s" >&2
  # New inputs go to the first corpus directory (git-ignored), never the seeds.
  mkdir -p "fuzz/corpus/$target"
  if ! cargo fuzz run --dev --sanitizer none "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    tail -n 60 "$log" >&2
    echo "fuzz: $target found a crash; the input is in fuzz/artifacts/$target" >&2
    exit 1
  fi
  grep -E '^stat::(number_of_executed_units|new_units_added)' "$log" | sed "s/^/fuzz: $target /" >&2 || true
done
