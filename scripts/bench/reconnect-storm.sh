#!/usr/bin/env bash
# Reconnect-storm benchmark (prints figures; not a test).
#
#   scripts/bench/reconnect-storm.sh [SCENARIO…] [-- client flags…]
#
# Scenarios (default: all, in this order):
#   storm-hints                  10,000 WebSocket clients, gateway drained
#                                (SIGTERM) and restarted on the same port;
#                                clients follow the close reason's retry=<ms>
#   storm-immediate              the same, clients reconnect at once on close
#                                (admission control at its default, 2000/s)
#   storm-immediate-noadmission  the same with admission control off
#   fanout-state                 1,000 subscribers (10 % slow readers) on a
#                                state channel, 200 msg/s for 10 s
#   fanout-stream                the same on a stream channel
#
# Client flags: --clients N (10000), --subscribers N (1000), --slow-percent P
# (10), --rate MSG_PER_S (200), --seconds S (10), --sources N (50: client
# source addresses 127.0.0.2…), --gateway-bin PATH.
#
# It builds the release gateway (cargo build --release --bin pollbridge) and
# the client (scripts/bench/reconnect-storm.rs, in a throw-away cargo project
# under target/), starts a throw-away redis-server on a free loopback port for
# the storm scenarios (the memory bus if redis-server is missing), and removes
# everything when it ends. Loopback only; every wait in the client is bounded.
# The open-file limit must allow 20,000 descriptors per process.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD

scenarios=()
client_flags=()
while [ $# -gt 0 ]; do
  case $1 in
    --) shift; client_flags=("$@"); break ;;
    *) scenarios+=("$1"); shift ;;
  esac
done

ulimit -n 20000 2>/dev/null || true
if [ "$(ulimit -n)" -lt 20000 ]; then
  echo "reconnect-storm: open-file limit $(ulimit -n) < 20000" >&2
  exit 2
fi

echo "building the release gateway…" >&2
cargo build --release --quiet --bin pollbridge

# The client: a small cargo project of its own (tokio + libc), outside the
# workspace, built in release.
proj="$root/target/reconnect-storm-bench"
mkdir -p "$proj"
cat >"$proj/Cargo.toml" <<EOF
[package]
name = "reconnect-storm-bench"
version = "0.0.0"
edition = "2021"
publish = false

[[bin]]
name = "reconnect-storm"
path = "$root/scripts/bench/reconnect-storm.rs"

[dependencies]
tokio = { version = "1", features = ["rt-multi-thread", "net", "time", "io-util", "macros", "sync"] }
libc = "0.2"

[profile.release]
debug = 0

[workspace]
EOF
# Same dependency versions as the project (and its offline cache).
[ -f "$proj/Cargo.lock" ] || cp "$root/Cargo.lock" "$proj/Cargo.lock"
echo "building the client…" >&2
if ! cargo build --release --quiet --offline --manifest-path "$proj/Cargo.toml" 2>/dev/null; then
  cargo build --release --quiet --manifest-path "$proj/Cargo.toml"
fi
client="$proj/target/release/reconnect-storm"

tmp=$(mktemp -d)
redis_pid=
cleanup() {
  if [ -n "$redis_pid" ]; then
    kill "$redis_pid" 2>/dev/null || true
    wait "$redis_pid" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

redis_flags=()
if command -v redis-server >/dev/null 2>&1; then
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  redis-server --port "$port" --bind 127.0.0.1 --dir "$tmp" --save "" --appendonly no \
    --daemonize no --logfile "$tmp/redis.log" &
  redis_pid=$!
  for _ in $(seq 1 100); do
    if redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null | grep -q PONG; then break; fi
    sleep 0.05
  done
  redis_flags=(--redis-url "redis://127.0.0.1:$port")
else
  echo "redis-server not found: the storm runs on the memory bus" >&2
fi

echo "machine: $(nproc) cores, $(uname -r); gateway $(git rev-parse --short HEAD 2>/dev/null || echo '?')" \
  "(work tree $(git status --porcelain 2>/dev/null | grep -c . || true) changes)"
"$client" --gateway-bin "$root/target/release/pollbridge" "${redis_flags[@]}" \
  "${client_flags[@]}" "${scenarios[@]}"
