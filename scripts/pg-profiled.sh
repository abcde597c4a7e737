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
# extensions and `shared_buffers`: a quarter of the machine's memory (at most 8 GB), the
# starting value PostgreSQL's documentation gives for a dedicated server ("Resource
# Consumption"), where the default of 128 MB would make a 10-million-event log's indexes
# a cache-size benchmark. Every limit a report sets beside a figure is measured on this
# same instance.
set -euo pipefail

. "$(dirname "${BASH_SOURCE[0]}")/pg-private.sh"

start() {
  local dir=$1 bin port
  bin=$(pg_bin_dir)
  port=$(free_port)
  local memory_kb shared_mb
  memory_kb=$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo)
  shared_mb=$(( memory_kb / 4 / 1024 ))
  [ "$shared_mb" -le 8192 ] || shared_mb=8192
  [ "$shared_mb" -ge 128 ] || shared_mb=128
  pg_data_parent "$dir"
  as_postgres "$bin/initdb" -D "$dir/data" -U postgres --auth=trust >/dev/null
  as_postgres "$bin/pg_ctl" -D "$dir/data" -l "$dir/data/server.log" -w start -o "\
    -c listen_addresses=127.0.0.1 -p $port -c unix_socket_directories=/tmp -c max_connections=300 \
    -c shared_buffers=${shared_mb}MB \
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
  bin=$(pg_bin_dir)
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
