#!/usr/bin/env bash
# selftest.sh — prove the Prometheus/Grafana checks pass on the real files and
# fail, for the right reason, on deliberately broken copies.
#
#   scripts/prometheus/selftest.sh
#
# Runs check-files.sh and check-live.sh (against fake_metrics.py stand-ins of
# the gateway) on temp copies of deploy/prometheus/ and dashboards/. Each case
# asserts the exit status and, for failures, a pattern in the output. Live
# cases run 4 at a time. Ends with "selftest: N passed, M failed"; exit 1 if
# any case failed.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/prometheus/obs-tools.sh
source "$here/obs-tools.sh"
obs_need_prometheus && obs_need_python && obs_need_node || { echo "selftest: cannot install tools"; exit 1; }
start=${EPOCHREALTIME/./}

tmp=$(mktemp -d "${TMPDIR:-/tmp}/pollbridge-obs-selftest.XXXXXX")
fake_pids=()
cleanup() {
  local p
  for p in "${fake_pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  # live cases still running after an interrupt (each cleans up its Prometheus on TERM)
  for p in "${case_pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start_fake NAME ARGS... : start a fake exposition server, set FAKE_NAME to its URL.
start_fake() {
  local name=$1; shift
  python3 "$here/fake_metrics.py" --port 0 "$@" >"$tmp/fake-$name.out" 2>&1 &
  fake_pids+=($!)

  for _ in $(seq 1 50); do grep -qs listening "$tmp/fake-$name.out" && break; sleep 0.1; done
  local addr; addr=$(sed -n 's/^fake_metrics listening //p' "$tmp/fake-$name.out")
  [ -n "$addr" ] || { echo "selftest: fake_metrics $name did not start"; cat "$tmp/fake-$name.out"; exit 1; }
  printf -v "FAKE_$name" 'http://%s/metrics' "$addr"
}

# variant NAME : fresh copy of the files under test in $tmp/NAME/{prom,dash}
variant() {
  local d="$tmp/$1"
  mkdir -p "$d"
  cp -r "$OBS_ROOT/deploy/prometheus" "$d/prom"
  cp -r "$OBS_ROOT/dashboards" "$d/dash"
  echo "$d"
}

# jsonedit FILE PYTHON : edit a dashboard in place; `d` is the parsed JSON,
# P(title) the (non-row) panel with that title. A failed edit aborts the
# self-test, and so does an edit that changes nothing.
jsonedit() {
  python3 - "$1" "$2" <<'PY' || { echo "selftest: cannot make broken copy $1"; exit 1; }
import json, sys
path, code = sys.argv[1], sys.argv[2]
d = json.load(open(path))
before = json.dumps(d, sort_keys=True)
def P(title):
    return next(p for p in d["panels"] if p.get("title") == title and p.get("type") != "row")
exec(code)
if json.dumps(d, sort_keys=True) == before:
    sys.exit("edit changed nothing")
json.dump(d, open(path, "w"), indent=2)
PY
}

# sededit SCRIPT FILE : sed -i that must change the file.
sededit() {
  local before; before=$(sha256sum <"$2")
  sed -i "$1" "$2"
  [ "$(sha256sum <"$2")" != "$before" ] || { echo "selftest: sed changed nothing in $2: $1"; exit 1; }
}

# case NAME WANT PATTERN VARIANT_DIR CMD... ; WANT is pass or fail. Writes the
# verdict to $tmp/results/NAME.
mkdir -p "$tmp/results"
run_case() {
  local name=$1 want=$2 pattern=$3 dir=$4; shift 4
  local out="$tmp/results/$name.out" rc
  PROM_DIR="$dir/prom" DASHBOARD_DIR="$dir/dash" "$@" >"$out" 2>&1 </dev/null
  rc=$?
  local ok=1
  if [ "$want" = pass ] && [ "$rc" -ne 0 ]; then ok=0; fi
  if [ "$want" = fail ] && [ "$rc" -eq 0 ]; then ok=0; fi
  if [ -n "$pattern" ] && ! grep -Eq -- "$pattern" "$out"; then ok=0; fi
  if [ "$ok" = 1 ]; then
    echo "ok     $name (want $want, exit $rc)" >"$tmp/results/$name"
  else
    { echo "NOT OK $name (want $want${pattern:+ matching /$pattern/}, exit $rc); output:"
      sed 's/^/         /' "$out" | tail -n 25; } >"$tmp/results/$name"
  fi
}
case_pids=()
live_case() {
  # at most 4 live cases at once (each runs its own Prometheus)
  while [ "$(running_cases)" -ge 4 ]; do sleep 0.2; done
  run_case "$@" &
  case_pids+=($!)
}
running_cases() {
  local p n=0
  for p in "${case_pids[@]}"; do kill -0 "$p" 2>/dev/null && n=$((n + 1)); done
  echo "$n"
}

files="$here/check-files.sh"
live="$here/check-live.sh"

# ---------------------------------------------------------------- check-files
run_case files-real pass '^check-files: PASS' "$(variant files-real)" "$files"

d=$(variant files-bad-promql)
sededit 's/expr: sum by (job, transport) (rate(pollbridge_wire_bytes_total\[5m\]))/expr: sum by (job, transport (rate(pollbridge_wire_bytes_total[5m]))/' "$d/prom/rules.yml"
run_case files-bad-promql fail 'promtool check rules: FAILED' "$d" "$files"

d=$(variant files-wrong-value)
sededit 's/            - ignoring (transport)/            + ignoring (transport)/' "$d/prom/rules.yml"
run_case files-wrong-value fail 'promtool test rules: FAILED.*|longpoll_savings' "$d" "$files"

d=$(variant files-bad-record-name)
sededit 's/record: pollbridge:published_per_second:rate5m/record: pollbridge_published_per_second_rate5m/' "$d/prom/rules.yml"
run_case files-bad-record-name fail 'level:metric:operations' "$d" "$files"

d=$(variant files-no-runbook)
sededit '/runbook: "docs\/operations.md#alert-pollbridgebusnotready"/d' "$d/prom/alerts.yml"
run_case files-no-runbook fail 'PollbridgeBusNotReady: no runbook annotation' "$d" "$files"

d=$(variant files-healthy-fires)
sededit 's/expr: up{job="pollbridge"} == 0/expr: up == 0/' "$d/prom/alerts.yml"
run_case files-healthy-fires fail 'promtool test rules: FAILED' "$d" "$files"

d=$(variant files-config-missing-rules)
sededit 's/  - alerts.yml/  - alert.yml/' "$d/prom/prometheus.yml"
run_case files-config-missing-rules fail 'promtool check config: FAILED' "$d" "$files"

d=$(variant files-unguarded-share)
sededit 's/^\(          (sum by (job) (rate(pollbridge_messages_delivered_total{transport=~"websocket|sse|longpoll|bridge"}\[5m\]))\) > 0)$/\1)/' "$d/prom/rules.yml"
run_case files-unguarded-share fail 'promtool test rules: FAILED.*|delivery_share' "$d" "$files"

d=$(variant files-upgrade-alert-too-broad)
sededit 's/reason=~"bad_handshake|origin"} > 0.5/reason=~"bad_handshake|origin|auth"} > 0.5/' "$d/prom/alerts.yml"
run_case files-upgrade-alert-too-broad fail 'PollbridgeUpgradeFailuresHigh' "$d" "$files"

d=$(variant files-schema-typo)
jsonedit "$d/dash/pollbridge-overview.json" 'P("Bytes on the wire per delivered message")["gridPos"]["x"] = "zero"; p = P("Header overhead share of wire bytes"); p["titel"] = p.pop("title")'
run_case files-schema-typo fail "'titel' was unexpected" "$d" "$files"

d=$(variant files-no-description)
jsonedit "$d/dash/pollbridge-overview.json" 'del P("Long-poll empty ratio")["description"]'
run_case files-no-description fail 'panels\[[0-9]+\]\.description: missing' "$d" "$files"

d=$(variant files-hardcoded-ds)
jsonedit "$d/dash/pollbridge-overview.json" 'P("Message bus ready")["datasource"] = {"type": "prometheus", "uid": "P1809F7CD0C75ACF3"}'
run_case files-hardcoded-ds fail 'datasource: want uid' "$d" "$files"

d=$(variant files-unresolved-var)
jsonedit "$d/dash/pollbridge-overview.json" 't = P("Long-poll empty ratio")["targets"][0]; t["expr"] = t["expr"] + " * $scale"'
run_case files-unresolved-var fail 'UNRESOLVED_VAR .*scale has no value' "$d" "$files"

# ---------------------------------------------------------------- check-live
FAKE_all="" FAKE_nobridge="" FAKE_omit="" FAKE_dup="" FAKE_lint=""  # set by start_fake
start_fake all
start_fake nobridge --without-bridge
start_fake omit --omit pollbridge_polls_total
start_fake dup --duplicate
start_fake lint --bad-lint

live_case live-real pass '^check-live: PASS' "$(variant live-real)" "$live" "$FAKE_all"
live_case live-no-bridge-allowed pass '^check-live: PASS .*ALLOWED_NO_DATA [1-9]' \
  "$(variant live-no-bridge)" "$live" "$FAKE_nobridge"

d=$(variant live-metric-typo)
jsonedit "$d/dash/pollbridge-overview.json" 't = P("Bytes on the wire per delivered message")["targets"][0]; t["expr"] = t["expr"].replace("pollbridge_wire_bytes_total", "pollbridge_wire_byte_total")'
live_case live-metric-typo fail 'UNKNOWN_METRIC .*never seen: pollbridge_wire_byte_total' "$d" "$live" "$FAKE_all"

d=$(variant live-parse-error)
jsonedit "$d/dash/pollbridge-overview.json" 'P("Messages published and delivered per second")["targets"][0]["expr"] = "sum(rate(pollbridge_messages_published_total[$__rate_interval])"'
live_case live-parse-error fail 'PARSE_ERROR .*Messages published' "$d" "$live" "$FAKE_all"

d=$(variant live-unguarded-division)
jsonedit "$d/dash/pollbridge-overview.json" 't = P("Bytes on the wire per delivered message")["targets"][0]; t["expr"] = t["expr"].replace(" > 0)", ")")'
live_case live-unguarded-division fail 'NAN_OR_INF .*Bytes on the wire' "$d" env SETTLE_TIMEOUT=4 "$live" "$FAKE_all"

d=$(variant live-many-to-many)
jsonedit "$d/dash/pollbridge-overview.json" 'P("Messages published and delivered per second")["targets"][0]["expr"] = "pollbridge_wire_bytes_total / on(transport) pollbridge_messages_delivered_total"'
live_case live-many-to-many fail 'EXEC_ERROR' "$d" "$live" "$FAKE_all"

d=$(variant live-unresolved-var)
jsonedit "$d/dash/pollbridge-overview.json" 't = P("Delivery latency p50 / p99 by transport")["targets"][1]; t["expr"] = t["expr"].replace("histogram_quantile(0.99,", "histogram_quantile($quantile,")'
live_case live-unresolved-var fail 'UNRESOLVED_VAR .*\$quantile has no value' "$d" "$live" "$FAKE_all"

d=$(variant live-rule-bad-promql)
sededit 's/expr: sum by (job) (rate(pollbridge_messages_published_total\[5m\]))/expr: sum by (job) (rate(pollbridge_messages_published_total[5m])/' "$d/prom/rules.yml"
live_case live-rule-bad-promql fail 'promtool check rules' "$d" "$live" "$FAKE_all"

d=$(variant live-rule-metric-typo)
sededit 's/rate(pollbridge_messages_published_total\[5m\])/rate(pollbridge_message_published_total[5m])/' "$d/prom/rules.yml"
live_case live-rule-metric-typo fail 'published_per_second.*never seen: pollbridge_message_published_total' \
  "$d" env SETTLE_TIMEOUT=4 "$live" "$FAKE_all"

d=$(variant live-alert-metric-typo)
sededit 's/expr: pollbridge_bus_ready == 0/expr: pollbridge_bus_readyy == 0/' "$d/prom/alerts.yml"
live_case live-alert-metric-typo fail 'PollbridgeBusNotReady.*never seen: pollbridge_bus_readyy' "$d" "$live" "$FAKE_all"

live_case live-missing-metric fail 'UNKNOWN_METRIC .*never seen: pollbridge_polls_total' \
  "$(variant live-missing-metric)" "$live" "$FAKE_omit"
live_case live-duplicate-series fail 'duplicate series pollbridge_connections' \
  "$(variant live-dup)" "$live" "$FAKE_dup"
live_case live-bad-lint fail 'promtool check metrics exited' "$(variant live-lint)" "$live" "$FAKE_lint"
live_case live-unreachable fail 'cannot fetch' "$(variant live-unreachable)" "$live" \
  "http://127.0.0.1:$(obs_free_port)/metrics"
for p in "${case_pids[@]}"; do wait "$p"; done

passed=0 failed=0
for f in "$tmp"/results/*; do
  [ -f "$f" ] && [[ "$f" != *.out ]] || continue
  if head -n 1 "$f" | grep -q '^ok'; then
    passed=$((passed + 1))
    [ "${VERBOSE:-0}" = 1 ] && cat "$f"
  else
    failed=$((failed + 1))
    cat "$f"
  fi
done
t=$(( (${EPOCHREALTIME/./} - start) / 100000 ))
echo "selftest took $((t / 10)).$((t % 10))s"
echo "selftest: $passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
