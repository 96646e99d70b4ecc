#!/usr/bin/env bash
# Runs a test command in a cgroup of its own and fails if, once it is done,
# anything it started is still running (zpd, job shims, commands, even
# setsid'd or orphaned ones): tests must end what they start, pass or
# fail. Leftovers are listed and killed. Needs a writable cgroup hierarchy
# (root); without one the command just runs.
set -uo pipefail
hier=""
for h in /sys/fs/cgroup/unified /sys/fs/cgroup/pids /sys/fs/cgroup; do
  if [ -f "$h/cgroup.procs" ] && [ -w "$h" ]; then hier=$h; break; fi
done
if [ -z "$hier" ]; then
  echo "no-leftovers: no writable cgroup hierarchy; not checking for leftover processes" >&2
  exec "$@"
fi
cg="$hier/zp-tests-$$"
mkdir "$cg" || exec "$@"
echo $$ > "$cg/cgroup.procs"
"$@"
rc=$?
# Out of the group before looking into it: what this script runs next must
# not count.
echo $$ > "$hier/cgroup.procs"
pids() { find "$cg" -name cgroup.procs -exec cat {} + 2>/dev/null | grep -v '^$' || true; }
for _ in $(seq 1 30); do # zpd's own cleanup may still be finishing
  [ -z "$(pids)" ] && break
  sleep 0.1
done
left=$(pids)
if [ -n "$left" ]; then
  echo "processes left behind by the tests:" >&2
  for p in $left; do ps -o pid=,args= -p "$p" >&2 || true; done
  for _ in 1 2 3 4 5; do for p in $(pids); do kill -9 "$p" 2>/dev/null || true; done; sleep 0.2; done
  [ $rc = 0 ] && rc=1
fi
find "$cg" -depth -type d -exec rmdir {} \; 2>/dev/null || true
exit $rc
