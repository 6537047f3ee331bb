import { randomUUID } from 'node:crypto';
import fs from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createApiKey, createOrg, ensureBootstrapKey, hashApiKey } from '../src/services/orgs.js';
import {
  IllegalTransitionError,
  SNAPSHOT_TRANSITIONS,
  VM_INITIAL_STATUS,
  VM_TRANSITIONS,
  type BuildRecord,
  type SnapshotRecord,
  type VmRecord,
  type VmStatus,
} from '../src/domain/index.js';
import { normalizeName } from '../src/services/names.js';
import { MIGRATION_NAMES, openStore, type Store } from '../src/store/index.js';
import { vmRecord } from '../src/testing/index.js';
import { makeDataDir } from './helpers.js';

/**
 * The store contract, run against SQLite always and against PostgreSQL when
 * FASTVM_TEST_DATABASE_URL points at a scratch database (`npm test` sets it up when a local
 * PostgreSQL runs: scripts/test.sh; CI installs one).
 */
const DIALECTS: Array<[string, string | undefined]> = [['sqlite', undefined]];
if (process.env.FASTVM_TEST_DATABASE_URL)
  DIALECTS.push(['postgres', process.env.FASTVM_TEST_DATABASE_URL]);

if (DIALECTS.length === 1) {
  const why = 'no PostgreSQL (install one, or set FASTVM_TEST_DATABASE_URL)';
  console.warn(`store contract on PostgreSQL skipped: ${why}`);
  it.skip(`store contract on PostgreSQL — skipped: ${why}`, () => {});
}

function vmRow(orgId: string, over: Partial<VmRecord> = {}): VmRecord {
  return vmRecord({ orgId, ...over });
}

function snapshotRow(orgId: string, vmId: string, over: Partial<SnapshotRecord> = {}) {
  const now = new Date().toISOString();
  const snap: SnapshotRecord = {
    id: randomUUID(),
    orgId,
    vmId,
    name: 'snap',
    status: 'creating',
    error: null,
    machine: 'c1m2',
    cpu: 1,
    memoryMiB: 2048,
    diskGiB: 10,
    firewall: { mode: 'restricted', ingress: [] },
    metadata: {},
    createdAt: now,
    updatedAt: now,
    deletedAt: null,
    ...over,
  };
  return snap;
}

