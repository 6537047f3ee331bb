import { randomUUID } from 'node:crypto';
import fs from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createApiKey, createOrg, ensureBootstrapKey, hashApiKey } from '../src/auth.js';
import type { VmRecord } from '../src/domain.js';
import { normalizeName } from '../src/services/names.js';
import { MIGRATION_NAMES, openStore, type Store } from '../src/store/index.js';
import { makeDataDir } from './helpers.js';

/**
 * The store contract, run against SQLite always and against PostgreSQL when
 * FASTVM_TEST_DATABASE_URL points at a scratch database.
 */
const DIALECTS: Array<[string, string | undefined]> = [['sqlite', undefined]];
if (process.env.FASTVM_TEST_DATABASE_URL)
  DIALECTS.push(['postgres', process.env.FASTVM_TEST_DATABASE_URL]);

function vmRow(orgId: string, over: Partial<VmRecord> = {}): VmRecord {
  const now = new Date().toISOString();
  return {
    id: randomUUID(),
    orgId,
    name: 'vm',
    machine: 'c1m2',
    cpu: 1,
    memoryMiB: 2048,
    diskGiB: 10,
    status: 'running',
    error: null,
    sourceSnapshotId: null,
    sourceName: '',
    firewall: { mode: 'restricted', ingress: [] },
    metadata: {},
    publicIpv6: null,
    createdAt: now,
    updatedAt: now,
    deletedAt: null,
    ...over,
  };
}

describe.each(DIALECTS)('store on %s', (_name, databaseUrl) => {
  let dataDir: string;
  let store: Store;
  let orgId: string;

  beforeAll(async () => {
    dataDir = await makeDataDir();
    store = await openStore({ dataDir, ...(databaseUrl ? { databaseUrl } : {}) });
    orgId = (await createOrg(store, `org-${randomUUID()}`)).id;
  });
  afterAll(async () => {
    await store.close();
    await fs.rm(dataDir, { recursive: true, force: true });
  });

  it('migrations are idempotent', async () => {
    expect(MIGRATION_NAMES.length).toBeGreaterThan(0);
    expect(await store.migrate()).toEqual([]);
  });

  it('finds orgs by id or name and keys by hash only', async () => {
    const org = await store.getOrg(orgId);
    expect(await store.findOrg(org!.name)).toEqual(org);
    const { key, record } = await createApiKey(store, orgId, { name: 'ci' });
    expect(key).toMatch(/^fvm_[A-Za-z0-9_-]{32}$/);
    expect(await store.findActiveApiKey(hashApiKey(key))).toMatchObject({ id: record.id, orgId });
    expect(await store.revokeApiKey(record.prefix, new Date().toISOString())).toBe(1);
    expect(await store.findActiveApiKey(hashApiKey(key))).toBeUndefined();
    expect(await store.revokeApiKey(record.id, new Date().toISOString())).toBe(0);
  });

  it('quota overrides can be set per dimension and reset to default', async () => {
    expect(await store.getQuotaOverrides(orgId)).toEqual({});
    await store.setQuotaOverrides(orgId, { vcpu: 8, snapshotCount: 3 });
    await store.setQuotaOverrides(orgId, { memoryMiB: 1024 });
    expect(await store.getQuotaOverrides(orgId)).toMatchObject({
      vcpu: 8,
      memoryMiB: 1024,
      snapshotCount: 3,
    });
    await store.setQuotaOverrides(orgId, { vcpu: null });
    expect((await store.getQuotaOverrides(orgId)).vcpu).toBeNull();
  });

  it('derives usage from live rows in quota-holding states', async () => {
    const other = (await createOrg(store, `usage-${randomUUID()}`)).id;
    await store.withOrgLock(other, async (tx) => {
      await tx.insertVm(vmRow(other, { cpu: 2, memoryMiB: 4096, diskGiB: 20 }));
      await tx.insertVm(vmRow(other, { status: 'provisioning' }));
      await tx.insertVm(vmRow(other, { status: 'error' }));
      await tx.insertVm(vmRow(other, { status: 'stopped' }));
      await tx.insertVm(vmRow(other, { status: 'deleted', deletedAt: new Date().toISOString() }));
    });
    expect(await store.getUsage(other)).toMatchObject({
      vcpu: 3,
      memoryMiB: 6144,
      diskGiB: 30,
      snapshotCount: 0,
    });
  });

  it('serialises concurrent reservations under the org lock', async () => {
    const org = (await createOrg(store, `lock-${randomUUID()}`)).id;
    const limit = 5;
    const results = await Promise.all(
      Array.from({ length: 40 }, () =>
        store.withOrgLock(org, async (tx) => {
          const usage = await tx.getUsage();
          if (usage.vcpu + 1 > limit) return false;
          await tx.insertVm(vmRow(org));
          return true;
        }),
      ),
    );
    expect(results.filter(Boolean)).toHaveLength(limit);
    expect((await store.getUsage(org)).vcpu).toBe(limit);
  });

  it('rolls back a reservation when the callback throws', async () => {
    const org = (await createOrg(store, `rollback-${randomUUID()}`)).id;
    await expect(
      store.withOrgLock(org, async (tx) => {
        await tx.insertVm(vmRow(org));
        throw new Error('nope');
      }),
    ).rejects.toThrow('nope');
    expect((await store.getUsage(org)).vcpu).toBe(0);
  });

  it('conditional updates only touch rows in the given states', async () => {
    const vm = vmRow(orgId, { status: 'provisioning', name: 'cond' });
    await store.withOrgLock(orgId, (tx) => tx.insertVm(vm));
    expect(await store.updateVm(vm.id, { status: 'running' }, ['deleting'])).toBeUndefined();
    const updated = await store.updateVm(
      vm.id,
      { status: 'running', firewall: { mode: 'open', ingress: [] } },
      ['provisioning'],
    );
    expect(updated).toMatchObject({ status: 'running', firewall: { mode: 'open', ingress: [] } });
    expect((await store.findVmsByName(orgId, 'cond')).map((v) => v.id)).toEqual([vm.id]);
    await store.updateVm(vm.id, { status: 'deleted', deletedAt: new Date().toISOString() });
    expect(await store.getVm(orgId, vm.id)).toBeUndefined();
    expect(await store.findVmsByName(orgId, 'cond')).toEqual([]);
  });
});

