#!/usr/bin/env bash
# FastVM setup: installs missing host packages and builds the guest (agent, kernel, root
# filesystem) into a cache keyed by the hash of each part's inputs. Idempotent: a second run only
# hashes a few files and exits.
#
#   guest/setup.sh                    install + build what is missing, with progress
#   guest/setup.sh --quiet-if-cached  same, but print nothing when everything is cached
#   guest/setup.sh --deps-only        install host packages (and add the fastvm-qemu user) only
#
# Output: $FASTVM_CACHE_DIR (default ~/.cache/fastvm)/guest.json naming the kernel, root
# filesystem image and agent that the runtime boots.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${FASTVM_CACHE_DIR:-$HOME/.cache/fastvm}
quiet=0 deps_only=0
for arg in "$@"; do
  case "$arg" in
    --quiet-if-cached) quiet=1 ;;
    --deps-only) deps_only=1 ;;
    *) echo "setup: unknown argument $arg" >&2; exit 2 ;;
  esac
done

# Debian packages the host needs: QEMU, the kernel source and its build tools, the rootfs
# builder, the static agent toolchain, and networking tools; the OpenSSH client and tmux drive
# the SSH gateway's tests, Chromium (and a font, which it only recommends) the web console's,
# h2load (nghttp2-client) the bench's API load. Image imports: zstd (zstd layers); the image tests
# run Debian's docker-registry on 127.0.0.1 (htpasswd from apache2-utils for its basic auth) with
# images made from busybox-static.
host_packages=(qemu-system-x86 qemu-utils linux-source-6.1 mmdebstrap musl-tools e2fsprogs
  build-essential bc flex bison libelf-dev libssl-dev xz-utils cpio nftables iproute2 curl
  openssh-client tmux chromium fonts-liberation nghttp2-client zstd docker-registry apache2-utils
  busybox-static)

# QEMU comes from bookworm-backports, pinned to 10.0.x (with the SeaBIOS it needs): its TCG keys translated code by physical
# address (position-independent translation blocks), so a command's shared libraries are
# translated once per VM instead of once per process (ASLR maps them elsewhere every time). A
# warm `true` in a guest takes ~12 ms instead of ~35 ms. Bookworm's QEMU 7.2 still works (the
# runtime keys its golden snapshots by QEMU version) if the backport cannot be installed.
qemu_packages=(qemu-system-x86 qemu-system-common qemu-system-data qemu-utils)
qemu_pin='1:10.0.*'
backports_list=/etc/apt/sources.list.d/fastvm-bookworm-backports.sources
backports_pref=/etc/apt/preferences.d/fastvm-qemu

is_bookworm() { grep -qs '^VERSION_CODENAME=bookworm' /etc/os-release; }

