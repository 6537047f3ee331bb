#!/usr/bin/env bash
# Turn the base tarball plus the agent into the read-only raw ext4 base image every VM's qcow2
# overlay points at. The filesystem spans DISK_GIB (sparse) so the default disk needs no resize.
# Usage: make-image.sh BASE_TAR AGENT_BIN DISK_GIB OUT_EXT4
set -euo pipefail
base=$1 agent=$2 gib=$3 out=$4
here=$(cd "$(dirname "$0")" && pwd)
stage=$(mktemp -d "${TMPDIR:-/tmp}/fastvm-rootfs.XXXXXX")
trap 'rm -rf "$stage"' EXIT
tar -xf "$base" -C "$stage"
install -D -m 0755 "$agent" "$stage/usr/local/sbin/fastvm-agent"
cp -a "$here/overlay/." "$stage/"
ln -sf /proc/self/mounts "$stage/etc/mtab"
# Identity files live on tmpfs (the agent seeds /run/fastvm from /usr/local/share/fastvm at boot
# and rewrites them for every new VM).
for f in hostname hosts machine-id; do ln -sfn "/run/fastvm/$f" "$stage/etc/$f"; done
rm -f "$out.tmp"
truncate -s "${gib}G" "$out.tmp"
# One inode per 32 KiB; inode tables are zeroed by the discard of the sparse file, so the guest
# never runs ext4lazyinit against its copy-on-write overlay.
mkfs.ext4 -q -F -L fastvm-root -i 32768 -m 0 -E lazy_itable_init=1,lazy_journal_init=1 -d "$stage" "$out.tmp"
mv "$out.tmp" "$out"
echo "rootfs: image $(du -h "$out" | cut -f1) allocated, ${gib} GiB apparent"
