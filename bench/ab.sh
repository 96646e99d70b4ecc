#!/usr/bin/env bash
# One build's figures for one row, to compare builds run against run (old and new binaries
# alternating): wall time, the client's CPU (/usr/bin/time) and its own zpd's CPU
# (/proc/PID/stat), each run on a line. Uses bench/profile.sh's data (run it once first).
#
#   bash bench/ab.sh BINDIR curve|insecure down|up|file|tree|noop [RUNS]
#
# down/up: a 1 GiB pipe (zp HOST cat FILE, zp HOST 'cat >/dev/null' <FILE); file: zpc of the 1 GiB
# file; tree: zpc -r of the 5,000-file tree (DEST removed first); noop: the same into an existing
# copy. DEST is under DST (default /tmp/zp-ab-dst, the same file system as bench.sh's). DIRTY=1
# writes 1 GiB beside it (not flushed) before each run, as another program's dirty data.
set -euo pipefail
B=$1 MODE=$2 ROW=$3 RUNS=${4:-3}
D=${DATA:-/tmp/zp-profile} DR=${DST:-/tmp/zp-ab-dst}
BIG=$D/big SMALL=$D/small
[ -f "$BIG" ] && [ -d "$SMALL" ] || { echo "no $BIG or $SMALL: run bench/profile.sh once" >&2; exit 1; }
W=$(mktemp -d)
export ZP_CONFIG=$W/config
mkdir -m 700 "$ZP_CONFIG"
"$B/zp" keygen </dev/null >/dev/null 2>&1
sed -n 's/.*public-key = "\(.*\)".*/\1/p' "$ZP_CONFIG/id_curve.pub" >"$W/ak"
if [ "$MODE" = curve ]; then args=(--authorized-keys "$W/ak"); F=; else args=(--insecure --insecure-anyone-is-root); F=--insecure; fi
"$B/zpd" --listen 127.0.0.1:0 --state "$W/state" "${args[@]}" >"$W/log" 2>&1 &
ZPID=$!
trap 'kill $ZPID; wait $ZPID 2>/dev/null; rm -rf "$W" "$DR" "$DR.dirty"' EXIT
a=
for _ in $(seq 100); do
  a=$(sed -n 's/.*zpd listening.* addr=\([0-9.]*:[0-9]*\).*/\1/p' "$W/log" | head -1)
  [ -n "$a" ] && break
  sleep 0.05
done
[ -n "$a" ] || { echo "zpd did not start" >&2; exit 1; }
[ "$MODE" != curve ] || "$B/zp" --accept-new "$a" true 2>/dev/null
cat "$BIG" >/dev/null
[ "$ROW" != noop ] || "$B/zpc" $F -r "$SMALL" "$a:$DR/small"
for _ in $(seq "$RUNS"); do
  [ "$ROW" = noop ] || rm -rf "$DR"
  mkdir -p "$DR"
  sync
  # DIRTY=1: another program's 1 GiB of unflushed data on the disk, as scp or rsync leave it
  [ -z "${DIRTY:-}" ] || { rm -f "$DR.dirty"; cp "$BIG" "$DR.dirty"; }
  t0=$(awk '{print $14+$15}' /proc/$ZPID/stat)
  case $ROW in
  down) /usr/bin/time -f "%e %U %S" -o "$W/t" "$B/zp" $F "$a" cat "$BIG" >/dev/null ;;
  up) /usr/bin/time -f "%e %U %S" -o "$W/t" "$B/zp" $F "$a" sh -c 'cat >/dev/null' <"$BIG" ;;
  file) /usr/bin/time -f "%e %U %S" -o "$W/t" "$B/zpc" $F "$BIG" "$a:$DR/big" ;;
  tree | noop) /usr/bin/time -f "%e %U %S" -o "$W/t" "$B/zpc" $F -r "$SMALL" "$a:$DR/small" ;;
  *) echo "unknown row $ROW" >&2; exit 2 ;;
  esac
  t1=$(awk '{print $14+$15}' /proc/$ZPID/stat)
  read -r e u s <"$W/t"
  echo "$MODE $ROW wall=${e}s client_cpu=$(echo "$u + $s" | bc)s zpd_cpu=$(echo "scale=2; ($t1 - $t0) / 100" | bc)s"
done
