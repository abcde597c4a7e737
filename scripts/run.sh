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
# Without a configured key, run with the public development secret (each process warns
# loudly) and print a token for it below. Set AUTH_JWT_SECRET to use your own.
if [ -z "${AUTH_JWT_SECRET:-}" ] && [ -z "${AUTH_JWT_PUBLIC_KEY:-}" ]; then
  export EVENTLEDGER_INSECURE_DEVELOPMENT_AUTH=true
fi

cargo build --release --locked -p command-api -p projector -p query-api -p event-store --bin mint-token

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

if [ -n "${EVENTLEDGER_INSECURE_DEVELOPMENT_AUTH:-}" ]; then
  token=$("$root/target/release/mint-token" --development --subject developer --role admin)
else
  token=$("$root/target/release/mint-token" --subject developer --role admin 2>/dev/null || echo "<mint one with target/release/mint-token>")
fi
cat <<TXT

eventledger is running.
  commands:  http://$COMMAND_API_ADDR
  queries:   http://$QUERY_API_ADDR
  projector: http://$PROJECTOR_ADDR
Development token (admin, 24 h):
  export TOKEN=$token
Try:
  curl -s -H "Authorization: Bearer \$TOKEN" -H 'Content-Type: application/json' \\
       -d '{"owner":{"name":"Ada Lovelace","email":"ada@example.com"},"currency":"EUR"}' http://$COMMAND_API_ADDR/accounts
  curl -s -H "Authorization: Bearer \$TOKEN" -H 'Content-Type: application/json' \\
       -d '{"amount":1250,"reference":"first deposit"}' http://$COMMAND_API_ADDR/accounts/<account_id>/deposits
  curl -s -H "Authorization: Bearer \$TOKEN" "http://$QUERY_API_ADDR/accounts/<account_id>?min_position=<position>"
  curl -s -H "Authorization: Bearer \$TOKEN" "http://$QUERY_API_ADDR/audit/events?limit=10"
  curl -s -H "Authorization: Bearer \$TOKEN" http://$PROJECTOR_ADDR/projections
Press ctrl-c to stop what this command started.
TXT
if [ ${#started[@]} -gt 0 ]; then wait -n "${started[@]}"; echo "a process exited; see $log_dir" >&2; exit 1; else sleep infinity; fi
