/**
 * SQLite dialect (the default): better-sqlite3, WAL journal, one connection per process.
 * @module
 */
import Database from 'better-sqlite3';
import { Kysely, SqliteDialect, type SqliteDatabase, type SqliteStatement } from 'kysely';
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
  const db = new Kysely<Schema>({
    dialect: new SqliteDialect({ database: withStatementCache(sqlite) }),
  });
  return new KyselyStore(db, 'sqlite');
}

/** Prepared statements kept per connection (Kysely's SQL has its values as parameters). */
const STATEMENT_CACHE_MAX = 512;

/**
 * better-sqlite3 behind a cache of prepared statements: Kysely prepares every query it runs, and
 * parsing the SQL again cost more than running it (a third of the server's CPU on `GET
 * /v1/vms/{id}`). Least recently used statements go first; every statement runs to completion
 * before the next call (no streaming), so one statement object is never busy twice.
 */
function withStatementCache(db: Database.Database): SqliteDatabase {
  const cache = new Map<string, SqliteStatement>();
  return {
    close: () => db.close(),
    prepare(sql: string): SqliteStatement {
      let statement = cache.get(sql);
      if (statement) {
        cache.delete(sql);
      } else {
        statement = db.prepare(sql) as unknown as SqliteStatement;
        if (cache.size >= STATEMENT_CACHE_MAX) cache.delete(cache.keys().next().value!);
      }
      cache.set(sql, statement);
      return statement;
    },
  };
}
