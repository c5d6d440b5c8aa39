#!/usr/bin/env bash
# scripts/browser/setup.sh — installs what the browser end-to-end test needs,
# only when missing. Idempotent; well under a second when everything is there.
#   - Debian packages `chromium` and `fonts-dejavu-core` (apt-get update only
#     when something must be installed; needs root or sudo then)
#   - playwright-core, pinned by package-lock.json, via `npm ci` only when
#     node_modules is missing or was installed from another lock file
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)

packages=(chromium fonts-dejavu-core)
if [ -x "$root/scripts/lib/ensure-apt.sh" ]; then
  "$root/scripts/lib/ensure-apt.sh" "${packages[@]}"
else
  missing=()
  for pkg in "${packages[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    echo "browser setup: installing ${missing[*]}" >&2
    $sudo apt-get update -q
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
  fi
fi

# node_modules is current when it was installed from this very lock file.
stamp="$here/node_modules/.pollbridge-lock.sha256"
want=$(sha256sum "$here/package-lock.json" | cut -d' ' -f1)
if [ ! -f "$here/node_modules/playwright-core/package.json" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "browser setup: npm ci in scripts/browser" >&2
  (cd "$here" && npm ci --no-audit --no-fund --loglevel=error)
  echo "$want" >"$stamp"
fi
