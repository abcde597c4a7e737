#!/usr/bin/env bash
# Offline checks of everything under deploy/ and of the Containerfile and compose.yaml
# (README, "Deploying"). Nothing here can pull an image or reach a cluster, so each file
# is checked against the tool or schema that defines it:
#
#   Containerfile     hadolint; its `cargo build` names the workspace's own binaries
#   compose.yaml      the Compose Specification's JSON schema (check-jsonschema's copy)
#   deploy/kubernetes each overlay rendered by kustomize (kubectl kustomize), every object
#                     validated strictly against the Kubernetes OpenAPI schemas
#                     (kubernetes-validate); CRDs it has no schema for are named, not checked
#   deploy/prometheus promtool check config and rules, and the rules' unit tests
#   deploy/grafana    every PromQL expression of the dashboard parsed by promtool, and
#                     every metric named by the dashboard and the alerts exported by a
#                     process (service/src/metrics_catalog.rs)
#
# The tools are installed on first use under .local/ci-tools (scripts/ci-tools.sh).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
# shellcheck source=scripts/ci-tools.sh
source "$root/scripts/ci-tools.sh"
venv="$CI_TOOLS_VENV"
promtool="$PROMTOOL"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

check_containerfile() {
    echo "== Containerfile: hadolint"
    "$venv/bin/hadolint" Containerfile
    echo "== Containerfile: builds the workspace's own binaries, released and locked"
    python3 - <<'PY'
import json, re, subprocess, sys
text = open("Containerfile").read().replace("\\\n", " ")
builds = re.findall(r"cargo build ([^&\n]*)", text)
if len(builds) != 1:
    sys.exit(f"expected one cargo build in the Containerfile, found {len(builds)}")
args = builds[0].split()
for flag in ("--release", "--locked"):
    if flag not in args:
        sys.exit(f"the Containerfile's cargo build lacks {flag}")
wanted = {args[i + 1] for i, arg in enumerate(args) if arg == "--bin"}
metadata = json.loads(subprocess.check_output(
    ["cargo", "metadata", "--no-deps", "--format-version", "1", "--locked"]))
binaries = {target["name"] for package in metadata["packages"]
            for target in package["targets"] if "bin" in target["kind"]}
unknown = wanted - binaries
if unknown:
    sys.exit(f"the Containerfile builds binaries the workspace does not have: {sorted(unknown)}")
for process in ("command-api", "projector", "query-api", "healthcheck"):
    if process not in wanted:
        sys.exit(f"the Containerfile does not build {process}")
    if f"target/release/{process}" not in text:
        sys.exit(f"the Containerfile does not copy {process} into the image")
print(f"  builds {sorted(wanted)}, each a binary of the workspace, the three processes among them")
PY
}

check_compose() {
    echo "== compose.yaml: the Compose Specification schema"
    "$venv/bin/check-jsonschema" --builtin-schema vendor.compose-spec compose.yaml
}

check_kubernetes() {
    for overlay in deploy/kubernetes/overlays/*/; do
        name=$(basename "$overlay")
        echo "== Kubernetes overlay $name: kustomize, then the Kubernetes OpenAPI schemas"
        "$venv/bin/kubectl" kustomize "$overlay" > "$work/$name.yaml"
        grep '^kind: ' "$work/$name.yaml" | sort | uniq -c | sed 's/^/  /'
        "$venv/bin/kubernetes-validate" --strict --quiet "$work/$name.yaml"
    done
}

check_prometheus() {
    echo "== Prometheus: configuration, rules, and the rules' unit tests"
    # The configuration names the rules where the container mounts them.
    sed "s|/etc/prometheus/alerts.yml|$root/deploy/prometheus/alerts.yml|" \
        deploy/prometheus/prometheus.yml > "$work/prometheus.yml"
    "$promtool" check config "$work/prometheus.yml"
    "$promtool" check rules deploy/prometheus/alerts.yml
    "$promtool" test rules deploy/prometheus/alerts_test.yml
}

check_dashboard() {
    echo "== Grafana dashboard: every expression parses, every metric exists"
    python3 - "$work/dashboard-rules.yml" <<'PY'
import json, re, sys
dashboard = json.load(open("deploy/grafana/dashboards/eventledger.json"))
expressions = [(panel["title"], target["expr"]) for panel in dashboard["panels"]
               for target in panel.get("targets", [])]
catalog = set(re.findall(r'metric\(\s*"([a-z_]+)"', open("service/src/metrics_catalog.rs").read()))
alerts = open("deploy/prometheus/alerts.yml").read()
alert_expressions = re.findall(r"expr: \|?\n?((?:.|\n)*?)\n\s+(?:for|labels):", alerts)
words = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
         "unless", "offset", "bool", "le", "sum", "max", "min", "avg", "rate", "increase",
         "histogram_quantile", "max_over_time", "absent", "count", "job", "instance",
         "projection", "state", "status", "reason", "route", "method", "outcome", "type",
         "relay", "dependency", "up", "__rate_interval", "humanizeDuration"}
missing = set()
for expression in [e for _, e in expressions] + alert_expressions:
    without_strings = re.sub(r'"[^"]*"|\[[^\]]*\]', '', expression)
    for name in re.findall(r"[a-z_][a-z0-9_]*", without_strings):
        if name in words:
            continue
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        if name not in catalog and base not in catalog:
            missing.add(name)
if missing:
    sys.exit(f"metrics named in the dashboard or alerts that no process exports: {sorted(missing)}")
# promtool parses expressions inside rule files: one recording rule per panel query,
# with Grafana's $__rate_interval given a value.
with open(sys.argv[1], "w") as rules:
    rules.write("groups:\n  - name: dashboard\n    rules:\n")
    for index, (title, expression) in enumerate(expressions):
        expression = expression.replace("$__rate_interval", "1m")
        rules.write(f"      - record: dashboard:expression_{index}\n")
        rules.write(f"        expr: {json.dumps(expression)}\n")
print(f"  {len(expressions)} dashboard expressions, {len(alert_expressions)} alert expressions; "
      f"all their metrics are in the catalog")
PY
    "$promtool" check rules "$work/dashboard-rules.yml"
}

check_containerfile
check_compose
check_kubernetes
check_prometheus
check_dashboard
echo "deploy checks: all passed"
