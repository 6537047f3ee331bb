/**
 * PostgreSQL dialect (`FASTVM_DATABASE_URL=postgres://…`). Same schema and queries as SQLite;
 * `withOrgLock` relies on the org row lock taken by its first UPDATE.
 * @module
 */
import { Kysely, PostgresDialect } from 'kysely';
import type { Database as Schema } from './schema.js';
import { KyselyStore } from './kysely-store.js';

/** Options of `openPostgresStore`. */
export interface PostgresStoreOptions {
  connectionString: string;
  /** Pool size (default 10). */
  maxConnections?: number;
}

/** Connects to PostgreSQL. `pg` is loaded only when this dialect is used. */
export async function openPostgresStore(opts: PostgresStoreOptions): Promise<KyselyStore> {
  const pg = await import('pg');
  const Pool = pg.default.Pool;
  const pool = new Pool({
    connectionString: opts.connectionString,
    max: opts.maxConnections ?? 10,
  });
  // An idle connection the server ends (a restart, an administrator) would otherwise be an
  // uncaught error; the pool replaces it at the next query.
  pool.on('error', () => {});
  const db = new Kysely<Schema>({ dialect: new PostgresDialect({ pool }) });
  return new KyselyStore(db, 'postgres');
}
