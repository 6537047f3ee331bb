#!/usr/bin/env bash
# Build the FastVM guest kernel from Debian's linux-source-6.1.
# Usage: build.sh OUT_DIR   (writes OUT_DIR/vmlinux, OUT_DIR/config)
set -euo pipefail
out=$1
here=$(cd "$(dirname "$0")" && pwd)
src_tar=$(ls /usr/src/linux-source-6.1.tar.xz)
work=$(mktemp -d "${TMPDIR:-/tmp}/fastvm-kernel.XXXXXX")
trap 'rm -rf "$work"' EXIT
echo "kernel: unpacking $(basename "$src_tar")"
tar -xf "$src_tar" -C "$work"
cd "$work"/linux-source-6.1
make ARCH=x86_64 allnoconfig >/dev/null
scripts/kconfig/merge_config.sh -m .config "$here/microvm.config" >/dev/null
make ARCH=x86_64 olddefconfig >/dev/null
# Every option of the fragment must have survived olddefconfig (a typo or a missing dependency
# would silently drop it).
while IFS= read -r line; do
  case "$line" in CONFIG_*=y) grep -qx "$line" .config || { echo "kernel: $line did not stick" >&2; exit 1; } ;; esac
done < "$here/microvm.config"
echo "kernel: compiling with $(nproc) jobs (takes ~5 minutes on 2 cores)"
make ARCH=x86_64 -j"$(nproc)" vmlinux 2>&1 | awk '/^  (CC|LD|AR)/ { n++; if (n % 200 == 0) { printf "kernel: %d objects compiled (of ~1500)\n", n; fflush() } } /error/ { print; fflush() }'
test -f vmlinux
mkdir -p "$out"
strip -o "$out/vmlinux" vmlinux
cp .config "$out/config"
echo "kernel: done, $(du -h "$out/vmlinux" | cut -f1) vmlinux"
