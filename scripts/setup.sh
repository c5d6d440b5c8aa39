#!/usr/bin/env bash
# Installs everything the tests need, only what is missing. Idempotent and
# quick when all is present. Needs root (or sudo) only when installing.
#   - Debian: redis-server + redis-tools (Redis bus tests), prometheus
#     (promtool and a throw-away Prometheus), chromium + fonts (browser test),
#     curl and jq (script checks), python3-websockets (permessage-deflate
#     interop, tests/ws_deflate.rs)
#   - npm: playwright-core for the browser test (pinned, scripts/browser)
# Suites that need more (Autobahn's Python 2.7 environment, the deploy
# linters) install it themselves into .cache/ on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/lib/ensure-apt.sh redis-server redis-tools prometheus chromium fonts-dejavu-core curl jq python3-websockets
scripts/browser/setup.sh
echo "setup: ok"
