#!/usr/bin/env bash
# The whole system in one command: makes PostgreSQL and NATS reachable (installing and
# starting them when needed), builds the three processes, starts them, waits until each
# is ready, prints where they are, and stops what it started on ctrl-c. A process that
# already answers on its address is reused, not started twice, and left running; so is a
# PostgreSQL or NATS that was already running.
#
# `scripts/run.sh --seed-demo` (or EVENTLEDGER_SEED_DEMO=1) also opens two demo accounts,
# deposits into one and transfers to the other. The demo commands carry fixed ids and
# Idempotency-Keys, so seeding again replays them instead of writing twice.
set -euo pipefail
seed_demo=${EVENTLEDGER_SEED_DEMO:-}
for argument in "$@"; do
  case $argument in
    --seed-demo) seed_demo=1 ;;
    *) echo "usage: scripts/run.sh [--seed-demo]" >&2; exit 2 ;;
  esac
done
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
# The console's rebuild button (query API) calls the projector's admin API here.
export PROJECTOR_URL=${PROJECTOR_URL:-http://$PROJECTOR_ADDR}
export RUST_LOG=${RUST_LOG:-info}
# Without a configured key, run with the public development secret (each process warns
# loudly) and print a token for it below. Set AUTH_JWT_SECRET to use your own.
if [ -z "${AUTH_JWT_SECRET:-}" ] && [ -z "${AUTH_JWT_PUBLIC_KEY:-}" ]; then
  export EVENTLEDGER_INSECURE_DEVELOPMENT_AUTH=true
fi

# Exactly the build scripts/test.sh starts with (same profile, same package selection,
# so the same features): switching between the two rebuilds nothing that did not change.
# A `-p` selection or `--release` here would resolve other features or another profile
# and rebuild most dependencies after every test run. Dependencies are optimised in the
# dev profile too (Cargo.toml), so the debug binaries serve a developer's load well.
cargo build --workspace --bins --locked

bin_dir=${CARGO_TARGET_DIR:-$root/target}/debug
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
  "$bin_dir/$process" >"$log_dir/$process.log" 2>&1 &
  started+=($!)
  for _ in $(seq 1 300); do ready "$address" && break; sleep 0.1; done
  ready "$address" || { echo "$process did not become ready; see $log_dir/$process.log" >&2; exit 1; }
  echo "$process: ready on http://$address (log: $log_dir/$process.log)"
done

if [ -n "${EVENTLEDGER_INSECURE_DEVELOPMENT_AUTH:-}" ]; then
  token=$("$bin_dir/mint-token" --development --subject developer --role admin)
else
  token=$("$bin_dir/mint-token" --subject developer --role admin 2>/dev/null || echo "<mint one with target/debug/mint-token>")
fi
# One demo command: prints its status line, never stops the run (the demo may exist).
demo() {
  local path=$1 key=$2 body=$3
  local status
  status=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" \
    -H 'Content-Type: application/json' -H "Idempotency-Key: $key" -d "$body" "http://$COMMAND_API_ADDR$path") || status=unreachable
  echo "  POST $path -> $status"
}
if [ -n "$seed_demo" ]; then
  alice=018f0000-0000-7000-8000-00000000a11c
  bob=018f0000-0000-7000-8000-000000000b0b
  echo "seeding demo data:"
  demo /accounts demo-open-alice "{\"account_id\":\"$alice\",\"owner\":{\"name\":\"Alice Demo\",\"email\":\"alice@example.com\"},\"currency\":\"EUR\"}"
  demo /accounts demo-open-bob "{\"account_id\":\"$bob\",\"owner\":{\"name\":\"Bob Demo\",\"email\":\"bob@example.com\"},\"currency\":\"EUR\",\"overdraft_limit\":5000}"
  demo "/accounts/$alice/deposits" demo-deposit-alice '{"amount":100000,"reference":"demo salary"}'
  demo /transfers demo-transfer "{\"from_account_id\":\"$alice\",\"to_account_id\":\"$bob\",\"amount\":2500,\"reference\":\"demo rent\"}"
  echo "  demo accounts: $alice (Alice), $bob (Bob)"
fi

cat <<TXT

eventledger is running.
  commands:  http://$COMMAND_API_ADDR
  queries:   http://$QUERY_API_ADDR
  projector: http://$PROJECTOR_ADDR
  console:   http://$QUERY_API_ADDR/console  (sign in with the token below)
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
if [ ${#started[@]} -eq 0 ]; then sleep infinity; fi
# The processes stop cleanly (status 0) on ctrl-c, which reaches them too; any other
# status is a crash worth pointing at.
status=0
wait -n "${started[@]}" || status=$?
if [ "$status" -eq 0 ] || [ "$status" -ge 128 ]; then exit 0; fi
echo "a process exited with status $status; see $log_dir" >&2
exit 1
