#!/usr/bin/env bash
# `npm test`: make the clone runnable (scripts/ensure.sh), point the PostgreSQL store tests at a
# scratch database when a local PostgreSQL runs and none was given, then run the whole suite.
# Extra arguments go to vitest (e.g. `npm test -- packages/server`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure.sh
if [ -z "${FASTVM_TEST_DATABASE_URL:-}" ] && command -v pg_lsclusters >/dev/null \
  && [ "$(id -u)" = 0 ]; then
  cluster=$(pg_lsclusters --no-header | awk '$4 == "online" { print $1 " " $2; exit }')
  if [ -n "$cluster" ] && su postgres -c "psql -qc \"DO \\\$\\\$ BEGIN CREATE ROLE root SUPERUSER LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END \\\$\\\$\"" >/dev/null 2>&1 \
    && su postgres -c "dropdb --if-exists fastvm_test && createdb -O root fastvm_test" >/dev/null 2>&1; then
    export FASTVM_TEST_DATABASE_URL="postgres://root@/fastvm_test?host=/var/run/postgresql"
    echo "test: PostgreSQL store tests use the local cluster ($cluster), database fastvm_test"
  fi
fi
exec npx vitest run "$@"
