#!/usr/bin/env bash
# Broadcast (issue 14): one file to N hosts at once over loopback on this machine, three ways, in
# the same run: `zpc --fleet HUB` (a hub and N agent zpds, CURVE, each agent writing to a disk of
# its own), pdcp-style parallel `scp` and parallel `rsync -e ssh` to N host aliases of a private
# sshd. Prints markdown tables on stdout (progress on stderr); see bench/README.md, "Broadcast".
#
#   bash bench/broadcast.sh        from the repo root, as root (agents run under `unshare -m`)
#   make bench-broadcast           the same, and a JSON copy under bench/results/
#
# Knobs: BCAST_SIZES (hosts per row, "1 10 50"; N:MIB forces the file size for that row; the
# 1-host row is each tool's single-link speed, for the model in the README),
# BCAST_MIB (file size, 1024), BCAST_FANOUT (copies at once for scp and rsync, 32: pdsh's default
# fanout), BCAST_DISKS (where the N destinations live, default a fresh dir on /dev/shm), and
# bench.sh's SSH_PORT, BENCH_DIR, CMD_TIMEOUT, RESULTS_DIR. A row's file is BCAST_MIB, or less when
# N copies would not fit in 60% of the memory available and of BCAST_DISKS' free space (then a
# note says so): the destinations live on tmpfs, so that the figures are the tools', not this
# machine's disk's.
#
# Every tool's destinations are emptied before it runs (untimed) and every copy is compared with
# the source after it (cmp, untimed). zpc runs twice per row: the hub feeding every agent itself
# ("zpc"), and a relay tree of fanout BCAST_TREE (2; "zpc-tree": `zpc --fanout K`), for rows of
# more than K hosts.
#
# With BCAST_DELTA=1 (the default), after zpc's, scp's and rsync's full copy the file changes in one
# octet at its middle and the same command runs again ("TOOL-delta": zpc's agents take the chunks
# they hold from their copy, PROTOCOL §14.12; rsync's delta transfer; scp copies it whole); then
# the octet is changed back.
set -euo pipefail

BCAST_SIZES=${BCAST_SIZES:-1 10 50}
BCAST_MIB=${BCAST_MIB:-1024}
BCAST_FANOUT=${BCAST_FANOUT:-32}
BCAST_TREE=${BCAST_TREE:-2}
BCAST_DELTA=${BCAST_DELTA:-1}
export BCAST_TREE
GROUPS_TO_RUN=rows_broadcast # for bench.sh's setup_packages: no pdsh, no iproute2
# shellcheck source=bench/bench.sh
source "$(dirname "${BASH_SOURCE[0]}")/bench.sh" 1

[ "$(id -u)" = 0 ] || die "needs root: every agent runs under unshare -m with its own disk bind-mounted"
command -v unshare >/dev/null 2>&1 || die "needs unshare (util-linux)"
BC_DISKS=${BCAST_DISKS:-}
BC_RECORDS=$DIR/bc-records.jsonl # one JSON object per tool and row, for bc_report
BC_NOTES=()

