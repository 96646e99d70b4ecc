#!/usr/bin/env bash
# libzp (C) and the Python binding against the zp CLI, and Python's subprocess.run(["ssh", ...]):
# a no-op command and a big pipe through a remote cat, over loopback with CURVE. Prints a markdown
# table on stdout (progress on stderr).
#
#   bash bench/libs.sh [RUNS]     from the repo root; RUNS (default 3): the median is reported
#
# Sets up, and removes on exit: make build and make libzp, a zpd on 127.0.0.1 (free port, throw-away
# --state, private $ZP_CONFIG), a private sshd on 127.0.0.1:$SSH_PORT (default 2223; skipped with a
# note if /usr/sbin/sshd is missing). Knobs: NOOP_N (commands per run, 50), PIPE_MIB (1024).
set -euo pipefail
RUNS=${1:-3}
NOOP_N=${NOOP_N:-50}
PIPE_MIB=${PIPE_MIB:-1024}
SSH_PORT=${SSH_PORT:-2223}
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
DIR=$(mktemp -d /tmp/zp-libs-bench.XXXXXX)
PIDS=()
log() { printf 'libs: %s\n' "$*" >&2; }
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$DIR"
}
trap cleanup EXIT

log "make build libzp"
make -s build libzp >&2
gcc -O2 -I include -o "$DIR/zpbench" bench/libs/bench.c -L lib -lzp -lpthread -Wl,-rpath,"$ROOT/lib"

export ZP_CONFIG=$DIR/config
bin/zp keygen >"$DIR/ak" 2>/dev/null
bin/zpd --listen 127.0.0.1:0 --state "$DIR/state" --authorized-keys "$DIR/ak" >"$DIR/zpd.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do
  ADDR=$(sed -n 's/.*zpd listening.* addr=\([0-9.]*:[0-9]*\).*/\1/p' "$DIR/zpd.log" | head -1)
  [ -n "$ADDR" ] && break
  sleep 0.05
done
[ -n "$ADDR" ] || { log "zpd did not start: $(tail -3 "$DIR/zpd.log")"; exit 1; }
bin/zp --accept-new -q "$ADDR" true # pin its key

SSH=()
if [ -x /usr/sbin/sshd ]; then
  ssh-keygen -q -t ed25519 -N '' -f "$DIR/hostkey"
  ssh-keygen -q -t ed25519 -N '' -f "$DIR/key"
  cp "$DIR/key.pub" "$DIR/authorized_keys"
  cat >"$DIR/sshd_config" <<EOC
Port $SSH_PORT
ListenAddress 127.0.0.1
HostKey $DIR/hostkey
AuthorizedKeysFile $DIR/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
AcceptEnv SHLVL
PidFile $DIR/sshd.pid
EOC
  mkdir -p /run/sshd
  /usr/sbin/sshd -D -f "$DIR/sshd_config" -E "$DIR/sshd.log" &
  PIDS+=($!)
  # SHLVL=1: Debian's bash then skips ~/.bashrc for the command (see bench.sh).
  SSH=(ssh -q -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o SetEnv=SHLVL=1
    -i "$DIR/key" -p "$SSH_PORT" 127.0.0.1)
  for _ in $(seq 1 50); do "${SSH[@]}" true </dev/null 2>/dev/null && break; sleep 0.1; done
fi

PY=(env PYTHONPATH="$ROOT/python" ZP_LIBZP="$ROOT/lib/libzp.so" /usr/bin/python3 bench/libs/bench.py "$ADDR")
secs() { # secs CMD...: the elapsed seconds of a shell command
  local t0 t1
  t0=$(date +%s.%N)
  "$@" >/dev/null
  t1=$(date +%s.%N)
  echo "$t1 - $t0" | bc -l
}
cli_noop() { for _ in $(seq 1 "$NOOP_N"); do bin/zp "$ADDR" true </dev/null; done; }
ssh_noop() { for _ in $(seq 1 "$NOOP_N"); do "${SSH[@]}" true </dev/null; done; }
cli_pipe() { head -c $((PIPE_MIB << 20)) /dev/zero | bin/zp "$ADDR" cat | wc -c; }
ssh_pipe() { head -c $((PIPE_MIB << 20)) /dev/zero | "${SSH[@]}" cat | wc -c; }
median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

