#!/usr/bin/env bash
# check.sh — every deployment file through the real tool that judges it.
#
#   scripts/deploy/check.sh
#
# Each check runs on the shipped file and must pass, then on a broken copy
# (one deliberate mistake, in a temp dir) and must fail, so that no check
# can pass vacuously. One line per check, then "deploy: N passed, M failed";
# exit 1 on any failure, with the failing tool's output.
#
#   yamllint            every YAML file under deploy/ (syntax, duplicate keys, which PyYAML-based tools accept silently)
#   hadolint            deploy/Dockerfile (warning threshold)
#   build context       .dockerignore as Docker applies it (docker-py): every COPY source present, no target/
#   compose schema      deploy/compose.yaml against the Compose Spec (check-jsonschema)
#   docker-compose      `docker-compose config -q` (Debian's v1.29, no engine needed)
#   compose files       bind mounts and build context exist, healthchecks, depends_on conditions
#   compose prometheus  `promtool check config` on deploy/compose/prometheus.yml with the project's rules
#   grafana             provisioned dashboards reference only provisioned datasources
#   --check-config      every shipped pollbridge config (example, container, compose, ConfigMap, toy backend)
#   kustomize           `kubectl kustomize deploy/k8s` and deploy/k8s/monitoring render
#   kubernetes-validate --strict, Kubernetes 1.30 and 1.37 schemas, every rendered object
#   k8s cross-checks    selectors, named ports, probes, grace period vs drain, ServiceMonitor job (k8s_check.py)
#   checkov             no failed check (suppressions carry their reason in the manifest)
#   PrometheusRule      generated from deploy/prometheus/ (no drift); `promtool check rules` on its spec
#   systemd verify      `systemd-analyze verify` prints nothing
#   systemd security    `systemd-analyze security --offline=true`: exposure <= 3.0
#   nginx -t            deploy/nginx/pollbridge.conf in a throw-away main config
#   haproxy -c          deploy/haproxy/haproxy.cfg as shipped, and warning-free with addresses filled in
#   sysctl              deploy/sysctl.d/60-pollbridge.conf names real kernel settings
#
# Tools install on first use, idempotently: apt (scripts/lib/ensure-apt.sh),
# pinned PyPI tools in .cache/deploy-tools/ (git-ignored; checkov in its own
# venv). Env: POLLBRIDGE_BIN (default: cargo build, target/debug/pollbridge),
# POLLBRIDGE_DEPLOY_CACHE (default .cache/deploy-tools).
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
ROOT=$PWD
started=${EPOCHREALTIME/./}
HERE=scripts/deploy
CACHE=${POLLBRIDGE_DEPLOY_CACHE:-$ROOT/.cache/deploy-tools}
passed=0
failed=0

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# --- tools -------------------------------------------------------------------------
# venv DIR REQUIREMENTS: (re)build DIR when REQUIREMENTS changed; quiet unless it fails.
venv() {
  local dir=$1 req=$2 want
  want=$(sha256sum "$req" | cut -c1-16)
  [ -x "$dir/bin/python" ] && [ "$(cat "$dir/.stamp" 2>/dev/null)" = "$want" ] && return 0
  echo "check: installing $(grep -v '^#' "$req" | tr '\n' ' ')into $dir (one-time)" >&2
  rm -rf "$dir" && python3 -m venv "$dir" &&
    "$dir/bin/pip" install -q --disable-pip-version-check -r "$req" >"$tmp/pip.log" 2>&1 &&
    echo "$want" >"$dir/.stamp" && return 0
  tail -n 20 "$tmp/pip.log" >&2
  return 1
}
setup() {
  mkdir -p "$CACHE"
  exec {lock}>"$CACHE/.lock"
  flock "$lock"
  scripts/lib/ensure-apt.sh nginx haproxy docker-compose prometheus python3-venv &&
    venv "$CACHE/venv" "$HERE/requirements.txt" &&
    venv "$CACHE/checkov" "$HERE/requirements-checkov.txt"
  local rc=$?
  flock -u "$lock"
  return $rc
}
if ! setup; then
  echo "FAIL setup: could not install the tools"
  echo "deploy: 0 passed, 1 failed"
  exit 1
