#!/usr/bin/env bash
# Installs the peers pollbridge-bench can measure beside the gateway, only
# when they are missing (idempotent; a `dpkg-query` per package and no
# network when all is present):
#   - nginx: the `proxy` scenario's `nginx` phase (proxy_pass with upstream
#     keepalive)
#   - libnginx-mod-nchan: the `lp-fanout` scenario's `nchan` phase (Nchan's
#     long-poll subscriber)
# Not needed by the tests or CI: the bench skips a peer that is missing and
# says why. Needs root (or sudo) only when installing.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/lib/ensure-apt.sh nginx libnginx-mod-nchan
module=/usr/lib/nginx/modules/ngx_nchan_module.so
if [ ! -f "$module" ]; then
  echo "peers: libnginx-mod-nchan is installed but $module is missing" >&2
  exit 1
fi
echo "peers: ok ($(nginx -v 2>&1 | sed 's/^nginx version: //'), $module)"
