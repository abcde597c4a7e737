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

python3 - "$root/README.md" "$root/bench-results/report.md" <<'PY'
import sys
readme_path, report_path = sys.argv[1], sys.argv[2]
readme, report = open(readme_path).read(), open(report_path).read()
begin, end = "<!-- loadgen:begin -->", "<!-- loadgen:end -->"
if begin in readme and end in readme:
    head, rest = readme.split(begin, 1)
    _, tail = rest.split(end, 1)
    open(readme_path, "w").write(f"{head}{begin}\n{report}{end}{tail}")
    print("README.md: Performance section updated")
PY
