#!/usr/bin/env bash
# Builds the zp:dev image FROM scratch: static zp/zpd/zpc (CGO_ENABLED=0)
# and a minimal busybox rootfs (Debian's busybox-static), nothing pulled.
set -euo pipefail
cd "$(dirname "$0")/.."
out=deploy
rm -rf "$out/bin" "$out/rootfs"
mkdir -p "$out/bin"
CGO_ENABLED=0 go build -trimpath -o "$out/bin/" ./cmd/...
if [ ! -x /bin/busybox ] || ! file /bin/busybox 2>/dev/null | grep -q static; then
  if ! dpkg -s busybox-static >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends busybox-static >/dev/null
  fi
fi
r="$out/rootfs"
mkdir -p "$r/bin" "$r/etc" "$r/root" "$r/tmp" "$r/var/lib/zpd" "$r/keys"
chmod 1777 "$r/tmp"
cp /bin/busybox "$r/bin/busybox"
for app in sh cat ls echo hostname sleep sha256sum head tail wc id env tr seq mkdir rm cp mv printf true false kill ps uname date du grep sed touch chmod; do
  ln -sf busybox "$r/bin/$app"
done
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$r/etc/passwd"
printf 'root:x:0:\n' >"$r/etc/group"
docker build -q -t zp:dev "$out" >/dev/null
echo "built zp:dev"
