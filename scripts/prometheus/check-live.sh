#!/usr/bin/env bash
# check-live.sh METRICS_URL — check a running gateway's metrics with real tools.
#
#   scripts/prometheus/check-live.sh http://127.0.0.1:PORT/metrics
#
# 1. curl METRICS_URL | promtool check metrics   (must be clean; problems are printed)
# 2. duplicate-series check                       (check_exposition.py)
# 3. promtool check rules / check config on a throw-away config derived from
#    deploy/prometheus/prometheus.yml (job pollbridge, scrape + eval every 1 s,
#    the same rule_files)
# 4. a throw-away Prometheus on a free 127.0.0.1 port, storage in a temp dir,
#    scraping METRICS_URL; waits (polling) for MIN_SAMPLES scrapes and for the
#    rules to be evaluated
# 5. check_dashboards.py: every PromQL expression of every dashboard panel and
#    query variable, and every loaded rule, through /api/v1/query: must parse,
#    execute and return finite data. Nothing may be absent: ALLOWED_NO_DATA
#    below is empty (a gateway without [[bridge]] routes exports the bridge
#    counters without a bridge label, at 0; check-gateway.sh runs a gateway
#    with a route and one without).
#
# Env:
#   LOAD_CMD        optional shell command run (in its own process group) after the
#                   first scrape and killed on exit: traffic that makes the
#                   counters move while Prometheus watches
#   JOB             scrape job name (pollbridge), MIN_SAMPLES (3), WAIT_TIMEOUT (30 s),
#   SETTLE_TIMEOUT  how long empty results are re-queried (20 s)
#   PROM_DIR, DASHBOARD_DIR   files under test (deploy/prometheus, dashboards)
#   VERBOSE=1       print every verdict, KEEP_TMP=1 keep the temp dir
# Quiet on success (one verdict line); exits 1 on failure, 2 on usage errors.
set -uo pipefail

# Metric names that may have no series. None: every series exists from
# startup on every gateway (the pollbridge_bridge_* counters, one set per
# [[bridge]] route, exist without a bridge label when there is no route), so
# every panel and rule has data, and a misspelt metric name is still caught
# (an `or vector(0)` fallback would hide it).
ALLOWED_NO_DATA=()

