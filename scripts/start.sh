#!/usr/bin/env bash
# `npm start`: set up what is missing, then serve the FastVM API (default 127.0.0.1:8080).
# Extra arguments go to `fastvm-server serve` (e.g. `npm start -- --port 9000`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure.sh
exec node --import tsx packages/server/src/main.ts serve "$@"
