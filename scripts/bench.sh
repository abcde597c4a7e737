#!/usr/bin/env bash
# The benchmark report in one command: makes PostgreSQL and NATS reachable, builds the
# release binaries, runs the load generator against a system of its own (fresh database,
# own stream, free ports), and puts the resulting table into README.md's Performance
# section. The system runs on a profiled PostgreSQL of its own (pg_stat_statements), and
# the report also holds CPU per command and the idle cost. Extra arguments go to the
# load generator (`--seconds 5`, `--accounts 1000`).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
"$root/scripts/services.sh"
export DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
export NATS_URL=${NATS_URL:-nats://127.0.0.1:4222}

cargo build --release --locked --workspace --bins

# The system under test runs on a private PostgreSQL with pg_stat_statements and
# auto_explain (scripts/pg-profiled.sh), so the report can say what PostgreSQL spent per
# command and on which statements; the shared instance's other users stay out of it.
# PROFILED_DATABASE_URL names an instance started already instead.
profiled_dir=
if [ -z "${PROFILED_DATABASE_URL:-}" ]; then
  profiled_dir=$(mktemp -d)
  trap '"$root/scripts/pg-profiled.sh" stop "$profiled_dir/pg"; rm -rf "$profiled_dir"' EXIT
  PROFILED_DATABASE_URL=$("$root/scripts/pg-profiled.sh" start "$profiled_dir/pg")
fi
DATABASE_URL=$PROFILED_DATABASE_URL "$root/target/release/loadgen" --start-system --profile \
  --report-dir "$root/bench-results" "$@"
# The idle system's cost, appended to the same report.
DATABASE_URL=$PROFILED_DATABASE_URL "$root/target/release/bench-idle" --seconds 60 \
  | tee -a "$root/bench-results/report.md"

# Replace what stands between the markers in README.md with the new table.
readme="$root/README.md"
awk -v report="$root/bench-results/report.md" '
  /<!-- loadgen:begin -->/ { print; while ((getline line < report) > 0) print line; skipping = 1; next }
  /<!-- loadgen:end -->/ { skipping = 0 }
  !skipping { print }
' "$readme" > "$readme.new" && mv "$readme.new" "$readme"
echo "README.md: Performance section updated from bench-results/report.md"
