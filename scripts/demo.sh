#!/usr/bin/env bash
# make run: zp's main job on loopback with freshly generated keys.
# Builds nothing itself (make run builds first); leaves nothing behind.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-bin}
tmp=$(mktemp -d /tmp/zp-demo.XXXXXX)
zpd_pid=
cleanup() {
  [ -n "$zpd_pid" ] && kill "$zpd_pid" 2>/dev/null && wait "$zpd_pid" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
export ZP_CONFIG=$tmp/client

say() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }

say "zp keygen"
"$BIN/zp" keygen | tee "$tmp/client.pub"

say "zpd --listen 127.0.0.1:0 --state $tmp/state --authorized-keys $tmp/client.pub &"
"$BIN/zpd" --listen 127.0.0.1:0 --state "$tmp/state" --authorized-keys "$tmp/client.pub" 2>"$tmp/zpd.log" &
zpd_pid=$!
addr=
for _ in $(seq 1 100); do
  addr=$(sed -n 's/.*msg="zpd listening".* addr=\([^ ]*\).*/\1/p' "$tmp/zpd.log")
  [ -n "$addr" ] && break
  sleep 0.05
done
[ -n "$addr" ] || { cat "$tmp/zpd.log"; echo "zpd did not start" >&2; exit 1; }
echo "zpd listening on $addr (CURVE), server key:"
"$BIN/zpd" --print-key --state "$tmp/state"

say "echo hello | zp --accept-new $addr tr a-z A-Z"
echo hello | "$BIN/zp" --accept-new "$addr" tr a-z A-Z

say "zp $addr sh -c 'echo out; echo err >&2; exit 3'; echo \"exit=\$?\""
set +e
"$BIN/zp" "$addr" sh -c 'echo out; echo err >&2; exit 3'
echo "exit=$?"
"$BIN/zp" "$addr" no-such-command
echo "exit=$? (command not found)"
set -e

say "zp $addr uname -a"
"$BIN/zp" "$addr" uname -a

say "head -c 256M /dev/urandom | zp $addr sha256sum   (vs local sha256sum)"
head -c 268435456 /dev/urandom >"$tmp/blob"
time "$BIN/zp" "$addr" sha256sum <"$tmp/blob"
sha256sum <"$tmp/blob"

echo
echo "done; zpd log:"
sed 's/^/  /' "$tmp/zpd.log"
