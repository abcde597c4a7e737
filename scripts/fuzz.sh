#!/usr/bin/env bash
# Fuzzes the command API and the query API from their own OpenAPI documents with
# Schemathesis: every operation gets valid and invalid requests, and the run fails on
# any 5xx answer or any answer slower than the response-time limit (a hang).
#
# Runs the real debug binaries (`cargo build --workspace --bins`, as scripts/test.sh does
# first) against a database and a JetStream stream of its own on free ports, with an
# admin token so every route is reachable; stops what it started and drops its database
# and stream on exit, failed or not. Schemathesis is installed from PyPI into a venv
# under .local/ (ignored by git) and reused from there.
#
# FUZZ_EXAMPLES (default 100) bounds the generated requests per operation; FUZZ_SEED
# (default fixed) makes a run reproducible. About a minute on 2 cores.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

schemathesis_version=4.32.5
examples=${FUZZ_EXAMPLES:-100}
seed=${FUZZ_SEED:-20261124}
# Every answer must come well within the servers' request timeout (15 s); a request
# still open after this counts as a hang.
max_response_seconds=${FUZZ_MAX_RESPONSE_SECONDS:-5}
bin_dir=${CARGO_TARGET_DIR:-$root/target}/debug
venv=$root/.local/schemathesis-$schemathesis_version
work=$root/.local/fuzz
mkdir -p "$work"

"$root/scripts/services.sh"

# Python with venv support, from Debian's packages when missing.
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  echo "fuzz: installing python3-venv"
  if [ "$(id -u)" -eq 0 ]; then sudo=; else sudo=sudo; fi
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq python3 python3-venv >/dev/null
fi
if ! "$venv/bin/schemathesis" --version >/dev/null 2>&1; then
  echo "fuzz: installing schemathesis $schemathesis_version into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$schemathesis_version"
fi

for binary in command-api query-api projector mint-token; do
  [ -x "$bin_dir/$binary" ] || { echo "fuzz: $bin_dir/$binary is missing: run cargo build --workspace --bins" >&2; exit 1; }
done

server=${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
server_base=${server%/*}
id=$(python3 -c 'import uuid; print(uuid.uuid4().hex)')
database=eventledger_fuzz_$id
stream=FUZZ_$id
nats_url=${NATS_URL:-nats://127.0.0.1:4222}
nats_host_port=${nats_url#nats://}
nats_host=${nats_host_port%:*}
nats_port=${nats_host_port##*:}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

export DATABASE_URL=$server_base/$database
export NATS_URL=$nats_url
export EVENTS_STREAM=$stream
export EVENTS_SUBJECT_PREFIX=fuzz.$id
export DATABASE_MAX_CONNECTIONS=8
export COMMAND_API_ADDR=127.0.0.1:$(free_port)
export QUERY_API_ADDR=127.0.0.1:$(free_port)
export PROJECTOR_ADDR=127.0.0.1:$(free_port)
AUTH_JWT_SECRET=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
PII_MASTER_KEY=$(python3 -c 'import base64, secrets; print(base64.b64encode(secrets.token_bytes(32)).decode())')
export AUTH_JWT_SECRET PII_MASTER_KEY
export RUST_LOG=${RUST_LOG:-warn}
unset EVENTLEDGER_INSECURE_DEVELOPMENT_AUTH

started=()
cleanup() {
  local status=$?
  if [ ${#started[@]} -gt 0 ]; then
    kill -TERM "${started[@]}" 2>/dev/null || true
    wait "${started[@]}" 2>/dev/null || true
  fi
  # The stream, over the NATS protocol itself: no client tool needed.
  if exec 3<>"/dev/tcp/$nats_host/$nats_port" 2>/dev/null; then
    printf 'CONNECT {"verbose":false}\r\nPUB $JS.API.STREAM.DELETE.%s 0\r\n\r\nPING\r\n' "$stream" >&3 || true
    timeout 5 grep -q -m1 PONG <&3 || true
    exec 3>&-
  fi
  if command -v psql >/dev/null 2>&1; then
    psql "$server" -q -v ON_ERROR_STOP=1 -c "DROP DATABASE IF EXISTS $database WITH (FORCE)" >/dev/null 2>&1 \
      || echo "fuzz: could not drop database $database" >&2
  else
    echo "fuzz: psql not found; drop database $database by hand" >&2
  fi
  [ $status -eq 0 ] || echo "fuzz: failed; server logs in $work" >&2
  exit $status
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ready() { curl -fsS "http://$1/readyz" >/dev/null 2>&1; }
for process in command-api query-api projector; do
  var=$(echo "$process" | tr a-z- A-Z_)_ADDR
  address=${!var}
  "$bin_dir/$process" >"$work/$process.log" 2>&1 &
  started+=($!)
  for _ in $(seq 1 300); do ready "$address" && break; sleep 0.1; done
  ready "$address" || { echo "fuzz: $process did not become ready; see $work/$process.log" >&2; exit 1; }
done

token=$("$bin_dir/mint-token" --subject fuzz --role admin --ttl-seconds 3600)

# Seed one account with money, so that some generated ids and amounts can succeed.
curl -fsS -o /dev/null -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
  -d '{"account_id":"018f0000-0000-7000-8000-000000000001","owner":{"name":"Fuzz","email":"fuzz@example.com"},"currency":"EUR"}' \
  "http://$COMMAND_API_ADDR/accounts"

fuzz() {
  local name=$1 address=$2
  shift 2
  echo "== fuzz $name (http://$address)"
  SCHEMATHESIS_HOOKS=fuzz_hooks PYTHONPATH="$root/scripts" \
    "$venv/bin/schemathesis" run "http://$address/openapi.json" \
    --checks not_a_server_error \
    --max-response-time "$max_response_seconds" \
    --request-timeout $((max_response_seconds * 2)) \
    --header "Authorization: Bearer $token" \
    --phases examples,coverage,fuzzing \
    --max-examples "$examples" \
    --seed "$seed" \
    --workers 1 \
    --no-shrink \
    --suppress-health-check all \
    "$@"
}

fuzz command-api "$COMMAND_API_ADDR"
# The live tail is an endless event stream: no single answer to check.
fuzz query-api "$QUERY_API_ADDR" --exclude-path /audit/events/live
echo "fuzz: no server error and no slow answer in either API"
