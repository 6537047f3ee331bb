#!/usr/bin/env bash
# Build the Debian bookworm base of the guest root filesystem as a tarball, from Debian's
# repositories (the host's configured mirror), with mmdebstrap.
# Usage: build-base.sh OUT_TAR
set -euo pipefail
out=$1
here=$(cd "$(dirname "$0")" && pwd)
pkgs=$(grep -v '^#' "$here/packages.txt" | xargs | tr ' ' ',')
mirror=${FASTVM_DEBIAN_MIRROR:-http://deb.debian.org/debian}
security=${FASTVM_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
echo "rootfs: mmdebstrap bookworm minbase + $pkgs"
mmdebstrap --variant=minbase --include="$pkgs" \
  --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-exclude=/usr/share/info/*' \
  --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
  --format=tar bookworm "$out.tmp" \
  "deb $mirror bookworm main" "deb $mirror bookworm-updates main" \
  "deb $security bookworm-security main" 2>&1 | grep -E '^(E:|W:|I: (Retrieving|Extracting|Installing|Downloading))' | sed 's/^/rootfs: /' || true
test -f "$out.tmp" && test -s "$out.tmp"
mv "$out.tmp" "$out"
echo "rootfs: base tarball $(du -h "$out" | cut -f1)"
