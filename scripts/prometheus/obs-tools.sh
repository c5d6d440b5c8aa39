# shellcheck shell=bash
# Sourced by scripts/prometheus/*.sh: makes the pinned tools available.
#
#   OBS_ROOT   repository root
#   OBS_CACHE  tool cache (default $OBS_ROOT/.cache/obs-tools, git-ignored;
#              override with POLLBRIDGE_OBS_CACHE)
#   OBS_PY     Python of the pinned venv (jsonschema, prometheus-client, PyYAML)
#
# obs_need_prometheus  apt: prometheus (promtool), curl
# obs_need_python      venv from requirements.txt, rebuilt when it changes
# obs_need_node        node_modules from package.json + package-lock.json (npm ci)
# obs_grafana_schema   prints the path of the generated Dashboard JSON Schema
#
# Installs print one line to stderr and their log only on failure. A lock
# (flock) keeps concurrent runs from building the same cache twice.

OBS_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
OBS_DIR="$OBS_ROOT/scripts/prometheus"
OBS_CACHE=${POLLBRIDGE_OBS_CACHE:-$OBS_ROOT/.cache/obs-tools}
OBS_PY="$OBS_CACHE/venv/bin/python"

_obs_lock() { mkdir -p "$OBS_CACHE"; exec {OBS_LOCK_FD}>"$OBS_CACHE/.lock"; flock "$OBS_LOCK_FD"; }
_obs_unlock() { flock -u "$OBS_LOCK_FD"; exec {OBS_LOCK_FD}>&-; }
_obs_hash() { cat "$@" | sha256sum | cut -c1-16; }

# _obs_run LOG CMD... : run quietly, show the log on failure.
_obs_run() {
  local log=$1; shift
  if ! "$@" >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "obs-tools: failed: $*" >&2
    return 1
  fi
}

obs_need_prometheus() {
  "$OBS_ROOT/scripts/lib/ensure-apt.sh" prometheus curl
}

obs_need_python() {
  local want; want=$(_obs_hash "$OBS_DIR/requirements.txt")
  [ -x "$OBS_PY" ] && [ "$(cat "$OBS_CACHE/venv/.stamp" 2>/dev/null)" = "$want" ] && return 0
  _obs_lock
  if ! { [ -x "$OBS_PY" ] && [ "$(cat "$OBS_CACHE/venv/.stamp" 2>/dev/null)" = "$want" ]; }; then
    echo "obs-tools: building Python venv in $OBS_CACHE/venv (one-time)" >&2
    rm -rf "$OBS_CACHE/venv"
    # Debian's system python3 needs python3-venv for ensurepip.
    { python3 -m venv "$OBS_CACHE/venv" >"$OBS_CACHE/venv.log" 2>&1 ||
      { rm -rf "$OBS_CACHE/venv"; "$OBS_ROOT/scripts/lib/ensure-apt.sh" python3-venv &&
        _obs_run "$OBS_CACHE/venv.log" python3 -m venv "$OBS_CACHE/venv"; }; } &&
      _obs_run "$OBS_CACHE/venv.log" "$OBS_CACHE/venv/bin/pip" install -q --disable-pip-version-check \
        -r "$OBS_DIR/requirements.txt" &&
      echo "$want" >"$OBS_CACHE/venv/.stamp" || { _obs_unlock; return 1; }
  fi
  _obs_unlock
}

obs_need_node() {
  local dir="$OBS_CACHE/node" want
  want=$(_obs_hash "$OBS_DIR/package.json" "$OBS_DIR/package-lock.json")
  [ "$(cat "$dir/.stamp" 2>/dev/null)" = "$want" ] && return 0
  command -v npm >/dev/null 2>&1 || "$OBS_ROOT/scripts/lib/ensure-apt.sh" nodejs npm || return 1
  _obs_lock
  if [ "$(cat "$dir/.stamp" 2>/dev/null)" != "$want" ]; then
    echo "obs-tools: installing pinned npm packages in $dir (one-time)" >&2
    rm -rf "$dir" && mkdir -p "$dir" &&
      cp "$OBS_DIR/package.json" "$OBS_DIR/package-lock.json" "$dir/" &&
      _obs_run "$OBS_CACHE/npm.log" npm ci --prefix "$dir" --no-audit --no-fund --ignore-scripts &&
      echo "$want" >"$dir/.stamp" || { _obs_unlock; return 1; }
  fi
  _obs_unlock
}

# Generates (once per @grafana/schema version) a JSON Schema of the Dashboard
# type with ts-json-schema-generator and prints its path.
obs_grafana_schema() {
  obs_need_node || return 1
  local dir="$OBS_CACHE/node" ver src out
  ver=$(sed -n 's/.*"version": *"\([^"]*\)".*/\1/p' "$dir/node_modules/@grafana/schema/package.json" | head -n 1)
  out="$OBS_CACHE/schemas/grafana-dashboard-$ver.json"
  [ -s "$out" ] && { echo "$out"; return 0; }
  # The types file moved between Grafana releases (11.x: dist/esm/raw/dashboard/x/).
  src=$(find "$dir/node_modules/@grafana/schema/dist" -path '*raw/dashboard/x/*types.gen.d.ts' | sort | head -n 1)
  [ -n "$src" ] || { echo "obs-tools: no dashboard types in @grafana/schema $ver" >&2; return 1; }
  mkdir -p "$OBS_CACHE/schemas"
  _obs_run "$OBS_CACHE/schema.log" "$dir/node_modules/.bin/ts-json-schema-generator" \
    --path "$src" --type Dashboard --no-type-check -o "$out.tmp" || return 1
  mv "$out.tmp" "$out"
  echo "$out"
}

# obs_free_port: a free TCP port on 127.0.0.1 (bind to port 0, read it back).
obs_free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}
