#!/usr/bin/env bash
# Checks deploy/zpd.service, alone and with deploy/zpd-hub-hardening.conf, with
# systemd-analyze verify in a throw-away root (systemd need not be running or
# booted; nothing is installed on this machine), and prints each variant's
# `systemd-analyze security` exposure. Any warning from verify (an unknown
# directive, a bad value, a missing binary) fails the check.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v systemd-analyze >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    echo "installing systemd (for systemd-analyze; it is not started)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends systemd >/dev/null
  else
    echo "check-systemd: skipped: systemd-analyze not installed (apt-get install systemd)" >&2
    exit 0
  fi
fi
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/usr/local/bin" "$root/etc/systemd/system" "$root/etc/default" "$root/lib/systemd"
# The units zpd.service refers to (network.target, multi-user.target, …).
cp -a /lib/systemd/system "$root/lib/systemd/"
# ExecStart must name an executable: the real zpd ($ZPD, default bin/zpd) when
# built, else a stand-in.
zpd=${ZPD:-bin/zpd}
if [ -x "$zpd" ]; then cp "$zpd" "$root/usr/local/bin/zpd"; else printf '#!/bin/sh\n' >"$root/usr/local/bin/zpd"; chmod 755 "$root/usr/local/bin/zpd"; fi
cp deploy/zpd.service "$root/etc/systemd/system/zpd.service"
cp deploy/zpd.default "$root/etc/default/zpd"
check() {
  local out
  out=$(systemd-analyze verify --root="$root" /etc/systemd/system/zpd.service 2>&1) || true
  if [ -n "$out" ]; then echo "check-systemd: $1: systemd-analyze verify says:"; echo "$out"; exit 1; fi
  echo "check-systemd: $1: verify OK; $(systemd-analyze security --offline=true --root="$root" zpd.service 2>&1 | sed -n 's/^→ Overall exposure level for zpd.service: //p')"
}
check "deploy/zpd.service"
mkdir -p "$root/etc/systemd/system/zpd.service.d"
cp deploy/zpd-hub-hardening.conf "$root/etc/systemd/system/zpd.service.d/hub.conf"
check "deploy/zpd.service + zpd-hub-hardening.conf"