# ---------------------------------------------------------------- the fleet: a hub, N agents
# bc_setup MAX: destinations, agent states and keys, the hub (CURVE, --metrics) on 127.0.0.1:0,
# and the ssh host aliases bh01…bhMAX of the private sshd.
bc_setup() {
  local max=$1 i k
  if [ -z "$BC_DISKS" ]; then BC_DISKS=$(mktemp -d /dev/shm/zp-bcast.XXXXXX); CLEAN+=("$BC_DISKS"); fi
  BC_MNT=$(mktemp -d "$DIR/bc-mnt.XXXXXX"); CLEAN+=("$BC_MNT")
  : >"$DIR/bc-fleet-keys"; CLEAN+=("$DIR/bc-fleet-keys")
  for ((i = 1; i <= max; i++)); do
    BC_STATES[i]=$(mktemp -d "$DIR/zpd-bc-a$i-state.XXXXXX"); CLEAN+=("${BC_STATES[i]}")
    k=$("$ZPD_BIN" --print-key --state "${BC_STATES[i]}" | sed -n 1p)
    [ ${#k} = 40 ] || die "zpd --print-key gave no key for agent $i"
    printf '# bh%02d\n%s\n' "$i" "$k" >>"$DIR/bc-fleet-keys"
  done
  start_zpd bc-hub --fleet-keys "$DIR/bc-fleet-keys" --fleet-clients "$DIR/zp-authorized-keys" \
    --metrics 127.0.0.1:0 || die "the hub did not start"
  BC_HUB=127.0.0.1:$ZPD_PORT BC_HUB_PID=$ZPD_PID
  BC_HUB_KEY=$("$ZPD_BIN" --print-key --state "$ZPD_STATE" | sed -n 1p)
  BC_METRICS=$(sed -n 's/.*msg=metrics addr=\(http:[^ ]*\).*/\1/p' "$DIR/zpd-bc-hub.log" | head -1)
  [ -n "$BC_METRICS" ] || die "no metrics address in $DIR/zpd-bc-hub.log"
  # The hub's TCP ports but metrics: its ROUTER and its XPUB (on a port of its own with :0).
  BC_HUB_PORTS=$(ss -tlnpH | awk -v pid="pid=$BC_HUB_PID," -v m="${BC_METRICS#http://}" \
    'index($0, pid) && $4 != substr(m, 1, index(m, "/") - 1) {n = split($4, a, ":"); print a[n]}' | xargs)
  [[ "$BC_HUB_PORTS" == *" "* ]] || die "the hub's ROUTER and XPUB ports not found (ss -tlnp: $BC_HUB_PORTS)"
  # ssh: every bhNN is the private sshd; LogLevel VERBOSE makes ssh print, as it exits,
  # "Transferred: sent N, received M bytes" (its own count of what went over the connection).
  ssh_alias_config "$DIR/bc_ssh_config" 'bh*' VERBOSE
}

# bc_up N: starts agents until N run, each a zpd on 127.0.0.1:0 named bhNN in a mount namespace
# of its own where BC_DISKS/zp/bhNN is bind-mounted on BC_MNT (one path, N disks, as
# e2e/broadcast_test.go's startAgentOnDisk); waits until the hub lists N up and pins their keys.
BC_AGENTS=0 BC_AGENT_PIDS=() BC_STATES=()
bc_up() {
  local n=$1 i name up=0
  for ((i = BC_AGENTS + 1; i <= n; i++)); do
    name=$(printf 'bh%02d' "$i")
    mkdir -p "$BC_DISKS/zp/$name"
    : >"$DIR/zpd-bc-$name.log"; LOGS+=("$DIR/zpd-bc-$name.log")
    ZPD_WRAP=(unshare -m --propagation private sh -c 'mount --bind "$1" "$2" && shift 2 && exec "$@"' sh
      "$BC_DISKS/zp/$name" "$BC_MNT")
    REUSE_STATE=${BC_STATES[i]} start_zpd "bc-$name" --join "$BC_HUB" --hub-key "$BC_HUB_KEY" --name "$name" \
      --authorized-keys "$DIR/zp-authorized-keys" || die "agent $name did not start"
    ZPD_WRAP=()
    BC_AGENT_PIDS[i]=$ZPD_PID BC_AGENTS=$i
  done
  BC_PIDS="${BC_AGENT_PIDS[*]}" # for bc.py
  for i in $(seq 1 600); do
    up=$("$ZP_BIN" --accept-new fleet "$BC_HUB" --json 2>>"$DIR/zp-setup.log" | grep -o '"state": *"up"' | wc -l || true)
    ((up == n)) && break
    sleep 0.1
  done
  ((up == n)) || die "only $up of $n agents joined the hub"
  "$ZP_BIN" --accept-new --fleet "$BC_HUB" true </dev/null >/dev/null 2>>"$DIR/zp-setup.log" ||
    die "zp --accept-new --fleet failed: $(tail -2 "$DIR/zp-setup.log")"
}

# ---------------------------------------------------------------- one copy to one ssh host
# bc_copy TOOL NN: TOOL (scp or rsync) copies the source to host bhNN's directory; its stderr (with
# ssh's "Transferred:" line) goes to BC_LOGS/TOOL-NN.err. Run by xargs -P, hence exported.
bc_copy() {
  local d=$BC_DISKS/ssh/bh$2
  case $1 in
    scp) scp -F "$DIR/bc_ssh_config" "$BC_SRC/big" "bh$2:$d/big" ;;
    rsync) rsync -a -e "ssh -F $DIR/bc_ssh_config" "$BC_SRC/" "bh$2:$d/" ;;
  esac 2>"$BC_LOGS/$1-$2.err"
}

