#!/usr/bin/env bash
# CPU and allocation profiles of zp, zpc and zpd for bench.sh's rows, one run each, CURVE and
# --insecure: a fresh zpd per row (same --state, so the same key), every process with
# ZP_CPUPROFILE and ZP_MEMPROFILE set (internal/cli/profile.go). See bench/README.md.
#
#   bash bench/profile.sh OUTDIR            # from the repo root, after `make build`
#   go tool pprof -top bin/zpd OUTDIR/curve-down.cpu.zpd.PID
#   go tool pprof -sample_index=alloc_space -top bin/zp OUTDIR/curve-down.mem.zp.PID
#
# Knobs: ROWS (default "noop down up copy tree resync fan"), MODES ("curve insecure"), DATA (where
# the 1 GiB file, the 5000-file tree and the copies go; default /tmp/zp-profile, the same file
# system as a bench run's), FAN_N and FAN_MIB (watchers and MiB of the fan row, 20 and 20: small
# enough to profile, not bench.sh's 100 x 100). OUTDIR/times gets each row's wall time.
set -euo pipefail
OUT=${1:?usage: bash bench/profile.sh OUTDIR}
cd "$(dirname "${BASH_SOURCE[0]}")/.."
B=$PWD/bin
D=${DATA:-/tmp/zp-profile}
FAN_N=${FAN_N:-20} FAN_MIB=${FAN_MIB:-20}
mkdir -p "$OUT" "$D"
OUT=$(cd "$OUT" && pwd)
BIG=$D/big SMALL=$D/small
if [ "$(stat -c %s "$BIG" 2>/dev/null || echo 0)" != 1073741824 ]; then
  { openssl enc -aes-128-ctr -nosalt -K 000102030405060708090a0b0c0d0e0f -iv 0 </dev/zero 2>/dev/null || true; } |
    head -c 1073741824 >"$BIG"
fi
if [ "$(find "$SMALL" -type f 2>/dev/null | wc -l)" != 5000 ]; then
  rm -rf "$SMALL"
  for d in $(seq 1 50); do
    mkdir -p "$SMALL/d$d"
    dd if="$BIG" bs=409600 skip="$d" count=1 status=none | split -b 4096 -d -a 3 - "$SMALL/d$d/f"
  done
fi
cat "$BIG" >/dev/null
export ZP_CONFIG=$D/config
rm -rf "$ZP_CONFIG" "$D"/state-*; mkdir -m 700 -p "$ZP_CONFIG"
"$B/zp" keygen </dev/null >/dev/null 2>&1
sed -n 's/.*public-key = "\(.*\)".*/\1/p' "$ZP_CONFIG/id_curve.pub" >"$D/authorized-keys"
ZPID=
trap '[ -z "$ZPID" ] || { kill "$ZPID" 2>/dev/null; wait "$ZPID" 2>/dev/null; }; rm -rf "$D/dst" "$D/fan"' EXIT

# start_zpd MODE ROW: zpd profiled into $OUT/MODE-ROW.*; sets H (host:port) and F (zp flags)
start_zpd() {
  local mode=$1 row=$2 args=() a= i
  if [ "$mode" = curve ]; then args=(--authorized-keys "$D/authorized-keys"); F=
  else args=(--insecure); [ "$(id -u)" != 0 ] || args+=(--insecure-anyone-is-root); F=--insecure; fi
  mkdir -p "$D/state-$mode"
  ZP_CPUPROFILE=$OUT/$mode-$row.cpu ZP_MEMPROFILE=$OUT/$mode-$row.mem \
    "$B/zpd" --listen 127.0.0.1:0 --state "$D/state-$mode" "${args[@]}" >"$D/zpd.log" 2>&1 &
  ZPID=$!
  for i in $(seq 100); do
    a=$(sed -n 's/.*zpd listening.* addr=\([0-9.]*:[0-9]*\).*/\1/p' "$D/zpd.log" | head -1)
    [ -n "$a" ] && break
    sleep 0.05
  done
  [ -n "$a" ] || { echo "zpd did not start: $(tail -2 "$D/zpd.log")" >&2; exit 1; }
  H=$a
  [ "$mode" != curve ] || "$B/zp" --accept-new "$H" true 2>/dev/null
}

fan() { # FAN_N watchers of a job writing FAN_MIB MiB in 2 MiB pieces, as bench.sh's rows_fanout
  local id i pids=()
  rm -rf "$D/fan"; mkdir "$D/fan"
  id=$("$B/zp" $F --async "$H" sh -c "sleep 1; i=0; while [ \$i -lt $((FAN_MIB / 2)) ]; do dd if=$BIG bs=1M skip=\$((i * 2)) count=2 status=none; i=\$((i + 1)); sleep 0.1; done")
  for ((i = 1; i <= FAN_N; i++)); do
    ZP_FOLLOW_STATS=1 $P "$B/zp" job follow $F --stdout "$H" "$id" >/dev/null 2>"$D/fan/w$i.err" &
    pids+=($!)
  done
  for i in "${pids[@]}"; do wait "$i"; done
  cat "$D"/fan/w*.err >>"$OUT/fan-stats"
}

for mode in ${MODES:-curve insecure}; do
  for row in ${ROWS:-noop down up copy tree resync fan}; do
    rm -rf "$D/dst"; mkdir "$D/dst"
    if [ "$row" = resync ]; then # the first copy, by a zpd of its own, is not profiled
      ZP_CPUPROFILE= ZP_MEMPROFILE= start_zpd "$mode" setup
      "$B/zpc" $F -r "$SMALL" "$H:$D/dst"
      kill "$ZPID"; wait "$ZPID" || true; ZPID=
      rm -f "$OUT/$mode-setup".*
    fi
    sync
    start_zpd "$mode" "$row"
    P="env ZP_CPUPROFILE=$OUT/$mode-$row.cpu ZP_MEMPROFILE=$OUT/$mode-$row.mem"
    s=$EPOCHREALTIME
    case $row in
      noop) for i in $(seq 20); do $P "$B/zp" $F "$H" true; done ;;
      down) $P "$B/zp" $F "$H" cat "$BIG" >/dev/null ;;
      up) $P "$B/zp" $F "$H" sh -c 'cat >/dev/null' <"$BIG" ;;
      copy) $P "$B/zpc" $F "$BIG" "$H:$D/dst/big" ;;
      tree) $P "$B/zpc" $F -r "$SMALL" "$H:$D/dst" ;;
      resync) $P "$B/zpc" $F -r "$SMALL" "$H:$D/dst" ;;
      fan) fan ;;
    esac
    echo "$mode $row $(echo "$EPOCHREALTIME - $s" | bc) s" | tee -a "$OUT/times"
    kill "$ZPID"; wait "$ZPID" || true; ZPID=
  done
done