fi
PY=$CACHE/venv/bin/python
TOOLS=$CACHE/venv/bin
command -v kubectl >/dev/null || { echo "FAIL setup: kubectl (with kustomize) is not on this machine"; echo "deploy: 0 passed, 1 failed"; exit 1; }
BIN=${POLLBRIDGE_BIN:-}
if [ -z "$BIN" ]; then
  cargo build --quiet --bin pollbridge || { echo "FAIL setup: cargo build"; echo "deploy: 0 passed, 1 failed"; exit 1; }
  BIN=$ROOT/target/debug/pollbridge
fi

# --- the harness ---------------------------------------------------------------------
# check NAME MISTAKE GOOD BROKEN: GOOD (a function) must succeed on the
# shipped files; BROKEN must make the broken copy and fail on it. Each runs
# with its output captured; the last line of GOOD's output is the summary.
check() {
  local name=$1 mistake=$2 good=$3 broken=$4 t0=${EPOCHREALTIME/./} ok=1 why=""
  if ! "$good" >"$tmp/good.out" 2>&1; then
    ok=0 why="fails on the shipped file"
  elif "$broken" >"$tmp/bad.out" 2>&1; then
    ok=0 why="passes the broken copy ($mistake): it cannot catch that mistake"
  fi
  local ms=$(((${EPOCHREALTIME/./} - t0) / 1000))
  if [ "$ok" = 1 ]; then
    passed=$((passed + 1))
    printf 'PASS %-20s %s; broken copy (%s) rejected: %s [%d ms]\n' "$name" \
      "$(grep -v '^\s*$' "$tmp/good.out" | tail -n 1 | sed 's/^\s*//' | cut -c1-150)" "$mistake" \
      "$(grep -v '^\s*$' "$tmp/bad.out" | grep -m1 -iE 'CKV|error|fail|invalid|unknown|not |DL[0-9]|emerg|alert|exposure|out of date|problem|undefined|does not|no such|key' | sed 's/^\s*//' | cut -c1-140)" "$ms"
  else
    failed=$((failed + 1))
    printf 'FAIL %-20s %s [%d ms]\n' "$name" "$why" "$ms"
    if [ "$why" = "fails on the shipped file" ]; then sed 's/^/     | /' "$tmp/good.out" | head -n 40; fi
  fi
}
# broken_copy SRC DEST SED-SCRIPT: DEST must differ from SRC.
broken_copy() {
  mkdir -p "$(dirname "$2")"
  sed -e "$3" "$1" >"$2"
  if cmp -s "$1" "$2"; then echo "broken_copy: '$3' changed nothing in $1"; return 1; fi
}

# --- YAML syntax everywhere ------------------------------------------------------------
good_yamllint() {
  local files
  mapfile -t files < <(find deploy -name '*.yml' -o -name '*.yaml' | sort)
  "$TOOLS/yamllint" -s -c "$HERE/yamllint.yml" "${files[@]}" && echo "yamllint: ${#files[@]} YAML files clean (syntax, duplicate keys, indentation)"
}
bad_yamllint() {
  broken_copy deploy/compose.yaml "$tmp/compose/compose.yaml" '/^    image: redis:7.4-alpine$/a\    image: redis:7.2-alpine' || return 0
  "$TOOLS/yamllint" -s -c "$HERE/yamllint.yml" "$tmp/compose/compose.yaml"
}
check yamllint "a duplicate key" good_yamllint bad_yamllint

# --- Dockerfile ----------------------------------------------------------------------
good_hadolint() { "$TOOLS/hadolint" --no-color --failure-threshold warning deploy/Dockerfile && echo "hadolint $("$TOOLS/hadolint" --version | grep -o '[0-9.]*$'): no findings at warning level"; }
bad_hadolint() {
  broken_copy deploy/Dockerfile "$tmp/Dockerfile" 's|^FROM gcr.io/distroless/cc-debian12:nonroot|FROM gcr.io/distroless/cc-debian12:latest|' || return 0
  "$TOOLS/hadolint" --no-color --failure-threshold warning "$tmp/Dockerfile"
}
check hadolint "runtime image tag :latest" good_hadolint bad_hadolint

good_context() { /usr/bin/python3 "$HERE/deploy_checks.py" context . deploy/Dockerfile .dockerignore; }
bad_context() {
  broken_copy .dockerignore "$tmp/dockerignore" '/^!assets\/$/d' || return 0
  /usr/bin/python3 "$HERE/deploy_checks.py" context . deploy/Dockerfile "$tmp/dockerignore"
}
check "build context" ".dockerignore without !assets/" good_context bad_context

