#!/usr/bin/env bash
# Sets up packages/python/.venv: a virtual environment with the SDK installed the way a user
# installs it (`pip install ./packages/python`, not editable) plus the test tools (pytest,
# pytest-asyncio, mypy). Idempotent: when the venv already holds the current sources it returns at
# once; when only the SDK's sources changed it reinstalls just the SDK.
#
# Used by .ci/run, by `npm test` (packages/python/test/python.test.ts) and by `npm run bench`.
#
# Package index: when pip's configuration names local mirrors (file:// index URLs that exist on
# this machine), they are used as the only indexes, so a machine whose default index is unreachable
# does not spend minutes in connection retries. If that install fails (a partial mirror), or there
# is no local mirror, pip runs with its own configuration (the real index).
#
# Environment: FASTVM_PYTHON (interpreter, default python3), FASTVM_PY_VENV (default
# packages/python/.venv).
set -euo pipefail
pkg=$(cd "$(dirname "$0")/.." && pwd)
venv=${FASTVM_PY_VENV:-$pkg/.venv}
python=${FASTVM_PYTHON:-python3}
quiet=(--quiet --disable-pip-version-check --no-input)

if ! command -v "$python" >/dev/null; then
  echo "python setup: $python not found (set FASTVM_PYTHON or install Python 3.10+)" >&2
  exit 1
fi
if ! "$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)'; then
  echo "python setup: $python is $("$python" --version 2>&1); the SDK needs 3.10 or later" >&2
  exit 1
fi

# Fingerprints: the interpreter + pyproject.toml (dependencies), and the SDK's sources.
deps_key=$({ "$python" -c 'import sys; print(sys.executable, sys.version)'; cat "$pkg/pyproject.toml"; } | sha256sum | cut -c1-16)
src_key=$(cd "$pkg" && find src README.md -type f ! -name '*.pyc' -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)
stamp=$venv/.fastvm-setup

if [ -f "$stamp" ] && [ "$(sed -n 1p "$stamp")" = "$deps_key" ] && [ -x "$venv/bin/python" ]; then
  if [ "$(sed -n 2p "$stamp")" = "$src_key" ]; then exit 0; fi
  mode=sdk-only
else
  mode=full
fi

# Local mirrors named by pip's configuration (files, environment), in order.
mirrors=()
while IFS= read -r url; do
  dir=${url#file://}
  if [ -d "$dir" ]; then mirrors+=("$url"); fi
done < <("$python" -m pip config list 2>/dev/null |
  sed -n -E "s/^[^=]*\.(extra-)?index-url='(.*)'$/\2/p" | tr ' ' '\n' | grep '^file://' || true)

# pip, minus its warning for each package a mirror does not hold.
pip() {
  "$venv/bin/python" -m pip "$@" 2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2)
}

pip_install() {
  if [ ${#mirrors[@]} -gt 0 ]; then
    local extra="${mirrors[*]:1}"
    if PIP_INDEX_URL=${mirrors[0]} PIP_EXTRA_INDEX_URL=$extra pip install "${quiet[@]}" "$@"; then
      return 0
    fi
    echo "python setup: the local package mirror could not satisfy pip; trying the configured index" >&2
  fi
  pip install "${quiet[@]}" "$@"
}

if [ "$mode" = full ]; then
  echo "python setup: creating $venv"
  if ! "$python" -c 'import ensurepip, venv' 2>/dev/null; then
    # Debian ships venv/ensurepip separately.
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
    else
      echo "python setup: $python has no venv/ensurepip module (Debian: apt-get install python3-venv)" >&2
      exit 1
    fi
  fi
  rm -rf "$venv"
  "$python" -m venv "$venv"
  pip_install "$pkg[dev]"
else
  echo "python setup: reinstalling the SDK from $pkg"
  pip_install --no-deps --force-reinstall "$pkg"
fi
printf '%s\n%s\n' "$deps_key" "$src_key" >"$stamp"