# ---------------------------------------------------------------- a row: N hosts, three tools
# bc_mib N: the file size for N hosts: BCAST_MIB, or the largest multiple of 64 MiB of which N
# copies fit in 60% of what is free (memory available, BCAST_DISKS' file system).
bc_mib() {
  local n=$1 avail free fit
  avail=$(awk '/^MemAvailable/ {print int($2 / 1024)}' /proc/meminfo)
  free=$(df -Pm "$BC_DISKS" | awk 'NR == 2 {print $4}')
  ((free < avail)) && avail=$free
  fit=$((avail * 6 / 10 / n / 64 * 64))
  if ((fit >= BCAST_MIB)); then echo "$BCAST_MIB"; else echo "$fit"; fi
}

rows_broadcast() {
  local spec n mib max=0 tool start end cmd err out
  for spec in $BCAST_SIZES; do
    n=${spec%%:*}
    case $n in '' | *[!0-9]* | 0) die "BCAST_SIZES: '$spec' is not N or N:MIB" ;; esac
    ((n <= 99)) || die "BCAST_SIZES: at most 99 hosts (two-digit names), not $n"
    ((n > max)) && max=$n
  done
  bc_setup "$max"
  BC_LOGS=$DIR/bc-logs; mkdir -p "$BC_LOGS"; CLEAN+=("$BC_LOGS")
  : >"$BC_RECORDS"; CLEAN+=("$BC_RECORDS")
  export DIR BC_DISKS BC_LOGS
  export -f bc_copy
  for spec in $BCAST_SIZES; do
    n=${spec%%:*}
    if [ "$spec" != "$n" ]; then mib=${spec#*:}; else mib=$(bc_mib "$n"); fi
    ((mib > 0)) || die "no room for $n copies (BCAST_DISKS $BC_DISKS, or memory)"
    ((mib == BCAST_MIB)) || [ "$spec" != "$n" ] ||
      BC_NOTES+=("$n hosts: $mib MiB, not $BCAST_MIB MiB: $n copies of $BCAST_MIB MiB do not fit in 60% of the memory available (the destinations are on tmpfs) or of the free space of $BC_DISKS.")
    BIG_MIB=$mib; setup_data # $BIG: the deterministic test file, in the page cache
    BC_SRC=$DIR/bc-src; rm -rf "$BC_SRC"; mkdir -p "$BC_SRC"; CLEAN+=("$BC_SRC")
    ln "$BIG" "$BC_SRC/big"
    export BC_SRC
    bc_up "$n"
    for tool in scp rsync zpc zpc-tree; do
      [ $tool != zpc-tree ] || ((n > BCAST_TREE)) || continue
      bc_reset "$n"
      bc_run $tool $tool "$n" ""
      bc_check "$tool" "$n" || continue
      [ "$BCAST_DELTA" = 1 ] && [ $tool != zpc-tree ] && [ -z "$BC_ERR" ] || continue
      bc_flip "$BC_SRC/big"
      bc_run $tool "$tool-delta" "$n" ", one octet changed"
      bc_check "$tool" "$n" || true
      bc_flip "$BC_SRC/big"
    done
  done
  bc_reset 0
}

