/**
 * Snapshot mobility over the HTTP layer with the FakeRuntime (issue 22): cluster mode needs
 * PostgreSQL and the secret (with SQLite nothing of it runs, the internal routes do not exist);
 * on a scratch PostgreSQL database, two servers pull a snapshot over the real internal routes,
 * with the token checked before anything is served and a restore through the other host's API
 * (served there: the request carries the internal channel's forwarded marks, as a peer's
 * forward would, so placement does not send it back to the holder).
 * The real-VM version is `snapshot-mobility-vm.test.ts`.
 */
import fs from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLUSTER_TOKEN_HEADER } from '../src/cluster/seams.js';
import { FORWARDED_BY_HEADER } from '../src/cluster/forward.js';
import { startServer, type ServerHandle } from '../src/index.js';
import { FakeRuntime } from '../src/testing/index.js';
import { TestClient, makeDataDir, startTestServer } from './helpers.js';
import { scratchDatabase, type ScratchDatabase } from './pg-scratch.js';

const secret = 'mob-fake-secret';

it('with SQLite, cluster settings change nothing: no mobility, no internal routes', async () => {
  const t = await startTestServer({ cluster: { secret, hostId: 'mob-solo', snapshotReplicas: 1 } });
  try {
    expect(t.server.mobility).toBeUndefined();
    const res = await fetch(`${t.url}/internal/v1/snapshots/x/manifest`, {
      headers: { [CLUSTER_TOKEN_HEADER]: secret },
    });
    expect(res.status).toBe(404);
  } finally {
    await t.cleanup();
  }
});

const hasPg = !!process.env.FASTVM_TEST_DATABASE_URL;
if (!hasPg) {
  const why = 'no PostgreSQL (set FASTVM_TEST_DATABASE_URL; `npm test` does when one runs)';
  console.warn(`snapshot mobility (FakeRuntime, PostgreSQL) skipped: ${why}`);
  it.skip(`snapshot mobility (FakeRuntime, PostgreSQL) — skipped: ${why}`, () => {});
}

describe.skipIf(!hasPg)('snapshot mobility over HTTP (FakeRuntime, PostgreSQL)', () => {
  const key = `fvm_mobfake_${Math.random().toString(16).slice(2)}`;
  let db: ScratchDatabase | undefined;
  const started: { server: ServerHandle; dataDir: string; runtime: FakeRuntime }[] = [];

  async function host(id: string) {
    const runtime = new FakeRuntime();
    const dataDir = await makeDataDir();
    const server = await startServer({
      port: 0,
      logLevel: process.env.FASTVM_TEST_LOG_LEVEL ?? 'silent',
      shutdownGraceMs: 2000,
      dataDir,
      runtime,
      databaseUrl: db!.url,
      bootstrapKey: key,
      cluster: { secret, hostId: id },
    });
    started.push({ server, dataDir, runtime });
    return { server, runtime, api: new TestClient(server.url, key), id };
  }

  let a: Awaited<ReturnType<typeof host>>;
  let b: Awaited<ReturnType<typeof host>>;

  beforeAll(async () => {
    db = await scratchDatabase('fastvm_mobfake');
    // The host registry is the peers: each host finds the other at its advertised URL.
    a = await host('mobf-a');
    b = await host('mobf-b');
  });

  afterAll(async () => {
    for (const s of started) {
      await s.server.close().catch(() => {});
      await fs.rm(s.dataDir, { recursive: true, force: true });
    }
    await db?.drop();
  });

  it('serves nothing without the right token; B pulls over the routes and restores', async () => {
    const vm = await a.api.post('/v1/vms', { machineType: 'c1m2' });
    expect(vm.status).toBe(201);
    const put = await a.api.post(`/v1/vms/${vm.body.id}/exec`, {
      command: 'cat > /root/m',
      stdin: Buffer.from('fake-moved\n').toString('base64'),
    });
    expect(put.body.exitCode).toBe(0);
    const snap = await a.api.post('/v1/snapshots', { vmId: vm.body.id });
    expect(snap.status).toBe(201);
    const id = snap.body.id as string;
    expect(await a.server.mobility!.holders(id)).toEqual(['mobf-a']);

    const file = `${a.server.url}/internal/v1/snapshots/${id}/files/snapshot.json`;
    const none = await fetch(file);
    expect(none.status).toBe(401);
    const wrong = await fetch(file, { headers: { [CLUSTER_TOKEN_HEADER]: `${secret}x` } });
    expect(wrong.status).toBe(403);
    expect(await wrong.text()).not.toContain('fake-moved');
    const bad = await fetch(`${a.server.url}/internal/v1/snapshots/${id}/files/..%2Fx`, {
      headers: { [CLUSTER_TOKEN_HEADER]: secret },
    });
    expect(bad.status).toBe(400);

    const here = { [FORWARDED_BY_HEADER]: 'mobf-test', [CLUSTER_TOKEN_HEADER]: secret };
    const restored = await b.api.post('/v1/vms', { snapshotId: id }, { headers: here });
    expect(restored.status, JSON.stringify(restored.body)).toBe(201);
    expect(b.runtime.calls.filter((c) => c.method === 'importSnapshot')).toHaveLength(1);
    const out = await b.api.post(`/v1/vms/${restored.body.id}/exec`, { command: 'cat /root/m' });
    expect(out.body.stdout).toBe('fake-moved\n');
    expect([...(await a.server.mobility!.holders(id))].sort()).toEqual(['mobf-a', 'mobf-b']);

    // Deleting through B removes A's copy too.
    expect((await b.api.del(`/v1/snapshots/${id}`)).status).toBe(200);
    expect(await a.runtime.hasSnapshot(id)).toBe(false);
    expect(await b.runtime.hasSnapshot(id)).toBe(false);
    expect(await a.server.mobility!.holders(id)).toEqual([]);
  });
});