# The Debian mirror this host's bookworm suite comes from (backports lives on the same mirror).
debian_mirror() {
  local uri
  uri=$(awk 'BEGIN { RS = ""; FS = "\n" }
    { uris = ""; ok = 0
      for (i = 1; i <= NF; i++) {
        if ($i ~ /^URIs:/) { sub(/^URIs:[ \t]*/, "", $i); split($i, u, /[ \t]+/); uris = u[1] }
        if ($i ~ /^Suites:/) { n = split($i, s, /[ \t]+/); for (j = 2; j <= n; j++) if (s[j] == "bookworm") ok = 1 }
      }
      if (ok && uris != "") { print uris; exit } }' /etc/apt/sources.list.d/*.sources 2>/dev/null)
  [ -n "$uri" ] || uri=$(awk '$1 == "deb" { for (i = 2; i < NF; i++) if ($i !~ /^\[/ && $(i + 1) == "bookworm") { print $i; exit } }' \
    /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null)
  echo "${uri:-http://deb.debian.org/debian}"
}

# Writes the backports source and the version pin; prints "changed" when it wrote something.
add_backports() {
  local sudo=$1 wrote=
  if ! grep -qsr 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    printf '%s\n' 'Types: deb' "URIs: $(debian_mirror)" 'Suites: bookworm-backports' \
      'Components: main' 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg' |
      $sudo tee "$backports_list" >/dev/null
    wrote=1
  fi
  local pref
  pref=$(printf '%s\n' "Package: ${qemu_packages[*]}" "Pin: version $qemu_pin" 'Pin-Priority: 990' '' \
    'Package: seabios' 'Pin: release n=bookworm-backports' 'Pin-Priority: 990')
  if [ "$(cat "$backports_pref" 2>/dev/null)" != "$pref" ]; then
    printf '%s\n' "$pref" | $sudo tee "$backports_pref" >/dev/null
    wrote=1
  fi
  [ -z "$wrote" ] || echo changed
}

install_deps() {
  local missing=() sudo= updated=0
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  for p in "${host_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if is_bookworm; then
    if [ -n "$(add_backports "$sudo")" ]; then
      # A mirror without the suite only costs the backport: bookworm's QEMU is installed then.
      $sudo apt-get update -qq || echo "setup: warning: apt-get update failed; QEMU may stay at bookworm's version" >&2
      updated=1
    fi
    # shellcheck disable=SC2053 # $qemu_pin is a glob on purpose
    for p in "${qemu_packages[@]}"; do
      [[ "$(dpkg-query -W -f='${Version}' "$p" 2>/dev/null)" == $qemu_pin ]] || missing+=("$p" seabios)
    done
  fi
  [ ${#missing[@]} -eq 0 ] && return 0
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  echo "setup: installing ${missing[*]}"
  [ "$updated" -eq 1 ] || $sudo apt-get update -qq || echo "setup: warning: apt-get update failed" >&2
  if ! DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
    # The backport may be gone from the mirror: install the rest with bookworm's QEMU.
    echo "setup: warning: QEMU $qemu_pin from bookworm-backports could not be installed; using bookworm's" >&2
    $sudo rm -f "$backports_pref"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  echo "setup: $(qemu-system-x86_64 --version | head -1)"
  # docker-registry is for the tests, which start their own on 127.0.0.1: not the system
  # service Debian enables (it would listen on :5000 on every interface).
  if command -v systemctl >/dev/null && systemctl is-enabled docker-registry >/dev/null 2>&1; then
    $sudo systemctl disable --now docker-registry >/dev/null 2>&1 || true
  fi
}

hash_of() { cat "$@" | sha256sum | cut -c1-16; }

# The unprivileged user every VM's QEMU runs as (packages/runtime/src/confine.ts); the server
# also creates it at start when it is missing.
qemu_user=${FASTVM_QEMU_USER:-fastvm-qemu}
add_qemu_user() {
  getent passwd "$qemu_user" >/dev/null && return 0
  local sudo=
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  echo "setup: adding the system user $qemu_user (QEMU runs as it)"
  $sudo useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin \
    --user-group "$qemu_user"
}

install_deps
add_qemu_user
[ "$deps_only" -eq 1 ] && exit 0

kernel_hash=$(
  { cat "$repo/guest/kernel/microvm.config" "$repo/guest/kernel/build.sh"
    dpkg-query -W -f='${Version}' linux-source-6.1; } | sha256sum | cut -c1-16
)
base_hash=$(hash_of "$repo/guest/rootfs/packages.txt" "$repo/guest/rootfs/build-base.sh")
agent_hash=$(hash_of "$repo"/agent/Makefile "$repo"/agent/src/*)
overlay_hash=$(cd "$repo/guest/rootfs" && find overlay -type f | sort | xargs cat make-image.sh | sha256sum | cut -c1-16)
shim_hash=$(hash_of "$repo"/packages/runtime/native/*.c)
image_hash=$(echo "$base_hash $agent_hash $overlay_hash" | sha256sum | cut -c1-16)
disk_gib=10

kernel=$cache/kernel/$kernel_hash/vmlinux
base=$cache/rootfs-base/$base_hash/rootfs.tar
agent=$cache/agent/$agent_hash/fastvm-agent
image=$cache/image/$image_hash/rootfs.ext4
memshim=$cache/native/$shim_hash/fastvm-memshim.so
memdelta=$cache/native/$shim_hash/fastvm-memdelta
tapfd=$cache/native/$shim_hash/fastvm-tapfd
manifest=$cache/guest.json

if [ -f "$kernel" ] && [ -f "$image" ] && [ -f "$agent" ] && [ -f "$memshim" ] && [ -f "$tapfd" ] &&
  [ -f "$manifest" ] && grep -q "$memshim" "$manifest" && grep -q "$tapfd" "$manifest" &&
  grep -q "\"imageId\": \"$kernel_hash-$image_hash\"" "$manifest"; then
  [ "$quiet" -eq 1 ] || echo "setup: guest image $kernel_hash-$image_hash is cached in $cache"
  exit 0
fi

echo "setup: building the guest into $cache (first run takes ~8-10 minutes on 2 cores, mostly the kernel; later runs are cached)"
started=$(date +%s)

if [ ! -f "$agent" ]; then
  echo "setup: [1/5] guest agent"
  make -s -C "$repo/agent" >/dev/null
  mkdir -p "$(dirname "$agent")"
  cp "$repo/agent/build/fastvm-agent" "$agent.tmp" && mv "$agent.tmp" "$agent"
else echo "setup: [1/5] guest agent (cached)"; fi

if [ ! -f "$memshim" ] || [ ! -f "$memdelta" ] || [ ! -f "$tapfd" ]; then
  echo "setup: [2/5] host helpers (memshim, memdelta, tapfd)"
  mkdir -p "$(dirname "$memshim")"
  gcc -shared -fPIC -O2 -Wall -Wextra -Werror -pthread -o "$memshim.tmp" "$repo/packages/runtime/native/memshim.c"
  gcc -O2 -Wall -Wextra -Werror -o "$memdelta.tmp" "$repo/packages/runtime/native/memdelta.c"
  # Static: QEMU's LD_PRELOAD (the memshim) must not load into it.
  gcc -static -O2 -Wall -Wextra -Werror -o "$tapfd.tmp" "$repo/packages/runtime/native/tapfd.c"
  mv "$memshim.tmp" "$memshim"
  mv "$memdelta.tmp" "$memdelta"
  mv "$tapfd.tmp" "$tapfd"
else echo "setup: [2/5] host helpers (cached)"; fi

if [ ! -f "$base" ]; then
  echo "setup: [3/5] Debian root filesystem (mmdebstrap)"
  mkdir -p "$(dirname "$base")"
  bash "$repo/guest/rootfs/build-base.sh" "$base"
else echo "setup: [3/5] Debian root filesystem (cached)"; fi

if [ ! -f "$image" ]; then
  echo "setup: [4/5] ext4 base image"
  mkdir -p "$(dirname "$image")"
  bash "$repo/guest/rootfs/make-image.sh" "$base" "$agent" "$disk_gib" "$image"
else echo "setup: [4/5] ext4 base image (cached)"; fi

if [ ! -f "$kernel" ]; then
  echo "setup: [5/5] guest kernel (Linux 6.1 from linux-source-6.1)"
  bash "$repo/guest/kernel/build.sh" "$cache/kernel/$kernel_hash.tmp"
  rm -rf "$cache/kernel/$kernel_hash"
  mv "$cache/kernel/$kernel_hash.tmp" "$cache/kernel/$kernel_hash"
else echo "setup: [5/5] guest kernel (cached)"; fi

cat > "$manifest.tmp" <<JSON
{
  "imageId": "$kernel_hash-$image_hash",
  "kernel": "$kernel",
  "rootfs": "$image",
  "rootfsGiB": $disk_gib,
  "agent": "$agent",
  "memshim": "$memshim",
  "memdelta": "$memdelta",
  "tapfd": "$tapfd",
  "builtAt": "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
}
JSON
mv "$manifest.tmp" "$manifest"
echo "setup: guest ready in $(($(date +%s) - started)) s: $manifest"
