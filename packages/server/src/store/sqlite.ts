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
  const writes = { count: 0 };
  const db = new Kysely<Schema>({
    dialect: new SqliteDialect({ database: withStatementCache(sqlite, writes) }),
  });
  // Another process (an admin command) committing changes `data_version` of this connection;
  // read at most every OTHER_WRITERS_MS (it cost as much as the lookup it saves).
  const dataVersion = sqlite.prepare('PRAGMA data_version').pluck();
  let version = 0;
  let versionAt = 0;
  return new KyselyStore(db, 'sqlite', undefined, {
    generation: () => {
      const now = performance.now();
      if (now - versionAt >= OTHER_WRITERS_MS) {
        version = dataVersion.get() as number;
        versionAt = now;
      }
      return version * 2 ** 32 + writes.count;
    },
  });
}

/**
 * How soon a write by another process (the admin commands: orgs, keys, quotas — they never write
 * VM rows, the only rows the read cache holds) is seen by the read cache.
 */
const OTHER_WRITERS_MS = 50;

/** Prepared statements kept per connection (Kysely's SQL has its values as parameters). */
const STATEMENT_CACHE_MAX = 512;

/**
 * better-sqlite3 behind a cache of prepared statements: Kysely prepares every query it runs, and
 * parsing the SQL again cost more than running it (a third of the server's CPU on `GET
 * /v1/vms/{id}`). Least recently used statements go first; every statement runs to completion
 * before the next call (no streaming), so one statement object is never busy twice.
 */
function withStatementCache(db: Database.Database, writes: { count: number }): SqliteDatabase {
  const cache = new Map<string, SqliteStatement>();
  return {
    close: () => db.close(),
    prepare(sql: string): SqliteStatement {
      let statement = cache.get(sql);
      if (statement) {
        cache.delete(sql);
      } else {
        statement = countingWrites(db.prepare(sql), writes);
        if (cache.size >= STATEMENT_CACHE_MAX) cache.delete(cache.keys().next().value!);
      }
      cache.set(sql, statement);
      return statement;
    },
  };
}

/**
 * Counts the statements that may write (all but the read-only ones; an `UPDATE … RETURNING` is a
 * reader too), before they run: the store's read cache (`KyselyStore`'s `generation`) drops what
 * it holds whenever the count moved.
 */
function countingWrites(raw: Database.Statement, writes: { count: number }): SqliteStatement {
  const statement = raw as unknown as SqliteStatement;
  if (raw.readonly) return statement;
  return {
    reader: statement.reader,
    all: (parameters) => {
      writes.count++;
      return statement.all(parameters);
    },
    run: (parameters) => {
      writes.count++;
      return statement.run(parameters);
    },
    iterate: (parameters) => {
      writes.count++;
      return statement.iterate(parameters);
    },
  };
}