# --- Compose -------------------------------------------------------------------------
good_compose_schema() { "$TOOLS/check-jsonschema" --builtin-schema vendor.compose-spec deploy/compose.yaml; }
bad_compose_schema() {
  broken_copy deploy/compose.yaml "$tmp/compose/compose.yaml" '/^  redis:/,/^  toy-backend:/ s/interval:/intervall:/' || return 0
  "$TOOLS/check-jsonschema" --builtin-schema vendor.compose-spec "$tmp/compose/compose.yaml"
}
check "compose schema" "healthcheck 'intervall'" good_compose_schema bad_compose_schema

# docker-compose resolves relative paths against --project-directory, so the
# broken copy in $tmp still sees deploy/'s files.
good_compose_v1() { docker-compose -f deploy/compose.yaml --project-directory deploy config -q && echo "docker-compose $(docker-compose version --short): config valid"; }
bad_compose_v1() {
  broken_copy deploy/compose.yaml "$tmp/compose/compose.yaml" 's/^      prometheus:$/      prometheus-server:/' || return 0
  docker-compose -f "$tmp/compose/compose.yaml" --project-directory deploy config -q
}
check "docker-compose" "depends_on an undefined service" good_compose_v1 bad_compose_v1

compose_files() { # compose_files FILE
  docker-compose -f "$1" --project-directory deploy config >"$tmp/compose-rendered.yaml" &&
    "$PY" "$HERE/deploy_checks.py" compose "$tmp/compose-rendered.yaml"
}
good_compose_files() { compose_files deploy/compose.yaml; }
bad_compose_files() {
  broken_copy deploy/compose.yaml "$tmp/compose/compose.yaml" 's|\./nginx/pollbridge.conf|./nginx/pollbrige.conf|' || return 0
  compose_files "$tmp/compose/compose.yaml"
}
check "compose files" "mount of a misspelt nginx config" good_compose_files bad_compose_files

# Laid out as the Prometheus container sees it: rules under pollbridge/.
compose_prom() { # compose_prom CONFIG
  mkdir -p "$tmp/prom/pollbridge"
  cp "$1" "$tmp/prom/prometheus.yml"
  cp deploy/prometheus/rules.yml deploy/prometheus/alerts.yml "$tmp/prom/pollbridge/"
  promtool check config "$tmp/prom/prometheus.yml"
}
good_compose_prom() { compose_prom deploy/compose/prometheus.yml; }
bad_compose_prom() {
  broken_copy deploy/compose/prometheus.yml "$tmp/prometheus-bad.yml" 's/scrape_timeout: 10s/scrape_timeout: 20s/' || return 0
  compose_prom "$tmp/prometheus-bad.yml"
}
check "compose prometheus" "scrape_timeout above scrape_interval" good_compose_prom bad_compose_prom

grafana_check() { # grafana_check DATASOURCES
  rm -rf "$tmp/dashboards"
  sh deploy/grafana/prepare-dashboards.sh dashboards "$tmp/dashboards" >/dev/null &&
    "$PY" "$HERE/deploy_checks.py" grafana "$1" deploy/grafana/provisioning/dashboards/pollbridge.yaml "$tmp/dashboards"
}
good_grafana() { grafana_check deploy/grafana/provisioning/datasources/prometheus.yaml; }
bad_grafana() {
  broken_copy deploy/grafana/provisioning/datasources/prometheus.yaml "$tmp/datasources.yaml" 's/uid: prometheus/uid: prom/' || return 0
  grafana_check "$tmp/datasources.yaml"
}
check grafana "datasource uid changed" good_grafana bad_grafana

# --- pollbridge --check-config on every shipped configuration ------------------------
# check_config FILE [VAR=VALUE...]: a clean environment, so no POLLBRIDGE_* of the caller applies.
check_config() { local file=$1; shift; env -i "$@" "$BIN" --check-config --config "$file"; }
for cfg in deploy/pollbridge.toml deploy/container/pollbridge.toml deploy/compose/pollbridge.toml examples/toy-backend/pollbridge.toml; do
  eval "good_cfg() { check_config '$cfg'; }"
  eval "bad_cfg() { { echo 'bogus_key = true'; cat '$cfg'; } >'$tmp/bad.toml' && check_config '$tmp/bad.toml'; }"
  check "--check-config $cfg" "unknown key added" good_cfg bad_cfg
