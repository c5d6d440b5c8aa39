#!/usr/bin/env bash
# check-gateway.sh [BINARY] — run check-live.sh against a real pollbridge.
#
#   scripts/prometheus/check-gateway.sh [target/debug/pollbridge]
#
# Starts a trivial upstream (gateway_load.py upstream) and the gateway with
# both listeners on port 0 of 127.0.0.1 (in-memory bus, --upstream set), reads
# their addresses from the gateway's ready line on stdout, then runs
# check-live.sh on the admin /metrics with LOAD_CMD = gateway_load.py load
# (publish, 2 WebSocket, 1 SSE, 2 long-poll, 1 timeout=0 poller, browsers
# reporting a WebSocket fallback, refused upgrades (bad handshake, and an origin
# outside the auth.allowed_origins set below), proxied GETs, a legacy poller of
# a [[bridge]] route), which starts after Prometheus' first scrape. Everything
# is stopped on exit.
# Runs twice: with a [[bridge]] route and without one (a gateway without
# routes exports the pollbridge_bridge_* series once, at 0 and without a
# bridge label; its bridge panels and the
# bridge_requests_saved rule must still return data: 0). Env: BRIDGE=1 or
# BRIDGE=0 runs only that one; POLLBRIDGE_ARGS="..." adds flags.
# Does not build: run `cargo build` first.
set -uo pipefail
if [ -z "${BRIDGE:-}" ]; then
  echo "check-gateway: with a [[bridge]] route"
  BRIDGE=1 "$0" "$@" || exit $?
  echo "check-gateway: without [[bridge]] routes"
  BRIDGE=0 exec "$0" "$@"
fi
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
bin=${1:-$root/target/debug/pollbridge}
[ -x "$bin" ] || { echo "check-gateway: FAIL: no executable $bin (cargo build first)"; exit 1; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/pollbridge-check-gateway.XXXXXX")
up_pid="" gw_pid=""
cleanup() {
  local p
  for p in $gw_pid $up_pid; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_line FILE PATTERN PID: wait (max 30 s) until FILE has a line matching PATTERN.
wait_line() {

  for _ in $(seq 1 300); do
    grep -qs -- "$2" "$1" && return 0
    kill -0 "$3" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

python3 "$here/gateway_load.py" upstream >"$tmp/upstream.out" 2>&1 &
up_pid=$!
wait_line "$tmp/upstream.out" "^upstream listening " "$up_pid" ||
  { cat "$tmp/upstream.out"; echo "check-gateway: FAIL: upstream did not start"; exit 1; }
upstream=$(sed -n 's/^upstream listening //p' "$tmp/upstream.out")

# An origin allow-list, so that upgrades from another origin are refused with
# reason `origin` (the load's own clients send no Origin, which stays allowed).
cat >"$tmp/pollbridge.toml" <<'TOML'
[auth]
allowed_origins = ["http://obs-load.example"]
TOML
cfg_args=(--config "$tmp/pollbridge.toml")
load_args=(--denied-origin http://obs-denied.example)
if [ "${BRIDGE:-1}" = 1 ]; then
  cat >>"$tmp/pollbridge.toml" <<'TOML'

[[bridge]]
path = "/obs-bridge/scores"
channel = "obs-bridge"
interval = "1s"
TOML
  load_args+=(--bridge-path /obs-bridge/scores)
fi

# shellcheck disable=SC2086  # POLLBRIDGE_ARGS is a list of flags
"$bin" "${cfg_args[@]}" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --upstream "http://$upstream" \
  ${POLLBRIDGE_ARGS:-} >"$tmp/gateway.out" 2>"$tmp/gateway.err" &
gw_pid=$!
if ! wait_line "$tmp/gateway.out" "^pollbridge ready " "$gw_pid"; then
  tail -n 20 "$tmp/gateway.err"
  echo "check-gateway: FAIL: gateway printed no ready line"
  exit 1
fi
ready=$(grep -m1 "^pollbridge ready " "$tmp/gateway.out")
public=$(sed -n 's/.* public=\([^ ]*\).*/\1/p' <<<"$ready")
admin=$(sed -n 's/.* admin=\([^ ]*\).*/\1/p' <<<"$ready")
[ -n "$public" ] && [ -n "$admin" ] || { echo "check-gateway: FAIL: cannot parse: $ready"; exit 1; }

LOAD_CMD="exec python3 '$here/gateway_load.py' load --public '$public' --admin '$admin' --duration 120 ${load_args[*]}" \
  "$here/check-live.sh" "http://$admin/metrics"
rc=$?
if [ "$rc" -ne 0 ]; then
  echo "gateway stderr (tail):"
  tail -n 20 "$tmp/gateway.err" | sed 's/^/    /'
fi
exit "$rc"
