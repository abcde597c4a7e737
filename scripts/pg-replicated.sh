#!/usr/bin/env bash
# A private PostgreSQL primary with one hot-standby replica kept by streaming
# replication, on free ports, with all data under DIR: what the query API's replica
# reading is tested against (tests/src/pg_replica.rs) and what scripts/cluster.sh runs.
#
#   scripts/pg-replicated.sh start DIR           create (unless DIR holds them already)
#                                                and start both; prints
#                                                "<primary URL> <replica URL>"
#   scripts/pg-replicated.sh halt DIR            stop both, keeping their data
#   scripts/pg-replicated.sh stop DIR            stop both and remove DIR
#   scripts/pg-replicated.sh stop-replica DIR    stop the replica (immediate: as a crash)
#   scripts/pg-replicated.sh start-replica DIR   start it again; it catches up by itself
#
# PRIMARY_PORT and REPLICA_PORT choose the ports of a new pair (free ones otherwise);
# an existing pair keeps the ports it was made with.
#
# The replica is made with pg_basebackup -R (a copy of the primary plus the settings
# that make it follow), so it is the standard streaming replication a production
# deployment runs (CloudNativePG, Patroni), minus the automatic fail-over.
set -euo pipefail

. "$(dirname "${BASH_SOURCE[0]}")/pg-private.sh"

# The same settings on both servers: loopback only, sockets in /tmp, and room for the
# connections of several processes and a test's own.
server_options() {
  echo "-c listen_addresses=127.0.0.1 -p $1 -c unix_socket_directories=/tmp -c max_connections=200"
}

start_server() {
  local bin=$1 data=$2 port=$3
  as_postgres "$bin/pg_ctl" -D "$data" -l "$data/server.log" -w start -o "$(server_options "$port")" >/dev/null
}

start() {
  local dir=$1 bin primary_port replica_port
  bin=$(pg_bin_dir)
  if [ -d "$dir/replica" ]; then
    primary_port=$(cat "$dir/primary.port")
    replica_port=$(cat "$dir/replica.port")
    start_server "$bin" "$dir/primary" "$primary_port"
    start_server "$bin" "$dir/replica" "$replica_port"
    echo "postgres://postgres@127.0.0.1:$primary_port/postgres postgres://postgres@127.0.0.1:$replica_port/postgres"
    return
  fi
  primary_port=${PRIMARY_PORT:-$(free_port)}
  replica_port=${REPLICA_PORT:-$(free_port)}
  pg_data_parent "$dir"
  # initdb's trust authentication covers replication connections from loopback too.
  as_postgres "$bin/initdb" -D "$dir/primary" -U postgres --auth=trust >/dev/null
  echo "$primary_port" > "$dir/primary.port"
  start_server "$bin" "$dir/primary" "$primary_port"
  as_postgres "$bin/pg_basebackup" -h 127.0.0.1 -p "$primary_port" -U postgres \
    -D "$dir/replica" -R -X stream -c fast >/dev/null
  echo "$replica_port" > "$dir/replica.port"
  start_server "$bin" "$dir/replica" "$replica_port"
  echo "postgres://postgres@127.0.0.1:$primary_port/postgres postgres://postgres@127.0.0.1:$replica_port/postgres"
}

stop_server() {
  local bin=$1 data=$2 mode=$3
  if [ -f "$data/postmaster.pid" ]; then
    as_postgres "$bin/pg_ctl" -D "$data" -m "$mode" -w stop >/dev/null || true
  fi
}

halt() {
  local dir=$1 bin
  bin=$(pg_bin_dir)
  stop_server "$bin" "$dir/replica" fast
  stop_server "$bin" "$dir/primary" fast
}

stop() {
  halt "$1"
  rm -rf "$1"
}

case "${1:-}" in
  start) start "${2:?usage: $0 start DIR}" ;;
  halt) halt "${2:?usage: $0 halt DIR}" ;;
  stop) stop "${2:?usage: $0 stop DIR}" ;;
  stop-replica) stop_server "$(pg_bin_dir)" "${2:?usage: $0 stop-replica DIR}/replica" immediate ;;
  start-replica)
    start_server "$(pg_bin_dir)" "${2:?usage: $0 start-replica DIR}/replica" "$(cat "$2/replica.port")" ;;
  *) echo "usage: $0 start|halt|stop|stop-replica|start-replica DIR" >&2; exit 2 ;;
esac
