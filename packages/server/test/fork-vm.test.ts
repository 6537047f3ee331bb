/**
 * Fork N, lineage and content digests against real QEMU VMs (issue 18): three forks of a real
 * snapshot in one call answer `hostname` with their own names; lineage is recorded; digests
 * appear on the snapshot after a while; a flipped byte in a layer makes a fork 409
 * `snapshot_corrupt` and leaves no VM behind.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { QemuRuntime } from '@fastvm/runtime';
import { sleep, type TestClient } from './helpers.js';
import { startVmTestServer, type VmTestServer } from './vm-server.js';

describe('fork and lineage (real QEMU VMs)', () => {
  let vms: VmTestServer | undefined;
  let runtime: QemuRuntime;
  let api: TestClient;

  beforeAll(async () => {
    vms = await startVmTestServer();
    ({ runtime, api } = vms);
  }, 180_000);

  afterAll(async () => {
    await vms?.close();
  });

  it('forks 3 running VMs in one call, each its own machine; lineage and digests', async () => {
    const base = await api.post('/v1/vms', { machineType: 'c1m2', name: 'base' });
    expect(base.status).toBe(201);
    const setup = await api.post(`/v1/vms/${base.body.id}/exec`, {
      command: 'echo from-base > /root/mark; sync',
    });
    expect(setup.body.exitCode).toBe(0);
    const snap = await api.post('/v1/snapshots', { vmId: base.body.id, name: 'point' });
    expect(snap.status).toBe(201);
    expect(snap.body.parentSnapshotId).toBeNull();

    const t0 = Date.now();
    const fork = await api.post(`/v1/snapshots/${snap.body.id}/fork`, {
      count: 3,
      namePrefix: 'branch',
    });
    const ms = Date.now() - t0;
    expect(fork.status, JSON.stringify(fork.body)).toBe(201);
    const vms = fork.body.vms as { id: string; name: string; status: string }[];
    console.log(`fork 3 (real VMs): ${ms} ms until all running`);
    expect(vms.map((v) => [v.name, v.status])).toEqual([
      ['branch-1', 'running'],
      ['branch-2', 'running'],
      ['branch-3', 'running'],
    ]);
    const answers = await Promise.all(
      vms.map((v) => api.post(`/v1/vms/${v.id}/exec`, { command: 'hostname; cat /root/mark' })),
    );
    expect(answers.map((a) => a.body.stdout)).toEqual([
      'branch-1\nfrom-base\n',
      'branch-2\nfrom-base\n',
      'branch-3\nfrom-base\n',
    ]);

    // Lineage: a snapshot of a fork names the fork's source.
    const child = await api.post('/v1/snapshots', { vmId: vms[0]!.id, name: 'child' });
    expect(child.body).toMatchObject({ vmId: vms[0]!.id, parentSnapshotId: snap.body.id });
    const lineage = (await api.get(`/v1/snapshots/${child.body.id}/lineage`)).body;
    expect(lineage.ancestors.map((n: { id: string }) => n.id)).toEqual([
      base.body.id,
      snap.body.id,
      vms[0]!.id,
      child.body.id,
    ]);
    const below = (await api.get(`/v1/snapshots/${snap.body.id}/lineage`)).body.descendants;
    expect(below.map((n: { name: string }) => n.name)).toEqual([
      'branch-1',
      'branch-2',
      'branch-3',
    ]);
    const ids = [base.body.id as string, ...vms.map((v) => v.id)];
    await Promise.all(ids.map((id) => api.del(`/v1/vms/${id}`)));

    // Digests arrive in the background (after the flatten).
    let digests: Record<string, string> | undefined;
    for (let i = 0; i < 120 && !digests; i++) {
      digests = (await api.get(`/v1/snapshots/${snap.body.id}`)).body.digests;
      if (!digests) await sleep(500);
    }
    expect(digests).toEqual({
      memory: expect.stringMatching(/^sha256:[0-9a-f]{64}$/),
      disk: expect.stringMatching(/^sha256:[0-9a-f]{64}$/),
      state: expect.stringMatching(/^sha256:[0-9a-f]{64}$/),
    });
  }, 240_000);

  it('a corrupted layer makes the fork 409 snapshot_corrupt and leaves nothing', async () => {
    const snap = (await api.get('/v1/snapshots/point')).body;
    const record = JSON.parse(
      await fs.readFile(path.join(runtime.dataDir, 'snapshots', snap.id, 'snapshot.json'), 'utf8'),
    ) as { state: string };
    // Flip a byte of the device state (owned by the snapshot, verified before QEMU starts).
    const fh = await fs.open(record.state, 'r+');
    const b = Buffer.alloc(1);
    await fh.read(b, 0, 1, 100);
    await fh.write(Buffer.from([b[0]! ^ 0xff]), 0, 1, 100);
    await fh.close();
    const before = (await api.get('/v1/org/quotas')).body.usage;
    const res = await api.post(`/v1/snapshots/${snap.id}/fork`, { count: 2 });
    expect(res.status).toBe(409);
    expect(res.body).toMatchObject({ code: 'snapshot_corrupt', count: 2, failed: 2 });
    expect(res.body.error).toMatch(/state layer is corrupt/);
    expect((await api.get('/v1/vms')).body).toEqual([]);
    expect((await api.get('/v1/org/quotas')).body.usage).toEqual(before);
    expect(runtime.list()).toEqual([]);
    // A plain restore says the same.
    const one = await api.post('/v1/vms', { snapshotId: snap.id });
    expect(one.status, JSON.stringify(one.body)).toBe(409);
    expect(one.body.code).toBe('snapshot_corrupt');
    if (one.body.vmId) await api.del(`/v1/vms/${one.body.vmId}`);
  }, 120_000);
});
