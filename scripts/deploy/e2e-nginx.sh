#!/usr/bin/env bash
# e2e-nginx.sh — pollbridge behind the shipped nginx and HAProxy configs, for real.
#
#   scripts/deploy/e2e-nginx.sh
#
# Starts, all on free loopback ports: Redis (redis-server from apt), the toy
# backend, two gateway nodes sharing the Redis bus (with a [[bridge]] for
# the toy backend's /api/scores), Debian's nginx running
# deploy/nginx/pollbridge.conf and HAProxy running deploy/haproxy/haproxy.cfg
# — both with only their addresses substituted. Then, through each proxy at
# the same time (scripts/deploy/e2e_client.py):
#   - a WebSocket, an SSE and a long-poll client all receive the same 100
#     messages, in order (published alternately on the two nodes);
#   - each SSE event arrives within 500 ms of its publish, before the next
#     publish (nothing buffers the stream);
#   - a long-poll held 65 s — longer than nginx's default 60 s
#     proxy_read_timeout — is answered with the message published then;
#   - the bridged legacy URL /api/scores answers 200 with the gateway's ETag;
#     a poll with that ETag is held until the backend changes, then answered
#     with the new body.
# Finally both nodes get SIGTERM and must exit 0.
#
# Installs nginx, haproxy and redis-server when missing (scripts/lib/ensure-apt.sh).
# Env: POLLBRIDGE_BIN (default: cargo build, target/debug/pollbridge),
#      E2E_HOLD (seconds the held poll waits, default 65),
#      E2E_NGINX_CONF / E2E_HAPROXY_CFG (run another snippet/config instead of
#      the shipped one, e.g. a broken copy, to see the checks fail).
# Prints one line per check and ends with "deploy-e2e: N passed, M failed";
# takes about 75 s (the held poll), the rest runs alongside it.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
ROOT=$PWD
started=$SECONDS
passed=0
failed=0

check() { # check OK|FAIL NAME: DETAIL
  local verdict=$1; shift
  if [ "$verdict" = PASS ]; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
  printf "%-4s %s (%d s)\n" "$verdict" "$*" "$((SECONDS - started))"
}
finish() {
  echo "($((SECONDS - started)) s in all)"
  echo "deploy-e2e: $passed passed, $failed failed"
  [ "$failed" -eq 0 ]
  exit $?
}

if ! scripts/lib/ensure-apt.sh nginx haproxy redis-server curl; then
  check FAIL "setup: could not install nginx, haproxy, redis-server"
  finish
fi
BIN=${POLLBRIDGE_BIN:-}
if [ -z "$BIN" ]; then
  if ! cargo build --quiet --bin pollbridge; then
    check FAIL "setup: cargo build failed"
    finish
  fi
  BIN=$ROOT/target/debug/pollbridge
fi
HOLD=${E2E_HOLD:-65}

tmp=$(mktemp -d)
chmod 0755 "$tmp"
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT

# Eight free loopback ports, held open together so they are distinct.
read -r REDIS BACKEND P1 A1 P2 A2 NGINX HAPROXY < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(8)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
')

# wait_for SECONDS CMD...: retry CMD every 0.1 s.
wait_for() {
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -ge "$deadline" ] && return 1
    sleep 0.1
  done
}

# --- Redis, toy backend, two gateway nodes ----------------------------------
redis-server --port "$REDIS" --bind 127.0.0.1 --save '' --appendonly no \
  --daemonize no --logfile "$tmp/redis.log" &
pids+=($!)
python3 examples/toy-backend/backend.py "$BACKEND" >"$tmp/backend.log" 2>&1 &
pids+=($!)
if ! wait_for 10 redis-cli -p "$REDIS" ping || ! wait_for 10 curl -sf "http://127.0.0.1:$BACKEND/stats"; then
  check FAIL "setup: Redis or the toy backend did not start"
  finish
fi

cat >"$tmp/node.toml" <<EOF
upstream = "http://127.0.0.1:$BACKEND"
bus = "redis://127.0.0.1:$REDIS"

[limits]
# nginx and HAProxy connect from here; their X-Forwarded-For names the client.
trusted_proxies = ["127.0.0.1"]

[[bridge]]
path = "/api/scores"
channel = "scores"
interval = "1s"
hold = "25s"
EOF
start_node() { # start_node N PUBLIC ADMIN
  "$BIN" --config "$tmp/node.toml" --listen "127.0.0.1:$2" --admin-listen "127.0.0.1:$3" \
    >"$tmp/node$1.out" 2>"$tmp/node$1.err" &
  pids+=($!)
  eval "NODE$1_PID=$!"
}
start_node 1 "$P1" "$A1"
start_node 2 "$P2" "$A2"
if wait_for 20 curl -sf "http://127.0.0.1:$A1/readyz" && wait_for 20 curl -sf "http://127.0.0.1:$A2/readyz"; then
  check PASS "nodes: two gateways on one Redis ready ($(head -n 1 "$tmp/node1.out"); $(head -n 1 "$tmp/node2.out"))"
else
  check FAIL "nodes: not ready within 20 s: $(tail -n 3 "$tmp"/node*.err | tr '\n' ' ')"
  finish
fi

# The bus itself: published on node 2, read on node 1.
channel="e2e.bus.$$"
curl -sf -X POST -d '"across"' -H 'Content-Type: application/json' "http://127.0.0.1:$A2/publish/$channel" >/dev/null
answer=$(curl -sf "http://127.0.0.1:$P1/rt/poll/$channel?since=0&timeout=5")
if [[ $answer == *'"data":"across"'* ]]; then
  check PASS "redis bus: a message published on node 2 is read on node 1"
