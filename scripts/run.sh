#!/usr/bin/env bash
# The whole system in one command: makes PostgreSQL and NATS reachable (installing and
# starting them when needed), builds the three processes, starts them, waits until each
# is ready, prints where they are, and stops what it started on ctrl-c. A process that
# already answers on its address is reused, not started twice, and left running; so is a
# PostgreSQL or NATS that was already running.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
started_services=
[ -f "$root/.local/postgres/postmaster.pid" ] || [ -f "$root/.local/nats/server.pid" ] || started_services=maybe
"$root/scripts/services.sh" start
# Private instances that exist now but did not before were started by this run.
if [ -n "$started_services" ] && { [ -f "$root/.local/postgres/postmaster.pid" ] || [ -f "$root/.local/nats/server.pid" ]; }; then
  started_services=yes
else
  started_services=
fi

export DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/eventledger}
export NATS_URL=${NATS_URL:-nats://127.0.0.1:4222}
export COMMAND_API_ADDR=${COMMAND_API_ADDR:-127.0.0.1:8081}
export QUERY_API_ADDR=${QUERY_API_ADDR:-127.0.0.1:8082}
export PROJECTOR_ADDR=${PROJECTOR_ADDR:-127.0.0.1:8083}
export RUST_LOG=${RUST_LOG:-info}

cargo build --release --locked -p command-api -p projector -p query-api

log_dir="$root/.local/logs"
mkdir -p "$log_dir"
started=()
stop() {
  [ ${#started[@]} -eq 0 ] || { echo; echo "stopping ${#started[@]} process(es)"; kill "${started[@]}" 2>/dev/null || true; wait "${started[@]}" 2>/dev/null || true; }
  [ -z "$started_services" ] || "$root/scripts/services.sh" stop
}
trap stop EXIT
trap 'exit 130' INT TERM

ready() { curl -fsS "http://$1/readyz" >/dev/null 2>&1; }

for process in command-api query-api projector; do
  var=$(echo "$process" | tr a-z- A-Z_)_ADDR; address=${!var}
  if ready "$address"; then
    echo "$process: already running on $address, reusing it"
    continue
  fi
  "$root/target/release/$process" >"$log_dir/$process.log" 2>&1 &
  started+=($!)
  for _ in $(seq 1 300); do ready "$address" && break; sleep 0.1; done
  ready "$address" || { echo "$process did not become ready; see $log_dir/$process.log" >&2; exit 1; }
  echo "$process: ready on http://$address (log: $log_dir/$process.log)"
done

cat <<TXT

eventledger is running.
  commands:  http://$COMMAND_API_ADDR
  queries:   http://$QUERY_API_ADDR
  projector: http://$PROJECTOR_ADDR
Try:
  curl -s http://$COMMAND_API_ADDR/readyz
  curl -s http://$COMMAND_API_ADDR/metrics | head
Press ctrl-c to stop what this command started.
TXT
if [ ${#started[@]} -gt 0 ]; then wait -n "${started[@]}"; echo "a process exited; see $log_dir" >&2; exit 1; else sleep infinity; fi
