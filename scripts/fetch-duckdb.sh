#!/usr/bin/env bash
# Fetches the prebuilt DuckDB shared library that `sinks-duckdb` links against.
#
# Compiling DuckDB from source (the duckdb crate's `bundled` feature) takes tens of
# minutes on a 2-core machine, so the workspace links a prebuilt `libduckdb.so`
# instead. DuckDB's own Node.js bindings publish that library (with the full C API,
# appender included) as an npm package; we take it from there, check its SHA-256 and
# place it in `.duckdb/lib/`, where `.cargo/config.toml` points the build and the
# binaries' rpath. See docs/building.md for the trade-offs.
#
# Idempotent: does nothing when the pinned version is already in place.
# Set DUCKDB_LIB_DIR yourself (to a directory holding libduckdb.so 1.5.6) to skip it.
set -euo pipefail

DUCKDB_PKG_VERSION="1.5.6-r.1"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$ROOT/.duckdb/lib"
STAMP="$DEST/.version"

case "$(uname -s)-$(uname -m)" in
  Linux-x86_64)
    PKG="@duckdb/node-bindings-linux-x64"
    SHA256="1b9f82478539bb9a1d1df44bd103121a12ae52142c07158dc52b97d2ec1d69ff"
    ;;
  *)
    echo "fetch-duckdb: no pinned prebuilt DuckDB for $(uname -s)-$(uname -m);" >&2
    echo "fetch-duckdb: set DUCKDB_LIB_DIR to a directory holding libduckdb 1.5.6, or build with the duckdb crate's 'bundled' feature" >&2
    exit 1
    ;;
esac

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$PKG@$DUCKDB_PKG_VERSION" && -f "$DEST/libduckdb.so" ]]; then
  exit 0
fi

if ! command -v npm >/dev/null 2>&1; then
  echo "fetch-duckdb: npm is needed to download $PKG@$DUCKDB_PKG_VERSION (install Node.js), or set DUCKDB_LIB_DIR" >&2
  exit 1
fi

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
echo "fetch-duckdb: downloading $PKG@$DUCKDB_PKG_VERSION" >&2
(cd "$WORK" && npm pack --silent "$PKG@$DUCKDB_PKG_VERSION" >/dev/null)
TARBALL="$(ls "$WORK"/*.tgz)"
ACTUAL="$(sha256sum "$TARBALL" | cut -d' ' -f1)"
if [[ "$ACTUAL" != "$SHA256" ]]; then
  echo "fetch-duckdb: checksum mismatch for $PKG@$DUCKDB_PKG_VERSION: expected $SHA256, got $ACTUAL" >&2
  exit 1
fi
tar -xzf "$TARBALL" -C "$WORK" package/libduckdb.so package/LICENSE
mkdir -p "$DEST"
mv "$WORK/package/libduckdb.so" "$DEST/libduckdb.so"
mv "$WORK/package/LICENSE" "$DEST/LICENSE"
echo "$PKG@$DUCKDB_PKG_VERSION" > "$STAMP"
echo "fetch-duckdb: installed libduckdb.so into .duckdb/lib" >&2
