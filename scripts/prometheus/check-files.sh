#!/usr/bin/env bash
# check-files.sh — offline checks of pollbridge's Prometheus and Grafana files.
#
#   scripts/prometheus/check-files.sh
#
# 1. promtool check rules   on the rule files prometheus.yml loads
# 2. promtool test rules    deploy/prometheus/rules_test.yml (unit tests)
# 3. promtool check config  deploy/prometheus/prometheus.yml (resolves rule_files
#                           relative to the config file)
# 4. rule policy            annotations, runbook anchors, record names
#                           (check_rule_files.py)
# 5. dashboard variables    every $var in every query resolves (check_dashboards.py --offline)
# 6. Grafana structure      JSON Schema from @grafana/schema (lenient profile)
#                           plus project policy (check_grafana_schema.py)
#
# Env: PROM_DIR (default deploy/prometheus), DASHBOARD_DIR (default dashboards),
#      POLLBRIDGE_OBS_CACHE (tool cache, default .cache/obs-tools).
# Quiet on success (one verdict line); on failure prints each failing check's
# output and exits 1. Installs its tools on first use (scripts/prometheus/obs-tools.sh).
set -uo pipefail
start=${EPOCHREALTIME/./}
# shellcheck source=scripts/prometheus/obs-tools.sh
source "$(dirname "${BASH_SOURCE[0]}")/obs-tools.sh"
PROM_DIR=$(cd "${PROM_DIR:-$OBS_ROOT/deploy/prometheus}" && pwd) || { echo "check-files: FAIL: no PROM_DIR"; exit 1; }
DASHBOARD_DIR=$(cd "${DASHBOARD_DIR:-$OBS_ROOT/dashboards}" && pwd) || { echo "check-files: FAIL: no DASHBOARD_DIR"; exit 1; }

obs_need_prometheus && obs_need_python || { echo "check-files: FAIL: could not install tools"; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failed=() passed=()

# step NAME CMD...: run, keep output, record the verdict.
step() {
  local name=$1; shift
  if "$@" >"$tmp/out" 2>&1; then
    passed+=("$name")
  else
    failed+=("$name")
    echo "--- $name: FAILED ($*)"
    sed 's/^/    /' "$tmp/out"
  fi
}

config="$PROM_DIR/prometheus.yml"
# Rule files as Prometheus will load them: relative to the config file, globs expanded.
mapfile -t rule_files < <("$OBS_PY" - "$config" <<'PY'
import glob, os, sys, yaml
cfg = sys.argv[1]
try:
    doc = yaml.safe_load(open(cfg)) or {}
except Exception as e:
    sys.exit(0)
base = os.path.dirname(os.path.abspath(cfg))
for pat in doc.get("rule_files") or []:
    for f in sorted(glob.glob(os.path.join(base, pat))) or [os.path.join(base, pat)]:
        print(f)
PY
)
if [ "${#rule_files[@]}" -eq 0 ]; then
  echo "--- rule files: FAILED ($config names no rule_files, or cannot be read)"
  failed+=("rule files")
else
  step "promtool check rules" promtool check rules "${rule_files[@]}"
fi

tests="$PROM_DIR/rules_test.yml"
if [ -f "$tests" ]; then
  # promtool resolves the test file's rule_files relative to the test file.
  step "promtool test rules" promtool test rules "$tests"
  # The unit tests must load the same rule files the config loads.
  step "rules_test covers rule_files" "$OBS_PY" - "$tests" "${rule_files[@]}" <<'PY'
import os, sys, yaml
tests, files = sys.argv[1], sys.argv[2:]
base = os.path.dirname(os.path.abspath(tests))
loaded = {os.path.normpath(os.path.join(base, f)) for f in (yaml.safe_load(open(tests)) or {}).get("rule_files") or []}
missing = [f for f in files if os.path.normpath(f) not in loaded]
if missing:
    sys.exit(f"{tests} does not load: {', '.join(missing)}")
PY
else
  echo "--- promtool test rules: FAILED (no $tests)"
  failed+=("promtool test rules")
fi

step "promtool check config" promtool check config "$config"

docs=()
# The runbooks live in one place only: docs/operations.md.
for d in "$OBS_ROOT/docs/operations.md"; do [ -f "$d" ] && docs+=(--runbook-doc "$d"); done
if [ "${#rule_files[@]}" -gt 0 ]; then
  step "rule policy" "$OBS_PY" "$OBS_DIR/check_rule_files.py" "${docs[@]}" "${rule_files[@]}"
fi

shopt -s nullglob
dashboards=("$DASHBOARD_DIR"/*.json)
if [ "${#dashboards[@]}" -eq 0 ]; then
  echo "--- Grafana structure: FAILED (no dashboards in $DASHBOARD_DIR)"
  failed+=("Grafana structure")
else
  # Every template variable in every query resolves (same substitution as check-live).
  step "dashboard variables" "$OBS_PY" "$OBS_DIR/check_dashboards.py" --offline --var job=pollbridge "${dashboards[@]}"
fi
if [ "${#dashboards[@]}" -eq 0 ]; then
  :
elif schema=$(obs_grafana_schema); then
  step "Grafana structure" "$OBS_PY" "$OBS_DIR/check_grafana_schema.py" --schema "$schema" "${dashboards[@]}"
else
  echo "--- Grafana structure: FAILED (could not generate the schema; see $OBS_CACHE/*.log)"
  failed+=("Grafana structure")
fi

elapsed=$(( (${EPOCHREALTIME/./} - start) / 100000 ))
secs="$((elapsed / 10)).$((elapsed % 10))"
if [ "${#failed[@]}" -gt 0 ]; then
  echo "check-files: FAIL (${#failed[@]} of $(( ${#failed[@]} + ${#passed[@]} )) checks: $(IFS=,; echo "${failed[*]}")) in ${secs}s"
  exit 1
fi
echo "check-files: PASS (${#passed[@]} checks, ${#rule_files[@]} rule files, ${#dashboards[@]} dashboards) in ${secs}s"
