#!/usr/bin/env bash
# scripts/browser/run.sh — end-to-end browser test of the demo page and the
# browser client: headless Debian chromium driven by playwright-core.
#
#   scripts/browser/run.sh                      # setup, cargo build, run
#   POLLBRIDGE_BIN=path/to/pollbridge scripts/browser/run.sh   # skip the build
#
# Starts two gateways on free loopback ports (one with --demo, one with --demo
# --ws-enabled false), and the README's toy backend
# (examples/toy-backend/backend.py, serving jQuery from node_modules) behind a
# third gateway that bridges its /api/scores with `hold`, runs
# scripts/browser/e2e.mjs against them and stops them on exit. Artifacts in artifacts/browser/: demo.png (the demo after the first
# scenario), fail-*.png (page at a failure), gateway*.log (gateway stderr).
# Last line: `browser: N passed, M failed`; exit status non-zero on any failure.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"
start_ms=$(date +%s%3N)

# Failures before the scenarios run still end with the summary line.
die() {
  echo "run.sh: $*" >&2
  echo "browser: 0 passed, 1 failed"
  exit 1
}

"$here/setup.sh" || die "setup failed (scripts/browser/setup.sh)"

if [ -n "${POLLBRIDGE_BIN:-}" ]; then
  bin=$POLLBRIDGE_BIN
else
  cargo build --quiet --bin pollbridge || die "cargo build failed"
  bin="${CARGO_TARGET_DIR:-$root/target}/debug/pollbridge"
fi
[ -x "$bin" ] || die "no gateway binary at $bin"

artifacts="$root/artifacts/browser"
mkdir -p "$artifacts"
rm -f "$artifacts"/demo.png "$artifacts"/fail-*.png
tmp=$(mktemp -d)
pids=()
names=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start_gateway NAME ARGS...: sets ${NAME}_public and ${NAME}_admin from the ready line.
start_gateway() {
  local name=$1
  shift
  # NO_COLOR: the log goes to a file (the gateway colours even when not on a terminal).
  NO_COLOR=1 "$bin" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 "$@" >"$tmp/$name.out" 2>"$artifacts/$name.log" &
  local pid=$!
  pids+=("$pid")
  names+=("$name")
  local line="" i
  for i in $(seq 1 200); do  # up to 10 s
    line=$(grep -s -m1 '^pollbridge ready ' "$tmp/$name.out" || true)
    [ -n "$line" ] && break
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 20 "$artifacts/$name.log" >&2
      die "gateway $name ($*) exited before it was ready (log above)"
    fi
    sleep 0.05
  done
  [ -n "$line" ] || die "gateway $name printed no ready line within 10 s"
  local pub adm
  pub=$(sed -n 's/.* public=\([^ ]*\).*/\1/p' <<<"$line")
  adm=$(sed -n 's/.* admin=\([^ ]*\).*/\1/p' <<<"$line")
  printf -v "${name}_public" '%s' "$pub"
  printf -v "${name}_admin" '%s' "$adm"
}

# A short reconnect window: the resume scenario's client waits for the
# gateway's retry hint, spread over this window (10 s by default).
start_gateway gateway --demo --reconnect-window 2s
start_gateway gateway_nows --demo --ws-enabled false

# The toy backend on a free port (it prints where it listens), and a gateway
# bridging its polling URL as the README does, with `hold`.
TOY_JQUERY="$here/node_modules/jquery/dist/jquery.min.js" \
  python3 "$root/examples/toy-backend/backend.py" 0 >"$tmp/toy.out" 2>"$artifacts/toy.log" &
pids+=("$!")
names+=(toy)
toy=""
for i in $(seq 1 200); do  # up to 10 s
  toy=$(sed -n 's|^toy backend on http://||p' "$tmp/toy.out" 2>/dev/null || true)
  [ -n "$toy" ] && break
  sleep 0.05
done
[ -n "$toy" ] || die "the toy backend printed no address within 10 s (artifacts/browser/toy.log)"
cat >"$tmp/bridge.toml" <<TOML
upstream = "http://$toy"

[[bridge]]
path = "/api/scores"
channel = "scores"
interval = "200ms"
hold = "25s"
TOML
start_gateway gateway_bridge --config "$tmp/bridge.toml"

status=0
PB_PUBLIC=$gateway_public PB_ADMIN=$gateway_admin \
PB_NOWS_PUBLIC=$gateway_nows_public PB_NOWS_ADMIN=$gateway_nows_admin \
PB_BRIDGE_PUBLIC=$gateway_bridge_public PB_BRIDGE_ADMIN=$gateway_bridge_admin PB_TOY=$toy \
PB_ARTIFACTS=$artifacts \
  node "$here/e2e.mjs" || status=$?
# A gateway that is gone now was stopped during the run: a crash, or a signal
# from outside (SIGTERM/SIGINT: "shutting down" in its log). Say so, since the
# scenario failures it causes look like client or gateway bugs.
for i in "${!pids[@]}"; do
  if ! kill -0 "${pids[$i]}" 2>/dev/null; then
    gw_status=0
    wait "${pids[$i]}" || gw_status=$?
    echo "run.sh: WARNING: gateway ${names[$i]} (pid ${pids[$i]}) exited during the run with status $gw_status; its log ends:" >&2
    tail -n 3 "$artifacts/${names[$i]}.log" >&2
  fi
done
echo "run.sh: $(( ($(date +%s%3N) - start_ms) ))ms total (setup, build, gateways, browser)" >&2
exit "$status"
