#!/usr/bin/env bash
# Soak test: the gateway under a mixed load (WebSocket, SSE, long-poll,
# reverse proxy, publishers, clients vanishing mid-frame) while its RSS and
# open fds are sampled; fails if either grows after warm-up or the fds don't
# return to baseline once the load stops. The checks are in scripts/soak.py.
#
#   scripts/soak.sh            600 s, a sample every 10 s
#   scripts/soak.sh 30         30 s, a sample every 2 s (the CI version)
#   SOAK_SHORT=1 scripts/soak.sh
#
# Gateway binary: $POLLBRIDGE_BIN, else target/debug/pollbridge (build it
# first; for the long run prefer `cargo build --release` and
# POLLBRIDGE_BIN=target/release/pollbridge). Prints the series, one line
# per check, then `soak: N passed, M failed`; exits non-zero on failure.
set -euo pipefail
cd "$(dirname "$0")/.."

duration=${1:-600}
if [ "${SOAK_SHORT:-0}" = 1 ] && [ $# -eq 0 ]; then
  duration=30
fi
if ! [[ $duration =~ ^[0-9]+$ ]] || [ "$duration" -lt 10 ]; then
  echo "usage: $0 [DURATION_SECONDS >= 10]" >&2
  exit 2
fi
# A sample every 2 s in short runs, every 10 s otherwise.
interval=10
if [ "$duration" -le 60 ]; then
  interval=2
fi

bin=${POLLBRIDGE_BIN:-${CARGO_TARGET_DIR:-target}/debug/pollbridge}
if [ ! -x "$bin" ]; then
  echo "soak: no gateway binary at $bin (cargo build, or set POLLBRIDGE_BIN)" >&2
  echo "soak: 0 passed, 1 failed"
  exit 1
fi

exec python3 scripts/soak.py run --bin "$bin" --duration "$duration" --interval "$interval"