done

# --- Kubernetes ----------------------------------------------------------------------
good_kustomize() {
  kubectl kustomize deploy/k8s >"$tmp/k8s-base.yaml" &&
    kubectl kustomize deploy/k8s/monitoring >"$tmp/k8s-monitoring.yaml" &&
    echo "kubectl $(kubectl version --client 2>/dev/null | sed -n 's/^Kustomize Version: //p' | sed 's/^/kustomize /'): $(grep -c '^kind:' "$tmp/k8s-base.yaml") objects in the base, $(grep -c '^kind:' "$tmp/k8s-monitoring.yaml") in monitoring"
}
bad_kustomize() {
  rm -rf "$tmp/k8s-copy" && cp -r deploy/k8s "$tmp/k8s-copy"
  broken_copy deploy/k8s/kustomization.yaml "$tmp/k8s-copy/kustomization.yaml" 's/  - hpa.yaml/  - hpa.yaml\n  - autoscaler.yaml/' || return 0
  kubectl kustomize "$tmp/k8s-copy"
}
check kustomize "resource file that does not exist" good_kustomize bad_kustomize

k8s_validate() { # k8s_validate RENDERED
  local v
  for v in 1.30.0 1.37.0; do
    "$TOOLS/kubernetes-validate" --strict --quiet -k "$v" "$1" || return 1
  done
  echo "kubernetes-validate --strict: all $(grep -c '^kind:' "$1") objects valid against 1.30 and 1.37"
}
good_k8s_validate() { k8s_validate "$tmp/k8s-base.yaml"; }
bad_k8s_validate() {
  broken_copy "$tmp/k8s-base.yaml" "$tmp/k8s-bad.yaml" 's/^\( *\)limits:$/\1limts:/' || return 0
  k8s_validate "$tmp/k8s-bad.yaml"
}
check kubernetes-validate "resources 'limts'" good_k8s_validate bad_k8s_validate

good_k8s_cross() {
  "$PY" "$HERE/k8s_check.py" "$tmp/k8s-base.yaml" "$tmp/k8s-monitoring.yaml" --config-out "$tmp/configmap.toml" &&
    echo "selectors, named ports, probes, grace > preStop + drain, HPA, ServiceMonitor job=pollbridge"
}
bad_k8s_cross() {
  broken_copy "$tmp/k8s-base.yaml" "$tmp/k8s-bad.yaml" 's/targetPort: public/targetPort: http/' || return 0
  "$PY" "$HERE/k8s_check.py" "$tmp/k8s-bad.yaml" "$tmp/k8s-monitoring.yaml"
}
check "k8s cross-checks" "Service targetPort names no container port" good_k8s_cross bad_k8s_cross

