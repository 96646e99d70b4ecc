#!/usr/bin/env bash
# Builds the image, starts docker-compose.yml (three hosts and a client on a
# private network), runs zp, zpc and a background job across hosts, checks
# the results, and tears everything down.
set -euo pipefail
cd "$(dirname "$0")/.."
project=zp-e2e-$$
dc() { docker-compose -p "$project" "$@"; }
cleanup() { dc down -v --remove-orphans >/dev/null 2>&1 || true; }
trap cleanup EXIT
bash scripts/docker-build.sh
dc up -d >/dev/null
x() { dc exec -T client "$@"; }
for _ in $(seq 1 50); do x zp --accept-new -q host1 true 2>/dev/null && break; sleep 0.2; done
for h in host1 host2 host3; do
  got=$(x zp --accept-new -q "$h" hostname)
  [ "$got" = "$h" ] || { echo "zp $h hostname: got '$got'"; exit 1; }
done
echo hello | x zp host2 tr a-z A-Z | grep -qx HELLO
x sh -c 'head -c 3000000 /dev/urandom > /tmp/blob && zpc /tmp/blob host2:/tmp/blob && zp host2 sha256sum /tmp/blob > /tmp/remote && sha256sum /tmp/blob > /tmp/local && cmp /tmp/local /tmp/remote'
id=$(x zp --async host3 sh -c 'echo job on $(hostname); exit 7')
set +e
out=$(x zp job follow host3 "$id"); rc=$?
set -e
[ "$out" = "job on host3" ] && [ $rc = 7 ] || { echo "job follow: '$out' rc=$rc"; exit 1; }
echo "compose: 3 hosts answered; zp, zpc and a job across hosts OK"