if [ "$#" -ne 1 ] || [[ "$1" != http*://* ]]; then
  echo "usage: $0 http://HOST:PORT/metrics" >&2
  exit 2
fi
URL=$1
start=${EPOCHREALTIME/./}
# shellcheck source=scripts/prometheus/obs-tools.sh
source "$(dirname "${BASH_SOURCE[0]}")/obs-tools.sh"
PROM_DIR=$(cd "${PROM_DIR:-$OBS_ROOT/deploy/prometheus}" && pwd) || { echo "check-live: FAIL: no PROM_DIR"; exit 1; }
DASHBOARD_DIR=$(cd "${DASHBOARD_DIR:-$OBS_ROOT/dashboards}" && pwd) || { echo "check-live: FAIL: no DASHBOARD_DIR"; exit 1; }
JOB=${JOB:-pollbridge}
MIN_SAMPLES=${MIN_SAMPLES:-3}
WAIT_TIMEOUT=${WAIT_TIMEOUT:-30}
SETTLE_TIMEOUT=${SETTLE_TIMEOUT:-20}

obs_need_prometheus && obs_need_python || { echo "check-live: FAIL: could not install tools"; exit 1; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/pollbridge-check-live.XXXXXX")
prom_pid="" load_pid=""
cleanup() {
  if [ -n "$load_pid" ]; then
    kill -- "-$load_pid" 2>/dev/null || kill "$load_pid" 2>/dev/null
    wait "$load_pid" 2>/dev/null || true
  fi
  if [ -n "$prom_pid" ]; then
    kill "$prom_pid" 2>/dev/null
    wait "$prom_pid" 2>/dev/null || true
  fi
  if [ "${KEEP_TMP:-0}" = 1 ]; then echo "check-live: kept $tmp" >&2; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

elapsed() { local t=$(( (${EPOCHREALTIME/./} - start) / 100000 )); echo "$((t / 10)).$((t % 10))s"; }
fail() {
  echo "check-live: FAIL: $* (after $(elapsed))"
  exit 1
}

# 1. exposition lint
curl -fsS --max-time 10 -o "$tmp/metrics.txt" "$URL" 2>"$tmp/curl.err" ||
  fail "cannot fetch $URL: $(cat "$tmp/curl.err")"
promtool check metrics <"$tmp/metrics.txt" >"$tmp/lint.txt" 2>&1
lint_rc=$?
if [ -s "$tmp/lint.txt" ]; then
  echo "promtool check metrics reports:"
  sed 's/^/    /' "$tmp/lint.txt"
fi
[ "$lint_rc" -eq 0 ] || fail "promtool check metrics exited $lint_rc on $URL"

# 2. duplicate series
"$OBS_PY" "$OBS_DIR/check_exposition.py" "$tmp/metrics.txt" || fail "duplicate or unparsable series in $URL"

# 3. config + rules
mapfile -t rule_files < <("$OBS_PY" "$OBS_DIR/live_prom_config.py" --src "$PROM_DIR/prometheus.yml" \
  --url "$URL" --job "$JOB" --interval 1s --out "$tmp/prometheus.yml" 2>"$tmp/cfg.err")
[ -s "$tmp/prometheus.yml" ] || fail "cannot derive a config from $PROM_DIR/prometheus.yml: $(cat "$tmp/cfg.err")"
if [ "${#rule_files[@]}" -gt 0 ]; then
  promtool check rules "${rule_files[@]}" >"$tmp/rules.txt" 2>&1 || { cat "$tmp/rules.txt"; fail "promtool check rules"; }
fi
promtool check config "$tmp/prometheus.yml" >"$tmp/config.txt" 2>&1 || { cat "$tmp/config.txt"; fail "promtool check config"; }

# 4. throw-away Prometheus on a free port (retry if another process takes it first)
for attempt in 1 2 3; do
  port=$(obs_free_port)
  prometheus --config.file="$tmp/prometheus.yml" --storage.tsdb.path="$tmp/data" \
    --web.listen-address="127.0.0.1:$port" --log.level=warn >"$tmp/prometheus.log" 2>&1 &
  prom_pid=$!
  for _ in $(seq 1 100); do
    curl -fs --max-time 1 -o /dev/null "http://127.0.0.1:$port/-/ready" && break
    kill -0 "$prom_pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$prom_pid" 2>/dev/null && curl -fs --max-time 1 -o /dev/null "http://127.0.0.1:$port/-/ready"; then
    break
  fi
  kill "$prom_pid" 2>/dev/null; wait "$prom_pid" 2>/dev/null; prom_pid=""
  grep -q "address already in use" "$tmp/prometheus.log" && [ "$attempt" -lt 3 ] && continue
  tail -n 20 "$tmp/prometheus.log"
  fail "Prometheus did not start"
done
PROM="http://127.0.0.1:$port"

if [ -n "${LOAD_CMD:-}" ]; then
  # Let Prometheus see a baseline first, so the load shows up as rates.
  "$OBS_PY" "$OBS_DIR/check_dashboards.py" --prom "$PROM" --job "$JOB" --min-samples 1 \
    --wait-timeout "$WAIT_TIMEOUT" --wait-only || fail "no scrape of $URL"
  setsid bash -c "$LOAD_CMD" >"$tmp/load.log" 2>&1 &
  load_pid=$!
fi

# 5. every dashboard query and every rule
shopt -s nullglob
dashboards=("$DASHBOARD_DIR"/*.json)
[ "${#dashboards[@]}" -gt 0 ] || fail "no dashboards in $DASHBOARD_DIR"
args=(--prom "$PROM" --job "$JOB" --min-samples "$MIN_SAMPLES" --wait-timeout "$WAIT_TIMEOUT"
      --settle-timeout "$SETTLE_TIMEOUT" --var "job=$JOB" --rules)
for m in "${ALLOWED_NO_DATA[@]}"; do args+=(--allow-no-data "$m"); done
[ "${VERBOSE:-0}" = 1 ] && args+=(-v)
if ! "$OBS_PY" "$OBS_DIR/check_dashboards.py" "${args[@]}" "${dashboards[@]}" >"$tmp/dash.txt" 2>&1; then
  cat "$tmp/dash.txt"
  if grep -q "level=error" "$tmp/prometheus.log"; then
    echo "Prometheus log errors:"; grep "level=error" "$tmp/prometheus.log" | tail -n 10 | sed 's/^/    /'
  fi
  [ -n "$load_pid" ] && { echo "LOAD_CMD output (tail):"; tail -n 10 "$tmp/load.log" | sed 's/^/    /'; }
  fail "dashboard / rule queries"
fi
[ "${VERBOSE:-0}" = 1 ] && cat "$tmp/dash.txt"
echo "check-live: PASS (metrics lint clean, no duplicate series; $(tail -n 1 "$tmp/dash.txt" | sed 's/^checked //; s/ in [0-9.]*s:/:/; s/; 0 problems//')) in $(elapsed)"
