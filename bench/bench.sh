#!/usr/bin/env bash
# zp vs ssh, side by side, over loopback on this machine. Prints a markdown table on stdout
# (progress and diagnostics go to stderr).
#
#   bash bench/bench.sh [RUNS]        from the repo root; RUNS defaults to 3 (median and best reported)
#
# Sets up everything itself (Debian 12, as root): missing packages, `make build`, a private sshd on
# 127.0.0.1:$SSH_PORT (default 2222, own config and keys in $BENCH_DIR, default /tmp/zp-bench),
# zpd on 127.0.0.1 on a free port with a throw-away --state dir, a private $ZP_CONFIG. All of it is
# stopped/removed on exit, even on failure (KEEP_DATA=1 keeps the 1 GiB file and the 5000-file tree).
# Knobs: NOOP_N (no-op commands per run, 20), BIG_MIB (test file size, 1024), CMD_TIMEOUT (s, 600),
# GROUPS_TO_RUN (row groups, space-separated; default all), ZP_CURVE=0 (measure --insecure only),
# RESULTS_DIR (also write the tables as JSON there, named by time and commit; `make bench` sets
# bench/results).
#
# Row groups (each is a function rows_NAME; the default GROUPS_TO_RUN list below runs them in order):
#   rows_latency      no-op command: zp HOST true vs ssh HOST true
#   rows_pipe_down    remote cat of the big file to local /dev/null
#   rows_pipe_up      local big file piped to a remote cat > /dev/null
#   rows_copy_file    upload of the big file: zpc vs scp vs rsync (+ the disk's own dd/fdatasync speed)
#   rows_copy_tree    upload of 5000 x 4 KiB files in 50 dirs: zpc -r vs scp -r vs rsync -a
#   rows_copy_noop    re-sync of an identical tree / big file: zpc vs rsync -a (scp: n/a)
#   rows_copy_resume  rerun of a big-file upload SIGKILLed at 50%: zpc vs rsync --append-verify vs scp
#   rows_fanout       one job's ~100 MiB of output to 100 concurrent `zp job follow` watchers (own table)
#   rows_lossy        zpc vs scp upload through a network namespace with 5% loss, 50 ms delay each way
#                     (bench/lossy, a Go program; root + iproute2, else skipped with a note; own table)
#   rows_fleet        a no-op on FLEET_SIZES hosts at once (10 and 50): `zp --fleet HUB true` through a hub
#                     to that many agent zpds vs `pdsh -R ssh` and a shell loop of parallel `ssh` to as
#                     many ssh host aliases of the private sshd (own table; CURVE only)
#   rows_scale        not in the default list (GROUPS_TO_RUN=rows_scale, or `make bench-scale`): 1× and
#                     BENCH_SCALE× (10) the work: the tree upload and its no-op re-sync (5000 and 50000
#                     files) vs rsync, and the pipe down (1 and 10 GiB) vs ssh, with zp's and zpd's peak
#                     RSS (own tables)
# To add one: write rows_NAME that prepares its data and calls, per comparison,
#   row WORK REPS BYTES ZP_CMD OTHER_CMD [RESET]              (zp vs ssh table)
#   copy_row WORK BYTES ZPC_RESET ZPC_CMD SCP_RESET SCP_CMD RSYNC_RESET RSYNC_CMD   (copy table)
# where the commands are shell snippets in single quotes. ZP_CMD may use $ZP (the zp command
# line with the security mode's flags and the host), $ZPC (bin/zpc with the mode's flags), $ZP_HOST
# (127.0.0.1:PORT of that mode's zpd), $ZP_FLAGS; OTHER_CMD may use $SSH (ssh command line, host
# included), $SSHO (ssh options, for scp -o…/rsync -e), $SSH_PORT, $SCP (scp with options and port)
# and $RSH (the ssh command for rsync -e); all may use $BIG (the big file), $SMALL (the tree) and
# $DIR. RESET runs untimed before every timed command (e.g. 'rm -rf $DIR/dst'). BYTES > 0 adds MB/s
# columns; REPS > 1 runs the command REPS times per run and reports ms per command. The OTHER_CMD
# column of `row` is headed "ssh": name the tool in WORK when it is scp or rsync. copy_row's SCP_CMD
# may be n/a. Then add rows_NAME to that default list.
# More knobs: FAN_N (watchers, 100), FAN_MIB (job output, 100), LOSSY_MIB (64), LOSSY_LOSS (5%),
# LOSSY_DELAY (50ms), FLEET_SIZES (hosts per fleet row, "10 50"), FLEET_FANOUT (pdsh -f, 64),
# BENCH_SCALE (rows_scale's factor, 10).
set -euo pipefail

