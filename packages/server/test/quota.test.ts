import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TestClient, createOrgWithKey, startTestServer, type TestServer } from './helpers.js';

describe('quotas', () => {
  let t: TestServer;
  let api: TestClient;
  let orgId: string;

  beforeAll(async () => {
    t = await startTestServer();
    api = new TestClient(t.url, t.key);
    orgId = (await api.get('/v1/org/quotas')).body.orgId;
  });
  afterAll(async () => {
    await t.cleanup();
  });

  it('reports all six dimensions', async () => {
    const res = await api.get('/v1/org/quotas');
    expect(res.status).toBe(200);
    expect(res.body).toEqual({
      orgId,
      limits: {
        vcpu: 64,
        memoryMiB: 131072,
        diskGiB: 2048,
        snapshotCount: 256,
        volumeCount: 64,
        volumeGiB: 1024,
      },
      usage: { vcpu: 0, memoryMiB: 0, diskGiB: 0, snapshotCount: 0, volumeCount: 0, volumeGiB: 0 },
    });
  });

  it('100 concurrent launches against 8 vCPUs admit exactly 8', async () => {
    await t.server.store.setQuotaOverrides(orgId, { vcpu: 8 });
    const results = await Promise.all(
      Array.from({ length: 100 }, (_, i) =>
        api.post('/v1/vms', { machineType: 'c1m2', name: `race-${i}` }),
      ),
    );
    const admitted = results.filter((r) => r.status === 201);
    const rejected = results.filter((r) => r.status === 429);
    expect(admitted).toHaveLength(8);
    expect(rejected).toHaveLength(92);
    for (const r of rejected) {
      expect(r.body).toMatchObject({
        code: 'quota_exceeded',
        dimension: 'vcpu',
        error: expect.any(String),
      });
      expect(r.headers['x-should-retry']).toBe('false');
    }
    const usage = (await api.get('/v1/org/quotas')).body.usage;
    expect(usage).toMatchObject({ vcpu: 8, memoryMiB: 8 * 2048, diskGiB: 80 });
    expect((await api.get('/v1/vms')).body).toHaveLength(8);
    expect(t.runtime.runningVmIds()).toHaveLength(8);

    await Promise.all(admitted.map((r) => api.del(`/v1/vms/${r.body.id}`)));
    expect((await api.get('/v1/org/quotas')).body.usage).toMatchObject({
      vcpu: 0,
      memoryMiB: 0,
      diskGiB: 0,
    });
    await t.server.store.setQuotaOverrides(orgId, { vcpu: null });
  });

  it('checks memory, disk and snapshot count, naming the dimension', async () => {
    await t.server.store.setQuotaOverrides(orgId, { memoryMiB: 4096 });
    const big = await api.post('/v1/vms', { machineType: 'c4m8' });
    expect(big.status).toBe(429);
    expect(big.body.dimension).toBe('memory_mib');
    await t.server.store.setQuotaOverrides(orgId, { memoryMiB: null, diskGiB: 15 });
    const disk = await api.post('/v1/vms', { machineType: 'c1m2', diskGiB: 20 });
    expect(disk.body.dimension).toBe('disk_gib');
    await t.server.store.setQuotaOverrides(orgId, { diskGiB: null, snapshotCount: 1 });
    const vm = (await api.post('/v1/vms', { machineType: 'c1m2' })).body;
    const s1 = await api.post('/v1/snapshots', { vmId: vm.id });
    expect(s1.status).toBe(201);
    const s2 = await api.post('/v1/snapshots', { vmId: vm.id });
    expect(s2.status).toBe(429);
    expect(s2.body.dimension).toBe('snapshot_count');
    expect(s2.headers['x-should-retry']).toBe('false');
    expect((await api.get('/v1/org/quotas')).body.usage.snapshotCount).toBe(1);
    await api.del(`/v1/snapshots/${s1.body.id}`);
    expect((await api.get('/v1/org/quotas')).body.usage.snapshotCount).toBe(0);
    expect((await api.post('/v1/snapshots', { vmId: vm.id })).status).toBe(201);
    await t.server.store.setQuotaOverrides(orgId, { snapshotCount: null });
    await api.del(`/v1/vms/${vm.id}`);
  });

  it('quotas are per org', async () => {
    await t.server.store.setQuotaOverrides(orgId, { vcpu: 1 });
    const other = api.withKey(await createOrgWithKey(t.server, 'quota-other'));
    const mine = await api.post('/v1/vms', { machineType: 'c1m2' });
    expect(mine.status).toBe(201);
    expect((await api.post('/v1/vms', { machineType: 'c1m2' })).status).toBe(429);
    expect((await other.post('/v1/vms', { machineType: 'c2m4' })).status).toBe(201);
    expect((await other.get('/v1/org/quotas')).body.usage.vcpu).toBe(2);
    expect((await api.get('/v1/org/quotas')).body).toMatchObject({
      limits: { vcpu: 1 },
      usage: { vcpu: 1 },
    });
    await api.del(`/v1/vms/${mine.body.id}`);
    await t.server.store.setQuotaOverrides(orgId, { vcpu: null });
  });

  it('restore also reserves quota', async () => {
    const vm = (await api.post('/v1/vms', { machineType: 'c4m8' })).body;
    const snap = (await api.post('/v1/snapshots', { vmId: vm.id })).body;
    await t.server.store.setQuotaOverrides(orgId, { vcpu: 6 });
    const res = await api.post('/v1/vms', { snapshotId: snap.id });
    expect(res.status).toBe(429);
    expect(res.body.dimension).toBe('vcpu');
    await t.server.store.setQuotaOverrides(orgId, { vcpu: null });
    await api.del(`/v1/vms/${vm.id}`);
    await api.del(`/v1/snapshots/${snap.id}`);
  });
});
