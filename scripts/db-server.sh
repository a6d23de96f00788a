#!/usr/bin/env bash
# Starts a throwaway database server for tests and benchmarks: a fresh data
# directory in a temporary folder, a free port on 127.0.0.1, a database named
# "sluicegate". Prints one line, the connection URL, once the server accepts
# connections; stops the server and removes its data when the process whose id
# is WATCH_PID (default: the caller) exits, or on SIGTERM.
#
#   scripts/db-server.sh postgres [WATCH_PID]   # PostgreSQL (Debian's binaries)
#   scripts/db-server.sh mariadb  [WATCH_PID]   # MariaDB / MySQL
#
# Installs nothing; scripts/test.sh installs the packages when they are missing.
set -euo pipefail
kind="${1:?postgres or mariadb}"
watch="${2:-$PPID}"

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

dir="$(mktemp -d -t "sluicegate-$kind-XXXXXX")"
port="$(free_port)"
log="$dir/server.log"

case "$kind" in
  postgres)
    bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
    [[ -x "$bin/initdb" ]] || { echo "db-server: PostgreSQL is not installed (apt-get install postgresql)" >&2; exit 1; }
    as_owner=()
    if [[ "$(id -u)" == 0 ]]; then
      # initdb refuses to run as root: the cluster belongs to the postgres user.
      chown postgres "$dir"
      as_owner=(runuser -u postgres --)
    fi
    "${as_owner[@]}" "$bin/initdb" -D "$dir/data" -U sluicegate --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 >"$log" 2>&1
    "${as_owner[@]}" "$bin/postgres" -D "$dir/data" -p "$port" -k "$dir" -c listen_addresses=127.0.0.1 \
      -c fsync=off -c full_page_writes=off -c synchronous_commit=off >>"$log" 2>&1 &
    server=$!
    for _ in $(seq 1 100); do
      "$bin/pg_isready" -q -h "$dir" -p "$port" && break
      sleep 0.1
    done
    "$bin/psql" -q -h "$dir" -p "$port" -U sluicegate -d postgres \
      -c "ALTER USER sluicegate PASSWORD 'sluicegate'" -c "CREATE DATABASE sluicegate" >>"$log" 2>&1
    url="postgres://sluicegate:sluicegate@127.0.0.1:$port/sluicegate"
    ;;
  mariadb)
    command -v mariadbd >/dev/null || { echo "db-server: MariaDB is not installed (apt-get install mariadb-server)" >&2; exit 1; }
    mariadb-install-db --no-defaults --datadir="$dir/data" --auth-root-authentication-method=normal \
      --user="$(id -un)" >"$log" 2>&1
    mariadbd --no-defaults --datadir="$dir/data" --port="$port" --bind-address=127.0.0.1 \
      --socket="$dir/mysql.sock" --pid-file="$dir/mysql.pid" --user="$(id -un)" \
      --skip-log-bin --innodb-flush-log-at-trx-commit=0 >>"$log" 2>&1 &
    server=$!
    for _ in $(seq 1 100); do
      mariadb --no-defaults -uroot --socket="$dir/mysql.sock" -e "SELECT 1" >/dev/null 2>&1 && break
      sleep 0.1
    done
    mariadb --no-defaults -uroot --socket="$dir/mysql.sock" -e "
      CREATE DATABASE sluicegate CHARACTER SET utf8mb4;
      CREATE USER 'sluicegate'@'127.0.0.1' IDENTIFIED BY 'sluicegate';
      GRANT ALL ON *.* TO 'sluicegate'@'127.0.0.1';" >>"$log" 2>&1
    url="mysql://sluicegate:sluicegate@127.0.0.1:$port/sluicegate"
    ;;
  *)
    echo "db-server: unknown kind '$kind' (postgres or mariadb)" >&2
    exit 1
    ;;
esac

if ! kill -0 "$server" 2>/dev/null; then
  echo "db-server: the $kind server did not start; its log:" >&2
  cat "$log" >&2
  exit 1
fi

stop() {
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  rm -rf "$dir"
}
trap 'stop; exit 0' TERM INT

echo "$url"
# Stay until the watched process is gone, then clean up.
while kill -0 "$watch" 2>/dev/null && kill -0 "$server" 2>/dev/null; do
  sleep 0.5
done
stop
