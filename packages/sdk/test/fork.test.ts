// client.fork and client.lineage against the real API server with the FakeRuntime (issue 18).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FastVM, QuotaExceededError, type LineageNode } from '../src/index.js';
import { startTestServer, type TestServer } from './helpers/server.js';

let server: TestServer;
let client: FastVM;

beforeAll(async () => {
  server = await startTestServer();
  client = new FastVM({ apiKey: server.key, baseUrl: server.url });
});

afterAll(async () => {
  await client?.close();
  await server?.stop();
});

describe('fork and lineage', () => {
  it('fork(snapshot, n) returns n running VMs named <prefix>-i that answer commands', async () => {
    const base = await client.launch({ name: 'fork-base', envVars: { A: '1' } });
    const snap = await client.snapshot(base, { name: 'fork-point' });
    expect(snap.parentSnapshotId).toBeNull();
    // Computed after `ready` (the fake has them at once): on a later GET.
    expect((await client.getSnapshot(snap)).digests).toMatchObject({
      memory: expect.stringMatching(/^sha256:/),
    });
    const vms = await client.fork(snap, 3, { namePrefix: 'w', envVars: { B: '2' } });
    expect(vms.map((v) => [v.name, v.status, v.sourceSnapshotId])).toEqual([
      ['w-1', 'running', snap.id],
      ['w-2', 'running', snap.id],
      ['w-3', 'running', snap.id],
    ]);
    expect(vms[0]!.envVars).toEqual({ A: '1', B: '2' });
    const out = await Promise.all(vms.map((v) => client.run(v, 'hostname')));
    expect(out.map((r) => r.stdout.trim())).toEqual(['w-1', 'w-2', 'w-3']);
    // By name, default prefix.
    const more = await client.fork('fork-point', 2);
    expect(more.map((v) => v.name)).toEqual(['fork-point-1', 'fork-point-2']);

    const lineage = await client.lineage(snap);
    expect(lineage.ancestors.map((n) => [n.type, n.name])).toEqual([
      ['vm', 'fork-base'],
      ['snapshot', 'fork-point'],
    ]);
    expect(lineage.descendants.map((n: LineageNode) => n.name)).toEqual([
      'w-1',
      'w-2',
      'w-3',
      'fork-point-1',
      'fork-point-2',
    ]);
    expect(lineage.truncated).toBe(false);
    const child = await client.snapshot(vms[0]!, { name: 'child' });
    expect(child.parentSnapshotId).toBe(snap.id);
    for (const v of [base, ...vms, ...more]) await client.remove(v);
  });

  it('a fork over quota throws QuotaExceededError and starts nothing', async () => {
    const snap = (await client.listSnapshots()).find((s) => s.name === 'fork-point')!;
    const before = (await client.list()).length;
    const err = await client.fork(snap, 100).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(QuotaExceededError);
    expect((err as QuotaExceededError).body).toMatchObject({ dimension: 'vcpu', count: 100 });
    expect((await client.list()).length).toBe(before);
  });
});