# The ConfigMap's pollbridge.toml, with the bus from the Secret as the Deployment sets it.
good_cm() { check_config "$tmp/configmap.toml" POLLBRIDGE_BUS=redis://redis:6379 POLLBRIDGE_JWT_SECRET=0123456789abcdef0123; }
bad_cm() { { echo 'bogus_key = true'; cat "$tmp/configmap.toml"; } >"$tmp/bad.toml" && check_config "$tmp/bad.toml" POLLBRIDGE_BUS=redis://redis:6379; }
check "--check-config ConfigMap pollbridge.toml" "unknown key added" good_cm bad_cm

checkov_run() { # checkov_run RENDERED
  rm -rf "$tmp/checkov" && mkdir -p "$tmp/checkov" && cp "$1" "$tmp/checkov/k8s.yaml"
  "$CACHE/checkov/bin/checkov" --framework kubernetes --skip-download --quiet --compact \
    --output cli -d "$tmp/checkov" 2>&1 | grep -v '^\s*$' >"$tmp/checkov.out"
  local rc=${PIPESTATUS[0]}
  grep -E '^Check: ' "$tmp/checkov.out"
  grep -vE '^Check: ' "$tmp/checkov.out"
  grep -q "Failed checks: 0," "$tmp/checkov.out" && [ "$rc" -eq 0 ] &&
    echo "checkov $("$CACHE/checkov/bin/checkov" --version): $(grep -o 'Passed checks: [0-9]*, Failed checks: [0-9]*, Skipped checks: [0-9]*' "$tmp/checkov.out") (skips carry reasons)"
}
good_checkov() { checkov_run "$tmp/k8s-base.yaml"; }
bad_checkov() {
  broken_copy "$tmp/k8s-base.yaml" "$tmp/k8s-bad.yaml" '/readOnlyRootFilesystem: true/d' || return 0
  checkov_run "$tmp/k8s-bad.yaml"
}
check checkov "readOnlyRootFilesystem removed" good_checkov bad_checkov

good_rule_drift() { "$PY" "$HERE/gen-prometheusrule.py" --check && echo "deploy/k8s/monitoring/prometheusrule.yaml matches deploy/prometheus/{rules,alerts}.yml"; }
bad_rule_drift() {
  broken_copy deploy/k8s/monitoring/prometheusrule.yaml "$tmp/prometheusrule.yaml" 's/for: 2m/for: 5m/' || return 0
  "$PY" "$HERE/gen-prometheusrule.py" --check --output "$tmp/prometheusrule.yaml"
}
check "PrometheusRule drift" "an alert edited by hand" good_rule_drift bad_rule_drift

rule_promtool() { # rule_promtool FILE: promtool on the PrometheusRule's spec
  "$PY" -c 'import sys, yaml; d = yaml.safe_load(open(sys.argv[1])); yaml.safe_dump(d["spec"], open(sys.argv[2], "w"))' \
    "$1" "$tmp/crd-rules.yml" && promtool check rules "$tmp/crd-rules.yml"
}
good_rule_promtool() { rule_promtool deploy/k8s/monitoring/prometheusrule.yaml; }
bad_rule_promtool() {
  broken_copy deploy/k8s/monitoring/prometheusrule.yaml "$tmp/prometheusrule.yaml" '0,/rate(/s//rate((/' || return 0
  rule_promtool "$tmp/prometheusrule.yaml"
}
check "PrometheusRule rules" "unbalanced parenthesis in an expr" good_rule_promtool bad_rule_promtool

# --- systemd -------------------------------------------------------------------------
# A throw-away root: the system's units (a bare --root lacks sysinit.target)
# and stub executables for the Exec*= paths, which need not exist here.
systemd_root() { # systemd_root UNIT
  rm -rf "$tmp/sdroot" && mkdir -p "$tmp/sdroot/etc/systemd/system" "$tmp/sdroot/lib/systemd" "$tmp/sdroot/usr/local/bin" "$tmp/sdroot/bin"
  cp -a /lib/systemd/system "$tmp/sdroot/lib/systemd/"
  printf '#!/bin/sh\nexit 0\n' >"$tmp/sdroot/usr/local/bin/pollbridge"
  printf '#!/bin/sh\nexit 0\n' >"$tmp/sdroot/bin/kill"
  chmod +x "$tmp/sdroot/usr/local/bin/pollbridge" "$tmp/sdroot/bin/kill"
  cp "$1" "$tmp/sdroot/etc/systemd/system/pollbridge.service"
}
sd_verify() { # sd_verify UNIT: verify exits 0 even on "Unknown key"; any output fails.
  systemd_root "$1"
  systemd-analyze verify --man=no --root="$tmp/sdroot" /etc/systemd/system/pollbridge.service >"$tmp/verify.out" 2>&1
  local rc=$?
  cat "$tmp/verify.out"
  [ "$rc" -eq 0 ] && [ ! -s "$tmp/verify.out" ] && echo "systemd-analyze verify: no output ($(systemd-analyze --version | head -n 1 | cut -d' ' -f1-2))"
}
good_sd_verify() { sd_verify deploy/systemd/pollbridge.service; }
bad_sd_verify() {
  broken_copy deploy/systemd/pollbridge.service "$tmp/bad.service" 's/^Type=notify$/Type=notifyy/' || return 0
  sd_verify "$tmp/bad.service"
}
check "systemd verify" "Type=notifyy" good_sd_verify bad_sd_verify

sd_security() { # sd_security UNIT: exposure <= 3.0 ("OK" or better)
  systemd_root "$1"
  systemd-analyze security --offline=true --threshold=30 --root="$tmp/sdroot" /etc/systemd/system/pollbridge.service >"$tmp/security.out" 2>&1
  local rc=$?
  grep -E 'Overall exposure' "$tmp/security.out" || tail -n 5 "$tmp/security.out"
  [ "$rc" -eq 0 ]
}
good_sd_security() { sd_security deploy/systemd/pollbridge.service; }
bad_sd_security() {
  broken_copy deploy/systemd/pollbridge.service "$tmp/bad.service" '/^\(Protect\|Private\|Restrict\|SystemCall\|Capability\|DynamicUser\|NoNewPrivileges\|MemoryDeny\|Lock\|ProcSubset\|UMask\|DevicePolicy\|KeyringMode\|RemoveIPC\)/d' || return 0
  sd_security "$tmp/bad.service"
}
check "systemd security" "sandboxing lines removed" good_sd_security bad_sd_security

# --- the box in front ------------------------------------------------------------------
nginx_t() { # nginx_t SNIPPET: only the upstream addresses are filled in (nginx resolves names at load)
  rm -rf "$tmp/nginx" && mkdir -p "$tmp/nginx"
  sed -e 's/pollbridge-1:8080/127.0.0.1:18081/; s/pollbridge-2:8080/127.0.0.1:18082/' "$1" >"$tmp/nginx/snippet.conf"
  cat >"$tmp/nginx/nginx.conf" <<EOF
pid $tmp/nginx/nginx.pid;
error_log $tmp/nginx/error.log;
events {}
http {
    access_log off;
    client_body_temp_path $tmp/nginx/cb; proxy_temp_path $tmp/nginx/pt; fastcgi_temp_path $tmp/nginx/ft;
    uwsgi_temp_path $tmp/nginx/ut; scgi_temp_path $tmp/nginx/st;
    include $tmp/nginx/snippet.conf;
}
EOF
  nginx -t -q -c "$tmp/nginx/nginx.conf" -p "$tmp/nginx/" && echo "$(nginx -v 2>&1 | sed 's/.*: //'): configuration test is successful"
}
good_nginx() { nginx_t deploy/nginx/pollbridge.conf; }
bad_nginx() {
  broken_copy deploy/nginx/pollbridge.conf "$tmp/nginx-bad.conf" 's/proxy_buffering off;/proxy_bufering off;/' || return 0
  nginx_t "$tmp/nginx-bad.conf"
}
check "nginx -t" "misspelt proxy_buffering" good_nginx bad_nginx

haproxy_c() { # haproxy_c CFG: valid as shipped (names may not resolve here), warning-free with addresses
  haproxy -c -f "$1" >"$tmp/haproxy.out" 2>&1 || { cat "$tmp/haproxy.out"; return 1; }
  sed -e 's/pollbridge-1 pollbridge-1:8080/pollbridge-1 127.0.0.1:18081 port 19091/' \
      -e 's/pollbridge-2 pollbridge-2:8080/pollbridge-2 127.0.0.1:18082 port 19092/' "$1" >"$tmp/haproxy-addr.cfg"
  haproxy -dW -c -f "$tmp/haproxy-addr.cfg" 2>&1 && echo "$(haproxy -v | head -n 1 | cut -d' ' -f1-3): valid, no warnings with addresses filled in"
}
good_haproxy() { haproxy_c deploy/haproxy/haproxy.cfg; }
bad_haproxy() {
  broken_copy deploy/haproxy/haproxy.cfg "$tmp/haproxy-bad.cfg" 's/timeout tunnel 1h/timeout tunel 1h/' || return 0
  haproxy_c "$tmp/haproxy-bad.cfg"
}
check "haproxy -c" "misspelt timeout tunnel" good_haproxy bad_haproxy

good_sysctl() { "$PY" "$HERE/deploy_checks.py" sysctl deploy/sysctl.d/60-pollbridge.conf; }
bad_sysctl() {
  broken_copy deploy/sysctl.d/60-pollbridge.conf "$tmp/60-bad.conf" 's/^net.core.somaxconn/net.core.somaxcon/' || return 0
  "$PY" "$HERE/deploy_checks.py" sysctl "$tmp/60-bad.conf"
}
check sysctl "misspelt net.core.somaxconn" good_sysctl bad_sysctl

echo "($(((${EPOCHREALTIME/./} - started) / 1000)) ms in all)"
echo "deploy: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
