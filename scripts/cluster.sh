#!/usr/bin/env bash
# eventledger as a cluster on one machine: a 3-node NATS JetStream cluster, a PostgreSQL
# primary with a hot-standby replica (streaming replication), two instances of each
# process, and nginx in front of both HTTP APIs. Installs what is missing from Debian's
# packages (nats-server, postgresql, nginx), keeps all data under .local/cluster/, waits
# until everything is ready, prints where it is, and stops what it started on ctrl-c.
# Like an orchestrator, it starts again any node or instance that exits (after
# CLUSTER_RESTART_SECONDS, default 5): kill one with `kill -9` to watch the others take
# over, and it is back a few seconds later.
#
#   scripts/cluster.sh           start it (in the foreground)
#   scripts/cluster.sh status    each node and instance, and who leads what
#
# Ports (CLUSTER_PORT_BASE, default 9000, moves them all): nginx 9081 (commands) and
# 9082 (queries); command-api 9101-9102, query-api 9111-9112, projector 9121-9122;
# NATS clients 9201-9203 (monitoring 9211-9213, routes 9221-9223); PostgreSQL primary
# 9301, replica 9302.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
base=${CLUSTER_PORT_BASE:-9000}
dir="$root/.local/cluster"
bin_dir=${CARGO_TARGET_DIR:-$root/target}/debug

nats_port() { echo $((base + 200 + $1)); }
nats_monitor_port() { echo $((base + 210 + $1)); }
nats_route_port() { echo $((base + 220 + $1)); }
primary_port=$((base + 301))
replica_port=$((base + 302))
commands_port=$((base + 81))
queries_port=$((base + 82))
instance_port() { # process instance
  case $1 in
    command-api) echo $((base + 100 + $2)) ;;
    query-api) echo $((base + 110 + $2)) ;;
    projector) echo $((base + 120 + $2)) ;;
  esac
}
nats_urls() { echo "nats://127.0.0.1:$(nats_port 1),nats://127.0.0.1:$(nats_port 2),nats://127.0.0.1:$(nats_port 3)"; }
database_url="postgres://postgres@127.0.0.1:$primary_port/eventledger"
reader_url="postgres://eventledger_reader@127.0.0.1:$replica_port/eventledger"

ready() { curl -fsS --max-time 2 "http://$1/readyz" >/dev/null 2>&1; }

