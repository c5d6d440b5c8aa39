#!/usr/bin/env bash
# ensure-apt.sh PKG... — install Debian packages only when they are missing.
#
# Checks each package with `dpkg -s` first (fast, no network). Only if at
# least one is missing does it run `apt-get update` (once) and
# `apt-get install -y --no-install-recommends` for the missing ones,
# non-interactively. Needs root (or sudo) only when something must be
# installed. Quiet when everything is already present; exits non-zero if an
# install fails.
#
# Usage: scripts/lib/ensure-apt.sh prometheus jq curl
set -euo pipefail

if [ "$#" -eq 0 ]; then
  echo "usage: $0 PKG..." >&2
  exit 2
fi

missing=()
for pkg in "$@"; do
  # dpkg -s succeeds for removed-but-not-purged packages too; check the status.
  status=$(dpkg-query -W -f='${db:Status-Abbrev}' "$pkg" 2>/dev/null || true)
  case "$status" in
    ii*) ;;
    *) missing+=("$pkg") ;;
  esac
done

[ "${#missing[@]}" -eq 0 ] && exit 0

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
  else
    echo "ensure-apt: need root to install: ${missing[*]}" >&2
    exit 1
  fi
fi

echo "ensure-apt: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! $SUDO apt-get update -q >"$log" 2>&1; then
  cat "$log" >&2
  echo "ensure-apt: apt-get update failed" >&2
  exit 1
fi
if ! $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
     -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
     "${missing[@]}" >"$log" 2>&1; then
  tail -n 30 "$log" >&2
  echo "ensure-apt: apt-get install failed for: ${missing[*]}" >&2
  exit 1
fi
echo "ensure-apt: installed ${missing[*]}" >&2