declare -A T
for r in $(seq 1 "$RUNS"); do
  log "run $r/$RUNS"
  T[cli_noop]+="$(secs cli_noop) "
  T[c_fresh]+="$("$DIR/zpbench" "$ADDR" noop-fresh "$NOOP_N") "
  T[c_reuse]+="$("$DIR/zpbench" "$ADDR" noop-reuse "$NOOP_N") "
  T[py_fresh]+="$("${PY[@]}" noop-fresh "$NOOP_N") "
  T[py_reuse]+="$("${PY[@]}" noop-reuse "$NOOP_N") "
  if [ ${#SSH[@]} -gt 0 ]; then
    T[ssh_noop]+="$(secs ssh_noop) "
    T[py_ssh]+="$("${PY[@]}" ssh-noop "$NOOP_N" "${SSH[@]}") "
  fi
  T[cli_pipe]+="$(secs cli_pipe) "
  T[c_pipe]+="$("$DIR/zpbench" "$ADDR" pipe "$PIPE_MIB") "
  T[py_pipe]+="$("${PY[@]}" pipe "$PIPE_MIB") "
  [ ${#SSH[@]} -eq 0 ] || T[ssh_pipe]+="$(secs ssh_pipe) "
done

ms() { echo "${T[$1]}" | median | awk -v n="$NOOP_N" '{printf "%.1f ms", $1 * 1000 / n}'; }
rate() { echo "${T[$1]}" | median | awk -v m="$PIPE_MIB" '{printf "%.2f s (%.0f MB/s)", $1, m * 1.048576 / $1}'; }
ratio() { # ratio A B: median A / median B
  local a b
  a=$(echo "${T[$1]}" | median) b=$(echo "${T[$2]}" | median)
  echo "$a / $b" | bc -l | awk '{printf "%.2fx", $1}'
}
echo "| work (median of $RUNS runs, $(nproc) cores, loopback, CURVE) | time | vs zp CLI |"
echo "|---|---|---|"
echo "| no-op, zp CLI: \`zp HOST true\` ($NOOP_N×) | $(ms cli_noop) | 1x |"
echo "| no-op, libzp (C), connect + exec + close each | $(ms c_fresh) | $(ratio c_fresh cli_noop) |"
echo "| no-op, libzp (C), one session | $(ms c_reuse) | $(ratio c_reuse cli_noop) |"
echo "| no-op, Python \`zp.connect(h).run([\"true\"])\` each | $(ms py_fresh) | $(ratio py_fresh cli_noop) |"
echo "| no-op, Python, one session: \`host.run([\"true\"])\` | $(ms py_reuse) | $(ratio py_reuse cli_noop) |"
if [ ${#SSH[@]} -gt 0 ]; then
  echo "| no-op, ssh CLI: \`ssh HOST true\` | $(ms ssh_noop) | $(ratio ssh_noop cli_noop) |"
  echo "| no-op, Python \`subprocess.run([\"ssh\", HOST, \"true\"])\` | $(ms py_ssh) | $(ratio py_ssh cli_noop) |"
fi
echo "| $PIPE_MIB MiB through a remote \`cat\` and back, zp CLI | $(rate cli_pipe) | 1x |"
echo "| same, libzp (C) | $(rate c_pipe) | $(ratio c_pipe cli_pipe) |"
echo "| same, Python \`popen([\"cat\"])\` | $(rate py_pipe) | $(ratio py_pipe cli_pipe) |"
[ ${#SSH[@]} -eq 0 ] || echo "| same, ssh | $(rate ssh_pipe) | $(ratio ssh_pipe cli_pipe) |"
[ ${#SSH[@]} -gt 0 ] || echo "(no /usr/sbin/sshd: ssh rows skipped)"
