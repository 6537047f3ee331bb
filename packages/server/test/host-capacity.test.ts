/**
 * Host admission with the FakeRuntime on a small fake host: refusals are 503 `host_capacity`
 * with `Retry-After`, start nothing and take no quota; deletes make room; forks are all or
 * nothing; concurrent launches never overshoot.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hostCapacityFromEnv } from '../src/config.js';
import { HostCapacity } from '../src/services/host-capacity.js';
import { TestClient, startTestServer, type TestServer } from './helpers.js';

// 9 GiB host, 1 GiB reserve, no overcommit: 8192 MiB = four c1m2 (2048 MiB) VMs; 3 CPUs × 1.
const HOST = {
  hostMemoryMiB: 9216,
  reserveMiB: 1024,
  memoryOvercommit: 1,
  hostCpus: 3,
  cpuOvercommit: 1,
};

describe('host admission', () => {
  let t: TestServer;
  let api: TestClient;

  beforeAll(async () => {
    t = await startTestServer({ hostCapacity: HOST });
    api = new TestClient(t.url, t.key);
  });
  afterAll(async () => {
    await t.cleanup();
  });

  async function deleteAll(): Promise<void> {
    const vms = (await api.get('/v1/vms')).body as { id: string }[];
    await Promise.all(vms.map((vm) => api.del(`/v1/vms/${vm.id}`)));
  }

  it('refuses the launch past the host vCPUs with 503 host_capacity and Retry-After', async () => {
    const a = await api.post('/v1/vms', { machineType: 'c1m2', name: 'a' });
    const b = await api.post('/v1/vms', { machineType: 'c2m4', name: 'b' });
    expect([a.status, b.status]).toEqual([201, 201]);
    const usageBefore = (await api.get('/v1/org/quotas')).body.usage;
    const running = t.runtime.runningVmIds().length;

    const c = await api.post('/v1/vms', { machineType: 'c1m2', name: 'c' });
    expect(c.status).toBe(503);
    expect(c.body).toMatchObject({
      code: 'host_capacity',
      dimension: 'vcpu',
      limit: 3,
      usage: 3,
      requested: 1,
    });
    expect(c.body.error).toMatch(/vcpu: 3 in use \+ 1 requested > host limit 3/);
    expect(c.headers['retry-after']).toBe('10');
    // Nothing started, no row, quota untouched.
    expect(t.runtime.runningVmIds()).toHaveLength(running);
    expect((await api.get('/v1/vms')).body).toHaveLength(2);
    expect((await api.get('/v1/org/quotas')).body.usage).toEqual(usageBefore);

    // A delete makes room.
    await api.del(`/v1/vms/${a.body.id}`);
    const again = await api.post('/v1/vms', { machineType: 'c1m2', name: 'c' });
    expect(again.status).toBe(201);
    await deleteAll();
  });

  it('counts a paused VM memory but not its vCPUs; resume is admitted against the host', async () => {
    const vms = [];
    for (let i = 0; i < 3; i++) {
      const r = await api.post('/v1/vms', { machineType: 'c1m2', name: `p${i}` });
      expect(r.status).toBe(201);
      vms.push(r.body);
    }
    expect((await api.post(`/v1/vms/${vms[0].id}/pause`, {})).status).toBe(200);
    // 2 vCPUs run; the paused VM still holds 2048 MiB: 3 × 2048 of 8192.
    const d = await api.post('/v1/vms', { machineType: 'c1m2', name: 'd' });
    expect(d.status).toBe(201);
    const mem = await api.post('/v1/vms', { machineType: 'c1m2', name: 'e' });
    expect(mem.status).toBe(503);
    expect(mem.body).toMatchObject({ code: 'host_capacity', dimension: 'memory_mib' });
    const resume = await api.post(`/v1/vms/${vms[0].id}/resume`, {});
    expect(resume.status).toBe(503);
    expect(resume.body).toMatchObject({ code: 'host_capacity', dimension: 'vcpu' });
    await api.del(`/v1/vms/${d.body.id}`);
    expect((await api.post(`/v1/vms/${vms[0].id}/resume`, {})).status).toBe(200);
    await deleteAll();
  });

  it('a fork is admitted all or nothing', async () => {
    const src = await api.post('/v1/vms', { machineType: 'c1m2', name: 'src' });
    const snap = await api.post('/v1/snapshots', { vmId: src.body.id, name: 'base' });
    expect(snap.status).toBe(201);
    const running = t.runtime.runningVmIds().length;
    const tooMany = await api.post(`/v1/snapshots/${snap.body.id}/fork`, { count: 3 });
    expect(tooMany.status).toBe(503);
    expect(tooMany.body).toMatchObject({ code: 'host_capacity', requested: 3 });
    expect(t.runtime.runningVmIds()).toHaveLength(running);
    expect((await api.get('/v1/vms')).body).toHaveLength(1);
    const fits = await api.post(`/v1/snapshots/${snap.body.id}/fork`, { count: 2 });
    expect(fits.status).toBe(201);
    await deleteAll();
  });

  it('concurrent launches never overshoot', async () => {
    const results = await Promise.all(
      Array.from({ length: 20 }, (_, i) =>
        api.post('/v1/vms', { machineType: 'c1m2', name: `race-${i}` }),
      ),
    );
    expect(results.filter((r) => r.status === 201)).toHaveLength(3);
    expect(results.filter((r) => r.status === 503)).toHaveLength(17);
    expect(t.runtime.runningVmIds()).toHaveLength(3);
    await deleteAll();
  });
});

describe('host capacity settings', () => {
  it('reads overrides from the environment and rejects bad values', () => {
    expect(
      hostCapacityFromEnv({
        FASTVM_HOST_MEMORY_MIB: '4096',
        FASTVM_HOST_CPUS: '2',
        FASTVM_MEMORY_OVERCOMMIT: '2.5',
        FASTVM_CPU_OVERCOMMIT: '8',
        FASTVM_HOST_RESERVE_MIB: '512',
      }),
    ).toEqual({
      hostMemoryMiB: 4096,
      hostCpus: 2,
      memoryOvercommit: 2.5,
      cpuOvercommit: 8,
      reserveMiB: 512,
    });
    expect(hostCapacityFromEnv({})).toEqual({});
    expect(() => hostCapacityFromEnv({ FASTVM_HOST_CPUS: 'two' })).toThrow(/FASTVM_HOST_CPUS/);
  });

  it('defaults: 10% (≥ 1 GiB) reserve, memory × 16, vCPUs × 64 (a fork of 100 c1m2 fits)', () => {
    // The store is not consulted until an admission.
    const host = new HostCapacity({} as never, { hostMemoryMiB: 24576, hostCpus: 2 });
    expect(host.memoryLimitMiB).toBe(Math.floor((24576 - 2457) * 16));
    expect(host.memoryLimitMiB).toBeGreaterThanOrEqual(100 * 2048);
    expect(host.vcpuLimit).toBe(128);
  });

  it("refuses what the host's available memory cannot hold now, whatever the paper count says", async () => {
    const store = { sumVmResources: async () => ({ memoryMiB: 0, vcpu: 0 }) } as never;
    // The reserve plus 64 MiB: less than one c1m2's share (2048 / 16 = 128 MiB).
    let available = 1024 + 64;
    const host = new HostCapacity(store, {
      hostMemoryMiB: 24576,
      hostCpus: 2,
      reserveMiB: 1024,
      memAvailableMiB: () => available,
    });
    const write = async () => 'written';
    await expect(host.admit({ vcpu: 1, memoryMiB: 2048 }, write)).rejects.toMatchObject({
      name: 'HostCapacityError',
    });
    available = 1024 + 128;
    await expect(host.admit({ vcpu: 1, memoryMiB: 2048 }, write)).resolves.toBe('written');
  });
});
