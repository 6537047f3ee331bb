/**
 * A scratch PostgreSQL database of its own for one test file, on the server that
 * FASTVM_TEST_DATABASE_URL names (`npm test` and CI set it when a local PostgreSQL runs): created
 * empty, dropped by `drop()`. Undefined without FASTVM_TEST_DATABASE_URL.
 */
import { randomBytes } from 'node:crypto';

export interface ScratchDatabase {
  readonly url: string;
  drop(): Promise<void>;
}

/** The same server and credentials as `url`, another database. */
function withDatabase(url: string, name: string): string {
  const [base = '', query] = url.split('?', 2);
  const swapped = base.replace(/\/[^/]*$/, `/${name}`);
  return query === undefined ? swapped : `${swapped}?${query}`;
}

export async function scratchDatabase(prefix: string): Promise<ScratchDatabase | undefined> {
  const admin = process.env.FASTVM_TEST_DATABASE_URL;
  if (!admin) return undefined;
  const pg = (await import('pg')).default;
  const name = `${prefix}_${randomBytes(4).toString('hex')}`;
  const run = async (sql: string) => {
    const client = new pg.Client({ connectionString: admin });
    await client.connect();
    try {
      await client.query(sql);
    } finally {
      await client.end();
    }
  };
  await run(`CREATE DATABASE ${name}`);
  return {
    url: withDatabase(admin, name),
    drop: () => run(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`),
  };
}