status() {
  local stream=${EVENTS_STREAM:-LEDGER_EVENTS}
  echo "NATS (stream $stream):"
  for node in 1 2 3; do
    local monitor jsz seen
    monitor="127.0.0.1:$(nats_monitor_port $node)"
    if jsz=$(curl -fsS --max-time 2 "http://$monitor/jsz?accounts=true&streams=true" 2>/dev/null); then
      seen=$(STREAM=$stream python3 -c 'import json,os,sys
d=json.load(sys.stdin)
for a in d.get("account_details") or []:
    for s in a.get("stream_detail") or []:
        if s.get("name")==os.environ["STREAM"]:
            print("stream leader: %s, %d messages here" % ((s.get("cluster") or {}).get("leader","?"), (s.get("state") or {}).get("messages",0)))' <<<"$jsz" 2>/dev/null | head -1)
      echo "  n$node nats://127.0.0.1:$(nats_port $node)  up   ${seen:-no stream yet (the relay creates it)}"
    else
      echo "  n$node nats://127.0.0.1:$(nats_port $node)  DOWN"
    fi
  done
  echo "PostgreSQL:"
  local role lag
  if role=$(psql -qAt -h 127.0.0.1 -p "$primary_port" -U postgres -d postgres -c "SELECT pg_is_in_recovery()" 2>/dev/null); then
    lag=$(psql -qAt -h 127.0.0.1 -p "$primary_port" -U postgres -d postgres \
      -c "SELECT COALESCE(string_agg('replica ' || COALESCE(replay_lag::text, 'caught up'), ', '), 'no replica attached') FROM pg_stat_replication" 2>/dev/null)
    echo "  primary 127.0.0.1:$primary_port  up (in recovery: $role)  streaming to: $lag"
  else
    echo "  primary 127.0.0.1:$primary_port  DOWN"
  fi
  if role=$(psql -qAt -h 127.0.0.1 -p "$replica_port" -U postgres -d postgres -c "SELECT pg_is_in_recovery()" 2>/dev/null); then
    echo "  replica 127.0.0.1:$replica_port  up (in recovery: $role)"
  else
    echo "  replica 127.0.0.1:$replica_port  DOWN"
  fi
  echo "Instances:"
  local relay_seen=
  for process in command-api query-api projector; do
    for instance in 1 2; do
      local address state extra=""
      address="127.0.0.1:$(instance_port $process $instance)"
      if ready "$address"; then state=ready; else state=DOWN; fi
      if [ "$process" = command-api ] && [ "$state" = ready ]; then
        # Read whole before matching: `grep -q` leaving early would make curl fail with
        # SIGPIPE, and pipefail would call a holder not one.
        local metrics
        metrics=$(curl -fsS --max-time 2 "http://$address/metrics" 2>/dev/null || true)
        if grep -Eq '^relay_active(\{[^}]*\})? 1' <<<"$metrics"; then
          extra="  runs the relay"
          relay_seen=yes
        fi
      fi
      echo "  $process-$instance http://$address  $state$extra"
    done
  done
  [ -n "$relay_seen" ] || echo "  (no command API runs the relay right now: the lock is moving, or NATS or PostgreSQL is away)"
  echo "Projection leases:"
  psql -qAt -F ' ' -h 127.0.0.1 -p "$primary_port" -U postgres -d eventledger -c \
    "SELECT '  ' || projection, 'applied by', COALESCE(CASE WHEN lease_expires_at > now() THEN lease_holder END, 'nobody'), 'at position', position FROM read_model.projection_checkpoints ORDER BY projection" 2>/dev/null \
    || echo "  (the database is not reachable)"
  echo "Load balancer (nginx): commands http://127.0.0.1:$commands_port, queries http://127.0.0.1:$queries_port"
  for port in $commands_port $queries_port; do
    if curl -fsS --max-time 2 "http://127.0.0.1:$port/healthz" >/dev/null 2>&1; then echo "  :$port up"; else echo "  :$port DOWN"; fi
  done
}

if [ "${1:-}" = status ]; then
  status
  exit 0
elif [ $# -gt 0 ]; then
  echo "usage: scripts/cluster.sh [status]" >&2
  exit 2
fi

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
apt_updated=
need() { # command package
  command -v "$1" >/dev/null 2>&1 || [ -x "$1" ] && return 0
  echo "cluster: installing $2 from Debian's packages"
  [ -n "$apt_updated" ] || { as_root apt-get update -qq; apt_updated=1; }
  # Only the programs: Debian would also start each package's own service (nginx on
  # port 80, a PostgreSQL cluster), which this script neither uses nor stops. A
  # policy-rc.d that says 101 is Debian's way of installing without starting.
  local policy=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | as_root tee /usr/sbin/policy-rc.d >/dev/null
    as_root chmod +x /usr/sbin/policy-rc.d
    policy=yes
  fi
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$2" >/dev/null
  [ -z "$policy" ] || as_root rm -f /usr/sbin/policy-rc.d
}
need nats-server nats-server
need psql postgresql
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need /nonexistent postgresql
need nginx nginx
nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)

cargo build --workspace --bins --locked

mkdir -p "$dir/logs"
pids=()
pg_started=
restart_seconds=${CLUSTER_RESTART_SECONDS:-5}
stop() {
  trap - EXIT
  echo
  echo "stopping the cluster"
  [ ${#pids[@]} -eq 0 ] || { kill "${pids[@]}" 2>/dev/null || true; wait "${pids[@]}" 2>/dev/null || true; }
  [ -z "$pg_started" ] || "$root/scripts/pg-replicated.sh" halt "$dir/pg"
}
trap stop EXIT
trap 'exit 130' INT TERM

# Runs `command` in the background as `name`, logging to logs/NAME.log, and starts it
# again whenever it exits, until the cluster stops (SIGTERM to the supervisor stops the
# process and then the supervisor). PostgreSQL is not supervised: pg_ctl runs it.
supervise() { # name command...
  local name=$1
  shift
  (
    child=
    trap '[ -z "$child" ] || { kill -TERM "$child" 2>/dev/null; wait "$child" 2>/dev/null; }; exit 0' TERM INT
    while :; do
      "$@" >>"$dir/logs/$name.log" 2>&1 &
      child=$!
      status=0
      wait "$child" || status=$?
      child=
      echo "cluster: $name exited (status $status); starting it again in ${restart_seconds} s" >&2
      sleep "$restart_seconds" &
      wait $! || true
    done
  ) &
  pids+=($!)
}

wait_for() { # what command...
  local what=$1; shift
  for _ in $(seq 1 300); do "$@" && return 0; sleep 0.1; done
  echo "cluster: $what did not become ready; see $dir/logs/" >&2
  exit 1
}

# NATS: three JetStream nodes routed to one another.
for node in 1 2 3; do
  mkdir -p "$dir/nats/n$node"
  routes=""
  for other in 1 2 3; do
    [ "$other" = "$node" ] || routes="$routes${routes:+, }\"nats-route://127.0.0.1:$(nats_route_port $other)\""
  done
  cat >"$dir/nats/n$node.conf" <<CONF
server_name: n$node
listen: 127.0.0.1:$(nats_port $node)
http: 127.0.0.1:$(nats_monitor_port $node)
jetstream { store_dir: "$dir/nats/n$node" }
cluster {
  name: eventledger-local
  listen: 127.0.0.1:$(nats_route_port $node)
  routes: [$routes]
}
CONF
  supervise "nats-n$node" nats-server -c "$dir/nats/n$node.conf"
done
jetstream_ready() {
  curl -fsS --max-time 2 "http://127.0.0.1:$(nats_monitor_port 1)/jsz" 2>/dev/null \
    | python3 -c 'import json,sys; sys.exit(0 if (json.load(sys.stdin).get("meta_cluster") or {}).get("leader") else 1)' 2>/dev/null
}
wait_for "the NATS cluster's JetStream" jetstream_ready
echo "NATS: 3 nodes on $(nats_urls), JetStream has a meta leader"

# PostgreSQL: the primary and its streaming replica (kept between runs).
PRIMARY_PORT=$primary_port REPLICA_PORT=$replica_port "$root/scripts/pg-replicated.sh" start "$dir/pg" >/dev/null
pg_started=yes
echo "PostgreSQL: primary 127.0.0.1:$primary_port, replica 127.0.0.1:$replica_port (streaming)"

export NATS_URL
NATS_URL=$(nats_urls)
export EVENTS_STREAM_REPLICAS=3
export RUST_LOG=${RUST_LOG:-info}
if [ -z "${AUTH_JWT_SECRET:-}" ] && [ -z "${AUTH_JWT_PUBLIC_KEY:-}" ]; then
  export EVENTLEDGER_INSECURE_DEVELOPMENT_AUTH=true
fi

start_instance() { # process instance [VAR=value ...]
  local process=$1 instance=$2 address var
  shift 2
  address="127.0.0.1:$(instance_port "$process" "$instance")"
  var=$(echo "$process" | tr a-z- A-Z_)_ADDR
  supervise "$process-$instance" env "$var=$address" DATABASE_URL="$database_url" "$@" "$bin_dir/$process"
  wait_for "$process-$instance" ready "$address"
  echo "$process-$instance: ready on http://$address"
}

# The first command API creates and migrates the database; the replica follows.
start_instance command-api 1
start_instance command-api 2
for instance in 1 2; do
  start_instance projector "$instance" PROJECTOR_INSTANCE_ID="projector-$instance"
done
replica_has_database() { psql -qAt -h 127.0.0.1 -p "$replica_port" -U postgres -d eventledger -c "SELECT 1 FROM read_model.projection_checkpoints LIMIT 1" >/dev/null 2>&1; }
wait_for "the replica's copy of the database" replica_has_database
for instance in 1 2; do
  start_instance query-api "$instance" QUERY_API_READER_DATABASE_URL="$reader_url" \
    PROJECTOR_URL="http://127.0.0.1:$(instance_port projector 1)"
done

# nginx: one port for commands, one for queries (scripts/nginx-conf.sh says how it
# balances and retries).
"$root/scripts/nginx-conf.sh" "$dir/nginx" "$commands_port" "$queries_port" \
  "127.0.0.1:$(instance_port command-api 1) 127.0.0.1:$(instance_port command-api 2)" \
  "127.0.0.1:$(instance_port query-api 1) 127.0.0.1:$(instance_port query-api 2)"
"$nginx_bin" -t -q -p "$dir/nginx" -e "$dir/nginx/error.log" -c "$dir/nginx/nginx.conf"
supervise nginx "$nginx_bin" -p "$dir/nginx" -e "$dir/nginx/error.log" -c "$dir/nginx/nginx.conf"
wait_for nginx ready "127.0.0.1:$commands_port"
wait_for nginx ready "127.0.0.1:$queries_port"

if [ -n "${EVENTLEDGER_INSECURE_DEVELOPMENT_AUTH:-}" ]; then
  token=$("$bin_dir/mint-token" --development --subject developer --role admin)
else
  token=$("$bin_dir/mint-token" --subject developer --role admin 2>/dev/null || echo "<mint one with target/debug/mint-token>")
fi

echo
status
cat <<TXT

eventledger is running as a cluster (data and logs under $dir).
  commands: http://127.0.0.1:$commands_port   (nginx over command-api-1 and -2)
  queries:  http://127.0.0.1:$queries_port   (nginx over query-api-1 and -2, reading the replica)
  console:  http://127.0.0.1:$queries_port/console
Development token (admin, 24 h):
  export TOKEN=$token
scripts/cluster.sh status (in another terminal) shows who leads what.
Press ctrl-c to stop what this command started.
TXT
# Runs until ctrl-c; the supervisors start again whatever exits.
wait "${pids[@]}" || true