/** Moves a new VM row along legal transitions to `path`'s last status. */
async function walk(store: Store, id: string, path: VmStatus[]): Promise<void> {
  for (const to of path) {
    const patch = to === 'deleted' ? { deletedAt: new Date().toISOString() } : {};
    expect(await store.transitionVm(id, { to }, patch)).toMatchObject({ status: to });
  }
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
    const rows = {
      running: vmRow(other, { cpu: 2, memoryMiB: 4096, diskGiB: 20 }),
      provisioning: vmRow(other),
      error: vmRow(other),
      stopped: vmRow(other),
      deleted: vmRow(other),
    };
    await store.withOrgLock(other, async (tx) => {
      for (const vm of Object.values(rows)) await tx.insertVm(vm);
    });
    await walk(store, rows.running.id, ['running']);
    await walk(store, rows.error.id, ['error']);
    await walk(store, rows.stopped.id, ['running', 'stopped']);
    await walk(store, rows.deleted.id, ['deleting', 'deleted']);
    expect(await store.getUsage(other)).toMatchObject({
      vcpu: 3,
      memoryMiB: 6144,
      diskGiB: 30,
      snapshotCount: 0,
    });
  });

  it("sums the host's VM memory and vCPUs by status in one row, as listing them would", async () => {
    const holds: VmStatus[] = ['provisioning', 'running', 'paused'];
    const runs: VmStatus[] = ['provisioning', 'running'];
    const byListing = async () => {
      const vms = await store.listVmsByStatus(holds);
      return {
        memoryMiB: vms.reduce((n, vm) => n + vm.memoryMiB, 0),
        vcpu: vms.filter((vm) => runs.includes(vm.status)).reduce((n, vm) => n + vm.cpu, 0),
      };
    };
    const before = await store.sumVmResources(holds, runs);
    expect(before).toEqual(await byListing());
    const org = (await createOrg(store, `host-${randomUUID()}`)).id;
    const rows = {
      running: vmRow(org, { cpu: 2, memoryMiB: 4096 }),
      paused: vmRow(org, { cpu: 4, memoryMiB: 8192 }),
      provisioning: vmRow(org, { cpu: 1, memoryMiB: 1024 }),
      error: vmRow(org, { cpu: 8, memoryMiB: 16384 }),
    };
    await store.withOrgLock(org, async (tx) => {
      for (const vm of Object.values(rows)) await tx.insertVm(vm);
    });
    await walk(store, rows.running.id, ['running']);
    await walk(store, rows.paused.id, ['running', 'pausing', 'paused']);
    await walk(store, rows.error.id, ['error']);
    const after = await store.sumVmResources(holds, runs);
    expect(after).toEqual({
      memoryMiB: before.memoryMiB + 4096 + 8192 + 1024,
      vcpu: before.vcpu + 2 + 1,
    });
    expect(after).toEqual(await byListing());
    expect(await store.sumVmResources([], [])).toEqual({ memoryMiB: 0, vcpu: 0 });
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

  it('stores environment variables on VMs and snapshots ({} when a record has none)', async () => {
    const envVars = { FOO: 'bar baz', EMPTY: '', UNI: 'héllo "quoted" $HOME' };
    const vm = vmRow(orgId, { name: 'env', envVars });
    await store.withOrgLock(orgId, (tx) => tx.insertVm(vm));
    expect((await store.getVm(orgId, vm.id))?.envVars).toEqual(envVars);
    expect((await store.listVms(orgId)).find((v) => v.id === vm.id)?.envVars).toEqual(envVars);
    const snap = snapshotRow(orgId, vm.id, { envVars: { A: '1' } });
    await store.withOrgLock(orgId, (tx) => tx.insertSnapshot(snap));
    expect((await store.getSnapshot(orgId, snap.id))?.envVars).toEqual({ A: '1' });
    const bare = vmRow(orgId, { name: 'no-env' });
    await store.withOrgLock(orgId, (tx) => tx.insertVm(bare));
    expect((await store.getVm(orgId, bare.id))?.envVars).toEqual({});
    for (const id of [vm.id, bare.id]) await walk(store, id, ['deleting', 'deleted']);
  });

  it('conditional updates only touch rows in the given states', async () => {
    const vm = vmRow(orgId, { name: 'cond' });
    await store.withOrgLock(orgId, (tx) => tx.insertVm(vm));
    expect(await store.updateVm(vm.id, { name: 'x' }, ['running'])).toBeUndefined();
    const updated = await store.updateVm(vm.id, { firewall: { mode: 'open', ingress: [] } }, [
      'provisioning',
    ]);
    expect(updated).toMatchObject({
      status: 'provisioning',
      firewall: { mode: 'open', ingress: [] },
    });
    expect((await store.findVmsByName(orgId, 'cond')).map((v) => v.id)).toEqual([vm.id]);
    await walk(store, vm.id, ['deleting', 'deleted']);
    expect(await store.getVm(orgId, vm.id)).toBeUndefined();
    expect(await store.findVmsByName(orgId, 'cond')).toEqual([]);
  });

  it('changes a VM status only along the transition table, atomically', async () => {
    const vm = vmRow(orgId);
    await store.withOrgLock(orgId, (tx) => tx.insertVm(vm));
    // A move the table does not list is refused whatever the row's status.
    await expect(
      store.transitionVm(vm.id, { from: 'provisioning', to: 'paused' }),
    ).rejects.toBeInstanceOf(IllegalTransitionError);
    await expect(store.transitionVm(vm.id, { to: 'provisioning' })).rejects.toBeInstanceOf(
      IllegalTransitionError,
    );
    await expect(
      store.transitionVm(vm.id, { from: ['running', 'error'], to: 'pausing' }),
    ).rejects.toThrow(/error → pausing/);
    // A legal move applies only from its source status, with its patch.
    expect(await store.transitionVm(vm.id, { from: 'running', to: 'pausing' })).toBeUndefined();
    expect(
      await store.transitionVm(
        vm.id,
        { from: 'provisioning', to: 'running' },
        { publicIpv6: '2001:db8::1' },
      ),
    ).toMatchObject({ status: 'running', publicIpv6: '2001:db8::1' });
    // Concurrent identical moves: exactly one wins.
    const raced = await Promise.all(
      Array.from({ length: 5 }, () =>
        store.transitionVm(vm.id, { from: 'running', to: 'pausing' }),
      ),
    );
    expect(raced.filter(Boolean)).toHaveLength(1);
    // Without `from`: from every status the table allows into the target.
    expect(await store.transitionVm(vm.id, { to: 'deleting' })).toMatchObject({
      status: 'deleting',
    });
    expect(await store.transitionVm(vm.id, { to: 'deleting' })).toMatchObject({
      status: 'deleting',
    });
    await walk(store, vm.id, ['deleted']);
    expect(await store.transitionVm(vm.id, { to: 'deleting' })).toBeUndefined();
    expect(await store.getVm(orgId, vm.id)).toBeUndefined();
  });

  it('never changes a status outside a transition', async () => {
    const vm = vmRow(orgId);
    await store.withOrgLock(orgId, (tx) => tx.insertVm(vm));
    await expect(
      store.updateVm(vm.id, { status: 'running' } as unknown as { name: string }),
    ).rejects.toThrow(/transition/);
    await expect(
      store.withOrgLock(orgId, (tx) => tx.insertVm(vmRow(orgId, { status: 'running' }))),
    ).rejects.toThrow(/must be provisioning/);
    expect((await store.getVm(orgId, vm.id))?.status).toBe(VM_INITIAL_STATUS);
  });

  it('snapshot holders: idempotent add, newest first, remove one or all', async () => {
    const snap = randomUUID();
    await store.addSnapshotHolder(snap, 'host-a');
    await new Promise((r) => setTimeout(r, 5));
    await store.addSnapshotHolder(snap, 'host-b');
    await store.addSnapshotHolder(snap, 'host-b'); // again: one row, fresher
    expect((await store.listSnapshotHolders(snap)).map((h) => h.hostId)).toEqual([
      'host-b',
      'host-a',
    ]);
    expect(await store.listSnapshotHolders(randomUUID())).toEqual([]);
    await store.removeSnapshotHolder(snap, 'host-b');
    expect((await store.listSnapshotHolders(snap)).map((h) => h.hostId)).toEqual(['host-a']);
    await store.addSnapshotHolder(snap, 'host-c');
    await store.removeSnapshotHolder(snap);
    expect(await store.listSnapshotHolders(snap)).toEqual([]);
  });

  it('changes a snapshot status only along its transition table', async () => {
    const vm = vmRow(orgId);
    const snap = snapshotRow(orgId, vm.id);
    await store.withOrgLock(orgId, async (tx) => {
      await tx.insertVm(vm);
      await tx.insertSnapshot(snap);
    });
    await expect(
      store.withOrgLock(orgId, (tx) =>
        tx.insertSnapshot(snapshotRow(orgId, vm.id, { status: 'ready' })),
      ),
    ).rejects.toThrow(/must be creating/);
    await expect(
      store.transitionSnapshot(snap.id, { from: 'error', to: 'ready' }),
    ).rejects.toBeInstanceOf(IllegalTransitionError);
    await expect(
      store.updateSnapshot(snap.id, { status: 'ready' } as unknown as { name: string }),
    ).rejects.toThrow(/transition/);
    expect(await store.transitionSnapshot(snap.id, { from: 'ready', to: 'error' })).toBeUndefined();
    expect(
      await store.transitionSnapshot(snap.id, { from: 'creating', to: 'ready' }),
    ).toMatchObject({ status: 'ready' });
    expect(
      await store.transitionSnapshot(snap.id, { from: 'ready', to: 'error' }, { error: 'gone' }),
    ).toMatchObject({ status: 'error', error: 'gone' });
    const at = new Date().toISOString();
    expect(
      await store.transitionSnapshot(snap.id, { to: 'deleting' }, { deletedAt: at }),
    ).toMatchObject({ status: 'deleting', deletedAt: at });
    expect(await store.getSnapshot(orgId, snap.id)).toBeUndefined();
    expect(
      await store.transitionSnapshot(snap.id, { from: 'deleting', to: 'deleted' }),
    ).toMatchObject({ status: 'deleted' });
    expect(await store.transitionSnapshot(snap.id, { to: 'deleting' })).toBeUndefined();
  });
  it('keeps builds (newest first, by kind and status) and the step cache per org', async () => {
    const other = (await createOrg(store, `org-${randomUUID()}`)).id;
    const build = (over: Partial<BuildRecord>): BuildRecord => ({
      id: randomUUID(),
      orgId,
      kind: 'import',
      status: 'pending',
      name: 'b',
      machine: 'c1m2',
      cpu: 1,
      memoryMiB: 2048,
      diskGiB: 10,
      source: { type: 'image', image: 'fastvm/base' },
      events: [],
      createdAt: new Date().toISOString(),
      updatedAt: new Date().toISOString(),
      ...over,
    });
    const a = build({ createdAt: '2026-01-01T00:00:00.000Z' });
    const b = build({ createdAt: '2026-01-02T00:00:00.000Z', kind: 'build' });
    const c = build({ createdAt: '2026-01-03T00:00:00.000Z' });
    for (const r of [a, b, c]) await store.insertBuild(r);
    expect((await store.listBuilds(orgId, 'import')).map((r) => r.id)).toEqual([c.id, a.id]);
    expect(await store.getBuild(other, a.id)).toBeUndefined();
    await store.saveBuild({
      ...a,
      status: 'running',
      events: [{ phase: 'preparing', status: 'started', timestampMs: 1 }],
    });
    expect(await store.getBuild(orgId, a.id)).toMatchObject({
      status: 'running',
      events: [{ phase: 'preparing' }],
    });
    const running = (await store.listBuildsByStatus(['running'])).map((r) => r.id);
    expect(running).toContain(a.id);
    expect(running).not.toContain(c.id);
    await store.deleteBuild(c.id);
    expect(await store.getBuild(orgId, c.id)).toBeUndefined();

    const at = (s: string) => `2026-01-01T00:00:0${s}.000Z`;
    await store.putBuildCacheEntry({
      orgId,
      key: 'k1',
      snapshotId: 's1',
      createdAt: at('1'),
      lastUsedAt: at('1'),
    });
    await store.putBuildCacheEntry({
      orgId,
      key: 'k2',
      snapshotId: 's2',
      createdAt: at('2'),
      lastUsedAt: at('2'),
    });
    await store.putBuildCacheEntry({
      orgId: other,
      key: 'k1',
      snapshotId: 'o1',
      createdAt: at('1'),
      lastUsedAt: at('1'),
    });
    // Replacing a key's entry.
    await store.putBuildCacheEntry({
      orgId,
      key: 'k2',
      snapshotId: 's3',
      createdAt: at('3'),
      lastUsedAt: at('3'),
    });
    expect((await store.getBuildCacheEntry(orgId, 'k1'))?.snapshotId).toBe('s1');
    expect((await store.getBuildCacheEntry(other, 'k1'))?.snapshotId).toBe('o1');
    expect((await store.getBuildCacheEntry(orgId, 'k2'))?.snapshotId).toBe('s3');
    await store.touchBuildCacheEntry(orgId, 'k1', at('9'));
    expect((await store.listBuildCacheEntries(orgId)).map((e) => e.key)).toEqual(['k2', 'k1']);
    expect(await store.isBuildCacheSnapshot('s3')).toBe(true);
    expect(await store.isBuildCacheSnapshot('s2')).toBe(false);
    await store.deleteBuildCacheEntry(orgId, 'k1');
    expect(await store.getBuildCacheEntry(orgId, 'k1')).toBeUndefined();
    expect(await store.getBuildCacheEntry(other, 'k1')).toBeDefined();
  });
});

describe('transition tables', () => {
  it('reach every status from the first, end in deleted, and let every live status be deleted', () => {
    for (const [table, first] of [
      [VM_TRANSITIONS, 'provisioning'],
      [SNAPSHOT_TRANSITIONS, 'creating'],
    ] as const) {
      const t = table as Readonly<Record<string, readonly string[]>>;
      const seen = new Set<string>([first]);
      for (const s of seen) for (const next of t[s] ?? []) seen.add(next);
      expect([...seen].sort()).toEqual(Object.keys(t).sort());
      expect(t.deleted).toEqual([]);
      for (const s of Object.keys(t)) {
        if (s !== 'deleted' && s !== 'deleting') expect(t[s]).toContain('deleting');
      }
    }
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
