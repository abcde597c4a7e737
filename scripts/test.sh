#!/usr/bin/env bash
# The test suite in one command: makes PostgreSQL and NATS reachable (installing and
# starting them when needed), then runs every test of the workspace against them. Each
# test gets a fresh database and its own JetStream stream, so tests run in parallel.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
"$root/scripts/services.sh"
# promtool, for the test that checks every process's /metrics (tests/tests/observe.rs).
# shellcheck source=scripts/ci-tools.sh
source "$root/scripts/ci-tools.sh"

# `#[sqlx::test]` creates one database per test through this server-level URL.
export DATABASE_URL=${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
export NATS_URL=${NATS_URL:-nats://127.0.0.1:4222}

# The end-to-end tests start the real binaries, so build them first. This is the very
# build scripts/run.sh makes: keep the two commands identical.
cargo build --workspace --bins --locked
cargo test --workspace --locked "$@"

# The test build must not have changed what scripts/run.sh builds (features unified
# differently by dev-dependencies would make each rebuild after the other): building the
# binaries again compiles nothing. Seconds when it holds.
rebuilt=$(cargo build --workspace --bins --locked 2>&1 | grep -E '^\s*Compiling ' || true)
if [ -n "$rebuilt" ]; then
  echo "test.sh: building the binaries again after the tests recompiled:" >&2
  echo "$rebuilt" >&2
  exit 1
fi

# Then fuzz both APIs from their OpenAPI documents with the binaries just built. Skipped
# when running a selection of tests (arguments given) or with SKIP_FUZZ=1.
if [ $# -eq 0 ] && [ -z "${SKIP_FUZZ:-}" ]; then
  "$root/scripts/fuzz.sh"
fi
