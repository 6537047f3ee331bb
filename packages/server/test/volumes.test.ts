/**
 * Volumes through the HTTP API on the FakeRuntime (the real mechanism is in volumes-vm.test.ts):
 * CRUD and validation, org isolation, the one-writer rule, pending attachments on paused VMs,
 * snapshot records and restore warnings, VM delete, and the race-free volumeGiB quota.
 */
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TestClient, createOrgWithKey, startTestServer, type TestServer } from './helpers.js';

describe('volumes (API, fake runtime)', () => {
  let t: TestServer;
  let api: TestClient;
  let other: TestClient;
  let orgId: string;

  beforeAll(async () => {
    t = await startTestServer();
    api = new TestClient(t.url, t.key);
    other = api.withKey(await createOrgWithKey(t.server, 'volumes-other'));
    orgId = (await api.get('/v1/org/quotas')).body.orgId;
  });
  afterAll(async () => {
    await t.cleanup();
  });

  const launch = async (name: string, extra: object = {}) => {
    const r = await api.post('/v1/vms', { machineType: 'c1m2', name, ...extra });
    expect(r.status).toBe(201);
    return r.body;
  };

  it('creates a sparse ext4 file, lists, gets, renames, deletes; bad input names the field', async () => {
    const r = await api.post('/v1/volumes', { name: 'data', sizeGiB: 2, accessMode: 'rw' });
    expect(r.status).toBe(201);
    expect(r.body).toMatchObject({
      id: expect.any(String),
      name: 'data',
      orgId,
      sizeGiB: 2,
      accessMode: 'rw',
      status: 'ready',
      mountedCount: 0,
      usedGiB: expect.any(Number),
    });
    const file = path.join(t.dataDir, 'volumes', `${r.body.id}.ext4`);
    const st = fs.statSync(file);
    expect(st.size).toBe(2 * 2 ** 30);
    expect(st.blocks * 512).toBeLessThan(200 * 2 ** 20); // sparse
    expect((await api.get('/v1/volumes')).body.map((v: { id: string }) => v.id)).toContain(
      r.body.id,
    );
    expect((await api.get('/v1/volumes/data')).body.id).toBe(r.body.id);
    expect((await api.patch(`/v1/volumes/${r.body.id}`, { name: 'renamed' })).body.name).toBe(
      'renamed',
    );
    expect((await other.get(`/v1/volumes/${r.body.id}`)).status).toBe(404);
    expect((await other.del(`/v1/volumes/${r.body.id}`)).status).toBe(404);
    expect((await api.get('/v1/volumes/nope-000')).status).toBe(404);

    for (const [body, field] of [
      [{ name: 'x', sizeGiB: 0, accessMode: 'rw' }, 'sizeGiB'],
      [{ name: 'x', sizeGiB: 1, accessMode: 'rx' }, 'accessMode'],
      [{ sizeGiB: 1, accessMode: 'rw' }, 'name'],
    ] as const) {
      const bad = await api.post('/v1/volumes', body);
      expect(bad.status).toBe(400);
      expect(bad.body).toMatchObject({ code: 'bad_request', field });
    }
    const del = await api.del(`/v1/volumes/${r.body.id}`);
    expect(del.body).toEqual({ id: r.body.id, deleted: true });
    expect(fs.existsSync(file)).toBe(false);
    expect((await api.get(`/v1/volumes/${r.body.id}`)).status).toBe(404);
  });

  it('attaches: one writer at a time (409), readers share, mount paths checked, detach', async () => {
    const vol = (await api.post('/v1/volumes', { name: 'shared', sizeGiB: 1, accessMode: 'rw' }))
      .body;
    const a = await launch('att-a');
    const b = await launch('att-b');
    const bad = await api.post(`/v1/vms/${a.id}/volumes`, {
      volumeId: vol.id,
      mountPath: '/etc/x',
    });
    expect(bad.status).toBe(400);
    expect(bad.body.field).toBe('mountPath');
    const dots = await api.post(`/v1/vms/${a.id}/volumes`, {
      volumeId: vol.id,
      mountPath: '/data/../etc',
    });
    expect(dots.status).toBe(400);

    const rw = await api.post(`/v1/vms/${a.id}/volumes`, {
      volumeId: vol.id,
      mountPath: '/data/v',
    });
    expect(rw.status).toBe(200);
    expect(rw.body).toEqual({
      volumeId: vol.id,
      mountPath: '/data/v',
      mountStatus: 'mounted',
      readOnly: false,
    });
    const second = await api.post(`/v1/vms/${b.id}/volumes`, {
      volumeId: vol.id,
      mountPath: '/data/v',
    });
    expect(second.status).toBe(409);
    expect(second.body.error).toMatch(/attached read-write to VM/);
    expect(second.headers['x-should-retry']).toBe('false');
    const ro = await api.post(`/v1/vms/${b.id}/volumes`, {
      volumeId: vol.id,
      mountPath: '/data/v',
      readOnly: true,
    });
    expect(ro.status).toBe(409);

    expect((await api.get(`/v1/vms/${a.id}`)).body.volumes).toEqual([rw.body]);
    expect((await api.get(`/v1/volumes/${vol.id}`)).body.mountedCount).toBe(1);
    expect((await api.get(`/v1/volumes/${vol.id}/attachments`)).body).toEqual([
      { ...rw.body, vmId: a.id },
    ]);
    expect((await api.del(`/v1/volumes/${vol.id}`)).status).toBe(409); // attached

    expect((await api.del(`/v1/vms/${a.id}/volumes/${vol.id}`)).body).toEqual({ detached: true });
    expect((await api.del(`/v1/vms/${a.id}/volumes/${vol.id}`)).status).toBe(404);
    // Readers share.
    for (const vm of [a, b]) {
      const r = await api.post(`/v1/vms/${vm.id}/volumes`, {
        volumeId: vol.id,
        mountPath: '/mnt/v',
        readOnly: true,
      });
      expect(r.body.mountStatus).toBe('mounted');
    }
    expect((await api.get(`/v1/volumes/${vol.id}`)).body.mountedCount).toBe(2);
    const writer = await launch('att-c');
    expect(
      (await api.post(`/v1/vms/${writer.id}/volumes`, { volumeId: vol.id, mountPath: '/mnt/v' }))
        .status,
    ).toBe(409);
    // Another org can see neither the VM nor the volume.
    expect(
      (await other.post(`/v1/vms/${a.id}/volumes`, { volumeId: vol.id, mountPath: '/mnt/w' }))
        .status,
    ).toBe(404);
    // Deleting a VM detaches (never deletes) its volumes.
    await api.del(`/v1/vms/${a.id}`);
    await api.del(`/v1/vms/${b.id}`);
    await api.del(`/v1/vms/${writer.id}`);
    expect((await api.get(`/v1/volumes/${vol.id}`)).body).toMatchObject({
      status: 'ready',
      mountedCount: 0,
    });
    expect((await api.del(`/v1/volumes/${vol.id}`)).status).toBe(200);
  });

  it('a read-only volume refuses a writable attachment; a paused VM attaches on resume', async () => {
    const vol = (await api.post('/v1/volumes', { name: 'ro', sizeGiB: 1, accessMode: 'ro' })).body;
    const vm = await launch('paused-one');
    const rw = await api.post(`/v1/vms/${vm.id}/volumes`, {
      volumeId: vol.id,
      mountPath: '/mnt/r',
      readOnly: false,
    });
    expect(rw.status).toBe(409);
    expect((await api.post(`/v1/vms/${vm.id}/pause`)).status).toBe(200);
    const pending = await api.post(`/v1/vms/${vm.id}/volumes`, {
      volumeId: vol.id,
      mountPath: '/mnt/r',
    });
    expect(pending.body).toMatchObject({ mountStatus: 'pending', readOnly: true });
    expect(t.runtime.get(vm.id)?.volumes).toBeUndefined();
    await api.post(`/v1/vms/${vm.id}/resume`);
    for (
      let i = 0;
      i < 50 && (await api.get(`/v1/vms/${vm.id}`)).body.volumes[0].mountStatus !== 'mounted';
      i++
    ) {
      await new Promise((r) => setTimeout(r, 20));
    }
    expect((await api.get(`/v1/vms/${vm.id}`)).body.volumes[0].mountStatus).toBe('mounted');
    expect(t.runtime.get(vm.id)?.volumes?.[0]).toMatchObject({ volumeId: vol.id, readOnly: true });
    await api.del(`/v1/vms/${vm.id}`);
  });

  it('snapshots record attachments; a restore re-attaches and reports what it skipped', async () => {
    const keep = (await api.post('/v1/volumes', { name: 'keep', sizeGiB: 1, accessMode: 'rw' }))
      .body;
    const gone = (await api.post('/v1/volumes', { name: 'gone', sizeGiB: 1, accessMode: 'rw' }))
      .body;
    const ceiling = (await api.post('/v1/volumes', { name: 'ceil', sizeGiB: 1, accessMode: 'rw' }))
      .body;
    const src = await launch('snap-src', {
      volumes: [
        { volumeId: keep.id, mountPath: '/data/keep' },
        { volumeId: gone.id, mountPath: '/data/gone' },
        { volumeId: ceiling.id, mountPath: '/data/ceil' },
      ],
    });
    expect(src.volumes.map((v: { mountStatus: string }) => v.mountStatus)).toEqual([
      'mounted',
      'mounted',
      'mounted',
    ]);
    const snap = (await api.post('/v1/snapshots', { vmId: src.id })).body;
    expect(snap.volumes).toEqual([
      { volumeId: keep.id, mountPath: '/data/keep', readOnly: false },
      { volumeId: gone.id, mountPath: '/data/gone', readOnly: false },
      { volumeId: ceiling.id, mountPath: '/data/ceil', readOnly: false },
    ]);
    // The source still holds `keep` read-write; `gone` is deleted; `ceil` becomes read-only.
    await api.del(`/v1/vms/${src.id}/volumes/${gone.id}`);
    await api.del(`/v1/vms/${src.id}/volumes/${ceiling.id}`);
    await api.del(`/v1/volumes/${gone.id}`);
    await api.patch(`/v1/volumes/${ceiling.id}`, { accessMode: 'ro' });
    const r = await api.post('/v1/vms', { snapshotId: snap.id });
    expect(r.status).toBe(201);
    expect(r.body.volumes).toEqual([]);
    expect(r.body.attachmentWarnings.skippedSnapshotVolumes).toEqual([
      { volumeId: gone.id, mountPath: '/data/gone', reason: 'deleted' },
      { volumeId: ceiling.id, mountPath: '/data/ceil', reason: 'vol_ro_ceiling_after_patch' },
      { volumeId: keep.id, mountPath: '/data/keep', reason: 'rw_attached_elsewhere' },
    ]);
    // Once the source lets go, a second restore gets `keep` back; an explicit list replaces it.
    await api.del(`/v1/vms/${src.id}`);
    const again = await api.post('/v1/vms', { snapshotId: snap.id });
    expect(again.body.volumes).toEqual([
      { volumeId: keep.id, mountPath: '/data/keep', mountStatus: 'mounted', readOnly: false },
    ]);
    const explicit = await api.post('/v1/vms', {
      snapshotId: snap.id,
      volumes: [{ volumeId: ceiling.id, mountPath: '/mnt/c' }],
    });
    expect(explicit.body.volumes).toEqual([
      { volumeId: ceiling.id, mountPath: '/mnt/c', mountStatus: 'mounted', readOnly: true },
    ]);
    // Another org's restore of an id it cannot see: failed, not attached.
    const foreign = await other.post('/v1/vms', {
      machineType: 'c1m2',
      volumes: [{ volumeId: keep.id, mountPath: '/mnt/k' }],
    });
    expect(foreign.body.volumes).toEqual([]);
    expect(foreign.body.attachmentWarnings.failedVolumeAttachments[0]).toMatchObject({
      volumeId: keep.id,
    });
    for (const vm of [r.body, again.body, explicit.body]) await api.del(`/v1/vms/${vm.id}`);
    await other.del(`/v1/vms/${foreign.body.id}`);
  });

  it('grows and shrinks a detached volume (a shrink must fit)', async () => {
    const vol = (await api.post('/v1/volumes', { name: 'grow', sizeGiB: 1, accessMode: 'rw' }))
      .body;
    const grown = await api.patch(`/v1/volumes/${vol.id}`, { sizeGiB: 3 });
    expect(grown.body).toMatchObject({ sizeGiB: 3 });
    expect(fs.statSync(path.join(t.dataDir, 'volumes', `${vol.id}.ext4`)).size).toBe(3 * 2 ** 30);
    expect((await api.patch(`/v1/volumes/${vol.id}`, { sizeGiB: 2 })).body.sizeGiB).toBe(2);
    await api.del(`/v1/volumes/${vol.id}`);
  });

  it('volumeGiB quota: 20 concurrent creates of 3 GiB under a 10 GiB limit admit exactly 3', async () => {
    // (Volumes of the tests above are still there: the limit leaves room for exactly 3 more.)
    const before = (await api.get('/v1/org/quotas')).body.usage;
    await t.server.store.setQuotaOverrides(orgId, {
      volumeGiB: before.volumeGiB + 10,
      volumeCount: 100,
    });
    const results = await Promise.all(
      Array.from({ length: 20 }, (_, i) =>
        api.post('/v1/volumes', { name: `q${i}`, sizeGiB: 3, accessMode: 'rw' }),
      ),
    );
    expect(results.filter((r) => r.status === 201)).toHaveLength(3);
    const refused = results.filter((r) => r.status === 429);
    expect(refused).toHaveLength(17);
    expect(refused[0]!.body).toMatchObject({
      code: 'quota_exceeded',
      dimension: 'volume_gib',
    });
    expect((await api.get('/v1/org/quotas')).body.usage).toMatchObject({
      volumeCount: before.volumeCount + 3,
      volumeGiB: before.volumeGiB + 9,
    });
    // A grow past the limit is refused too, and changes nothing.
    const one = results.find((r) => r.status === 201)!.body;
    const grow = await api.patch(`/v1/volumes/${one.id}`, { sizeGiB: 5 });
    expect(grow.status).toBe(429);
    expect((await api.get(`/v1/volumes/${one.id}`)).body.sizeGiB).toBe(3);
    for (const r of results.filter((x) => x.status === 201))
      await api.del(`/v1/volumes/${r.body.id}`);
    expect((await api.get('/v1/org/quotas')).body.usage).toMatchObject(before);
    await t.server.store.setQuotaOverrides(orgId, { volumeGiB: null, volumeCount: null });
  });

  it('bucket mounts stay 501', async () => {
    const vm = await launch('buckets');
    const r = await api.post(`/v1/vms/${vm.id}/bucket-mounts`, {});
    expect(r.status).toBe(501);
    await api.del(`/v1/vms/${vm.id}`);
  });
});
