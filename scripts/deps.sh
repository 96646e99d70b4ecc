#!/usr/bin/env bash
# Installs the Debian packages zp's tests and benchmarks use, if missing.
# As root (CI) it installs them; otherwise it says what is missing.
set -euo pipefail
need=()
/usr/bin/python3 -c 'import zmq' 2>/dev/null || need+=(python3-zmq)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v tc >/dev/null 2>&1 || need+=(iproute2)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh >/dev/null 2>&1 || need+=(openssh-client)
command -v rsync >/dev/null 2>&1 || need+=(rsync)
command -v bc >/dev/null 2>&1 || need+=(bc)
command -v gcc >/dev/null 2>&1 || need+=(gcc libc6-dev)       # cgo: libzp, and its C test
command -v valgrind >/dev/null 2>&1 || need+=(valgrind)        # e2e.TestLibzpC
/usr/bin/python3 -c 'import pytest' 2>/dev/null || need+=(python3-pytest) # python/ tests
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd) # systemd-analyze verify of deploy/zpd.service; not started
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" = 0 ]; then
  echo "installing: ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
else
  echo "missing packages (some tests will skip): ${need[*]}" >&2
  echo "install with: sudo apt-get install ${need[*]}" >&2
fi
