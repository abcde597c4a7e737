#!/usr/bin/env bash
# A private PostgreSQL for benchmarks that shows where its time goes: pg_stat_statements
# (calls, total time, rows, JIT functions per statement) and auto_explain (the plan of
# every statement slower than 50 ms, JIT timings included), on a free port, with its data
# under a temporary directory. It shares nothing with the PostgreSQL the tests use, so
# its statistics hold only what the benchmark did.
#
#   scripts/pg-profiled.sh start DIR    create and start it in DIR; prints its URL
#   scripts/pg-profiled.sh stop DIR     stop it and remove DIR
#
# The settings are PostgreSQL 15's defaults (fsync on, JIT on) apart from the two
# extensions, so its figures compare with the shared instance's.
set -euo pipefail

as_postgres() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

bin_dir() {
  local bin
  bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  [ -n "$bin" ] || { echo "pg-profiled: PostgreSQL is not installed (scripts/services.sh installs it)" >&2; exit 1; }
  echo "$bin"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start() {
  local dir=$1 bin port
  bin=$(bin_dir)
  port=$(free_port)
  mkdir -p "$dir"
  if [ "$(id -u)" -eq 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --home-dir "$dir" postgres
    chown postgres "$dir"
    chmod o+x "$(dirname "$dir")"
  fi
  as_postgres "$bin/initdb" -D "$dir/data" -U postgres --auth=trust >/dev/null
  as_postgres "$bin/pg_ctl" -D "$dir/data" -l "$dir/data/server.log" -w start -o "\
    -c listen_addresses=127.0.0.1 -p $port -c unix_socket_directories=/tmp -c max_connections=300 \
    -c shared_preload_libraries=pg_stat_statements,auto_explain \
    -c pg_stat_statements.track=all -c pg_stat_statements.max=5000 \
    -c auto_explain.log_min_duration=50ms -c auto_explain.log_analyze=on \
    -c auto_explain.log_timing=off -c auto_explain.log_nested_statements=on" >/dev/null
  as_postgres "$bin/psql" -qAt -h 127.0.0.1 -p "$port" -U postgres -d postgres \
    -c "CREATE EXTENSION IF NOT EXISTS pg_stat_statements" >/dev/null
  echo "postgres://postgres@127.0.0.1:$port/postgres"
}

stop() {
  local dir=$1 bin
  bin=$(bin_dir)
  if [ -f "$dir/data/postmaster.pid" ]; then
    as_postgres "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
  fi
  rm -rf "$dir"
}

case "${1:-}" in
  start) start "${2:?usage: $0 start DIR}" ;;
  stop) stop "${2:?usage: $0 stop DIR}" ;;
  *) echo "usage: $0 start|stop DIR" >&2; exit 2 ;;
esac