# bc_run TOOL RECORD N WHAT: TOOL's command for N hosts, timed between two probes and recorded as
# RECORD; WHAT (", one octet changed" or "") names the run in the log and in a failure, which is
# also left in BC_ERR.
bc_run() {
  local tool=$1 rec=$2 n=$3 what=$4 out=/dev/null cmd start end
  [[ $tool != zpc* ]] || out=$DIR/bc-zpc.json
  cmd=$(bc_cmd "$tool" "$n")
  BC_ERR=''
  log "broadcast of $BIG_NAME$what to $n hosts: $tool"
  python3 "$BC_PY" probe "$DIR/bc-before.json"
  # wall and per-host times count from here (timeit's own start is later by a fork or so)
  start=$EPOCHREALTIME
  timeit "$cmd" "$out" || BC_ERR="\`$cmd\`$what $T_ERR; last stderr: $(tail -3 "$ERRLOG" | tr '\n' ' ')"
  end=$EPOCHREALTIME
  python3 "$BC_PY" probe "$DIR/bc-after.json"
  python3 "$BC_PY" record "$rec" "$n" "$BIG_BYTES" "$start" "$end" "$BC_ERR" >>"$BC_RECORDS"
  [ -z "$BC_ERR" ] || FAILURES+=("$tool to $n hosts$what: $BC_ERR")
}

# bc_flip FILE: inverts the octet at FILE's middle, in place (twice: as it was).
bc_flip() {
  python3 - "$1" <<'FLIP'
import os, sys
with open(sys.argv[1], "r+b") as f:
    at = os.fstat(f.fileno()).st_size // 2
    f.seek(at)
    b = f.read(1)
    f.seek(at)
    f.write(bytes([b[0] ^ 0xFF]))
FLIP
}

# bc_cmd TOOL N: the timed command.
bc_cmd() {
  local last; last=$(printf '%02d' "$2")
  case $1 in
    scp | rsync) echo "seq -w 01 $last | xargs -P $BCAST_FANOUT -I{} bash -c 'bc_copy $1 {}'" ;;
    zpc) echo "\"\$ZPC_BIN\" --fleet $BC_HUB -r --json \"\$BC_SRC/\" :$BC_MNT/dest" ;;
    zpc-tree) echo "\"\$ZPC_BIN\" --fleet $BC_HUB --fanout $BCAST_TREE -r --json \"\$BC_SRC/\" :$BC_MNT/dest" ;;
  esac
}

