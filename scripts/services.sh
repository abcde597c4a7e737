#!/usr/bin/env bash
# Makes PostgreSQL and NATS (with JetStream) reachable for eventledger, on any Debian
# machine: when a service does not answer at its configured address, installs it from
# Debian's packages if missing and starts a private instance whose data lives under
# .local/ in this checkout (ignored by git). A service that already answers is used as
# it is and never touched.
#
#   scripts/services.sh            make both reachable (the default)
#   scripts/services.sh stop       stop the private instances under .local/, and only those
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
local_dir="$root/.local"
database_url=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/eventledger}
nats_url=${NATS_URL:-nats://127.0.0.1:4222}

# host and port out of a URL such as postgres://user@host:port/db or nats://host:port
url_host() { local rest=${1#*://}; rest=${rest##*@}; rest=${rest%%/*}; echo "${rest%%:*}"; }
url_port() { local rest=${1#*://}; rest=${rest##*@}; rest=${rest%%/*}; [[ $rest == *:* ]] && echo "${rest##*:}" || echo "$2"; }

reachable() { timeout 1 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; }

wait_for() { # name host port seconds
  for _ in $(seq 1 $(( $4 * 10 ))); do reachable "$2" "$3" && return 0; sleep 0.1; done
  echo "services: $1 did not come up on $2:$3" >&2; return 1
}

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

apt_updated=
apt_install() {
  [ -n "$apt_updated" ] || { as_root apt-get update -qq; apt_updated=1; }
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}

is_local() { [[ $1 == 127.* || $1 == localhost || $1 == ::1 ]]; }

ensure_postgres() {
  local host port bin data
  host=$(url_host "$database_url"); port=$(url_port "$database_url" 5432)
  reachable "$host" "$port" && return 0
  is_local "$host" || { echo "services: PostgreSQL at $host:$port is unreachable and not local" >&2; return 1; }
  bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -z "$bin" ]; then
    echo "services: installing PostgreSQL from Debian's packages"
    apt_install postgresql
    bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  fi
  data="$local_dir/postgres"
  mkdir -p "$local_dir"
  # PostgreSQL refuses to run as root: the private instance belongs to `postgres`.
  local run=()
  if [ "$(id -u)" -eq 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --home-dir "$data" postgres
    run=(runuser -u postgres --)
    chmod o+x "$root" "$local_dir"
  fi
  if [ ! -s "$data/PG_VERSION" ]; then
    echo "services: creating a PostgreSQL cluster in $data"
    mkdir -p "$data"; [ "$(id -u)" -ne 0 ] || chown postgres "$data"
    "${run[@]}" "$bin/initdb" -D "$data" -U postgres --auth=trust >/dev/null
  fi
  echo "services: starting PostgreSQL on $host:$port"
  "${run[@]}" "$bin/pg_ctl" -D "$data" -l "$data/server.log" -w start \
    -o "-c listen_addresses=$host -p $port -c unix_socket_directories=/tmp -c max_connections=300" >/dev/null
  wait_for PostgreSQL "$host" "$port" 30
}

ensure_nats() {
  local host port server
  host=$(url_host "$nats_url"); port=$(url_port "$nats_url" 4222)
  reachable "$host" "$port" && return 0
  is_local "$host" || { echo "services: NATS at $host:$port is unreachable and not local" >&2; return 1; }
  server=$(command -v nats-server || ls /usr/sbin/nats-server 2>/dev/null || true)
  if [ -z "$server" ]; then
    echo "services: installing nats-server from Debian's packages"
    apt_install nats-server
    server=$(command -v nats-server || echo /usr/sbin/nats-server)
  fi
  mkdir -p "$local_dir/nats"
  echo "services: starting NATS with JetStream on $host:$port"
  setsid "$server" -a "$host" -p "$port" -js -sd "$local_dir/nats" -l "$local_dir/nats/server.log" \
    -P "$local_dir/nats/server.pid" </dev/null >/dev/null 2>&1 &
  wait_for NATS "$host" "$port" 30
}

stop_private() {
  local bin data="$local_dir/postgres" pid_file="$local_dir/nats/server.pid"
  if [ -f "$data/postmaster.pid" ]; then
    bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
    echo "services: stopping the private PostgreSQL"
    if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$bin/pg_ctl" -D "$data" -m fast stop >/dev/null
    else "$bin/pg_ctl" -D "$data" -m fast stop >/dev/null; fi
  fi
  if [ -f "$pid_file" ] && kill -0 "$(cat "$pid_file")" 2>/dev/null; then
    echo "services: stopping the private NATS"
    kill "$(cat "$pid_file")"
    rm -f "$pid_file"
  fi
}

case "${1:-start}" in
  start) ensure_postgres; ensure_nats ;;
  stop) stop_private ;;
  *) echo "usage: $0 [start|stop]" >&2; exit 2 ;;
esac
