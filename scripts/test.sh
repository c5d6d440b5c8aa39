#!/usr/bin/env bash
# Runs every test of the project:
#   - the Rust unit and integration tests (the real binary over real sockets,
#     incl. the Redis bus against real redis-server instances)
#   - the browser client's unit tests (node --test)
#   - the Prometheus/Grafana checks: promtool on the rules and config, and a
#     real Prometheus evaluating every dashboard and rule query against a
#     gateway under load
#   - the Autobahn TestSuite (RFC 6455 conformance, 301 cases)
#   - a short soak: mixed load with RSS and open files sampled, both flat
#   - the end-to-end browser test in headless Chromium
#   - the deployment files checked by their real tools (hadolint, compose,
#     kustomize + kubernetes-validate + checkov, systemd-analyze, nginx -t,
#     haproxy -c) and an end-to-end run through nginx and HAProxy
# Installs what they need first (scripts/setup.sh; idempotent). Prints one
# summary line at the end and exits non-zero if any suite failed.
set -uo pipefail
cd "$(dirname "$0")/.."

passed=0
failed=0
failures=()
suite() {
  local name=$1
  shift
  echo "=== $name"
  local start=$SECONDS
  if "$@"; then
    passed=$((passed + 1))
    echo "=== $name: ok ($((SECONDS - start)) s)"
  else
    failed=$((failed + 1))
    failures+=("$name")
    echo "=== $name: FAILED ($((SECONDS - start)) s)"
  fi
}

suite "setup" scripts/setup.sh
suite "cargo build" cargo build --workspace --all-targets
# Script suites share the debug binary cargo test builds anyway.
export POLLBRIDGE_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/pollbridge"
suite "cargo test" cargo test --workspace --all-targets
suite "client unit tests" node --test client/
suite "prometheus files" scripts/prometheus/check-files.sh
suite "prometheus live" scripts/prometheus/check-gateway.sh "$POLLBRIDGE_BIN"
suite "autobahn" scripts/autobahn.sh --ci
suite "soak (short)" scripts/soak.sh 30
suite "browser e2e" scripts/browser/run.sh
suite "deploy files" scripts/deploy/check.sh
suite "deploy e2e (nginx, haproxy)" scripts/deploy/e2e-nginx.sh

echo
if [ ${#failures[@]} -gt 0 ]; then
  echo "failed suites: ${failures[*]}"
fi
echo "test.sh: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
