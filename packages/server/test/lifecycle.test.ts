/**
 * Pause/resume and TTL through the API with the FakeRuntime (issue 8): statuses, idempotence,
 * vCPU quota released while paused and re-acquired on resume (429), TTL fields per state,
 * `ttl/refresh`, PATCH ttl, a TTL that pauses or deletes on time, and expiries that survive a
 * restart. The real-VM checks (a process keeps its state across pause/resume) are in
 * `files-vm.test.ts`.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FakeRuntime, FakeRuntimeError } from '../src/testing/index.js';
import { TestClient, makeDataDir, startTestServer, type TestServer } from './helpers.js';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function waitStatus(api: TestClient, id: string, want: string, ms = 5000): Promise<number> {
  const t0 = Date.now();
  for (;;) {
    const res = await api.get(`/v1/vms/${id}`);
    if (res.status === 200 && res.body.status === want) return Date.now();
    if (want === 'gone' && res.status === 404) return Date.now();
    if (Date.now() - t0 > ms) throw new Error(`VM ${id} still ${res.body?.status ?? res.status}`);
    await sleep(20);
  }
}

describe('pause, resume and TTL (FakeRuntime)', () => {
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

  it('pauses and resumes; idempotent; exec and snapshots refused while paused', async () => {
    const vm = (await api.post('/v1/vms', { machineType: 'c2m4' })).body;
    expect(vm).toMatchObject({ status: 'running', ttl: null, pausedAt: null });
    expect(vm.expiresAtMs).toBeUndefined();

    // Python sends an empty body with a JSON content type.
    const raw = { rawBody: '', headers: { 'content-type': 'application/json' } };
    const paused = await api.post(`/v1/vms/${vm.id}/pause`, undefined, raw);
    expect(paused.status).toBe(200);
    expect(paused.body.status).toBe('paused');
    expect(Date.parse(paused.body.pausedAt)).toBeGreaterThan(Date.now() - 5000);
    expect(t.runtime.get(vm.id)?.state).toBe('paused');
    const again = await api.post(`/v1/vms/${vm.id}/pause`);
    expect(again.status).toBe(200);
    expect(again.body.pausedAt).toBe(paused.body.pausedAt);

    const exec = await api.post(`/v1/vms/${vm.id}/exec`, { command: ['true'] });
    expect(exec.status).toBe(409);
    expect(exec.headers['x-should-retry']).toBe('false');
    expect((await api.post('/v1/snapshots', { vmId: vm.id })).status).toBe(409);
    expect((await api.get('/v1/vms?status=paused')).body.map((v: { id: string }) => v.id)).toEqual([
      vm.id,
    ]);

    const resumed = await api.post(`/v1/vms/${vm.id}/resume`, undefined, raw);
    expect(resumed.status).toBe(200);
    expect(resumed.body).toMatchObject({ status: 'running', pausedAt: null });
    expect(t.runtime.get(vm.id)?.state).toBe('running');
    expect((await api.post(`/v1/vms/${vm.id}/resume`)).body.status).toBe('running');
    expect((await api.post(`/v1/vms/${vm.id}/exec`, { command: 'echo hi' })).body.stdout).toBe(
      'hi\n',
    );
    await api.del(`/v1/vms/${vm.id}`);
  });

  it('a paused VM releases its vCPUs (not memory or disk); resume re-acquires them or 429s', async () => {
    await t.server.store.setQuotaOverrides(orgId, { vcpu: 2 });
    try {
      const a = (await api.post('/v1/vms', { machineType: 'c2m4', name: 'quota-a' })).body;
      expect((await api.post('/v1/vms', { machineType: 'c1m2' })).status).toBe(429);
      await api.post(`/v1/vms/${a.id}/pause`);
      expect((await api.get('/v1/org/quotas')).body.usage).toMatchObject({
        vcpu: 0,
        memoryMiB: 4096,
        diskGiB: 10,
      });
      const b = (await api.post('/v1/vms', { machineType: 'c1m2', name: 'quota-b' })).body;
      expect(b.status).toBe('running');
      const refused = await api.post(`/v1/vms/${a.id}/resume`);
      expect(refused.status).toBe(429);
      expect(refused.body).toMatchObject({ code: 'quota_exceeded', dimension: 'vcpu' });
      expect(refused.headers['x-should-retry']).toBe('false');
      expect((await api.get(`/v1/vms/${a.id}`)).body.status).toBe('paused');
      await api.del(`/v1/vms/${b.id}`);
      expect((await api.post(`/v1/vms/${a.id}/resume`)).body.status).toBe('running');
      expect((await api.get('/v1/org/quotas')).body.usage).toMatchObject({ vcpu: 2 });
      // A paused VM can be deleted, which frees everything.
      await api.post(`/v1/vms/${a.id}/pause`);
      expect((await api.del(`/v1/vms/${a.id}`)).status).toBe(200);
      expect((await api.get('/v1/org/quotas')).body.usage).toMatchObject({
        vcpu: 0,
        memoryMiB: 0,
        diskGiB: 0,
      });
    } finally {
      await t.server.store.setQuotaOverrides(orgId, { vcpu: null });
    }
  });

  it('refuses pause/resume in the wrong state and on unknown VMs', async () => {
    const running = (await api.post('/v1/vms', { machineType: 'c1m2' })).body;
    const resume = await api.post(`/v1/vms/${running.id}/resume`);
    expect(resume.status).toBe(200); // running: idempotent
    await api.del(`/v1/vms/${running.id}`);
    // A VM in `error`: its launch failed.
    t.runtime.failLaunch = new FakeRuntimeError('qemu_failed', 'boom');
    const failed = await api.post('/v1/vms', { machineType: 'c1m2' });
    t.runtime.failLaunch = undefined;
    expect(failed.status).toBe(502);
    const vm = (await api.get(`/v1/vms/${failed.body.vmId}`)).body;
    expect(vm.status).toBe('error');
    const pause = await api.post(`/v1/vms/${vm.id}/pause`);
    expect(pause.status).toBe(409);
    expect(pause.body.code).toBe('conflict');
    expect((await api.post(`/v1/vms/${vm.id}/resume`)).status).toBe(409);
    expect((await api.post('/v1/vms/nope/pause')).status).toBe(404);
    expect((await api.post('/v1/vms/nope/resume')).status).toBe(404);
    expect((await api.post(`/v1/vms/${vm.id}/pause`, undefined, { noAuth: true })).status).toBe(
      401,
    );
    await api.del(`/v1/vms/${vm.id}`);
  });

  it('reports TTL fields: expiresAtMs while running, ttlRemainingMs while paused', async () => {
    const before = Date.now();
    const vm = (
      await api.post('/v1/vms', { machineType: 'c1m2', ttl: { seconds: 600, action: 'pause' } })
    ).body;
    expect(vm.ttl).toEqual({ seconds: 600, action: 'pause' });
    expect(vm.expiresAtMs).toBeGreaterThanOrEqual(before + 600_000);
    expect(vm.expiresAtMs).toBeLessThanOrEqual(Date.now() + 600_000);
    expect(vm.ttlRemainingMs).toBeUndefined();

    await sleep(50);
    const paused = (await api.post(`/v1/vms/${vm.id}/pause`)).body;
    expect(paused.expiresAtMs).toBeUndefined();
    expect(paused.ttlRemainingMs).toBeGreaterThan(590_000);
    expect(paused.ttlRemainingMs).toBeLessThan(600_000);

    // Refresh while paused: a full cycle at the next resume.
    const refreshed = await api.post(`/v1/vms/${vm.id}/ttl/refresh`);
    expect(refreshed.status).toBe(200);
    expect(refreshed.body.ttlRemainingMs).toBe(600_000);
    const t0 = Date.now();
    const resumed = (await api.post(`/v1/vms/${vm.id}/resume`)).body;
    expect(resumed.ttlRemainingMs).toBeUndefined();
    expect(resumed.expiresAtMs).toBeGreaterThanOrEqual(t0 + 600_000);

    // Refresh while running: now + seconds.
    await sleep(30);
    const t1 = Date.now();
    const r2 = (await api.post(`/v1/vms/${vm.id}/ttl/refresh`)).body;
    expect(r2.expiresAtMs).toBeGreaterThanOrEqual(t1 + 600_000);

    // PATCH replaces the TTL (and restarts the countdown); null removes it.
    const t2 = Date.now();
    const patched = (
      await api.patch(`/v1/vms/${vm.id}`, { ttl: { seconds: 60, action: 'delete' } })
    ).body;
    expect(patched.ttl).toEqual({ seconds: 60, action: 'delete' });
    expect(patched.expiresAtMs).toBeGreaterThanOrEqual(t2 + 60_000);
    expect(patched.expiresAtMs).toBeLessThan(t2 + 61_000);
    const cleared = (await api.patch(`/v1/vms/${vm.id}`, { ttl: null })).body;
    expect(cleared.ttl).toBeNull();
    expect(cleared.expiresAtMs).toBeUndefined();

    const noTtl = await api.post(`/v1/vms/${vm.id}/ttl/refresh`);
    expect(noTtl.status).toBe(409);
    expect(noTtl.body.error).toMatch(/no TTL/);
    expect(noTtl.headers['x-should-retry']).toBe('false');
    await api.del(`/v1/vms/${vm.id}`);
  });

  it('validates TTLs: at most one year, a positive whole number, pause or delete', async () => {
    for (const ttl of [
      { seconds: 31_536_001, action: 'pause' },
      { seconds: 0, action: 'pause' },
      { seconds: 1.5, action: 'delete' },
      { seconds: 10, action: 'stop' },
      { seconds: 10 },
    ]) {
      const res = await api.post('/v1/vms', { machineType: 'c1m2', ttl });
      expect(res.status, JSON.stringify(ttl)).toBe(400);
      expect(res.body.field).toMatch(/^ttl/);
    }
    const max = await api.post('/v1/vms', {
      machineType: 'c1m2',
      ttl: { seconds: 31_536_000, action: 'delete' },
    });
    expect(max.status).toBe(201);
    expect((await api.patch(`/v1/vms/${max.body.id}`, { ttl: { seconds: -1 } })).status).toBe(400);
    await api.del(`/v1/vms/${max.body.id}`);
  });

  it('a 1 s TTL pauses one VM and deletes another on time; resume starts a fresh cycle', async () => {
    const [p, d] = await Promise.all([
      api.post('/v1/vms', { machineType: 'c1m2', ttl: { seconds: 1, action: 'pause' } }),
      api.post('/v1/vms', { machineType: 'c1m2', ttl: { seconds: 1, action: 'delete' } }),
    ]);
    const pausedAt = await waitStatus(api, p.body.id, 'paused');
    const deletedAt = await waitStatus(api, d.body.id, 'gone');
    expect(pausedAt - p.body.expiresAtMs).toBeLessThan(300);
    expect(deletedAt - d.body.expiresAtMs).toBeLessThan(300);
    expect(pausedAt).toBeGreaterThanOrEqual(p.body.expiresAtMs);
    const paused = (await api.get(`/v1/vms/${p.body.id}`)).body;
    expect(paused.ttlRemainingMs).toBe(1000);
    expect(t.runtime.runningVmIds()).not.toContain(d.body.id);

    const resumed = (await api.post(`/v1/vms/${p.body.id}/resume`)).body;
    expect(resumed.status).toBe('running');
    await waitStatus(api, p.body.id, 'paused', 3000);
    await api.del(`/v1/vms/${p.body.id}`);
  });
});

describe('TTL across a restart (FakeRuntime with persisted state)', () => {
  let dataDir: string;
  afterAll(async () => {
    await fs.rm(dataDir, { recursive: true, force: true });
  });

  it('an expiry that passes while the server is down fires at the next start; paused VMs stay paused', async () => {
    dataDir = await makeDataDir();
    const stateFile = path.join(dataDir, 'fake-runtime.json');
    const first = await startTestServer({ dataDir, runtime: new FakeRuntime({ stateFile }) });
    const api = new TestClient(first.url, first.key);
    const ttlVm = (
      await api.post('/v1/vms', { machineType: 'c1m2', ttl: { seconds: 1, action: 'pause' } })
    ).body;
    const held = (await api.post('/v1/vms', { machineType: 'c1m2' })).body;
    await api.post(`/v1/vms/${held.id}/pause`);
    await first.server.close();
    await sleep(1200);

    const second = await startTestServer({ dataDir, runtime: new FakeRuntime({ stateFile }) });
    try {
      const api2 = new TestClient(second.url, second.key);
      expect(second.server.recovery.adopted.sort()).toEqual([ttlVm.id, held.id].sort());
      await waitStatus(api2, ttlVm.id, 'paused', 2000);
      expect((await api2.get(`/v1/vms/${held.id}`)).body.status).toBe('paused');
      expect((await api2.post(`/v1/vms/${held.id}/resume`)).body.status).toBe('running');
    } finally {
      await second.server.close();
    }
  });
});
