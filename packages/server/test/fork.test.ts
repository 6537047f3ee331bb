/**
 * `POST /v1/snapshots/{id}/fork` with the FakeRuntime: codes, names, inheritance, all-or-nothing
 * quota, and the cleanup of a fork whose k-th restore fails.
 */
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { RestoreOptions } from '@fastvm/runtime';
import { FakeRuntimeError } from '../src/testing/index.js';
import {
  TRANSPORTS,
  TestClient,
  createOrgWithKey,
  startTestServer,
  type TestServer,
} from './helpers.js';

describe.each(TRANSPORTS)('fork over %s', (transport) => {
  let t: TestServer;
  let api: TestClient;
  let orgId: string;
  let snap: { id: string; name: string };

  beforeAll(async () => {
    t = await startTestServer();
    api = new TestClient(t.url, t.key, transport);
    orgId = (await api.get('/v1/org/quotas')).body.orgId;
    const vm = (
      await api.post('/v1/vms', {
        machineType: 'c1m2',
        name: 'base-vm',
        envVars: { A: '1' },
        firewall: { mode: 'open' },
      })
    ).body;
    snap = (await api.post('/v1/snapshots', { vmId: vm.id, name: 'base' })).body;
  });
  afterAll(async () => {
    api.close();
    await t.cleanup();
  });
  beforeEach(async () => {
    t.runtime.failRestore = undefined;
    await t.server.store.setQuotaOverrides(orgId, { vcpu: null, memoryMiB: null });
  });

  /** Deletes every VM but the base one. */
  async function deleteForks(): Promise<void> {
    const vms = (await api.get('/v1/vms')).body as { id: string; name: string }[];
    await Promise.all(
      vms.filter((v) => v.name !== 'base-vm').map((v) => api.del(`/v1/vms/${v.id}`)),
    );
  }

  it('restores count VMs, all running, named <prefix>-1..N, in one call (201)', async () => {
    const res = await api.post(`/v1/snapshots/${snap.id}/fork`, {
      count: 3,
      namePrefix: 'w',
      envVars: { B: '2' },
      metadata: { job: 'x' },
    });
    expect(res.status).toBe(201);
    expect(Object.keys(res.body)).toEqual(['vms']);
    const vms = res.body.vms as Record<string, unknown>[];
    expect(vms.map((v) => v.name)).toEqual(['w-1', 'w-2', 'w-3']);
    for (const v of vms) {
      expect(v).toMatchObject({
        status: 'running',
        machineName: 'c1m2',
        sourceName: 'base',
        sourceSnapshotId: snap.id,
        envVars: { A: '1', B: '2' },
        firewall: { mode: 'open' },
        metadata: { job: 'x' },
      });
    }
    expect(new Set(vms.map((v) => v.id)).size).toBe(3);
    const restores = t.runtime.calls.filter((c) => c.method === 'restore');
    expect(restores.slice(-3).map((c) => (c.args[0] as RestoreOptions).hostname)).toEqual([
      'w-1',
      'w-2',
      'w-3',
    ]);
    await deleteForks();
  });

  it('defaults the prefix to the snapshot name, takes the name as the id, keeps 64 runes', async () => {
    const res = await api.post('/v1/snapshots/base/fork', { count: 2 });
    expect(res.status).toBe(201);
    expect(res.body.vms.map((v: { name: string }) => v.name)).toEqual(['base-1', 'base-2']);
    const long = await api.post(`/v1/snapshots/${snap.id}/fork`, {
      count: 10,
      namePrefix: 'x'.repeat(80),
    });
    expect(long.status).toBe(201);
    const names = long.body.vms.map((v: { name: string }) => v.name) as string[];
    expect(names[9]).toBe(`${'x'.repeat(61)}-10`);
    expect(names.every((n) => Array.from(n).length <= 64)).toBe(true);
    await deleteForks();
  });

  it('validates count (400 naming the field)', async () => {
    for (const count of [0, 101, 1.5, '3', null]) {
      const res = await api.post(`/v1/snapshots/${snap.id}/fork`, { count });
      expect(res.status, JSON.stringify(count)).toBe(400);
      expect(res.body).toMatchObject({ code: 'bad_request', field: 'count' });
    }
    const missing = await api.post(`/v1/snapshots/${snap.id}/fork`, {});
    expect(missing.status).toBe(400);
    expect(missing.body.field).toBe('count');
    const badEnv = await api.post(`/v1/snapshots/${snap.id}/fork`, {
      count: 1,
      envVars: { '1x': 'y' },
    });
    expect(badEnv.status).toBe(400);
  });

  it('404 for unknown snapshots and for other orgs’ snapshots', async () => {
    expect((await api.post('/v1/snapshots/nope/fork', { count: 1 })).status).toBe(404);
    const other = new TestClient(
      t.url,
      await createOrgWithKey(t.server, `o-${transport}`),
      transport,
    );
    const res = await other.post(`/v1/snapshots/${snap.id}/fork`, { count: 1 });
    expect(res.status).toBe(404);
    expect(res.body.code).toBe('not_found');
    expect((await other.get('/v1/vms')).body).toEqual([]);
    other.close();
  });

  it('quota is all or nothing: 429 names the dimension and how many fit; nothing starts', async () => {
    // The base VM holds 1 vCPU; 4 more fit.
    await t.server.store.setQuotaOverrides(orgId, { vcpu: 5 });
    const before = t.runtime.calls.filter((c) => c.method === 'restore').length;
    const res = await api.post(`/v1/snapshots/${snap.id}/fork`, { count: 10 });
    expect(res.status).toBe(429);
    expect(res.body).toMatchObject({
      code: 'quota_exceeded',
      dimension: 'vcpu',
      limit: 5,
      usage: 1,
      count: 10,
      fits: 4,
    });
    expect(res.body.error).toMatch(/4 of the 10 would fit/);
    expect(res.headers['x-should-retry']).toBe('false');
    expect(t.runtime.calls.filter((c) => c.method === 'restore').length).toBe(before);
    expect((await api.get('/v1/vms')).body).toHaveLength(1);
    // Memory names its own dimension.
    await t.server.store.setQuotaOverrides(orgId, { vcpu: null, memoryMiB: 2048 * 3 });
    const mem = await api.post(`/v1/snapshots/${snap.id}/fork`, { count: 3 });
    expect(mem.status).toBe(429);
    expect(mem.body).toMatchObject({ dimension: 'memory_mib', fits: 2, count: 3 });
    // Exactly at the limit is fine.
    await t.server.store.setQuotaOverrides(orgId, { memoryMiB: null, vcpu: 5 });
    expect((await api.post(`/v1/snapshots/${snap.id}/fork`, { count: 4 })).status).toBe(201);
    await deleteForks();
  });

  it('a failed k-th restore deletes every fork, releases the quota, reports the error', async () => {
    let n = 0;
    t.runtime.failRestore = () =>
      ++n === 3 ? new FakeRuntimeError('qemu_failed', 'QEMU exited during restore') : undefined;
    const res = await api.post(`/v1/snapshots/${snap.id}/fork`, { count: 5, namePrefix: 'f' });
    expect(res.status).toBe(502);
    expect(res.body).toMatchObject({
      code: 'vm_unavailable',
      snapshotId: snap.id,
      count: 5,
      failed: 1,
    });
    expect(res.body.error).toMatch(/1 of 5 VMs did not start.*QEMU exited.*all 5 were deleted/);
    // Nothing leaked: no rows, no runtime VMs besides the base, quota back to the base VM.
    const vms = (await api.get('/v1/vms')).body as { name: string }[];
    expect(vms.map((v) => v.name)).toEqual(['base-vm']);
    expect(t.runtime.runningVmIds()).toHaveLength(1);
    expect((await api.get('/v1/org/quotas')).body.usage).toMatchObject({
      vcpu: 1,
      memoryMiB: 2048,
    });
  });

  it('a corrupt snapshot is 409 snapshot_corrupt and leaves nothing', async () => {
    t.runtime.failRestore = new FakeRuntimeError(
      'snapshot_corrupt',
      'snapshot x: its memory layer is corrupt',
    );
    const res = await api.post(`/v1/snapshots/${snap.id}/fork`, { count: 2 });
    expect(res.status).toBe(409);
    expect(res.body).toMatchObject({ code: 'snapshot_corrupt', failed: 2, count: 2 });
    expect(res.headers['x-should-retry']).toBe('false');
    expect((await api.get('/v1/vms')).body).toHaveLength(1);
    // A plain restore of it says the same.
    const one = await api.post('/v1/vms', { snapshotId: snap.id });
    expect(one.status).toBe(409);
    expect(one.body.code).toBe('snapshot_corrupt');
    await deleteForks();
  });

  it('restores run concurrently', async () => {
    t.runtime.restoreDelayMs = 300;
    const t0 = Date.now();
    const res = await api.post(`/v1/snapshots/${snap.id}/fork`, { count: 5 });
    const ms = Date.now() - t0;
    t.runtime.restoreDelayMs = 0;
    expect(res.status).toBe(201);
    expect(ms).toBeLessThan(1200);
    await deleteForks();
  });
});
