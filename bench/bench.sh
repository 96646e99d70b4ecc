#!/usr/bin/env bash
# zp vs ssh, side by side, over loopback on this machine. Prints a markdown table on stdout
# (progress and diagnostics go to stderr).
#
#   bash bench/bench.sh [RUNS]        from the repo root; RUNS defaults to 3 (median and best reported)
#
# Sets up everything itself (Debian 12, as root): missing packages, `make build`, a private sshd on
# 127.0.0.1:$SSH_PORT (default 2222, own config and keys in $BENCH_DIR, default /tmp/zp-bench),
# zpd on 127.0.0.1 on a free port with a throw-away --state dir, a private $ZP_CONFIG. All of it is
# stopped/removed on exit, even on failure (KEEP_DATA=1 keeps the 1 GiB test file for the next run).
# Knobs: NOOP_N (no-op commands per run, 20), BIG_MIB (test file size, 1024), CMD_TIMEOUT (s, 600),
# GROUPS_TO_RUN (row groups, space-separated; default all), ZP_CURVE=0 (measure --insecure only).
#
# Row groups (each is a function rows_NAME; the default GROUPS_TO_RUN list below runs them in order):
#   rows_latency    no-op command: zp HOST true vs ssh HOST true
#   rows_pipe_down  remote cat of the big file to local /dev/null
#   rows_pipe_up    local big file piped to a remote cat > /dev/null
# To add one: write rows_NAME that prepares its data and calls, per comparison,
#   row WORK REPS BYTES ZP_CMD OTHER_CMD [RESET]
# where ZP_CMD / OTHER_CMD are shell snippets in single quotes. ZP_CMD may use $ZP (the zp command
# line with the security mode's flags and the host), $ZPC (bin/zpc with the mode's flags), $ZP_HOST
# (127.0.0.1:PORT of that mode's zpd), $ZP_FLAGS; OTHER_CMD may use $SSH (ssh command line, host
# included), $SSHO (ssh options, for scp -o…/rsync -e), $SSH_PORT; both may use $BIG (the big
# file) and $DIR. RESET runs untimed before every timed command (e.g. 'rm -rf $DIR/dst'). BYTES > 0
# adds MB/s columns; REPS > 1 runs the command REPS times per run and reports ms per command. The
# OTHER_CMD column is headed "ssh": name the tool in WORK when it is scp or rsync. Then add
# rows_NAME to that default list.
# Planned next: zpc copies vs scp and rsync: one 1 GiB file; 5000 x 4 KiB files in 50 dirs (make
# them like /work/shared/bench/baseline.sh does); no-op re-sync of both; resume after a kill at 50%
# (a snippet that starts the copy, kills it once the destination reaches half size, then times the
# rerun — row times whatever snippet it is given).
set -euo pipefail

RUNS=${1:-${RUNS:-3}}
DIR=${BENCH_DIR:-/tmp/zp-bench}
SSH_PORT=${SSH_PORT:-2222}
NOOP_N=${NOOP_N:-20}
BIG_MIB=${BIG_MIB:-1024}
CMD_TIMEOUT=${CMD_TIMEOUT:-600}
read -ra ROW_GROUPS <<<"${GROUPS_TO_RUN:-rows_latency rows_pipe_down rows_pipe_up}"

case $RUNS in '' | *[!0-9]* | 0) echo "usage: bash bench/bench.sh [RUNS>0]" >&2; exit 2 ;; esac
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
ZP_BIN=$ROOT/bin/zp ZPD_BIN=$ROOT/bin/zpd ZPC_BIN=$ROOT/bin/zpc