RUNS=${1:-${RUNS:-3}}
DIR=${BENCH_DIR:-/tmp/zp-bench}
SSH_PORT=${SSH_PORT:-2222}
NOOP_N=${NOOP_N:-20}
BIG_MIB=${BIG_MIB:-1024}
CMD_TIMEOUT=${CMD_TIMEOUT:-600}
FAN_N=${FAN_N:-100}
FAN_MIB=${FAN_MIB:-100}
LOSSY_MIB=${LOSSY_MIB:-64}
LOSSY_LOSS=${LOSSY_LOSS:-5%}
LOSSY_DELAY=${LOSSY_DELAY:-50ms}
FLEET_SIZES=${FLEET_SIZES:-10 50}
FLEET_FANOUT=${FLEET_FANOUT:-64}
BENCH_SCALE=${BENCH_SCALE:-10}
read -ra ROW_GROUPS <<<"${GROUPS_TO_RUN:-rows_latency rows_pipe_down rows_pipe_up rows_copy_file rows_copy_tree rows_copy_noop rows_copy_resume rows_fanout rows_lossy rows_fleet}"

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
  if [ -n "$CHILD" ]; then
    kill -TERM -- "-$CHILD" "$CHILD" 2>/dev/null || true
    wait "$CHILD" 2>/dev/null || true # e.g. bench/lossy deletes its network namespace on TERM
  fi
  # the ControlMaster of rows_latency (a background ssh of ours, ControlPersist)
  [ -z "${CMO:-}" ] || ssh $SSHO $CMO -p "$SSH_PORT" -O exit 127.0.0.1 </dev/null >/dev/null 2>&1 || true
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
  [ -z "${RESULTS_DIR:-}" ] || command -v python3 >/dev/null 2>&1 || need+=(python3) # results_json
  if [[ " ${ROW_GROUPS[*]} " == *" rows_fleet "* ]]; then command -v pdsh >/dev/null 2>&1 || need+=(pdsh); fi
  if [[ " ${ROW_GROUPS[*]} " == *" rows_scale "* ]]; then [ -x /usr/bin/time ] || need+=(time); fi # peak RSS
  # ip netns for rows_lossy (root only: without root that group is skipped anyway)
  if [[ " ${ROW_GROUPS[*]} " == *" rows_lossy "* ]] && [ "$(id -u)" = 0 ] && ! command -v ip >/dev/null 2>&1 &&
    [ ! -x /usr/sbin/ip ] && [ ! -x /sbin/ip ]; then need+=(iproute2); fi
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
MaxStartups 200:30:400
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
# start_zpd NAME ARGS...: a zpd on 127.0.0.1:<free port> with a fresh --state dir; sets ZPD_PORT,
# ZPD_PID and ZPD_STATE. Port 0 lets the kernel pick a free port; zpd logs the address it got
# ("addr=127.0.0.1:N"). REUSE_LISTEN and REUSE_STATE in the environment (ensure_zpd) reuse a
# port and a --state dir (and so the server key) instead. ZPD_WRAP (an array, empty by default)
# goes before zpd's command line: a wrapper that execs it, so ZPD_PID is still zpd's pid
# (bench/broadcast.sh runs agents under `unshare -m` with a disk of their own).
ZPD_WRAP=()
start_zpd() {
  local name=$1; shift
  local state=${REUSE_STATE:-} logf i addr= skip
  if [ -z "$state" ]; then state=$(mktemp -d "$DIR/zpd-$name-state.XXXXXX"); CLEAN+=("$state"); fi
  logf=$DIR/zpd-$name.log
  if [ -z "${REUSE_STATE:-}" ]; then : >"$logf"; LOGS+=("$logf"); fi
  skip=$(wc -l <"$logf") # a restart appends: look at the new lines only
  "${ZPD_WRAP[@]}" "$ZPD_BIN" --listen "${REUSE_LISTEN:-127.0.0.1:0}" --state "$state" "$@" >>"$logf" 2>&1 &
  PIDS+=($!)
  local pid=$!
  for i in $(seq 1 100); do
    addr=$(tail -n +$((skip + 1)) "$logf" | sed -n 's/.*zpd listening.* addr=\([0-9.]*:[0-9]*\).*/\1/p' | head -1)
    [ -n "$addr" ] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  [ -n "$addr" ] || { log "zpd ($name) did not start: $(tail -3 "$logf")"; return 1; }
  ZPD_PORT=${addr##*:} ZPD_PID=$pid ZPD_STATE=$state
}

# ensure_zpd V: if mode V's zpd is no longer running (on a shared machine, someone's `pkill zpd`
# takes it along; or it crashed), say so under the table with its exit status and last log line,
# and start it again on the same port with the same --state (same key, so the pinned known_hosts
# entry still fits). The cell that was running when it stopped shows failed.
ensure_zpd() {
  local v=$1 pid=${MODE_PID[$1]} rc=0 how last
  kill -0 "$pid" 2>/dev/null && return 0
  wait "$pid" 2>/dev/null || rc=$?
  how="exit status $rc"
  if ((rc > 128)); then how+=", signal $((rc - 128))"; fi
  last=$(tail -1 "$DIR/zpd-${MODE_RESTART[v]%% *}.log" 2>/dev/null || true)
  log "zpd for ${MODES[v]} (pid $pid) is gone ($how); restarting it"
  # shellcheck disable=SC2086 # MODE_RESTART is "NAME ARGS..."
  if REUSE_STATE=${MODE_STATE[v]} REUSE_LISTEN=${MODE_HOST[v]} start_zpd ${MODE_RESTART[v]}; then
    MODE_PID[v]=$ZPD_PID
    NOTES+=("zpd for ${MODES[v]} (pid $pid) stopped during the run ($how; its last log line: \`$last\`) and was restarted with the same port and --state before the next ${MODES[v]} measurement. A cell that was running when it stopped shows failed.")
  else
    NOTES+=("zpd for ${MODES[v]} (pid $pid) stopped during the run ($how; its last log line: \`$last\`) and could not be restarted: later ${MODES[v]} cells fail.")
  fi
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
MODES=() MODE_FLAGS=() MODE_HOST=() MODE_PID=() MODE_STATE=() MODE_RESTART=() NOTES=()

setup_zp_insecure() {
  local root_ok=; [ "$(id -u)" = 0 ] && root_ok=--insecure-anyone-is-root # loopback, this machine only
  start_zpd insecure --insecure $root_ok || die "zpd --insecure failed to start"
  wait_zp "$ZP_BIN --insecure 127.0.0.1:$ZPD_PORT" || die "zp --insecure does not work"
  MODES+=("zp --insecure") MODE_FLAGS+=("--insecure") MODE_HOST+=("127.0.0.1:$ZPD_PORT") MODE_PID+=("$ZPD_PID")
  MODE_STATE+=("$ZPD_STATE") MODE_RESTART+=("insecure --insecure $root_ok")
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
  MODES+=("zp CURVE") MODE_FLAGS+=("") MODE_HOST+=("127.0.0.1:$ZPD_PORT") MODE_PID+=("$ZPD_PID")
  MODE_STATE+=("$ZPD_STATE") MODE_RESTART+=("curve --authorized-keys $DIR/zp-authorized-keys")
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
# run_child CMD [OUT [ERR [TIMEOUT]]]: `bash -c CMD` with stdin /dev/null, stdout to OUT (default
# /dev/null), stderr appended to ERR (default $ERRLOG), under timeout (default $CMD_TIMEOUT s).
# timeout runs in its own process group (CHILD): it kills the whole command on a hang, and the
# INT/TERM trap kills that group, so Ctrl-C does not wait for a running measurement. Returns
# CMD's exit status (124 or 137 after a timeout).
run_child() {
  local rc=0
  timeout -k 5 "${4:-$CMD_TIMEOUT}" bash -c "$1" </dev/null >"${2:-/dev/null}" 2>>"${3:-$ERRLOG}" &
  CHILD=$!
  wait "$CHILD" || rc=$?
  CHILD=
  return $rc
}

# timeit CMD [OUT]: sets T_US to the wall time of `bash -c CMD` in microseconds; on failure sets
# T_ERR and returns non-zero. stdin is /dev/null unless CMD pipes its own; stdout goes to OUT
# (default /dev/null), stderr to $ERRLOG.
timeit() {
  local s e rc=0
  s=${EPOCHREALTIME//[!0-9]/}
  run_child "$1" "${2:-/dev/null}" || rc=$?
  e=${EPOCHREALTIME//[!0-9]/}
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

# set_mode I: export what ZP_CMD snippets use for zp mode I (restarting its zpd if it is gone).
set_mode() {
  ensure_zpd "$1"
  export ZP_FLAGS=${MODE_FLAGS[$1]} ZP_HOST=${MODE_HOST[$1]} ZPD_PID=${MODE_PID[$1]}
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
      [ -z "$reset" ] || run_child "$reset" || true
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
  # ssh reusing one connection (ControlMaster): no key exchange or login per command. zp still
  # makes a new connection per command. The reset (untimed) makes sure the master is up.
  CMO="-o ControlMaster=auto -o ControlPath=$DIR/cm-%C -o ControlPersist=60"
  export SSHCM="ssh $SSHO $CMO -p $SSH_PORT 127.0.0.1"
  row "no-op \`true\` (${NOOP_N}×/run, per command) against ssh reusing a ControlMaster connection" "$NOOP_N" 0 \
    '$ZP true' '$SSHCM true' '$SSHCM true'
}
rows_pipe_down() {
  row "pipe down $BIG_NAME (\`cat FILE\` > /dev/null)" 1 "$BIG_BYTES" '$ZP cat "$BIG" >/dev/null' '$SSH cat "$BIG" >/dev/null'
}
rows_pipe_up() {
  row "pipe up $BIG_NAME (\`cat > /dev/null\` remote)" 1 "$BIG_BYTES" \
    'cat "$BIG" | $ZP sh -c "cat > /dev/null"' 'cat "$BIG" | $SSH "sh -c '"'"'cat > /dev/null'"'"'"'
}

# ---------------------------------------------------------------- copies: zpc vs scp vs rsync
CROWS=() RESUME_ROWS=() COPY_NOTES=()

# copy_row WORK BYTES ZPC_RESET ZPC_CMD SCP_RESET SCP_CMD RSYNC_RESET RSYNC_CMD [CHECK]
# Each run times scp, rsync, then zpc in every zp mode, one after the other (interleaved). A
# RESET runs untimed before its command; CHECK runs untimed after every timed command and must
# succeed, or the cell fails (e.g. cmp of the copy). SCP_CMD n/a: no scp cell (and no zpc/scp
# ratio). With RESUME=1 in the environment, the commands' stdout is parsed for the octets they
# sent (sent_bytes), the reset's $DIR/partial.size is collected, and RESUME_ROWS gets a line per
# tool. Appends one line per zp mode to CROWS.
copy_row() {
  local work=$1 bytes=$2 check=${9:-} r v i
  local -a name=(scp rsync) cmds=("$6" "$8") resets=("$5" "$7")
  for ((i = 0; i < ${#MODES[@]}; i++)); do name+=("zpc ${MODES[i]#zp }") cmds+=("$4") resets+=("$3"); done
  local nv=${#cmds[@]}
  local -a times=() failed=() sent=() part=()
  for ((r = 1; r <= RUNS; r++)); do
    for ((v = 0; v < nv; v++)); do
      [ "${cmds[v]}" != n/a ] && [ -z "${failed[v]:-}" ] || continue
      ((v < 2)) || set_mode $((v - 2))
      log "$work: ${name[v]}, run $r/$RUNS"
      rm -f "$DIR/partial.size" "$DIR/out"
      [ -z "${resets[v]}" ] || run_child "${resets[v]}" || log "  (reset failed: $(tail -1 "$ERRLOG"))"
      if timeit "${cmds[v]}" "$DIR/out" &&
        { [ -z "$check" ] || run_child "$check" || { T_ERR="check \`$check\` failed after the copy"; false; }; }; then
        times[v]+="$T_US "
        if [ "${RESUME:-0}" = 1 ]; then
          sent[v]+="$(sent_bytes "${name[v]}" "$DIR/out") "
          part[v]+="$(cat "$DIR/partial.size" 2>/dev/null || echo 0) "
        fi
      else
        failed[v]=1
        FAILURES+=("$work, ${name[v]}, run $r: \`${cmds[v]}\` $T_ERR; last stderr: $(tail -2 "$ERRLOG" | tr '\n' ' ')")
      fi
    done
  done
  rm -f "$DIR/out" "$DIR/partial.size"
  local -a med=() best=() cells=()
  for ((v = 0; v < nv; v++)); do
    med[v]='' best[v]=''
    if [ "${cmds[v]}" = n/a ]; then cells[v]="n/a"; continue; fi
    [ -n "${failed[v]:-}" ] || read -r "med[v]" "best[v]" < <(stats ${times[v]})
    cells[v]=$(cell "${med[v]}" "${best[v]}" 1)
  done
  for ((v = 2; v < nv; v++)); do
    CROWS+=("| $work, ${name[v]} | ${cells[v]} | ${cells[0]} | ${cells[1]} | $(ratio "${med[v]}" "${med[0]}" "${cmds[0]}") | $(ratio "${med[v]}" "${med[1]}") | $(mbs "$bytes" "${med[v]}") | $(mbs "$bytes" "${med[0]}") | $(mbs "$bytes" "${med[1]}") |")
  done
  [ "${RESUME:-0}" = 1 ] || return 0
  local p s
  local -a whole=([0]=", the whole file")
  for v in 2 $(seq 3 $((nv - 1))) 1 0; do
    ((v < nv)) && [ -z "${failed[v]:-}" ] || continue
    read -r p _ < <(stats ${part[v]}); read -r s _ < <(stats ${sent[v]})
    RESUME_ROWS+=("| ${name[v]} | ${cells[v]} | $(mib "$p") ($(pct "$p" "$BIG_BYTES")) | $(mib "$s") ($(pct "$s" "$BIG_BYTES"))${whole[v]:-} | $(resume_how "${name[v]}") |")
  done
}

# ratio A B [CMD_B]: A/B with two decimals; — when either is missing, n/a when CMD_B is n/a
ratio() {
  if [ "${3:-}" = n/a ]; then echo n/a
  elif [ -z "$1" ] || [ -z "$2" ]; then echo "—"
  else printf '%.2f' "$(echo "scale=4; $1 / $2" | bc)"; fi
}
mib() { printf '%.1f MiB' "$(echo "scale=3; ${1:-0} / 1048576" | bc)"; }
pct() { printf '%.0f%%' "$(echo "scale=3; 100 * ${1:-0} / $2" | bc)"; }

# sent_bytes TOOL FILE: the octets a rerun sent, from its stdout in FILE. zpc: --json bytes_sent
# (file content only); rsync: --stats "Total bytes sent" (everything on the wire from the sender,
# protocol included); scp: no such figure, it always rewrites the whole file.
sent_bytes() {
  local n=
  case $1 in
    zpc*) n=$(sed -n 's/.*"bytes_sent": *\([0-9]*\).*/\1/p' "$2" | head -1) ;;
    rsync) n=$(sed -n 's/^Total bytes sent: *\([0-9,]*\).*/\1/p' "$2" | tr -d , | head -1) ;;
    scp) n=$BIG_BYTES ;;
  esac
  echo "${n:-0}"
}

resume_how() {
  case $1 in
    zpc*) echo "\`zpc --json FILE host:DEST\` again: keeps \`.zpc-*.part\`, checks its SHA-256 prefix, sends the rest (re-sent = bytes_sent)" ;;
    rsync) echo "\`rsync -a --append-verify --stats\` (both runs): appends to the partial DEST, then checks the whole file (re-sent = Total bytes sent, protocol included)" ;;
    scp) echo "\`scp FILE host:DEST\` again: scp cannot resume, the rerun is a full re-copy" ;;
  esac
}

# kill_at_half GLOB CMD: for rows_copy_resume's resets. Runs `bash -c CMD` in a process group of
# its own, SIGKILLs that group (the copy and its ssh) once the file matching $DIR/dst/GLOB holds
# half of $BIG_BYTES, waits until that file stops growing (the receiver still writes what was in
# flight) and writes its size to $DIR/partial.size.
kill_at_half() {
  local glob=$1 cmd=$2 pid s=0 prev=-1 f
  setsid bash -c "$cmd" </dev/null >/dev/null 2>&1 &
  pid=$!
  trap 'kill -KILL -- "-$pid" 2>/dev/null' EXIT
  trap 'exit 143' TERM INT
  while :; do
    s=0; for f in "$DIR"/dst/$glob; do [ -f "$f" ] && s=$(stat -c %s "$f"); done
    ((s < BIG_BYTES / 2)) || break
    kill -0 "$pid" 2>/dev/null || { echo "kill_at_half: \`$cmd\` ended before half the file arrived" >&2; return 1; }
    sleep 0.01
  done
  kill -KILL -- "-$pid"
  wait "$pid" 2>/dev/null || true
  while [ "$s" != "$prev" ]; do
    prev=$s; sleep 0.5
    s=0; for f in "$DIR"/dst/$glob; do [ -f "$f" ] && s=$(stat -c %s "$f"); done
  done
  echo "$s" >"$DIR/partial.size"
}

# setup_small [DIRS]: $SMALL, DIRS×100 files of 4 KiB in DIRS (default 50) dirs
# (d1..dDIRS/f000..f099), cut from the big file (deterministic, not zeros); made once per bench run
# (kept with KEEP_DATA=1). The default tree is $DIR/small, others $DIR/small-DIRS.
setup_small() {
  local dirs=${1:-50} d
  SMALL=$DIR/small
  ((dirs == 50)) || SMALL=$DIR/small-$dirs
  export SMALL
  [ "${KEEP_DATA:-0}" = 1 ] || CLEAN+=("$SMALL")
  [ "$(find "$SMALL" -type f 2>/dev/null | wc -l)" = $((dirs * 100)) ] && return 0
  log "making $SMALL ($((dirs * 100)) × 4 KiB in $dirs dirs)"
  ((BIG_BYTES >= (dirs + 1) * 409600)) || die "BIG_MIB is too small for a tree of $dirs dirs"
  rm -rf "$SMALL"
  for d in $(seq 1 "$dirs"); do
    mkdir -p "$SMALL/d$d"
    dd if="$BIG" bs=409600 skip="$d" count=1 status=none | split -b 4096 -d -a 3 - "$SMALL/d$d/f"
  done
  [ "$(find "$SMALL" -type f | wc -l)" = $((dirs * 100)) ] || die "could not make $SMALL"
}

FRESH='rm -rf "$DIR/dst" && mkdir "$DIR/dst" && sync' # every copy row's reset starts with this
# The tree rows' reset moves the last copy aside instead (deleted at exit). On an ext4 without a
# journal (this VM's root disk), creating a file skips every inode freed in the last 5 to 35 s
# and reads each one's on-disk record (recently_deleted() in find_inode_bit(), 20-30% of all CPU
# in perf): after the reset deleted 50,000 files, the next copy of 50,000 took 7-13 s for zpc,
# 1.6-4.0 s for rsync and 13 s for cp -r, depending on timing and not on the tool. Nothing is
# deleted between the tree rows' runs, so each copy gets inodes as on a disk nobody just emptied.
FRESH_TREE='mkdir -p "$DIR/graveyard" && { [ ! -e "$DIR/dst" ] || mv "$DIR/dst" "$(mktemp -d -p "$DIR/graveyard")/"; } && mkdir "$DIR/dst" && sync'

rows_copy_file() {
  CLEAN+=("$DIR/dst" "$DIR/dd.out")
  copy_row "upload $BIG_NAME (\`zpc FILE host:DEST\`)" "$BIG_BYTES" \
    "$FRESH" '$ZPC "$BIG" "$ZP_HOST:$DIR/dst/big"' \
    "$FRESH" '$SCP "$BIG" "127.0.0.1:$DIR/dst/big"' \
    "$FRESH" 'rsync -a -e "$RSH" "$BIG" "127.0.0.1:$DIR/dst/big"' \
    'cmp "$BIG" "$DIR/dst/big"'
  # The disk's own speed, for judging zpc's fdatasync: the same file written locally by dd, into
  # the page cache only, and made durable (conv=fdatasync), interleaved.
  local r t_plain='' t_sync='' m1 b1 m2 b2
  for ((r = 1; r <= RUNS; r++)); do
    log "disk reference: dd, run $r/$RUNS"
    run_child 'rm -f "$DIR/dd.out"; sync' || true
    timeit 'dd if="$BIG" of="$DIR/dd.out" bs=4M status=none' && t_plain+="$T_US "
    run_child 'rm -f "$DIR/dd.out"; sync' || true
    timeit 'dd if="$BIG" of="$DIR/dd.out" bs=4M conv=fdatasync status=none' && t_sync+="$T_US "
  done
  rm -f "$DIR/dd.out"
  [ -n "$t_plain" ] && [ -n "$t_sync" ] || { FAILURES+=("disk reference: dd failed: $(tail -2 "$ERRLOG" | tr '\n' ' ')"); return 0; }
  read -r m1 b1 < <(stats $t_plain); read -r m2 b2 < <(stats $t_sync)
  COPY_NOTES+=("Disk reference (same file system as DEST, local, no network): \`dd bs=4M\` of the $BIG_NAME file takes $(cell "$m1" "$b1" 1), $(mbs "$BIG_BYTES" "$m1") MB/s, into the page cache; with \`conv=fdatasync\` (written and flushed to the disk, as zpc does with every file before renaming it into place) $(cell "$m2" "$b2" 1), $(mbs "$BIG_BYTES" "$m2") MB/s.")
}

rows_copy_tree() {
  setup_small
  CLEAN+=("$DIR/dst" "$DIR/graveyard")
  copy_row "upload 5000 × 4 KiB files in 50 dirs (\`zpc -r DIR host:DEST\`)" $((5000 * 4096)) \
    "$FRESH_TREE" '$ZPC -r "$SMALL" "$ZP_HOST:$DIR/dst"' \
    "$FRESH_TREE" '$SCP -r "$SMALL" "127.0.0.1:$DIR/dst"' \
    "$FRESH_TREE" 'rsync -a -e "$RSH" "$SMALL" "127.0.0.1:$DIR/dst"' \
    'diff -r "$SMALL" "$DIR/dst/small"'
  # The same copy into tmpfs (/dev/shm): no disk, so what is left is the protocol, the file
  # system calls and, for zpc, fdatasync's bookkeeping (free on tmpfs).
  if [ "$(stat -f -c %T /dev/shm 2>/dev/null)" = tmpfs ]; then
    export SHM=/dev/shm/zp-bench-$$
    CLEAN+=("$SHM")
    local fresh='rm -rf "$SHM" && mkdir "$SHM" && sync'
    copy_row "upload 5000 × 4 KiB files in 50 dirs into tmpfs (\`zpc -r DIR host:/dev/shm/…\`)" $((5000 * 4096)) \
      "$fresh" '$ZPC -r "$SMALL" "$ZP_HOST:$SHM"' \
      "$fresh" '$SCP -r "$SMALL" "127.0.0.1:$SHM"' \
      "$fresh" 'rsync -a -e "$RSH" "$SMALL" "127.0.0.1:$SHM"' \
      'diff -r "$SMALL" "$SHM/small"'
  else
    NOTES+=("/dev/shm is not tmpfs here: the tmpfs-destination row was skipped.")
  fi
}

# No-op re-sync: the reset makes a fresh copy with the same tool (untimed), then the same command
# runs again (timed) and finds nothing to do. scp has no such mode.
rows_copy_noop() {
  setup_small
  CLEAN+=("$DIR/dst" "$DIR/graveyard")
  local z='$ZPC -r "$SMALL" "$ZP_HOST:$DIR/dst"' y='rsync -a -e "$RSH" "$SMALL" "127.0.0.1:$DIR/dst"'
  copy_row "no-op re-sync of the identical 5000-file tree" 0 \
    "$FRESH_TREE && $z && sync" "$z" "" n/a "$FRESH_TREE && $y && sync" "$y" 'diff -r "$SMALL" "$DIR/dst/small"'
  z='$ZPC "$BIG" "$ZP_HOST:$DIR/dst/big"' y='rsync -a -e "$RSH" "$BIG" "127.0.0.1:$DIR/dst/big"'
  copy_row "no-op re-sync of the identical $BIG_NAME file" 0 \
    "$FRESH && $z && sync" "$z" "" n/a "$FRESH && $y && sync" "$y" 'cmp "$BIG" "$DIR/dst/big"'
}

# Resume: the reset starts the upload and SIGKILLs it at half (kill_at_half); only the rerun that
# completes it is timed. rsync uses --append-verify in both runs (implies --inplace, so the killed
# run leaves its data in DEST); scp cannot resume, its rerun is a full copy.
rows_copy_resume() {
  CLEAN+=("$DIR/dst")
  local z='$ZPC "$BIG" "$ZP_HOST:$DIR/dst/big"' s='$SCP "$BIG" "127.0.0.1:$DIR/dst/big"'
  local y='rsync -a --append-verify -e "$RSH" "$BIG" "127.0.0.1:$DIR/dst/big"'
  RESUME=1 copy_row "resume $BIG_NAME upload killed at 50% (rerun only)" 0 \
    "$FRESH && kill_at_half '.zpc-*.part' '$z'" '$ZPC --json "$BIG" "$ZP_HOST:$DIR/dst/big"' \
    "$FRESH && kill_at_half big '$s'" "$s" \
    "$FRESH && kill_at_half big '$y'" 'rsync -a --append-verify --stats -e "$RSH" "$BIG" "127.0.0.1:$DIR/dst/big"' \
    'cmp "$BIG" "$DIR/dst/big"'
}

# ---------------------------------------------------------------- job output fan-out
FAN_ROWS=() FOLLOW_ROWS=()

# fanout_run: one run of rows_fanout against the zpd of the current mode (ZP_FLAGS, ZP_HOST,
# ZPD_PID). A job pauses 1 s (so the watchers can attach), then writes FAN_MIB MiB of the big file
# to stdout in 2 MiB pieces every 0.1 s, with a timestamp on stderr before and after; FAN_N
# `zp job follow --stdout` watchers (ZP_FOLLOW_STATS=1) write it to /dev/null. Prints key=value
# lines and one "stat=HISTORY LIVE MISSED" line per watcher.
fanout_run() {
  local d=$DIR/fanout i id t0 t1 c0 c1 tck fails=0 job
  local -a pids=()
  rm -rf "$d"; mkdir -p "$d"
  tck=$(getconf CLK_TCK)
  c0=$(awk '{print $14 + $15}' "/proc/$ZPD_PID/stat")
  echo "rss_before_kb=$(sed -n 's/^VmRSS:[[:space:]]*\([0-9]*\).*/\1/p' "/proc/$ZPD_PID/status")"
  # "5" resets the peak RSS (VmHWM) to the current RSS (Linux 4.0+), so earlier rows do not count
  if echo 5 2>/dev/null >"/proc/$ZPD_PID/clear_refs"; then echo hwm_reset=1; else echo hwm_reset=0; fi
  job="sleep 1; date +%s.%N >&2; i=0; while [ \$i -lt $((FAN_MIB / 2)) ]; do dd if=$BIG bs=1M skip=\$((i * 2)) count=2 status=none; i=\$((i + 1)); sleep 0.1; done; date +%s.%N >&2"
  t0=$EPOCHREALTIME
  id=$($ZP_BIN $ZP_FLAGS --async "$ZP_HOST" sh -c "$job") || { echo "zp --async failed" >&2; return 1; }
  for ((i = 1; i <= FAN_N; i++)); do
    ZP_FOLLOW_STATS=1 $ZP_BIN job follow $ZP_FLAGS --stdout "$ZP_HOST" "$id" >/dev/null 2>"$d/w$i.err" &
    pids+=($!)
  done
  for i in "${pids[@]}"; do wait "$i" || fails=$((fails + 1)); done
  t1=$EPOCHREALTIME
  c1=$(awk '{print $14 + $15}' "/proc/$ZPD_PID/stat")
  echo "failed=$fails"
  echo "wall=$(echo "$t1 - $t0" | bc)"
  echo "zpd_cpu=$(echo "scale=2; ($c1 - $c0) / $tck" | bc)"
  echo "hwm_kb=$(sed -n 's/^VmHWM:[[:space:]]*\([0-9]*\).*/\1/p' "/proc/$ZPD_PID/status")"
  # the children's (watchers') user and system time: second line of `times`, e.g. 0m12.3s 0m4.5s
  # (not in a pipeline: a subshell would report its own children, none)
  times >"$d/times"
  tail -1 "$d/times" | awk '{ n = 0; for (i = 1; i <= 2; i++) { split($i, a, "m"); n += a[1] * 60 + a[2] } printf "watchers_cpu=%.2f\n", n }'
  $ZP_BIN job follow $ZP_FLAGS --stderr "$ZP_HOST" "$id" 2>"$d/job.err" >/dev/null || true
  echo "prod=$(echo "$(sed -n 2p "$d/job.err") - $(sed -n 1p "$d/job.err")" | bc)"
  echo "lag=$(echo "$t1 - $(sed -n 2p "$d/job.err")" | bc)"
  cat "$d"/w*.err | sed -n 's/^zp: follow stats: history=\([0-9]*\) live=\([0-9]*\) missed=\([0-9]*\)$/stat=\1 \2 \3/p'
  $ZP_BIN job rm $ZP_FLAGS "$ZP_HOST" "$id" >/dev/null 2>&1 || true
  rm -rf "$d"
}

rows_fanout() {
  local r v out=$DIR/fanout.out
  local -a wall=() cpu=() wcpu=() hwm=() prod=() lag=() fails=() incompl=() hwm_note=()
  CLEAN+=("$DIR/fanout" "$out")
  for ((v = 0; v < ${#MODES[@]}; v++)); do rm -f "$DIR/fanout-stats.$v"; CLEAN+=("$DIR/fanout-stats.$v"); done
  for ((r = 1; r <= RUNS; r++)); do
    for ((v = 0; v < ${#MODES[@]}; v++)); do
      set_mode "$v"
      log "fan-out: $FAN_N watchers of $FAN_MIB MiB, ${MODES[v]}, run $r/$RUNS"
      if ! run_child fanout_run "$out"; then
        FAILURES+=("fan-out, ${MODES[v]}, run $r: $(tail -2 "$ERRLOG" | tr '\n' ' ')"); continue
      fi
      local w c wc h p l f
      w=$(sed -n 's/^wall=//p' "$out"); c=$(sed -n 's/^zpd_cpu=//p' "$out"); wc=$(sed -n 's/^watchers_cpu=//p' "$out")
      h=$(sed -n 's/^hwm_kb=//p' "$out"); p=$(sed -n 's/^prod=//p' "$out"); l=$(sed -n 's/^lag=//p' "$out")
      f=$(sed -n 's/^failed=//p' "$out")
      grep -q '^hwm_reset=1' "$out" || hwm_note[v]=1
      wall[v]+="$(us "$w") " cpu[v]+="$(us "$c") " wcpu[v]+="$(us "$wc") " prod[v]+="$(us "$p") " lag[v]+="$(us "$l") "
      hwm[v]=$(((${hwm[v]:-0} > h) ? ${hwm[v]:-0} : h))
      fails[v]=$((${fails[v]:-0} + f))
      sed -n 's/^stat=//p' "$out" >>"$DIR/fanout-stats.$v"
      # every watcher must have received the whole output: history + live + missed = FAN_MIB MiB
      incompl[v]=$((${incompl[v]:-0} + FAN_N - $(sed -n 's/^stat=//p' "$out" | awk -v n=$((FAN_MIB * 1048576)) '$1 + $2 + $3 == n' | wc -l)))
    done
  done
  rm -f "$out"
  local m b
  for ((v = 0; v < ${#MODES[@]}; v++)); do
    [ -n "${wall[v]:-}" ] || continue
    local cw cp cl cc cwc
    read -r m b < <(stats ${wall[v]}); cw=$(cell "$m" "$b" 1)
    read -r m b < <(stats ${prod[v]}); cp=$(cell "$m" "$b" 1)
    read -r m b < <(stats ${lag[v]}); cl=$(cell "$m" "$b" 1)
    read -r m b < <(stats ${cpu[v]}); cc=$(printf '%.2f s' "$(echo "scale=3; $m / 1000000" | bc)")
    read -r m b < <(stats ${wcpu[v]}); cwc=$(printf '%.1f s' "$(echo "scale=3; $m / 1000000" | bc)")
    FAN_ROWS+=("| $FAN_N watchers, $FAN_MIB MiB, ${MODES[v]} | $cw | $cp | $cl | $cc | $(printf '%.0f MiB' "$(echo "scale=2; ${hwm[v]} / 1024" | bc)")${hwm_note[v]:+ (since zpd start)} | $cwc | ${fails[v]} / ${incompl[v]} |")
    local col k
    for k in 2:live 3:missed 1:history; do
      col=${k%%:*}
      FOLLOW_ROWS+=("| ${MODES[v]} | ${k#*:} | $(dist "$col" "$DIR/fanout-stats.$v") |")
    done
  done
}

# us SECONDS: microseconds (integer) from decimal seconds
us() { printf '%.0f' "$(echo "scale=6; ${1:-0} * 1000000" | bc)"; }

# dist COLUMN FILE: "min | median | max | watchers" of a column of octet counts, in MiB
dist() {
  sort -n -k"$1,$1" "$2" | awk -v c="$1" '{ v[NR] = $c } END {
    if (NR == 0) { print "— | — | — | 0"; exit }
    med = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
    printf "%.1f MiB | %.1f MiB | %.1f MiB | %d\n", v[1] / 1048576, med / 1048576, v[NR] / 1048576, NR }'
}

# ---------------------------------------------------------------- scaling: 1× and BENCH_SCALE× the work
SCALE_ROWS=() SCALE_SUM=()

# scale_row WORK OTHER RESET_OTHER OTHER_CMD RESET_ZP ZP_CMD [CHECK]: like row/copy_row (interleaved,
# RUNS per cell, RESET untimed before each command, CHECK untimed after), for the other tool (OTHER
# names it) and zp in every mode. The commands prefix the process to watch with $RSS
# (/usr/bin/time -f %M): its peak RSS is reported (the largest over the runs), and for zp also
# zpd's (VmHWM, reset before each command). Appends one line per zp mode to SCALE_ROWS and sets
# SCALE_MED (the medians in µs, other tool first, "" when failed) for scale_sum.
scale_row() {
  local work=$1 other=$2 check=${7:-} r v nv=$((${#MODES[@]} + 1)) name rss
  local -a cmds=("$4") resets=("$3") times=() failed=() cpeak=() dpeak=()
  for ((v = 1; v < nv; v++)); do cmds+=("$6") resets+=("$5"); done
  export RSS="/usr/bin/time -f %M -o $DIR/rss.out"
  CLEAN+=("$DIR/rss.out")
  for ((r = 1; r <= RUNS; r++)); do
    for ((v = 0; v < nv; v++)); do
      [ -z "${failed[v]:-}" ] || continue
      name=$other; ((v == 0)) || { set_mode $((v - 1)); name=${MODES[v - 1]}; }
      log "$work: $name, run $r/$RUNS"
      [ -z "${resets[v]}" ] || run_child "${resets[v]}" || log "  (reset failed: $(tail -1 "$ERRLOG"))"
      ((v == 0)) || echo 5 2>/dev/null >"/proc/$ZPD_PID/clear_refs" || true # peak RSS from here on
      rm -f "$DIR/rss.out"
      if timeit "${cmds[v]}" &&
        { [ -z "$check" ] || run_child "$check" || { T_ERR="check \`$check\` failed"; false; }; }; then
        times[v]+="$T_US "
        rss=$(tail -1 "$DIR/rss.out" 2>/dev/null); case $rss in '' | *[!0-9]*) rss=0 ;; esac
        ((rss <= ${cpeak[v]:-0})) || cpeak[v]=$rss
        if ((v > 0)); then
          rss=$(sed -n 's/^VmHWM:[[:space:]]*\([0-9]*\).*/\1/p' "/proc/$ZPD_PID/status" 2>/dev/null || echo 0)
          ((${rss:-0} <= ${dpeak[v]:-0})) || dpeak[v]=$rss
        fi
      else
        failed[v]=1
        FAILURES+=("$work, $name, run $r: \`${cmds[v]}\` $T_ERR; last stderr: $(tail -2 "$ERRLOG" | tr '\n' ' ')")
      fi
    done
  done
  local -a med=() cells=()
  SCALE_MED=()
  for ((v = 0; v < nv; v++)); do
    local m='' b=''
    [ -n "${failed[v]:-}" ] || read -r m b < <(stats ${times[v]})
    med[v]=$m cells[v]=$(cell "$m" "$b" 1); SCALE_MED+=("$m")
  done
  for ((v = 1; v < nv; v++)); do
    SCALE_ROWS+=("| $work, ${MODES[v - 1]} | ${cells[v]} | ${cells[0]} | $(ratio "${med[v]}" "${med[0]}") | $(kib "${cpeak[v]:-}") | $(kib "${cpeak[0]:-}") | $(kib "${dpeak[v]:-}") |")
  done
}
kib() { if [ -n "$1" ] && (($1 > 0)); then printf '%.0f MiB' "$(echo "scale=2; $1 / 1024" | bc)"; else echo "—"; fi; }

# scale_sum WORK OTHER MED1... -- MEDN...: one SCALE_SUM line per tool: its 1× and N× medians and
# their quotient (the cost of N× the work, in units of the 1× cost; N means linear).
scale_sum() {
  local work=$1 other=$2 i; shift 2
  local -a one=() big=() names=("$other") ; local into=one
  for i in "$@"; do
    if [ "$i" = -- ]; then into=big; continue; fi
    if [ $into = one ]; then one+=("$i"); else big+=("$i"); fi
  done
  for i in "${MODES[@]}"; do names+=("${i/zp /zpc }"); done
  [[ $work != pipe* ]] || names=("$other" "${MODES[@]}")
  for ((i = 0; i < ${#names[@]}; i++)); do
    local x=${one[i]:-} y=${big[i]:-} q="—"
    [ -z "$x" ] || [ -z "$y" ] || q=$(printf '%.1f×' "$(echo "scale=4; $y / $x" | bc)")
    SCALE_SUM+=("| $work | ${names[i]} | $(cell "$x" "$x" 1 | sed 's/ (best.*//') | $(cell "$y" "$y" 1 | sed 's/ (best.*//') | $q |")
  done
}

# rows_scale: 1× and BENCH_SCALE× the work, in the same run: the tree upload and its no-op
# re-sync (5000 and 5000×N files of 4 KiB, 100 per directory) against rsync -a, and the pipe down
# against ssh (the big file N times, `cat`ted N times by one remote shell, so that 10 GiB need no
# 10 GiB file on the disk).
rows_scale() {
  local n=$BENCH_SCALE s
  case $n in '' | *[!0-9]* | 0 | 1) die "BENCH_SCALE: '$n' is not a factor above 1" ;; esac
  CLEAN+=("$DIR/dst" "$DIR/graveyard")
  local -a pipe=() tree=() noop=()
  for s in 1 "$n"; do
    export SCALE_N=$s
    scale_row "pipe down $s × $BIG_NAME" ssh "" '$RSS $SSH "for i in \$(seq $SCALE_N); do cat $BIG; done" >/dev/null' \
      "" '$RSS $ZP sh -c "for i in \$(seq $SCALE_N); do cat $BIG; done" >/dev/null'
    pipe+=("${SCALE_MED[@]}" --)
    setup_small $((50 * s))
    local z='$RSS $ZPC -r "$SMALL" "$ZP_HOST:$DIR/dst"' y='$RSS rsync -a -e "$RSH" "$SMALL" "127.0.0.1:$DIR/dst"'
    local check='diff -r "$SMALL" "$DIR/dst/${SMALL##*/}"'
    scale_row "upload $((5000 * s)) × 4 KiB files in $((50 * s)) dirs" rsync "$FRESH_TREE" "$y" "$FRESH_TREE" "$z" "$check"
    tree+=("${SCALE_MED[@]}" --)
    scale_row "no-op re-sync of the identical $((5000 * s))-file tree" rsync "$FRESH_TREE && ${y#\$RSS } && sync" "$y" \
      "$FRESH_TREE && ${z#\$RSS } && sync" "$z" "$check"
    noop+=("${SCALE_MED[@]}" --)
    [ "$s" = 1 ] || rm -rf "$SMALL" # 50,000 files: not kept beyond this group unless KEEP_DATA=1
  done
  scale_sum "pipe down (1× = $BIG_NAME)" ssh "${pipe[@]}"
  scale_sum "upload of the tree (1× = 5000 files)" rsync "${tree[@]}"
  scale_sum "no-op re-sync of the tree (1× = 5000 files)" rsync "${noop[@]}"
}

# ---------------------------------------------------------------- lossy link (bench/lossy)
LOSSY_OUT='' LOSSY_NOTE=''

rows_lossy() {
  if [ "$(id -u)" != 0 ]; then LOSSY_NOTE="skipped: not running as root (network namespaces need root and iproute2)."; return 0; fi
  if ! command -v ip >/dev/null 2>&1 && [ ! -x /usr/sbin/ip ] && [ ! -x /sbin/ip ]; then
    LOSSY_NOTE="skipped: iproute2 (ip) is not installed."; return 0
  fi
  local -a modes=() ; local m rc=0
  for m in "${MODES[@]}"; do case $m in "zp CURVE") modes+=(curve) ;; "zp --insecure") modes+=(insecure) ;; esac; done
  log "lossy: go build ./bench/lossy"
  CLEAN+=("$DIR/lossy-bench" "$DIR/lossy" "$DIR/lossy.out")
  if ! go build -o "$DIR/lossy-bench" ./bench/lossy 2>>"$ERRLOG"; then
    FAILURES+=("lossy: go build ./bench/lossy failed: $(tail -2 "$ERRLOG" | tr '\n' ' ')"); return 0
  fi
  log "lossy: $LOSSY_MIB MiB uploads, $LOSSY_LOSS loss and $LOSSY_DELAY delay each way, $RUNS run(s) per cell (this takes minutes)"
  LOGS+=("$DIR/lossy.err")
  run_child "\"\$DIR/lossy-bench\" -bin \"$ROOT/bin\" -dir \"\$DIR/lossy\" -ssh-dir \"\$DIR\" -mib $LOSSY_MIB -runs $RUNS \
    -loss '$LOSSY_LOSS' -delay '$LOSSY_DELAY' -modes $(IFS=,; echo "${modes[*]}") -timeout ${CMD_TIMEOUT}s \
    2> >(tee \"\$DIR/lossy.err\" >&2)" "$DIR/lossy.out" /dev/stderr $((CMD_TIMEOUT * RUNS * (${#modes[@]} + 1) + 120)) || rc=$?
  case $rc in
    0) LOSSY_OUT=$(cat "$DIR/lossy.out") ;;
    3) LOSSY_NOTE=$(sed -n 's/^skipped: //p' "$DIR/lossy.out"); LOSSY_NOTE="skipped: ${LOSSY_NOTE:-no network namespaces here}" ;;
    *) FAILURES+=("lossy: bench/lossy exited with status $rc: $(tail -3 "$DIR/lossy.err" 2>/dev/null | tr '\n' ' ')") ;;
  esac
  rm -f "$DIR/lossy.out" "$DIR/lossy-bench"
}

# ---------------------------------------------------------------- fleet: one no-op on N hosts
FLEET_ROWS=() FLEET_NOTES=() FLEET_AGENTS=0 FLEET_HUB='' FLEET_HUB_KEY=''
FLEET_STATES=()

# ssh_alias_config FILE PATTERN LOGLEVEL: an ssh config (removed at exit) in which every host
# matching PATTERN is the private sshd, with the bench's key and no host-key checks.
ssh_alias_config() {
  cat >"$1" <<EOF
Host $2
  HostName 127.0.0.1
  Port $SSH_PORT
  IdentityFile $DIR/key
  IdentitiesOnly yes
  StrictHostKeyChecking no
  UserKnownHostsFile /dev/null
  BatchMode yes
  LogLevel $3
  SetEnv SHLVL=1
EOF
  CLEAN+=("$1")
}

# fleet_setup: the ssh host aliases, a state dir and key for every agent, and the hub (CURVE, on
# 127.0.0.1:0) that admits those keys and the bench's client key. Returns 1 (with a note) when
# the fleet cannot be measured.
fleet_setup() {
  local i max=0 n k
  for n in $FLEET_SIZES; do
    case $n in '' | *[!0-9]* | 0) die "FLEET_SIZES: '$n' is not a host count" ;; esac
    ((n <= 99)) || die "FLEET_SIZES: at most 99 hosts (two-digit names), not $n"
    ((n > max)) && max=$n
  done
  # ssh: every fhNN is the private sshd, with the options the other rows use
  ssh_alias_config "$DIR/fleet_ssh_config" 'fh*' QUIET
  if [[ " ${MODES[*]} " != *"zp CURVE"* ]]; then FLEET_NOTES+=("zp rows skipped: the fleet needs CURVE (ZP_CURVE=0 or no CURVE in this build)."); return 1; fi
  if ! "$ZPD_BIN" --help 2>&1 | grep -q -- '--join'; then FLEET_NOTES+=("zp rows skipped: this zpd has no --join (no fleet)."); return 1; fi
  : >"$DIR/fleet-keys"; CLEAN+=("$DIR/fleet-keys")
  for ((i = 1; i <= max; i++)); do
    FLEET_STATES[i]=$(mktemp -d "$DIR/zpd-fleet-a$i-state.XXXXXX"); CLEAN+=("${FLEET_STATES[i]}")
    k=$("$ZPD_BIN" --print-key --state "${FLEET_STATES[i]}" | sed -n 1p)
    [ ${#k} = 40 ] || { FLEET_NOTES+=("zp rows skipped: \`zpd --print-key\` gave no key for agent $i."); return 1; }
    printf '# fh%02d\n%s\n' "$i" "$k" >>"$DIR/fleet-keys"
  done
  start_zpd fleet-hub --fleet-keys "$DIR/fleet-keys" --fleet-clients "$DIR/zp-authorized-keys" ||
    { FLEET_NOTES+=("zp rows skipped: the hub did not start: $(tail -1 "$DIR/zpd-fleet-hub.log")"); return 1; }
  FLEET_HUB=127.0.0.1:$ZPD_PORT
  FLEET_HUB_KEY=$("$ZPD_BIN" --print-key --state "$ZPD_STATE" | sed -n 1p)
  [ ${#FLEET_HUB_KEY} = 40 ] || { FLEET_NOTES+=("zp rows skipped: \`zpd --print-key\` gave no key for the hub."); return 1; }
}

# fleet_up N: starts agents until N have joined the hub (each a zpd on 127.0.0.1:0 with its own
# --state, --name fhNN), waits until the hub lists N up, and pins their keys (--accept-new).
fleet_up() {
  local n=$1 i up=0 logf
  for ((i = FLEET_AGENTS + 1; i <= n; i++)); do
    logf=$DIR/zpd-fleet-a$i.log; : >"$logf"; LOGS+=("$logf")
    REUSE_STATE=${FLEET_STATES[i]} start_zpd "fleet-a$i" --join "$FLEET_HUB" --hub-key "$FLEET_HUB_KEY" \
      --name "$(printf 'fh%02d' "$i")" --authorized-keys "$DIR/zp-authorized-keys" || return 1
    FLEET_AGENTS=$i
  done
  for i in $(seq 1 300); do
    up=$("$ZP_BIN" --accept-new fleet "$FLEET_HUB" --json 2>>"$DIR/zp-setup.log" | grep -o '"state": *"up"' | wc -l || true)
    ((up == n)) && break
    sleep 0.1
  done
  ((up == n)) || { log "fleet: only $up of $n agents joined the hub"; return 1; }
  "$ZP_BIN" --accept-new --fleet "$FLEET_HUB" true </dev/null >/dev/null 2>>"$DIR/zp-setup.log" ||
    { log "fleet: zp --accept-new --fleet failed: $(tail -2 "$DIR/zp-setup.log")"; return 1; }
}

rows_fleet() {
  local zp_ok=1 n r v
  fleet_setup || zp_ok=0
  local -a names=("ssh loop" "pdsh -R ssh" "zp --fleet")
  for n in $FLEET_SIZES; do
    if ((zp_ok)) && ! fleet_up "$n"; then
      zp_ok=0; FLEET_NOTES+=("zp cells skipped from the $n-host row on: the agents did not all join ($(tail -1 "$DIR/zp-setup.log"))")
    fi
    local last; last=$(printf '%02d' "$n")
    local -a cmds=(
      "pids=(); for h in \$(seq -w 01 $last); do ssh -F \"\$DIR/fleet_ssh_config\" fh\$h true & pids+=(\$!); done; rc=0; for p in \"\${pids[@]}\"; do wait \$p || rc=1; done; exit \$rc"
      "PDSH_SSH_ARGS_APPEND=\"-F \$DIR/fleet_ssh_config\" pdsh -S -R ssh -f $FLEET_FANOUT -w 'fh[01-$last]' true"
      "\"\$ZP_BIN\" --fleet $FLEET_HUB true")
    local -a times=() failed=()
    for ((r = 1; r <= RUNS; r++)); do
      for ((v = 0; v < 3; v++)); do
        ((v < 2 || zp_ok)) && [ -z "${failed[v]:-}" ] || continue
        log "fleet: no-op on $n hosts, ${names[v]}, run $r/$RUNS"
        if timeit "${cmds[v]}"; then times[v]+="$T_US "
        else failed[v]=1; FAILURES+=("fleet, $n hosts, ${names[v]}, run $r: \`${cmds[v]}\` $T_ERR; last stderr: $(tail -2 "$ERRLOG" | tr '\n' ' ')"); fi
      done
    done
    local -a med=() cells=()
    for ((v = 0; v < 3; v++)); do
      local m='' b=''
      if ((v == 2 && !zp_ok)); then cells[v]="skipped"; med[v]=''; continue; fi
      [ -n "${failed[v]:-}" ] || read -r m b < <(stats ${times[v]})
      med[v]=$m; cells[v]=$(fleet_cell "$m" "$b")
    done
    FLEET_ROWS+=("| $n | ${cells[2]} | ${cells[1]} | ${cells[0]} | $(ratio "${med[2]}" "${med[1]}") | $(ratio "${med[2]}" "${med[0]}") |")
  done
}

# fleet_cell MEDIAN_US BEST_US: "123 ms (best 110)"
fleet_cell() {
  [ -n "$1" ] || { echo failed; return; }
  printf '%.0f ms (best %.0f)' "$(echo "scale=3; $1 / 1000" | bc)" "$(echo "scale=3; $2 / 1000" | bc)"
}

# ---------------------------------------------------------------- main
machine() {
  local cpu ram cipher
  cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
  ram=$(awk '/^MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)
  cipher=$(ssh $SSHO -v -p "$SSH_PORT" 127.0.0.1 true </dev/null 2>&1 | sed -n 's/.*kex: client->server cipher: \([^ ]*\).*/\1/p' | head -1 || true)
  echo "Machine: $(nproc) CPUs, ${cpu:-unknown CPU}, $ram RAM, kernel $(uname -r), $(. /etc/os-release && echo "$PRETTY_NAME")"
  echo "Date: $(date -u '+%Y-%m-%d %H:%M UTC'); zp HEAD $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?') + working tree as built; $(ssh -V 2>&1 | cut -d, -f1), cipher ${cipher:-?}; rsync $(rsync --version 2>/dev/null | sed -n '1s/^rsync *version \([^ ]*\).*/\1/p'); scp in its default (SFTP) mode"
  echo "Load average (1 min) before/after measuring: $LOAD_BEFORE / $(cut -d' ' -f1 /proc/loadavg) — other load on the machine skews every figure"
  echo "Runs: $RUNS per cell (median, best in parentheses), zp and ssh interleaved; loopback 127.0.0.1; MB/s = 10^6 B/s from the median"
}

main() {
  setup_packages
  build
  setup_sshd
  SCP="scp $SSHO -P $SSH_PORT" RSH="ssh $SSHO -p $SSH_PORT"
  export SSH SSHO SSH_PORT DIR SCP RSH ZP_BIN FAN_N FAN_MIB
  export -f kill_at_half fanout_run
  : >"$DIR/zp-setup.log"; LOGS+=("$DIR/zp-setup.log")
  ERRLOG=$DIR/errors.log; : >"$ERRLOG"; LOGS+=("$ERRLOG")
  export ZP_CONFIG=$DIR/zp-config # a fresh, private zp config dir: never the user's keys
  rm -rf "$ZP_CONFIG"; CLEAN+=("$ZP_CONFIG"); mkdir -m 700 -p "$ZP_CONFIG"
  setup_zp_curve
  setup_zp_insecure
  setup_data
  export BIG BIG_BYTES
  local g
  LOAD_BEFORE=$(cut -d' ' -f1 /proc/loadavg)
  for g in "${ROW_GROUPS[@]}"; do "$g"; done

  report >"$DIR/report.md"
  CLEAN+=("$DIR/report.md")
  cat "$DIR/report.md"
  [ -z "${RESULTS_DIR:-}" ] || results_json "$DIR/report.md"
  [ ${#FAILURES[@]} -eq 0 ] || exit 1
}

# results_json REPORT: writes the report's tables as JSON to
# $RESULTS_DIR/<UTC time>-<commit>.json, with the commit (and whether the working tree differed
# from it), so that the next change can be compared run against run. Each table is a list of rows,
# each row an object keyed by the table's column headers; a cell like "2.24 s (best 2.21)" becomes
# {"median": 2.24, "best": 2.21, "unit": "s", "text": "…"}, a plain number a number.
results_json() {
  local commit dirty out
  commit=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)
  dirty=false; [ -z "$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null)" ] || dirty=true
  mkdir -p "$RESULTS_DIR"
  out=$RESULTS_DIR/$(date -u +%Y%m%dT%H%M%SZ)-${commit:0:12}.json
  python3 - "$1" "$commit" "$dirty" "$RUNS" >"$out" <<'PY' || { log "could not write $out"; rm -f "$out"; return 0; }
import json, re, sys
report, commit, dirty, runs = sys.argv[1], sys.argv[2], sys.argv[3] == "true", int(sys.argv[4])
cell_re = re.compile(r"^(-?[0-9.]+) (s|ms|MiB|GiB)(?: \(best (-?[0-9.]+)\))?")
def cell(t):
    t = t.strip()
    m = cell_re.match(t)
    if m:
        d = {"median": float(m.group(1)), "unit": m.group(2), "text": t}
        if m.group(3) is not None:
            d["best"] = float(m.group(3))
        return d
    try:
        return float(t)
    except ValueError:
        return t
res = {"commit": commit, "dirty_tree": dirty, "runs": runs, "header": [], "notes": [], "tables": []}
title, cols, rows = "zp vs ssh", None, None
for line in open(report, encoding="utf-8"):
    line = line.rstrip("\n")
    if line.startswith("### "):
        title = line[4:]
    elif line.startswith("|"):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cols is None:
            cols, rows = cells, []
            res["tables"].append({"title": title, "columns": cols, "rows": rows})
        elif all(set(c) <= set("-:") for c in cells):
            pass
        else:
            rows.append({k: cell(v) for k, v in zip(cols, cells)})
        continue
    elif line.startswith(("Machine:", "Date:", "Load average", "Runs:", "Uptime", "Loopback")):
        res["header"].append(line)
    elif line.startswith(("Note:", "Disk reference", "- ")):
        res["notes"].append(line)
    cols = None
print(json.dumps(res, indent=1, ensure_ascii=False))
PY
  log "results written to $out"
}

report() {
  echo
  machine
  local n
  if [ ${#ROWS[@]} -gt 0 ]; then
    echo
    echo "| work | zp median | ssh median | zp/ssh time | zp MB/s | ssh MB/s |"
    echo "|---|---|---|---|---|---|"
    printf '%s\n' "${ROWS[@]}"
  fi
  if [ ${#CROWS[@]} -gt 0 ]; then
    echo
    echo "### Copies: zpc vs scp vs rsync"
    echo
    echo "Times are medians (best in parentheses); below 1 in a ratio column means zpc is faster. Before every timed copy DEST is removed and \`sync\` runs (the no-op rows then make a copy with the same tool, the resume rows run the copy that gets killed, both untimed); every copy is checked against the source (cmp / diff -r) afterwards. **zpc fdatasyncs every file before renaming it into place; scp and rsync do not** (their data may still be in the page cache when they exit)."
    echo
    echo "| work | zpc median | scp median | rsync median | zpc/scp time | zpc/rsync time | zpc MB/s | scp MB/s | rsync MB/s |"
    echo "|---|---|---|---|---|---|---|---|---|"
    printf '%s\n' "${CROWS[@]}"
    for n in "${COPY_NOTES[@]}"; do echo; echo "$n"; done
  fi
  if [ ${#RESUME_ROWS[@]} -gt 0 ]; then
    echo
    echo "Resume after SIGKILL at 50% of the $BIG_NAME upload (medians over the runs; the kill comes when the partial file on the destination reaches half, and \"kept\" is its size once it stopped growing):"
    echo
    echo "| tool | rerun median | partial kept when the rerun starts | re-sent by the rerun | how |"
    echo "|---|---|---|---|---|"
    printf '%s\n' "${RESUME_ROWS[@]}"
  fi
  if [ ${#FAN_ROWS[@]} -gt 0 ]; then
    echo
    echo "### Job output fan-out: one job, $FAN_N concurrent \`zp job follow --stdout\` watchers"
    echo
    echo "The job (\`zp --async\`) sleeps 1 s, then writes $FAN_MIB MiB to stdout in 2 MiB pieces every 0.1 s; right after starting it, $FAN_N \`zp job follow --stdout HOST ID > /dev/null\` start at once. Wall: from \`zp --async\` to the exit of the last watcher. zpd CPU: utime+stime of zpd over that time (the job's own processes not included). Peak RSS: zpd's VmHWM, reset before each run. Watchers' CPU: user+sys of all client processes together. Medians over the runs (best in parentheses), peak RSS the largest."
    echo
    echo "| work | wall: job start → last watcher exits | job writing (first → last piece) | last watcher exits after the job's last write | zpd CPU | zpd peak RSS | watchers' CPU (all) | watchers failed / incomplete |"
    echo "|---|---|---|---|---|---|---|---|"
    printf '%s\n' "${FAN_ROWS[@]}"
    echo
    echo "Per watcher, from \`ZP_FOLLOW_STATS=1\` (\`zp: follow stats: history=N live=N missed=N\`, octets): live = delivered by the XPUB publication; missed = published after the watcher started but not delivered live (it fell behind), fetched again over the ROUTER; history = already written when it started, fetched over the ROUTER. All watchers of all runs:"
    echo
    echo "| mode | octets per watcher | min | median | max | watchers |"
    echo "|---|---|---|---|---|---|"
    printf '%s\n' "${FOLLOW_ROWS[@]}"
  fi
  if [ ${#SCALE_ROWS[@]} -gt 0 ]; then
    echo
    echo "### Scaling: 1× and ${BENCH_SCALE}× the work"
    echo
    echo "Pipe down: \`zp HOST sh -c 'for i in \$(seq N); do cat FILE; done' > /dev/null\` against \`ssh HOST 'for i in …; do cat FILE; done' > /dev/null\`, FILE the $BIG_NAME test file (in the page cache), N = 1 and $BENCH_SCALE. Tree: \`zpc -r DIR host:DEST\` against \`rsync -a DIR host:DEST\`, 100 files of 4 KiB per directory; resets and checks as in the copy table (the no-op's reset makes a fresh copy with the same tool, untimed). Peak RSS: the client's (\`/usr/bin/time -f %M\` of zp, zpc, ssh or rsync; the largest over the runs) and zpd's (VmHWM, reset before each command; zpd serves no one else meanwhile). Below 1 in the ratio column means zp is faster."
    echo
    echo "| work | zp median | other median | zp/other time | zp/zpc peak RSS | other client peak RSS | zpd peak RSS |"
    echo "|---|---|---|---|---|---|---|"
    printf '%s\n' "${SCALE_ROWS[@]}"
    echo
    echo "What ${BENCH_SCALE}× the work costs each tool (medians; ${BENCH_SCALE}.0× is linear):"
    echo
    echo "| work | tool | 1× | ${BENCH_SCALE}× | ${BENCH_SCALE}×/1× |"
    echo "|---|---|---|---|---|"
    printf '%s\n' "${SCALE_SUM[@]}"
  fi
  if [ -n "$LOSSY_OUT$LOSSY_NOTE" ]; then
    echo
    echo "### Lossy link: zpc vs scp through a network namespace ($LOSSY_LOSS loss, $LOSSY_DELAY delay each way)"
    echo
    if [ -n "$LOSSY_OUT" ]; then echo "$LOSSY_OUT"; else echo "$LOSSY_NOTE"; fi
  fi
  if [ ${#FLEET_ROWS[@]} -gt 0 ]; then
    echo
    echo "### Fleet: one no-op on N hosts at once"
    echo
    echo "Wall time of one command that runs \`true\` on N hosts and returns when all have finished (median over the runs, best in parentheses; the three interleaved run by run). zp: \`zp --fleet HUB true\`, one hub zpd and N agent zpds on 127.0.0.1, each a process with its own \`--state\` and key, joined to the hub; the client lists the agents, then opens a CURVE session to each through a tunnel of its one hub connection. pdsh: \`pdsh -S -R ssh -f $FLEET_FANOUT -w fh[01-N] true\`. ssh loop: N \`ssh fhNN true &\` at once, then \`wait\` for each. Both ssh tools reach the private sshd under N host aliases (\`Host fh*\` → 127.0.0.1:$SSH_PORT, \`MaxStartups 200:30:400\` so that none is refused), a fresh TCP connection, key exchange and login per host, as to N machines; the zp agents are N separate daemons, as N machines. Below 1 in a ratio column means zp is faster."
    echo
    echo "| hosts | zp --fleet | pdsh -R ssh | ssh loop | zp/pdsh time | zp/ssh loop time |"
    echo "|---|---|---|---|---|---|"
    printf '%s\n' "${FLEET_ROWS[@]}"
    for n in "${FLEET_NOTES[@]}"; do echo; echo "Note: $n"; done
  fi
  for n in "${NOTES[@]}"; do echo; echo "Note: $n"; done
  if [ ${#FAILURES[@]} -gt 0 ]; then
    echo; echo "Failures:"; for n in "${FAILURES[@]}"; do echo "- $n"; done
  fi
}

# bench/broadcast.sh sources this file for its setup and measuring functions, and runs its own main.
[ "${BASH_SOURCE[0]}" != "$0" ] || main
