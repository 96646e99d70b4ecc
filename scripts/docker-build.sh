#!/usr/bin/env bash
# Builds the images docker-compose.yml runs, FROM scratch, nothing pulled:
#   $ZP_IMAGE (default zp:dev): static zp/zpd/zpc (CGO_ENABLED=0) and a
#     minimal busybox rootfs (Debian's busybox-static);
#   $PROM_IMAGE (default zp-prometheus:dev): Debian's prometheus binary (from
#     the installed package, else the .deb fetched with `apt-get download` and
#     unpacked, never installed: no service, no user) and the libraries ldd
#     finds for it (it links the C library).
set -euo pipefail
cd "$(dirname "$0")/.."
ZP_IMAGE=${ZP_IMAGE:-zp:dev}
PROM_IMAGE=${PROM_IMAGE:-zp-prometheus:dev}
export DEBIAN_FRONTEND=noninteractive

# apt_fetch CMD…: runs an apt command; if it fails (no package lists yet on a
# fresh machine), runs `apt-get update` once and tries again.
apt_fetch() { "$@" >/dev/null 2>&1 || { apt-get update -qq && "$@" >/dev/null; }; }

# dbuild TAG DIR: docker build, quiet unless it fails.
dbuild() {
  local out
  out=$(docker build -q -t "$1" "$2" 2>&1) || { printf '%s\n' "$out" >&2; echo "docker-build: building $1 failed" >&2; exit 1; }
}

build_zp() {
  local out=deploy r=deploy/rootfs app
  rm -rf "$out/bin" "$r"
  mkdir -p "$out/bin"
  CGO_ENABLED=0 go build -trimpath -o "$out/bin/" ./cmd/...
  if [ ! -x /bin/busybox ] || ! file /bin/busybox 2>/dev/null | grep -q static; then
    dpkg -s busybox-static >/dev/null 2>&1 || apt_fetch apt-get install -y -qq --no-install-recommends busybox-static
  fi
  mkdir -p "$r/bin" "$r/etc" "$r/root" "$r/tmp" "$r/var/lib/zpd" "$r/keys" "$r/sd"
  chmod 1777 "$r/tmp"
  cp /bin/busybox "$r/bin/busybox"
  for app in sh cat ls echo hostname sleep sha256sum head tail wc id env tr seq mkdir rm cp mv printf true false kill ps uname date du grep sed touch chmod wget cmp find sort xargs; do
    ln -sf busybox "$r/bin/$app"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\n' >"$r/etc/passwd"
  printf 'root:x:0:\n' >"$r/etc/group"
  dbuild "$ZP_IMAGE" "$out"
  echo "built $ZP_IMAGE"
}

build_prometheus() {
  local d=deploy/prometheus src bin deb lib
  local r=$d/rootfs cache=$d/cache
  rm -rf "$r" "$d/data"
  mkdir -p "$r/etc" "$r/tmp" "$r/sd" "$d/data" "$cache"
  chmod 1777 "$r/tmp"
  if dpkg -s prometheus >/dev/null 2>&1; then
    src=/
  else
    deb=$(ls "$cache"/prometheus_*.deb 2>/dev/null | tail -1 || true)
    if [ -z "$deb" ]; then
      (cd "$cache" && apt_fetch apt-get download prometheus)
      deb=$(ls "$cache"/prometheus_*.deb | tail -1)
    fi
    src=$cache/unpacked
    rm -rf "$src" && dpkg-deb -x "$deb" "$src"
  fi
  bin=$src/usr/bin/prometheus
  [ -x "$bin" ] || { echo "docker-build: no prometheus binary at $bin" >&2; exit 1; }
  mkdir -p "$r/usr/bin" && cp "$bin" "$r/usr/bin/prometheus"
  # Every library ldd resolves (libc.so.6) and the dynamic loader, at the same
  # paths (cp -L: the files, not the symlinks).
  for lib in $(ldd "$bin" | sed -n 's/.*=> \(\/[^ ]*\).*/\1/p; s/^[[:space:]]*\(\/[^ ]*\) (0x.*/\1/p'); do
    mkdir -p "$r$(dirname "$lib")" && cp -L "$lib" "$r$lib"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n' >"$r/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$r/etc/group"
  printf 'hosts: files dns\n' >"$r/etc/nsswitch.conf"
  dbuild "$PROM_IMAGE" "$d"
  echo "built $PROM_IMAGE ($("$bin" --version 2>&1 | head -1))"
}

build_zp
build_prometheus
