#!/usr/bin/env bash
# Make a fresh clone runnable: npm dependencies (if missing or stale), the built SDK and CLI (if
# their sources changed), host packages and the guest image (guest/setup.sh, cached). Used by
# `npm start`, `npm test` and `npm run bench`.
set -euo pipefail
# Native addons (better-sqlite3) build against the system Node's headers: npm cannot download
# them here.
if [ -z "${npm_config_nodedir:-}" ] && [ -f /usr/include/node/node.h ]; then export npm_config_nodedir=/usr; fi
cd "$(dirname "$0")/.."
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "setup: installing npm dependencies"
  # No browser downloads: the console's tests use Debian's chromium through puppeteer-core.
  PUPPETEER_SKIP_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error
fi
node scripts/build.mjs --if-stale
bash guest/setup.sh --quiet-if-cached