else
  check FAIL "redis bus: published on node 2, node 1 answered: ${answer:-nothing}"
fi

# --- nginx with the shipped snippet -------------------------------------------
mkdir -p "$tmp/nginx"
for d in cb pt ft ut st; do mkdir -p "$tmp/nginx/$d"; chmod 0777 "$tmp/nginx/$d"; done
sed -e "s/pollbridge-1:8080/127.0.0.1:$P1/; s/pollbridge-2:8080/127.0.0.1:$P2/" \
    -e "s/listen 80;/listen 127.0.0.1:$NGINX;/" \
    "${E2E_NGINX_CONF:-deploy/nginx/pollbridge.conf}" >"$tmp/nginx/pollbridge.conf"
cat >"$tmp/nginx/nginx.conf" <<EOF
daemon off;
worker_processes 1;
pid $tmp/nginx/nginx.pid;
error_log $tmp/nginx/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $tmp/nginx/cb;
    proxy_temp_path $tmp/nginx/pt;
    fastcgi_temp_path $tmp/nginx/ft;
    uwsgi_temp_path $tmp/nginx/ut;
    scgi_temp_path $tmp/nginx/st;
    include $tmp/nginx/pollbridge.conf;
}
EOF
nginx -c "$tmp/nginx/nginx.conf" -p "$tmp/nginx/" &
pids+=($!)

# --- HAProxy with the shipped config -------------------------------------------
sed -e "s/pollbridge-1 pollbridge-1:8080/pollbridge-1 127.0.0.1:$P1 port $A1/" \
    -e "s/pollbridge-2 pollbridge-2:8080/pollbridge-2 127.0.0.1:$P2 port $A2/" \
    -e "s/bind :80/bind 127.0.0.1:$HAPROXY/" \
    "${E2E_HAPROXY_CFG:-deploy/haproxy/haproxy.cfg}" >"$tmp/haproxy.cfg"
haproxy -db -f "$tmp/haproxy.cfg" >"$tmp/haproxy.log" 2>&1 &
pids+=($!)

for proxy in "nginx $NGINX" "haproxy $HAPROXY"; do
  set -- $proxy
  # Two answers in a row: round robin has reached both nodes.
  if wait_for 10 curl -sf "http://127.0.0.1:$2/rt/client.js" && curl -sf -o /dev/null "http://127.0.0.1:$2/rt/client.js"; then
    check PASS "$1: up on 127.0.0.1:$2 with the shipped config (addresses substituted)"
  else
    check FAIL "$1: not answering on 127.0.0.1:$2: $(tail -n 3 "$tmp/nginx/error.log" "$tmp/haproxy.log" 2>/dev/null | tr '\n' ' ')"
  fi
done

# --- the clients, through both proxies at once ---------------------------------
echo "     (clients running through nginx and HAProxy; the held polls take ${HOLD} s)"
# Bounded: a client that hangs (a thread died on a bad answer) is killed
# after the held polls plus two minutes, and its missing lines fail below.
limit=$((HOLD + 120))
timeout "$limit" python3 scripts/deploy/e2e_client.py --name nginx --proxy "http://127.0.0.1:$NGINX" \
  --admin "127.0.0.1:$A1" --admin "127.0.0.1:$A2" --hold "$HOLD" --bridge --backend "127.0.0.1:$BACKEND" >"$tmp/client-nginx.out" 2>&1 &
c1=$!
timeout "$limit" python3 scripts/deploy/e2e_client.py --name haproxy --proxy "http://127.0.0.1:$HAPROXY" \
  --admin "127.0.0.1:$A1" --admin "127.0.0.1:$A2" --hold "$HOLD" --bridge --backend "127.0.0.1:$BACKEND" >"$tmp/client-haproxy.out" 2>&1 &
c2=$!
rc_nginx=0
rc_haproxy=0
wait "$c1" || rc_nginx=$?
wait "$c2" || rc_haproxy=$?
[ "$rc_nginx" -ne 124 ] || check FAIL "nginx: the client did not finish within ${limit} s"
[ "$rc_haproxy" -ne 124 ] || check FAIL "haproxy: the client did not finish within ${limit} s"
for name in nginx haproxy; do
  lines=0
  while IFS= read -r line; do
    case "$line" in
      PASS\ *) check PASS "${line#PASS }"; lines=$((lines + 1)) ;;
      FAIL\ *) check FAIL "${line#FAIL }"; lines=$((lines + 1)) ;;
      *) echo "     $line" ;;
    esac
  done <"$tmp/client-$name.out"
  [ "$lines" -gt 0 ] || check FAIL "$name: the client reported nothing"
done

# --- drain: SIGTERM, exit 0 -----------------------------------------------------
for n in 1 2; do
  pid_var="NODE${n}_PID"
  pid=${!pid_var}
  kill -TERM "$pid"
  wait "$pid"
  rc=$?
  if [ "$rc" -eq 0 ]; then
    check PASS "node $n: SIGTERM drained and exited 0"
  else
    check FAIL "node $n: exit status $rc after SIGTERM: $(tail -n 2 "$tmp/node$n.err" | tr '\n' ' ')"
  fi
done
# nginx retries a timed-out poll on the other node (proxy_next_upstream),
# which can hide a proxy_read_timeout below the hold time: its log can't.
if grep -q "upstream timed out" "$tmp/nginx/error.log" 2>/dev/null; then
  check FAIL "nginx: error log has upstream timeouts: $(grep -m1 'upstream timed out' "$tmp/nginx/error.log")"
else
  check PASS "nginx: no upstream timeouts in its error log"
fi
finish
