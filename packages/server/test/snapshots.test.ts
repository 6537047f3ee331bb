import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FakeRuntimeError } from '../src/testing/index.js';
import { TRANSPORTS, TestClient, startTestServer, type TestServer } from './helpers.js';

const FIREWALL = {
  mode: 'restricted',
  ingress: [{ protocol: 'tcp', portStart: 22, description: 'ssh' }],
};

describe.each(TRANSPORTS)('snapshots over %s', (transport) => {
  let t: TestServer;
  let api: TestClient;
  let vm: { id: string; name: string };

  beforeAll(async () => {
    t = await startTestServer();
    api = new TestClient(t.url, t.key, transport);
    vm = (
      await api.post('/v1/vms', {
        machineType: 'c2m4',
        name: 'base',
        diskGiB: 20,
        firewall: FIREWALL,
      })
    ).body;
  });
  afterAll(async () => {
    api.close();
    await t.cleanup();
  });

  it('creates a ready snapshot carrying the VM firewall (201)', async () => {
    const res = await api.post('/v1/snapshots', {
      vmId: vm.id,
      name: '  my   snap ',
      metadata: { v: '1' },
    });
    expect(res.status).toBe(201);
    expect(res.body).toMatchObject({
      name: 'my snap',
      orgId: expect.any(String),
      vmId: vm.id,
      status: 'ready',
      machineName: 'c2m4',
      firewall: FIREWALL,
      metadata: { v: '1' },
    });
    expect(res.body.createdAt).toMatch(/Z$/);
    expect(t.runtime.snapshotIds()).toContain(res.body.id);
    await api.del(`/v1/snapshots/${res.body.id}`);
  });

  it('names snapshots snapshot-<vmId8> by default and accepts the VM name as vmId', async () => {
    const res = await api.post('/v1/snapshots', { vmId: 'base' });
    expect(res.status).toBe(201);
    expect(res.body.name).toBe(`snapshot-${vm.id.slice(0, 8)}`);
    await api.del(`/v1/snapshots/${res.body.id}`);
  });

  it('validates snapshot creation', async () => {
    const missing = await api.post('/v1/snapshots', {});
    expect(missing.status).toBe(400);
    expect(missing.body.field).toBe('vmId');
    const unknown = await api.post('/v1/snapshots', { vmId: 'nope' });
    expect(unknown.status).toBe(404);
    expect(unknown.body.field).toBe('vmId');
    const stopped = (await api.post('/v1/vms', { machineType: 'c1m2' })).body;
    t.runtime.crash(stopped.id);
    await new Promise((r) => setTimeout(r, 20));
    const conflict = await api.post('/v1/snapshots', { vmId: stopped.id });
    expect(conflict.status).toBe(409);
    expect(conflict.headers['x-should-retry']).toBe('false');
    await api.del(`/v1/vms/${stopped.id}`);
  });

  it('gets, lists (with metadata filters), renames and deletes', async () => {
    const a = (
      await api.post('/v1/snapshots', { vmId: vm.id, name: 'a', metadata: { tier: 'gold' } })
    ).body;
    const b = (await api.post('/v1/snapshots', { vmId: vm.id, name: 'b' })).body;
    expect((await api.get(`/v1/snapshots/${a.id}`)).body.id).toBe(a.id);
    expect((await api.get('/v1/snapshots/a')).body.id).toBe(a.id);
    expect((await api.get('/v1/snapshots/does-not-exist')).status).toBe(404);
    const list = (await api.get('/v1/snapshots')).body.map((s: { id: string }) => s.id);
    expect(list).toEqual(expect.arrayContaining([a.id, b.id]));
    expect(
      (await api.get('/v1/snapshots?metadata.tier=gold')).body.map((s: { id: string }) => s.id),
    ).toEqual([a.id]);
    expect((await api.get('/v1/snapshots?metadata[tier]=gold')).body).toHaveLength(1);

    const renamed = await api.patch(`/v1/snapshots/${a.id}`, { name: ' renamed  a ' });
    expect(renamed.status).toBe(200);
    expect(renamed.body.name).toBe('renamed a');
    expect((await api.patch(`/v1/snapshots/${a.id}`, {})).status).toBe(400);
    expect(
      (await api.patch(`/v1/snapshots/${a.id}`, { metadata: { x: 'y' } })).body.metadata,
    ).toEqual({ x: 'y' });

    for (const s of [a, b]) {
      const del = await api.del(`/v1/snapshots/${s.id}`);
      expect(del.body).toEqual({ id: s.id, deleted: true });
      expect((await api.get(`/v1/snapshots/${s.id}`)).status).toBe(404);
      expect(t.runtime.snapshotIds()).not.toContain(s.id);
    }
    expect((await api.del(`/v1/snapshots/${a.id}`)).status).toBe(404);
  });

  it('restores: inherits machine, disk and firewall unless overridden', async () => {
    const snap = (await api.post('/v1/snapshots', { vmId: vm.id, name: 'golden' })).body;
    const restored = await api.post('/v1/vms', { snapshotId: snap.id, name: 'fork' });
    expect(restored.status).toBe(201);
    expect(restored.body).toMatchObject({
      name: 'fork',
      status: 'running',
      machineName: 'c2m4',
      cpu: 2,
      diskGiB: 20,
      sourceName: 'golden',
      firewall: FIREWALL,
    });
    const byName = await api.post('/v1/vms', { snapshotId: 'golden', firewall: { mode: 'open' } });
    expect(byName.status).toBe(201);
    expect(byName.body.firewall).toEqual({ mode: 'open', ingress: [] });
    const sameDisk = await api.post('/v1/vms', {
      snapshotId: snap.id,
      diskGiB: 20,
      machineType: 'c2m4',
    });
    expect(sameDisk.status).toBe(201);

    expect((await api.post('/v1/vms', { snapshotId: snap.id, diskGiB: 15 })).body.field).toBe(
      'diskGiB',
    );
    expect((await api.post('/v1/vms', { snapshotId: snap.id, diskGiB: 40 })).body.field).toBe(
      'diskGiB',
    );
    expect(
      (await api.post('/v1/vms', { snapshotId: snap.id, machineType: 'c1m2' })).body.field,
    ).toBe('machineType');
    const unknown = await api.post('/v1/vms', { snapshotId: 'nope' });
    expect(unknown.status).toBe(404);
    expect(unknown.body.field).toBe('snapshotId');

    // The snapshot stays restorable after its source VM is gone.
    const src = (await api.post('/v1/vms', { machineType: 'c1m2' })).body;
    const snap2 = (await api.post('/v1/snapshots', { vmId: src.id })).body;
    await api.del(`/v1/vms/${src.id}`);
    expect((await api.post('/v1/vms', { snapshotId: snap2.id })).status).toBe(201);

    for (const v of (await api.get('/v1/vms')).body)
      if (v.id !== vm.id) await api.del(`/v1/vms/${v.id}`);
    await api.del(`/v1/snapshots/${snap.id}`);
    await api.del(`/v1/snapshots/${snap2.id}`);
  });

  it('a failed snapshot answers 502, is left in error and frees its quota', async () => {
    t.runtime.failSnapshot = new FakeRuntimeError('qemu_failed', 'migration failed');
    try {
      const res = await api.post('/v1/snapshots', { vmId: vm.id });
      expect(res.status).toBe(502);
      expect(res.headers['x-should-retry']).toBe('false');
      const snap = (await api.get(`/v1/snapshots/${res.body.snapshotId}`)).body;
      expect(snap).toMatchObject({
        status: 'error',
        statusMessage: expect.stringContaining('migration'),
      });
      expect((await api.get('/v1/org/quotas')).body.usage.snapshotCount).toBe(0);
      await api.del(`/v1/snapshots/${snap.id}`);
    } finally {
      t.runtime.failSnapshot = undefined;
    }
  });
});
