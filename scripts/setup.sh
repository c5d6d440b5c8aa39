#!/usr/bin/env bash
# Installs what the tests need, only when missing. Safe to run repeatedly.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "setup: nothing beyond the Rust toolchain and Node.js needed yet"
