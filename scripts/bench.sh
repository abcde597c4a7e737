#!/usr/bin/env bash
# The benchmark report in one command: makes PostgreSQL and NATS reachable, builds the
# release binaries, runs the load generator against a system of its own (fresh database,
# own stream, free ports), and puts the resulting table into README.md's Performance
# section. Extra arguments go to the load generator (`--seconds 5`, `--accounts 1000`).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
"$root/scripts/services.sh"
export DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
export NATS_URL=${NATS_URL:-nats://127.0.0.1:4222}

cargo build --release --locked --workspace --bins
"$root/target/release/loadgen" --start-system --report-dir "$root/bench-results" "$@"

# Replace what stands between the markers in README.md with the new table.
readme="$root/README.md"
awk -v report="$root/bench-results/report.md" '
  /<!-- loadgen:begin -->/ { print; while ((getline line < report) > 0) print line; skipping = 1; next }
  /<!-- loadgen:end -->/ { skipping = 0 }
  !skipping { print }
' "$readme" > "$readme.new" && mv "$readme.new" "$readme"
echo "README.md: Performance section updated from bench-results/report.md"
