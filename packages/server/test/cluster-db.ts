/**
 * A scratch PostgreSQL database per test file for the cluster tests: created on the server of
 * FASTVM_TEST_DATABASE_URL (else the local socket, as scripts/test.sh and .ci/run set it up)
 * and dropped again. `why` says why there is none (the tests then skip, saying so).
 */
import { randomBytes } from 'node:crypto';

export interface ScratchDb {
  url: string;
  drop(): Promise<void>;
}

const DEFAULT_URL = 'postgres://root@/postgres?host=/var/run/postgresql';

/** Creates `fastvm_mh_<hex>`; resolves undefined (with the reason in `why`) without PostgreSQL. */
export async function createScratchDb(): Promise<{ db?: ScratchDb; why?: string }> {
  const base = process.env.FASTVM_TEST_DATABASE_URL ?? DEFAULT_URL;
  let pg: typeof import('pg');
  try {
    pg = await import('pg');
  } catch {
    return { why: 'the pg module is not installed' };
  }
  const admin = new pg.default.Client({ connectionString: base, connectionTimeoutMillis: 3000 });
  try {
    await admin.connect();
  } catch (err) {
    return { why: `no PostgreSQL at ${base} (${(err as Error).message})` };
  }
  const name = `fastvm_mh_${randomBytes(4).toString('hex')}`;
  // `postgres://root@/db?host=/socket` is no WHATWG URL (no host): replace the path by hand.
  const m = /^(postgres(?:ql)?:\/\/[^/?]*)(\/[^?]*)?(\?.*)?$/.exec(base);
  if (!m) {
    await admin.end();
    return { why: `cannot parse ${base}` };
  }
  try {
    await admin.query(`CREATE DATABASE ${name}`);
  } catch (err) {
    await admin.end();
    return { why: `cannot create a database (${(err as Error).message})` };
  }
  return {
    db: {
      url: `${m[1]}/${name}${m[3] ?? ''}`,
      async drop() {
        await admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`).catch(() => {});
        await admin.end().catch(() => {});
      },
    },
  };
}