# bc_reset N: every destination emptied (zp's and the ssh hosts'), directories for N ssh hosts,
# sync (nobody pays for the last tool's dirty pages), peak RSS of the hub and agents reset.
bc_reset() {
  local i p
  rm -rf "$BC_DISKS/ssh" "$BC_DISKS"/zp/*/dest "$BC_DISKS"/zp/*/.zpc-* "$BC_LOGS"/*
  for ((i = 1; i <= $1; i++)); do mkdir -p "$BC_DISKS/ssh/$(printf 'bh%02d' "$i")"; done
  sync
  for p in "$BC_HUB_PID" "${BC_AGENT_PIDS[@]}"; do echo 5 >"/proc/$p/clear_refs" 2>/dev/null || true; done
}

# bc_check TOOL N: every host's copy is the source (cmp), or a failure is listed.
bc_check() {
  local i f bad=0
  for ((i = 1; i <= $2; i++)); do
    if [[ $1 == zpc* ]]; then f=$BC_DISKS/zp/$(printf 'bh%02d' "$i")/dest/big
    else f=$BC_DISKS/ssh/$(printf 'bh%02d' "$i")/big; fi
    cmp -s "$BC_SRC/big" "$f" || { bad=$((bad + 1)); log "  $f differs from the source or is missing"; }
  done
  ((bad == 0)) || { FAILURES+=("$1 to $2 hosts: $bad of $2 copies differ from the source or are missing"); return 1; }
}

# ---------------------------------------------------------------- probes, records, report
# The Python half: `probe OUT` snapshots the counters (TCP sockets of the hub and of its peers from
# `ss`, the hub's metrics, peak RSS); `record TOOL N BYTES START END ERR` (epoch seconds) prints one
# JSON record from the two snapshots, the destinations' ctimes and the tool's output; `report`
# prints the tables from the records.
BC_PY=$DIR/bc.py
mkdir -p "$DIR"
cat >"$BC_PY" <<'PY'
import json, math, os, re, subprocess, sys, urllib.request

env = os.environ
def sockets(side):
    """TCP payload octets sent per established socket on the hub's ports: side "sport" is the
    hub's end, "dport" its peers' (agents, zpc); None: every socket. Key: local and peer address;
    value (pid, sent)."""
    cmd = ["ss", "-tinpHO", "state", "established"]
    if side:
        ports = [int(p) for p in env["BC_HUB_PORTS"].split()]  # the hub's ROUTER and XPUB
        cmd.append("( " + " or ".join("%s = :%d" % (side, p) for p in ports) + " )")
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    res = {}
    for line in out.splitlines():
        f = line.split()
        if len(f) < 4:
            continue
        pid = re.search(r"pid=(\d+)", line)
        sent = re.search(r"bytes_sent:(\d+)", line)
        res[f[2] + " " + f[3]] = (int(pid.group(1)) if pid else 0, int(sent.group(1)) if sent else 0)
    return res

def metrics():
    text = urllib.request.urlopen(env["BC_METRICS"], timeout=10).read().decode()
    m = {}
    for line in text.splitlines():
        if line.startswith("zp_fleet_"):
            k, v = line.rsplit(" ", 1)
            m[k] = float(v)
    return m

def hwm(pid):
    try:
        for line in open("/proc/%d/status" % pid):
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0

def probe(out):
    pids = [int(p) for p in env["BC_PIDS"].split()]
    snap = {"hub": sockets("sport"), "peers": sockets("dport"), "all": sockets(None), "metrics": metrics(),
            "hub_hwm": hwm(int(env["BC_HUB_PID"])), "agent_hwm": max([hwm(p) for p in pids] or [0])}
    json.dump(snap, open(out, "w"))

def sent_delta(before, after, pids=None):
    """Octets sent per pid between two snapshots; a socket new since before counts from 0. One
    that closed before `after` is not counted (zpc's own connection: see the README)."""
    per = {}
    for k, (pid, sent) in after.items():
        if pids is not None and pid not in pids:
            continue
        per[pid] = per.get(pid, 0) + sent - before.get(k, (pid, 0))[1]
    return per

def record(tool, n, size, start, end, err):
    n, size, start = int(n), int(size), float(start)
    b, a = json.load(open(env["DIR"] + "/bc-before.json")), json.load(open(env["DIR"] + "/bc-after.json"))
    rec = {"tool": tool, "hosts": n, "file_bytes": size, "wall_s": float(end) - start, "error": err}
    names = ["bh%02d" % i for i in range(1, n + 1)]
    # completion per host: when the copy was in place, from the destination file's ctime (zpc and
    # rsync rename it into place; scp writes it in place), counted from the command's start
    done = []
    base = tool.replace("-delta", "")
    for h in names:
        zp = tool.startswith("zpc")
        p = "%s/%s/%s/%s" % (env["BC_DISKS"], "zp" if zp else "ssh", h, "dest/big" if zp else "big")
        try:
            st = os.stat(p)
            if st.st_size == size:
                done.append(st.st_ctime_ns / 1e9 - start)
        except OSError:
            pass
    rec["done_s"] = sorted(done)
    if tool.startswith("zpc"):
        hub = sent_delta(b["hub"], a["hub"])
        rec["sender"], rec["sender_sent"] = "hub", sum(hub.values())
        pids = set(int(p) for p in env["BC_PIDS"].split()[:n])
        # every socket of the agents: their links to the hub, and a relay's XPUB to its children
        ag = sent_delta(b.get("all", {}), a.get("all", {}), pids)
        rec["busiest_other"], rec["busiest_other_sent"] = "agent", max(ag.values() or [0])
        mb, ma = b["metrics"], a["metrics"]
        d = lambda k: ma.get(k, 0) - mb.get(k, 0)
        rec["published"] = d("zp_fleet_published_bytes_total")
        rec["fetched"] = d("zp_fleet_publication_fetched_bytes_total")
        rec["relayed_to_agent"] = d('zp_fleet_relayed_bytes_total{direction="to_agent"}')
        rec["hub_peak_rss_kib"], rec["agent_peak_rss_kib"] = a["hub_hwm"], a["agent_hwm"]
        try:
            rep = json.load(open(env["DIR"] + "/bc-zpc.json"))
            hs = rep["hosts"]
            rec["own_s"] = sorted(h["seconds"] for h in hs if h["state"] == "ok")
            rec["hosts_ok"] = sum(1 for h in hs if h["state"] == "ok" and h["digest"] == rep["digest"])
            rec["repaired"] = [h["bytes_repaired"] for h in hs]
            rec["reconnects"] = sum(h["reconnects"] for h in hs)
            rec["relayed"] = [h.get("bytes_relayed", 0) for h in hs]
            rec["reparented"] = sum(1 for h in hs if h.get("reparented"))
        except (OSError, ValueError, KeyError) as e:
            rec["zpc_json_error"] = str(e)
    else:
        sent, recv = [], []
        for h in names:
            try:
                t = open("%s/%s-%s.err" % (env["BC_LOGS"], base, h[2:])).read()
            except OSError:
                t = ""
            m = re.search(r"Transferred: sent (\d+), received (\d+) bytes", t)
            if m:
                sent.append(int(m.group(1)))
                recv.append(int(m.group(2)))
        rec["sender"], rec["sender_sent"] = "client", sum(sent)
        rec["busiest_other"], rec["busiest_other_sent"] = "host", max(recv or [0])
        rec["hosts_ok"] = len(sent)
    print(json.dumps(rec))

def pct(xs, q):
    """Nearest-rank percentile."""
    if not xs:
        return None
    return sorted(xs)[max(0, math.ceil(q / 100 * len(xs)) - 1)]

def f2(x):
    return "—" if x is None else "%.2f" % x

def gib(x):
    return "%.2f" % (x / 2**30)

def report(path):
    recs = [json.loads(l) for l in open(path)]
    rows = {}
    for r in recs:
        rows.setdefault((r["hosts"], r["file_bytes"]), {})[r["tool"]] = r
    for (n, size), by in rows.items():
        name = "1 GiB" if size == 2**30 else "%d MiB" % (size // 2**20)
        print()
        print("### Broadcast of one %s file to %d host%s" % (name, n, "" if n == 1 else "s"))
        print()
        print("| tool | hosts with the copy | wall s | per host: done p50 s | p99 s | zpc's own per-host s p50 | p99 | sender | sender sent GiB | = × file | busiest receiver sent MiB | repaired MiB (hub PUB_FETCH) | hub peak RSS MiB | largest agent peak RSS MiB |")
        labels = {"zpc": "zpc (no relays)", "zpc-tree": "zpc --fanout %s" % env.get("BCAST_TREE", "2"),
                  "zpc-delta": "zpc, one octet changed", "scp-delta": "scp, one octet changed", "rsync-delta": "rsync, one octet changed"}
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for tool in ("zpc", "zpc-tree", "scp", "rsync", "zpc-delta", "scp-delta", "rsync-delta"):
            r = by.get(tool)
            if r is None:
                continue
            own = r.get("own_s", [])
            zp = tool.startswith("zpc")
            print("| %s%s | %d of %d | %s | %s | %s | %s | %s | %s | %s | %.2f | %.1f | %s | %s | %s |" % (
                labels.get(tool, tool), " (failed)" if r["error"] else "", len(r["done_s"]), n, f2(r["wall_s"]) if not r["error"] else "failed",
                f2(pct(r["done_s"], 50)), f2(pct(r["done_s"], 99)),
                f2(pct(own, 50)) if zp else "n/a", f2(pct(own, 99)) if zp else "n/a",
                r["sender"], gib(r["sender_sent"]), r["sender_sent"] / size,
                r["busiest_other_sent"] / 2**20,
                "%.1f" % (r["fetched"] / 2**20) if zp else "n/a",
                "%.0f" % (r["hub_peak_rss_kib"] / 1024) if zp else "n/a",
                "%.0f" % (r["agent_peak_rss_kib"] / 1024) if zp else "n/a"))
        z = by.get("zpc")
        print()
        print("| ratio | wall | per host p50 | per host p99 | sender sent |")
        print("|---|---|---|---|---|")
        ratio = lambda x, y: "—" if x is None or not y else "%.2f" % (x / y)
        for mine, other in (("zpc", "scp"), ("zpc", "rsync"), ("zpc-tree", "scp"), ("zpc-tree", "rsync"), ("zpc-tree", "zpc"),
                            ("zpc-delta", "scp-delta"), ("zpc-delta", "rsync-delta")):
            m, o = by.get(mine), by.get(other)
            if not m or not o or m["error"] or o["error"]:
                continue
            print("| %s/%s | %s | %s | %s | %s |" % (mine, other, ratio(m["wall_s"], o["wall_s"]),
                ratio(pct(m["done_s"], 50), pct(o["done_s"], 50)), ratio(pct(m["done_s"], 99), pct(o["done_s"], 99)),
                ratio(m["sender_sent"], o["sender_sent"])))
        if z:
            rep = z.get("repaired", [])
            print()
            print("Note: zpc, %d host(s): the client published %.1f MiB to the hub (zp_fleet_published_bytes_total), the hub relayed %.1f MiB of session traffic to agents through tunnels; agents repaired %.1f MiB in all (largest %.1f MiB on one host, %d hosts repaired anything), %d reconnections.%s" % (
                n, z.get("published", 0) / 2**20, z.get("relayed_to_agent", 0) / 2**20, sum(rep) / 2**20,
                max(rep or [0]) / 2**20, sum(1 for x in rep if x), z.get("reconnects", 0),
                (" zpc's --json could not be read: " + z["zpc_json_error"]) if "zpc_json_error" in z else ""))
        zd = by.get("zpc-delta")
        if zd:
            print()
            print("Note: zpc, one octet changed, %d host(s): the client published %.2f MiB to the hub (the chunks the agents lacked, PROTOCOL §14.12), the hub sent %.2f MiB, agents fetched %.2f MiB." % (
                n, zd.get("published", 0) / 2**20, zd["sender_sent"] / 2**20, zd.get("fetched", 0) / 2**20))
        zt = by.get("zpc-tree")
        if zt:
            rel = zt.get("relayed", [])
            print()
            print("Note: zpc --fanout %s, %d hosts: %d relays republished %.1f MiB in all (the busiest %.1f MiB, once, to at most K children: it sent at most K times that; its connections to its children close before the after-probe, so \"busiest receiver sent\" does not count them); agents repaired %.1f MiB (from the hub or, since relays answer PUB_FETCH, from their relay); %d hosts gave their relay up for the hub, %d reconnections." % (
                env.get("BCAST_TREE", "2"), n, sum(1 for x in rel if x), sum(rel) / 2**20, max(rel or [0]) / 2**20,
                sum(zt.get("repaired", [])) / 2**20, zt.get("reparented", 0), zt.get("reconnects", 0)))

def loopback(mib):
    """MB/s of one TCP connection over 127.0.0.1 carrying MIB MiB from one process to another,
    no encryption: what this machine's loopback gives one flow, for the model."""
    import socket, time
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)
    if os.fork() == 0:
        c = socket.create_connection(ls.getsockname())
        buf = memoryview(bytearray(1 << 20))
        for _ in range(int(mib)):
            c.sendall(buf)
        c.close()
        os._exit(0)
    s, _ = ls.accept()
    buf, got, t = bytearray(1 << 20), 0, time.monotonic()
    while True:
        k = s.recv_into(buf)
        if not k:
            break
        got += k
    t = time.monotonic() - t
    os.wait()
    print("%.0f" % (got / t / 1e6))

cmd = sys.argv[1]
if cmd == "loopback":
    loopback(sys.argv[2])
elif cmd == "probe":
    probe(sys.argv[2])
elif cmd == "record":
    record(*sys.argv[2:8])
elif cmd == "report":
    report(sys.argv[2])
PY
CLEAN+=("$BC_PY" "$DIR/bc-before.json" "$DIR/bc-after.json" "$DIR/bc-zpc.json")

bc_report() {
  echo
  machine | grep -v "^Runs:"
  echo "Uptime before/after: $UPTIME_BEFORE / $(uptime)"
  echo "Loopback, one TCP connection, no encryption (1 GiB from one process to another, bench/broadcast.sh's \`bc.py loopback\`) before/after: $BC_LOOP_BEFORE / $BC_LOOP_AFTER MB/s"
  echo
  echo "zpc: \`zpc --fleet HUB -r --json SRC/ :DEST\`, one hub and N agent zpds on 127.0.0.1 (CURVE, real keys), each agent in a mount namespace of its own with its own destination directory (tmpfs) on DEST; \"zpc --fanout K\" the same as a relay tree (the hub feeds K agents, each relays to K more: PROTOCOL §14.11). scp: \`seq -w 01 N | xargs -P $BCAST_FANOUT\` of \`scp FILE bhNN:DIR/big\`; rsync: the same with \`rsync -a -e ssh SRC/ bhNN:DIR/\`; bhNN are host aliases of one private sshd, DIR one directory (tmpfs) per host. Per host: when the copy was in place (the destination file's ctime) counted from the command's start; zpc's own per-host seconds (its --json) start once it has hashed the source and listed the agents. Sent: the hub's TCP payload octets on its two ports (\`ss\` bytes_sent, before and after), ssh's own \"Transferred: sent\" count summed over the N scp or rsync connections; busiest receiver: the most one agent sent on its TCP sockets still open at the end (\`ss\`: to the hub; a relay's connections to its children have closed by then, see the note under each row), or one ssh connection's \"received\". Below 1 in a ratio means zpc is faster or sends less."
  python3 "$BC_PY" report "$BC_RECORDS"
  local n
  for n in "${BC_NOTES[@]}"; do echo; echo "Note: $n"; done
  for n in "${NOTES[@]}"; do echo; echo "Note: $n"; done
  if [ ${#FAILURES[@]} -gt 0 ]; then
    echo; echo "Failures:"; for n in "${FAILURES[@]}"; do echo "- $n"; done
  fi
}

bc_main() {
  setup_packages
  build
  setup_sshd
  : >"$DIR/zp-setup.log"; LOGS+=("$DIR/zp-setup.log")
  ERRLOG=$DIR/errors.log; : >"$ERRLOG"; LOGS+=("$ERRLOG")
  export ZP_CONFIG=$DIR/zp-config # a fresh, private zp config dir: never the user's keys
  rm -rf "$ZP_CONFIG"; CLEAN+=("$ZP_CONFIG"); mkdir -m 700 -p "$ZP_CONFIG"
  setup_zp_curve
  [[ " ${MODES[*]} " == *"zp CURVE"* ]] || die "the broadcast needs CURVE: ${NOTES[*]}"
  export ZPC_BIN DIR
  UPTIME_BEFORE=$(uptime) LOAD_BEFORE=$(cut -d' ' -f1 /proc/loadavg)
  export BC_HUB_PORTS BC_HUB_PID BC_METRICS BC_PIDS
  BC_LOOP_BEFORE=$(python3 "$BC_PY" loopback 1024)
  rows_broadcast
  BC_LOOP_AFTER=$(python3 "$BC_PY" loopback 1024)
  bc_report >"$DIR/report.md"
  CLEAN+=("$DIR/report.md")
  cat "$DIR/report.md"
  [ -z "${RESULTS_DIR:-}" ] || results_json "$DIR/report.md"
  [ ${#FAILURES[@]} -eq 0 ] || exit 1
}

# exit here: bash reads a script as it runs it, so an edit of this file during a run must not be
# read after bc_main returns
bc_main
exit
