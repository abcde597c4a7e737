#!/usr/bin/env bash
# The benchmark report in one command: makes PostgreSQL and NATS reachable, builds the
# release binaries, starts a private profiled PostgreSQL (scripts/pg-profiled.sh:
# pg_stat_statements, so the report can say what PostgreSQL spent per command and on
# which statements, and the shared instance's other users stay out of it), and runs on it:
#
#   loadgen --start-system --profile   the whole system's scenarios, visibility lag, and
#                                      the peer (PEER_DIR, default ../shared/peers) with
#                                      the same deposits through the same client
#   bench-commands                     the command API alone, PostgreSQL's commit rate
#   bench-queries                      the query API alone, pgbench -S, p99 at 0.8 × its rate
#   bench-growth --profile             deposits with 0, 1M and 10M events stored, and
#                                      rebuild --all of 10M events under load
#   bench-idle                         the whole system at rest
#   bench-report                       the goals table, bench-results/report.md and .json
#                                      (a full run also copies report.md to docs/)
#
# and puts the goals table into README.md between the loadgen markers and the full report
# into docs/benchmark-report.md.
#
#   scripts/bench.sh            the full run: about 30 minutes on 2 cores (plus the first
#                               build of the peer), 10 s per scenario, 10M events; the
#                               profiled PostgreSQL needs about 30 GB free under $TMPDIR
#   scripts/bench.sh --quick    every row, small (3 s per scenario, 20,000 events, under
#                               two minutes once built): proves the run works; README
#                               left alone
#
# A benchmark that fails is reported as such and the others still run. PEER_DIR names the
# peers folder; PROFILED_DATABASE_URL a profiled PostgreSQL started already.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

quick=0
for arg in "$@"; do
  case $arg in
    --quick) quick=1 ;;
    *) echo "usage: $0 [--quick]" >&2; exit 2 ;;
  esac
done

"$root/scripts/services.sh"
export DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
export NATS_URL=${NATS_URL:-nats://127.0.0.1:4222}
export PEER_DIR=${PEER_DIR:-$root/../shared/peers}

cargo build --release --locked --workspace --bins
bin=$root/target/release

if [ "$quick" -eq 1 ]; then
  loadgen_args=(--seconds 3 --accounts 1000 --transfer-accounts 20 --lag-samples 50)
  commands_args=(--seconds 3 --accounts 1000)
  queries_args=(--seconds 3 --accounts 10000 --accounts-only --pgbench-scale 1)
  growth_args=(--seconds 3 --accounts 1000 --seed-accounts 2000 --sizes 0,20000)
  idle_args=(--seconds 10 --settle-seconds 3)
  note="Quick run (scripts/bench.sh --quick): 3 s per scenario, logs of 0 and 20,000 events; not the published figures."
else
  loadgen_args=()
  commands_args=(--seconds 10)
  queries_args=(--seconds 10)
  growth_args=(--sizes 0,1000000,10000000)
  idle_args=(--seconds 60)
  note="Full run (scripts/bench.sh)."
fi

profiled_dir=
if [ -z "${PROFILED_DATABASE_URL:-}" ]; then
  profiled_dir=$(mktemp -d)
  trap '"$root/scripts/pg-profiled.sh" stop "$profiled_dir/pg"; rm -rf "$profiled_dir"' EXIT
  PROFILED_DATABASE_URL=$("$root/scripts/pg-profiled.sh" start "$profiled_dir/pg")
fi

results=$root/bench-results
rm -rf "$results"
mkdir -p "$results/loadgen"
failed=()
# step NAME COMMAND...: runs one benchmark on the profiled PostgreSQL, its Markdown to
# bench-results/NAME.md; a failure is noted and the run goes on.
step() {
  local name=$1
  shift
  echo "== $name" >&2
  if ! DATABASE_URL=$PROFILED_DATABASE_URL "$@" > "$results/$name.md"; then
    echo "== $name FAILED" >&2
    failed+=("$name")
  fi
}

step loadgen/console "$bin/loadgen" --start-system --profile --report-dir "$results/loadgen" \
  ${loadgen_args[@]+"${loadgen_args[@]}"}
step commands "$bin/bench-commands" --json "$results/commands.json" "${commands_args[@]}"
step queries "$bin/bench-queries" --rate-fraction 0.8 --json "$results/queries.json" "${queries_args[@]}"
step growth "$bin/bench-growth" --profile --json "$results/growth.json" "${growth_args[@]}"
step idle "$bin/bench-idle" --json "$results/idle.json" "${idle_args[@]}"

if [ "${#failed[@]}" -gt 0 ]; then
  note="$note Failed: ${failed[*]} (see the console output)."
fi
"$bin/bench-report" --dir "$results" --note "$note"

if [ "$quick" -eq 0 ]; then
  # Replace what stands between the markers in README.md with the goals table.
  readme="$root/README.md"
  awk -v report="$results/summary.md" '
    /<!-- loadgen:begin -->/ { print; while ((getline line < report) > 0) print line; skipping = 1; next }
    /<!-- loadgen:end -->/ { skipping = 0 }
    !skipping { print }
  ' "$readme" > "$readme.new" && mv "$readme.new" "$readme"
  # The full report of the published run, so that the README's figures can be traced
  # in the repository, not only on the machine that ran it.
  cp "$results/report.md" "$root/docs/benchmark-report.md"
  echo "README.md: Performance section updated from bench-results/summary.md; docs/benchmark-report.md written"
fi
if [ "${#failed[@]}" -gt 0 ]; then
  echo "failed: ${failed[*]}" >&2
  exit 1
fi