describe('bootstrap key', () => {
  it('generates a key once, stores it 0600, and reuses it on restart', async () => {
    const dataDir = await makeDataDir();
    try {
      const store = await openStore({ dataDir });
      const first = await ensureBootstrapKey(store, dataDir);
      expect(first.generated).toBe(true);
      expect(first.key).toMatch(/^fvm_/);
      const stat = await fs.stat(first.keyFile);
      expect(stat.mode & 0o777).toBe(0o600);
      expect((await fs.readFile(first.keyFile, 'utf8')).trim()).toBe(first.key);
      const again = await ensureBootstrapKey(store, dataDir);
      expect(again).toMatchObject({ generated: false, key: first.key });
      expect(await store.countActiveApiKeys()).toBe(1);
      await store.close();
    } finally {
      await fs.rm(dataDir, { recursive: true, force: true });
    }
  });

  it('uses FASTVM_BOOTSTRAP_KEY when given and writes no file', async () => {
    const dataDir = await makeDataDir();
    try {
      const store = await openStore({ dataDir });
      const res = await ensureBootstrapKey(store, dataDir, 'fvm_given_key_1234567890');
      expect(res).toMatchObject({ generated: false, key: 'fvm_given_key_1234567890' });
      await expect(fs.stat(res.keyFile)).rejects.toThrow();
      expect(await store.findActiveApiKey(hashApiKey('fvm_given_key_1234567890'))).toBeDefined();
      expect((await store.listOrgs()).map((o) => o.name)).toEqual(['default']);
      await store.close();
    } finally {
      await fs.rm(dataDir, { recursive: true, force: true });
    }
  });
});

describe('name normalisation', () => {
  it('trims, collapses whitespace, truncates to 64 runes, falls back when empty', () => {
    expect(normalizeName('  a  b\tc\n', 'x')).toBe('a b c');
    expect(normalizeName('', 'fallback')).toBe('fallback');
    expect(normalizeName('   ', 'fallback')).toBe('fallback');
    expect(normalizeName(undefined, 'fallback')).toBe('fallback');
    expect(normalizeName(null, 'fallback')).toBe('fallback');
    expect(normalizeName('🙂'.repeat(65), 'x')).toBe('🙂'.repeat(64));
    expect(normalizeName(`${'a'.repeat(63)} b`, 'x')).toBe('a'.repeat(63));
  });
});
