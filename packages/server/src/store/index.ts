/**
 * Store selection: PostgreSQL when a `postgres://` URL is configured, SQLite otherwise.
 * @module
 */
import path from 'node:path';
import { openPostgresStore } from './postgres.js';
import { openSqliteStore } from './sqlite.js';
import type { Store } from './store.js';

export type {
  Store,
  OrgTx,
  QuotaOverrides,
  VmPatch,
  VmTransitionPatch,
  SnapshotHolder,
  SnapshotPatch,
  SnapshotTransitionPatch,
} from './store.js';
export { KyselyStore } from './kysely-store.js';
export { openSqliteStore } from './sqlite.js';
export { openPostgresStore } from './postgres.js';
export { MIGRATION_NAMES } from './migrations.js';

/** Options of `openStore`. */
export interface OpenStoreOptions {
  dataDir: string;
  /** `postgres://…` / `postgresql://…`; otherwise SQLite at `<dataDir>/fastvm.db`. */
  databaseUrl?: string;
  sqliteSynchronous?: 'NORMAL' | 'FULL';
}

/** Opens the configured store and applies pending migrations. */
export async function openStore(opts: OpenStoreOptions): Promise<Store> {
  const url = opts.databaseUrl;
  const store =
    url && /^postgres(ql)?:\/\//.test(url)
      ? await openPostgresStore({ connectionString: url })
      : openSqliteStore({
          path: path.join(opts.dataDir, 'fastvm.db'),
          ...(opts.sqliteSynchronous ? { synchronous: opts.sqliteSynchronous } : {}),
        });
  try {
    await store.migrate();
  } catch (err) {
    await store.close().catch(() => {});
    throw err;
  }
  return store;
}
