/**
 * The store's SSH keys (migration 0004) on SQLite, and on PostgreSQL when
 * FASTVM_TEST_DATABASE_URL names a scratch database: per-org lists, the global fingerprint
 * uniqueness and the per-org limit, also under concurrent inserts.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import fs from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { SshKeyRecord } from '../src/domain/index.js';
import { createOrg } from '../src/services/orgs.js';
import { openStore, type Store } from '../src/store/index.js';
import { makeDataDir } from './helpers.js';

const DIALECTS: Array<[string, string | undefined]> = [['sqlite', undefined]];
if (process.env.FASTVM_TEST_DATABASE_URL) {
  DIALECTS.push(['postgres', process.env.FASTVM_TEST_DATABASE_URL]);
}

function keyRow(orgId: string, fingerprint = `SHA256:${randomBytes(32).toString('base64')}`) {
  const key: SshKeyRecord = {
    id: randomUUID(),
    orgId,
    fingerprint,
    publicKey: `ssh-ed25519 ${randomBytes(8).toString('base64')}`,
    name: null,
    createdAt: new Date().toISOString(),
  };
  return key;
}

describe.each(DIALECTS)('SSH keys in the store on %s', (_name, databaseUrl) => {
  let dataDir: string;
  let store: Store;

  beforeAll(async () => {
    dataDir = await makeDataDir();
    store = await openStore({ dataDir, ...(databaseUrl ? { databaseUrl } : {}) });
  });
  afterAll(async () => {
    await store.close();
    await fs.rm(dataDir, { recursive: true, force: true });
  });

  it('lists, deletes and isolates keys per org', async () => {
    const a = (await createOrg(store, `org-${randomUUID()}`)).id;
    const b = (await createOrg(store, `org-${randomUUID()}`)).id;
    const k1 = { ...keyRow(a), name: 'one' };
    const k2 = keyRow(a);
    expect(await store.insertSshKey(k1, 32)).toBe('inserted');
    expect(await store.insertSshKey(k2, 32)).toBe('inserted');
    expect(await store.listSshKeys(a)).toEqual(expect.arrayContaining([k1, k2]));
    expect(await store.listSshKeys(a)).toHaveLength(2);
    expect(await store.listSshKeys(b)).toEqual([]);
    expect(await store.deleteSshKey(b, k1.fingerprint)).toBeUndefined();
    expect(await store.deleteSshKey(a, k1.fingerprint)).toEqual(k1);
    expect(await store.listSshKeys(a)).toEqual([k2]);
  });

  it('keeps a fingerprint unique across orgs and the limit per org, under concurrency', async () => {
    const a = (await createOrg(store, `org-${randomUUID()}`)).id;
    const b = (await createOrg(store, `org-${randomUUID()}`)).id;
    const shared = keyRow(a).fingerprint;
    const raced = await Promise.all([
      store.insertSshKey(keyRow(a, shared), 32),
      store.insertSshKey(keyRow(b, shared), 32),
    ]);
    expect([...raced].sort()).toEqual(['duplicate', 'inserted']);

    const c = (await createOrg(store, `org-${randomUUID()}`)).id;
    const outcomes = await Promise.all(
      Array.from({ length: 10 }, () => store.insertSshKey(keyRow(c), 6)),
    );
    expect(outcomes.filter((o) => o === 'inserted')).toHaveLength(6);
    expect(outcomes.filter((o) => o === 'limit')).toHaveLength(4);
    expect(await store.listSshKeys(c)).toHaveLength(6);
  });
});