log() { printf 'bench: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

# ---------------------------------------------------------------- cleanup (runs on any exit)
PIDS=()        # daemons we started
CHILD=         # process group of the command being timed, if any
CLEAN=()       # paths we created and remove on exit
LOGS=()        # logs we created: removed on success, kept for a look after a failure
cleanup() {
  local rc=$? p
  trap - EXIT INT TERM
  [ -z "$CHILD" ] || kill -TERM -- "-$CHILD" "$CHILD" 2>/dev/null || true
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  for p in "${CLEAN[@]}"; do rm -rf -- "$p"; done
  if ((rc == 0)); then for p in "${LOGS[@]}"; do rm -f -- "$p"; done
  elif [ ${#LOGS[@]} -gt 0 ]; then log "failed; logs kept: ${LOGS[*]} $DIR/sshd.log"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- packages, build
setup_packages() {
  local need=()
  [ -x /usr/sbin/sshd ] || need+=(openssh-server)
  command -v ssh >/dev/null 2>&1 || need+=(openssh-client)
  command -v rsync >/dev/null 2>&1 || need+=(rsync)
  command -v bc >/dev/null 2>&1 || need+=(bc)
  command -v openssl >/dev/null 2>&1 || need+=(openssl)
  command -v make >/dev/null 2>&1 || need+=(make)
  [ ${#need[@]} -eq 0 ] && return 0
  [ "$(id -u)" = 0 ] || die "missing packages: ${need[*]} (run as root, or: sudo apt-get install ${need[*]})"
  log "installing ${need[*]}"
  # Keep the package from starting a system-wide sshd on port 22: we only want the binary.
  # policy-rc.d is the standard Debian switch for that; only ours is removed again.
  local policy=/usr/sbin/policy-rc.d
  if [ ! -e $policy ]; then printf '#!/bin/sh\nexit 101\n' >$policy; chmod 755 $policy; CLEAN+=($policy); fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
}

build() {
  command -v go >/dev/null 2>&1 || [ ! -x /usr/local/go/bin/go ] || PATH=/usr/local/go/bin:$PATH
  command -v go >/dev/null 2>&1 || die "go not found: install Go (see go.mod for the version) first"
  log "make build"
  make -s build >&2 || die "make build failed"
  [ -x "$ZP_BIN" ] && [ -x "$ZPD_BIN" ] || die "make build did not produce bin/zp and bin/zpd"
}

# ---------------------------------------------------------------- private sshd
setup_sshd() {
  mkdir -p "$DIR"
  if (exec 3<>"/dev/tcp/127.0.0.1/$SSH_PORT") 2>/dev/null; then
    die "127.0.0.1:$SSH_PORT is already in use; set SSH_PORT to a free port"
  fi
  [ -f "$DIR/hostkey" ] || ssh-keygen -q -t ed25519 -N '' -f "$DIR/hostkey"
  [ -f "$DIR/key" ] || ssh-keygen -q -t ed25519 -N '' -f "$DIR/key"
  cp "$DIR/key.pub" "$DIR/authorized_keys"
  cat >"$DIR/sshd_config" <<EOF
Port $SSH_PORT
ListenAddress 127.0.0.1
HostKey $DIR/hostkey
PidFile $DIR/sshd.pid
AuthorizedKeysFile $DIR/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
Subsystem sftp internal-sftp
AcceptEnv SHLVL
EOF
  mkdir -p /run/sshd
  : >"$DIR/sshd.log"; CLEAN+=("$DIR/sshd.pid")
  /usr/sbin/sshd -D -f "$DIR/sshd_config" -E "$DIR/sshd.log" &
  PIDS+=($!)
  # SHLVL=1 stops Debian's bash from sourcing ~/.bashrc for the remote command, so the figures time
  # ssh, not whatever a login's rc file runs (a pyenv init there costs ~100 ms per command).
  SSHO="-q -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o SetEnv=SHLVL=1 -i $DIR/key"
  SSH="ssh $SSHO -p $SSH_PORT 127.0.0.1"
  local i
  for i in $(seq 1 50); do $SSH true </dev/null 2>/dev/null && return 0; sleep 0.1; done
  die "private sshd on 127.0.0.1:$SSH_PORT does not answer; see $DIR/sshd.log: $(tail -3 "$DIR/sshd.log" 2>/dev/null)"
}

# ---------------------------------------------------------------- zpd
# start_zpd NAME ARGS...: a zpd on 127.0.0.1:<free port> with a fresh --state dir; sets ZPD_PORT.
# Port 0 lets the kernel pick a free port; zpd logs the address it got ("addr=127.0.0.1:N").
start_zpd() {
  local name=$1; shift
  local state logf i addr=
  state=$(mktemp -d "$DIR/zpd-$name-state.XXXXXX"); CLEAN+=("$state")
  logf=$DIR/zpd-$name.log; LOGS+=("$logf")
  "$ZPD_BIN" --listen 127.0.0.1:0 --state "$state" "$@" >"$logf" 2>&1 &
  PIDS+=($!)
  local pid=$!
  for i in $(seq 1 100); do
    addr=$(sed -n 's/.*zpd listening.* addr=\([0-9.]*:[0-9]*\).*/\1/p' "$logf" | head -1)
    [ -n "$addr" ] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  [ -n "$addr" ] || { log "zpd ($name) did not start: $(tail -3 "$logf")"; return 1; }
  ZPD_PORT=${addr##*:}
}

# wait_zp CMDLINE: until `CMDLINE true` works (zpd accepts commands), or fail.
wait_zp() {
  local i
  for i in $(seq 1 50); do $1 true </dev/null >/dev/null 2>>"$DIR/zp-setup.log" && return 0; sleep 0.1; done
  log "zp cannot run commands through zpd: $(tail -3 "$DIR/zp-setup.log")"; return 1
}

# ---------------------------------------------------------------- zp security modes
# One entry per zp configuration measured; every row group runs all of them. MODE_FLAGS are zp's
# security flags for that mode, MODE_HOST the zpd it talks to.
MODES=() MODE_FLAGS=() MODE_HOST=() NOTES=()

setup_zp_insecure() {
  start_zpd insecure --insecure || die "zpd --insecure failed to start"
  wait_zp "$ZP_BIN --insecure 127.0.0.1:$ZPD_PORT" || die "zp --insecure does not work"
  MODES+=("zp --insecure") MODE_FLAGS+=("--insecure") MODE_HOST+=("127.0.0.1:$ZPD_PORT")
}

# CURVE (encrypted, authenticated) mode. Everything about it is guessed from the planned interface
# and kept here: `zp keygen` writes $ZP_CONFIG/id_curve{,.pub} (zcert, `public-key = "<Z85>"`),
# zpd makes its own key in --state, `zpd --authorized-keys FILE` lists client keys (Z85, one a
# line), `zp --accept-new` pins the server key on first contact. $ZP_CONFIG is private to the bench
# (set in main for every zp the bench runs): the user's own keys and known_hosts are never touched.
# Any failure here only drops the CURVE rows and says why under the table.
curve_available() {
  "$ZP_BIN" keygen --help >/dev/null 2>&1 && "$ZPD_BIN" --help 2>&1 | grep -q -- '--authorized-keys'
}

setup_zp_curve() {
  if [ "${ZP_CURVE:-1}" = 0 ]; then NOTES+=("CURVE rows skipped (ZP_CURVE=0): zp measured with --insecure only."); return 0; fi
  if ! curve_available; then
    NOTES+=("CURVE not available in this build (\`zp keygen\` or \`zpd --authorized-keys\` missing): zp measured with --insecure only.")
    return 0
  fi
  local out pub=''
  if ! out=$("$ZP_BIN" keygen </dev/null 2>>"$DIR/zp-setup.log"); then
    NOTES+=("CURVE: \`zp keygen\` failed ($(tail -1 "$DIR/zp-setup.log")): zp measured with --insecure only."); return 0
  fi
  [ -f "$ZP_CONFIG/id_curve.pub" ] &&
    pub=$(sed -n 's/^[[:space:]]*public-key[[:space:]]*=[[:space:]]*"\([^"]\{40\}\)".*/\1/p' "$ZP_CONFIG/id_curve.pub" | head -1)
  [ ${#pub} -eq 40 ] || pub=$(printf '%s\n' "$out" | grep -E '^[[:graph:]]{40}$' | tail -1 || true)
  if [ ${#pub} -ne 40 ]; then
    NOTES+=("CURVE: no public key found in $ZP_CONFIG/id_curve.pub or keygen output: zp measured with --insecure only."); return 0
  fi
  printf '%s\n' "$pub" >"$DIR/zp-authorized-keys"; CLEAN+=("$DIR/zp-authorized-keys")
  if ! start_zpd curve --authorized-keys "$DIR/zp-authorized-keys"; then
    NOTES+=("CURVE: zpd with --authorized-keys did not start: zp measured with --insecure only."); return 0
  fi
  local cmd="$ZP_BIN 127.0.0.1:$ZPD_PORT"
  if ! "$ZP_BIN" --accept-new "127.0.0.1:$ZPD_PORT" true </dev/null >/dev/null 2>>"$DIR/zp-setup.log" || ! wait_zp "$cmd"; then
    NOTES+=("CURVE: first contact (zp --accept-new) failed ($(tail -1 "$DIR/zp-setup.log")): zp measured with --insecure only."); return 0
  fi
  MODES+=("zp CURVE") MODE_FLAGS+=("") MODE_HOST+=("127.0.0.1:$ZPD_PORT")
}

# ---------------------------------------------------------------- data
setup_data() {
  BIG=$DIR/big
  local bytes=$((BIG_MIB * 1048576))
  [ "${KEEP_DATA:-0}" = 1 ] || CLEAN+=("$BIG")
  if [ "$(stat -c %s "$BIG" 2>/dev/null || echo 0)" != "$bytes" ]; then
    log "making $BIG ($BIG_MIB MiB)"
    # openssl dies of SIGPIPE when head has enough; that is expected (pipefail would stop us)
    { openssl enc -aes-128-ctr -nosalt -K 000102030405060708090a0b0c0d0e0f -iv 0 </dev/zero 2>/dev/null || true; } |
      head -c "$bytes" >"$BIG"
    [ "$(stat -c %s "$BIG")" = "$bytes" ] || die "could not make $BIG"
  fi
  cat "$BIG" >/dev/null # into the page cache: both sides read it from memory
  BIG_BYTES=$bytes
  if [ "$BIG_MIB" = 1024 ]; then BIG_NAME="1 GiB"; else BIG_NAME="$BIG_MIB MiB"; fi
}

# ---------------------------------------------------------------- measuring
# timeit CMD: sets T_US to the wall time of `bash -c CMD` in microseconds; on failure sets T_ERR
# and returns non-zero. stdin is /dev/null unless CMD pipes its own; stderr goes to $ERRLOG.
# timeout runs in its own process group (CHILD): it kills the whole command on a hang, and the
# INT/TERM trap kills that group, so Ctrl-C does not wait for a running measurement.
timeit() {
  local s e rc=0
  s=${EPOCHREALTIME//[!0-9]/}
  timeout -k 5 "$CMD_TIMEOUT" bash -c "$1" </dev/null >/dev/null 2>>"$ERRLOG" &
  CHILD=$!
  wait "$CHILD" || rc=$?
  e=${EPOCHREALTIME//[!0-9]/}
  CHILD=
  if ((rc == 124 || rc == 137)); then T_ERR="timed out after ${CMD_TIMEOUT}s"; return 1; fi
  ((rc == 0)) || { T_ERR="exit status $rc"; return 1; }
  T_US=$((e - s))
}

# stats US...: "median best" in microseconds
stats() {
  local sorted n
  sorted=($(printf '%s\n' "$@" | sort -n)); n=${#sorted[@]}
  if ((n % 2)); then echo "${sorted[n / 2]} ${sorted[0]}"
  else echo "$(((sorted[n / 2 - 1] + sorted[n / 2]) / 2)) ${sorted[0]}"; fi
}

ROWS=() FAILURES=()

# set_mode I: export what ZP_CMD snippets use for zp mode I.
set_mode() {
  export ZP_FLAGS=${MODE_FLAGS[$1]} ZP_HOST=${MODE_HOST[$1]}
  export ZP="$ZP_BIN${ZP_FLAGS:+ $ZP_FLAGS} $ZP_HOST" ZPC="$ZPC_BIN${ZP_FLAGS:+ $ZP_FLAGS}"
}

# row WORK REPS BYTES ZP_CMD OTHER_CMD [RESET]
# Runs OTHER_CMD and ZP_CMD in every zp mode, interleaved run by run (so drift hits all alike),
# and appends one table line per zp mode; the OTHER (ssh) figure is measured once and shared.
row() {
  local work=$1 reps=$2 bytes=$3 zpcmd=$4 othercmd=$5 reset=${6:-}
  local nv=$((${#MODES[@]} + 1)) r v cmd
  local -a times=() failed=()
  if ((reps > 1)); then
    zpcmd="for _ in \$(seq $reps); do $zpcmd || exit 1; done"
    othercmd="for _ in \$(seq $reps); do $othercmd || exit 1; done"
  fi
  for ((r = 1; r <= RUNS; r++)); do
    for ((v = 0; v < nv; v++)); do
      [ -z "${failed[v]:-}" ] || continue
      if ((v == 0)); then cmd=$othercmd; log "$work: ssh, run $r/$RUNS"
      else cmd=$zpcmd; set_mode $((v - 1)); log "$work: ${MODES[v - 1]}, run $r/$RUNS"; fi
      [ -z "$reset" ] || bash -c "$reset" </dev/null >/dev/null 2>>"$ERRLOG" || true
      if timeit "$cmd"; then times[v]+="$T_US "
      else failed[v]=1; FAILURES+=("$work, $([ $v = 0 ] && echo ssh || echo "${MODES[v - 1]}"), run $r: \`$cmd\` $T_ERR; last stderr: $(tail -2 "$ERRLOG" | tr '\n' ' ')"); fi
    done
  done
  local ssh_med='' ssh_best='' m b cell_ssh cell_zp ratio mbs_ssh
  [ -n "${failed[0]:-}" ] || read -r ssh_med ssh_best < <(stats ${times[0]})
  cell_ssh=$(cell "$ssh_med" "$ssh_best" "$reps")
  mbs_ssh=$(mbs "$bytes" "$ssh_med")
  for ((v = 1; v < nv; v++)); do
    m='' b=''
    [ -n "${failed[v]:-}" ] || read -r m b < <(stats ${times[v]})
    cell_zp=$(cell "$m" "$b" "$reps")
    ratio="—"
    [ -z "$m" ] || [ -z "$ssh_med" ] || ratio=$(printf '%.2f' "$(echo "scale=4; $m / $ssh_med" | bc)")
    ROWS+=("| $work, ${MODES[v - 1]} | $cell_zp | $cell_ssh | $ratio | $(mbs "$bytes" "$m") | $mbs_ssh |")
  done
}

# cell MEDIAN_US BEST_US REPS: "1.234 s (best 1.200)", or per-command ms when REPS > 1
cell() {
  [ -n "$1" ] || { echo failed; return; }
  if (($3 > 1)); then printf '%.1f ms (best %.1f)' "$(echo "scale=3; $1 / $3 / 1000" | bc)" "$(echo "scale=3; $2 / $3 / 1000" | bc)"
  else printf '%.2f s (best %.2f)' "$(echo "scale=4; $1 / 1000000" | bc)" "$(echo "scale=4; $2 / 1000000" | bc)"; fi
}

# mbs BYTES US: MB/s (10^6 bytes per second), or — when not meaningful
mbs() {
  if [ "$1" -gt 0 ] && [ -n "$2" ]; then printf '%.0f' "$(echo "scale=2; $1 / $2" | bc)"; else echo "—"; fi
}

# ---------------------------------------------------------------- row groups
rows_latency() {
  row "no-op \`true\` (${NOOP_N}×/run, per command)" "$NOOP_N" 0 '$ZP true' '$SSH true'
}
rows_pipe_down() {
  row "pipe down $BIG_NAME (\`cat FILE\` > /dev/null)" 1 "$BIG_BYTES" '$ZP cat "$BIG" >/dev/null' '$SSH cat "$BIG" >/dev/null'
}
rows_pipe_up() {
  row "pipe up $BIG_NAME (\`cat > /dev/null\` remote)" 1 "$BIG_BYTES" \
    'cat "$BIG" | $ZP sh -c "cat > /dev/null"' 'cat "$BIG" | $SSH "sh -c '"'"'cat > /dev/null'"'"'"'
}

# ---------------------------------------------------------------- main
machine() {
  local cpu ram cipher
  cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
  ram=$(awk '/^MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)
  cipher=$(ssh $SSHO -v -p "$SSH_PORT" 127.0.0.1 true </dev/null 2>&1 | sed -n 's/.*kex: client->server cipher: \([^ ]*\).*/\1/p' | head -1 || true)
  echo "Machine: $(nproc) CPUs, ${cpu:-unknown CPU}, $ram RAM, kernel $(uname -r), $(. /etc/os-release && echo "$PRETTY_NAME")"
  echo "Date: $(date -u '+%Y-%m-%d %H:%M UTC'); zp HEAD $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?') + working tree as built; $(ssh -V 2>&1 | cut -d, -f1), cipher ${cipher:-?}"
  echo "Load average (1 min) before/after measuring: $LOAD_BEFORE / $(cut -d' ' -f1 /proc/loadavg) — other load on the machine skews every figure"
  echo "Runs: $RUNS per cell (median, best in parentheses), zp and ssh interleaved; loopback 127.0.0.1; MB/s = 10^6 B/s from the median"
}

main() {
  setup_packages
  build
  setup_sshd
  export SSH SSHO SSH_PORT DIR
  : >"$DIR/zp-setup.log"; LOGS+=("$DIR/zp-setup.log")
  ERRLOG=$DIR/errors.log; : >"$ERRLOG"; LOGS+=("$ERRLOG")
  export ZP_CONFIG=$DIR/zp-config # a fresh, private zp config dir: never the user's keys
  rm -rf "$ZP_CONFIG"; CLEAN+=("$ZP_CONFIG"); mkdir -m 700 -p "$ZP_CONFIG"
  setup_zp_curve
  setup_zp_insecure
  setup_data
  export BIG
  local g
  LOAD_BEFORE=$(cut -d' ' -f1 /proc/loadavg)
  for g in "${ROW_GROUPS[@]}"; do "$g"; done

  echo
  machine
  echo
  echo "| work | zp median | ssh median | zp/ssh time | zp MB/s | ssh MB/s |"
  echo "|---|---|---|---|---|---|"
  printf '%s\n' "${ROWS[@]}"
  local n
  for n in "${NOTES[@]}"; do echo; echo "Note: $n"; done
  if [ ${#FAILURES[@]} -gt 0 ]; then
    echo; echo "Failures:"; for n in "${FAILURES[@]}"; do echo "- $n"; done
    exit 1
  fi
}

main
