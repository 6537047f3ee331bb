/**
 * SQLite dialect (the default): better-sqlite3, WAL journal, one connection per process.
 * @module
 */
import Database from 'better-sqlite3';
import { Kysely, SqliteDialect } from 'kysely';
import type { Database as Schema } from './schema.js';
import { KyselyStore } from './kysely-store.js';

/** Options of `openSqliteStore`. */
export interface SqliteStoreOptions {
  /** Database file, or `:memory:`. */
  path: string;
  /**
   * `NORMAL` (default) keeps every committed transaction across a process crash (kill -9) in WAL
   * mode; `FULL` also across power loss, at the cost of an fsync per commit.
   */
  synchronous?: 'NORMAL' | 'FULL';
}

/** Opens (creating if needed) a SQLite database. Call `migrate()` before use. */
export function openSqliteStore(opts: SqliteStoreOptions): KyselyStore {
  const sqlite = new Database(opts.path);
  sqlite.pragma('journal_mode = WAL');
  sqlite.pragma(`synchronous = ${opts.synchronous ?? 'NORMAL'}`);
  sqlite.pragma('foreign_keys = ON');
  // Admin commands run in other processes against the same file; wait for their locks.
  sqlite.pragma('busy_timeout = 5000');
  const db = new Kysely<Schema>({ dialect: new SqliteDialect({ database: sqlite }) });
  return new KyselyStore(db, 'sqlite');
}
