/**
 * Snapshot mobility between hosts (issue 22) with real QEMU VMs: three servers on loopback, each
 * with its own runtime and data dir, share one PostgreSQL database (a scratch database of this
 * file's own) and the cluster secret; the host registry runs as in production, but mobility's
 * peers are a `StaticPeers` (the `cluster.mobility` factory) that says who is live, and restores
 * are sent to the host under test with the internal channel's forwarded marks (served there, as
 * a peer's forward is, instead of placed). A snapshot taken on A is
 * restored through B's API (B pulls it over A's internal routes, verified by digest); a byte
 * corrupted on the holder fails the pull and leaves nothing on B; with replication on, a new
 * snapshot is copied to B in the background and stays restorable on C while A is down; a fork of
 * 2 pulls at most once per host; a delete removes every copy. The internal routes refuse a request
 * without the cluster token (401) or with a wrong one (403).
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { QemuRuntime } from '@fastvm/runtime';
import { disposeRuntime, testRuntime } from '../../runtime/test/helpers.js';
import { StaticPeers } from '../src/cluster/static-peers.js';
import { FORWARDED_BY_HEADER } from '../src/cluster/forward.js';
import { ClusterSnapshotMobility } from '../src/cluster/snapshot-mobility.js';
import { CLUSTER_TOKEN_HEADER } from '../src/cluster/seams.js';
import { startServer, type ServerHandle } from '../src/index.js';
import { TestClient, makeDataDir, sleep } from './helpers.js';
import { scratchDatabase, type ScratchDatabase } from './pg-scratch.js';

const hasPg = !!process.env.FASTVM_TEST_DATABASE_URL;
if (!hasPg) {
  const why = 'no PostgreSQL (set FASTVM_TEST_DATABASE_URL; `npm test` does when one runs)';
  console.warn(`snapshot mobility across hosts skipped: ${why}`);
  it.skip(`snapshot mobility across hosts — skipped: ${why}`, () => {});
}

interface Host {
  id: string;
  runtime: QemuRuntime;
  server: ServerHandle;
  peers: StaticPeers;
  api: TestClient;
  dataDir: string;
}

describe.skipIf(!hasPg)('snapshot mobility across hosts (real QEMU VMs, PostgreSQL)', () => {
  const secret = `mob-secret-${Math.random().toString(16).slice(2)}`;
  const key = `fvm_mob_${Math.random().toString(16).slice(2)}`;
  let db: ScratchDatabase | undefined;
  const hosts: Host[] = [];
  let a: Host;
  let b: Host;
  let c: Host;

  async function startHost(id: string): Promise<Host> {
    const runtime = await testRuntime();
    const dataDir = await makeDataDir();
    const peers = new StaticPeers({ id, internalUrl: 'http://127.0.0.1:0' });
    const server = await startServer({
      port: 0,
      logLevel: process.env.FASTVM_TEST_LOG_LEVEL ?? 'silent',
      launchWaitMs: 120_000,
      dataDir,
      runtime,
      databaseUrl: db!.url,
      bootstrapKey: key,
      cluster: {
        secret,
        hostId: id,
        mobility: (deps) => new ClusterSnapshotMobility({ ...deps, peers, secret, replicas: 1 }),
      },
    });
    const host = { id, runtime, server, peers, dataDir, api: new TestClient(server.url, key) };
    hosts.push(host);
    return host;
  }
  const link = (from: Host, ...to: Host[]) => {
    for (const t of to) from.peers.add({ id: t.id, internalUrl: t.server.url });
  };
  const mob = (h: Host) => h.server.mobility as ClusterSnapshotMobility;
  /** Served by the host asked (as a peer's forward is), not placed elsewhere. */
  const here = { headers: { [FORWARDED_BY_HEADER]: 'mob-test', [CLUSTER_TOKEN_HEADER]: secret } };
  const holders = async (snapshotId: string) =>
    [...(await a.server.mobility!.holders(snapshotId))].sort();
  const exec = async (h: Host, vmId: string, command: string) => {
    const r = await h.api.post(`/v1/vms/${vmId}/exec`, { command });
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    expect(r.body.exitCode, r.body.stderr).toBe(0);
    return (r.body.stdout as string).trim();
  };
  const until = async (what: string, ok: () => Promise<boolean>, ms = 120_000) => {
    const end = Date.now() + ms;
    while (!(await ok())) {
      if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
      await sleep(200);
    }
  };

  beforeAll(async () => {
    db = await scratchDatabase('fastvm_mob');
    a = await startHost('mob-a');
    b = await startHost('mob-b');
    c = await startHost('mob-c');
    // A has no live peers yet (its first snapshot is not replicated); B and C see the others.
    link(b, a, c);
    link(c, a, b);
  }, 300_000);

  afterAll(async () => {
    for (const h of hosts) {
      h.api.close();
      await h.server.close().catch(() => {});
    }
    await Promise.all(hosts.map((h) => disposeRuntime(h.runtime)));
    await Promise.all(hosts.map((h) => fs.rm(h.dataDir, { recursive: true, force: true })));
    await db?.drop();
  });

  let source = '';
  let s1 = '';
  let sleeper = '';

  it('the internal routes need the cluster token: 401 without it, 403 with a wrong one', async () => {
    const url = `${a.server.url}/internal/v1/snapshots/no-such/manifest`;
    const none = await fetch(url);
    expect(none.status).toBe(401);
    expect(await none.json()).toMatchObject({ code: 'unauthorized' });
    const wrong = await fetch(url, { headers: { [CLUSTER_TOKEN_HEADER]: 'not-the-secret' } });
    expect(wrong.status).toBe(403);
    const right = await fetch(url, { headers: { [CLUSTER_TOKEN_HEADER]: secret } });
    expect(right.status).toBe(404);
    // An API key is no way in either, and the routes are not in the API document.
    const withKey = await fetch(url, { headers: { 'x-api-key': key } });
    expect(withKey.status).toBe(401);
    const doc = (await a.api.get('/openapi.json')).body as { paths: Record<string, unknown> };
    expect(Object.keys(doc.paths).filter((p) => p.startsWith('/internal'))).toEqual([]);
  });

  it('a snapshot taken on A restores through B, which pulls it from A', async () => {
    const vm = await a.api.post('/v1/vms', { machineType: 'c1m2', name: 'mob-source' });
    expect(vm.status, JSON.stringify(vm.body)).toBe(201);
    source = vm.body.id;
    await exec(a, source, 'echo from-host-a > /root/mob; sync');
    sleeper = await exec(a, source, 'setsid sleep 100000 </dev/null >/dev/null 2>&1 & echo $!');
    const snap = await a.api.post('/v1/snapshots', { vmId: source, name: 'mob-s1' });
    expect(snap.status, JSON.stringify(snap.body)).toBe(201);
    s1 = snap.body.id;
    expect(await holders(s1)).toEqual(['mob-a']);
    expect(await b.runtime.hasSnapshot(s1)).toBe(false);

    const restored = await b.api.post('/v1/vms', { snapshotId: s1, name: 'mob-on-b' }, here);
    expect(restored.status, JSON.stringify(restored.body)).toBe(201);
    expect(restored.body.status).toBe('running');
    // The VM runs on B's runtime, with A's disk and memory.
    expect(b.runtime.get(restored.body.id)?.state).toBe('running');
    expect(a.runtime.get(restored.body.id)).toBeUndefined();
    expect(await exec(b, restored.body.id, 'cat /root/mob')).toBe('from-host-a');
    expect(await exec(b, restored.body.id, `cat /proc/${sleeper}/comm`)).toBe('sleep');
    const pull = mob(b).pulls.find((p) => p.snapshotId === s1);
    expect(pull).toMatchObject({ from: 'mob-a' });
    expect(pull!.bytes).toBeGreaterThan(0);
    console.log(
      `pulled ${s1} to B: ${pull!.files} files, ${(pull!.bytes / 2 ** 20).toFixed(1)} MiB (${(pull!.wireBytes / 2 ** 20).toFixed(1)} MiB on the wire) in ${pull!.ms.toFixed(0)} ms`,
    );
    expect(await holders(s1)).toEqual(['mob-a', 'mob-b']);
  });

  it('a byte corrupted on the holder fails the pull with snapshot_corrupt and leaves nothing on B', async () => {
    const snap = await a.api.post('/v1/snapshots', { vmId: source, name: 'mob-bad' });
    expect(snap.status).toBe(201);
    const id = snap.body.id as string;
    await a.runtime.digestsSettled(id);
    const state = path.join(a.runtime.dataDir, 'snapshots', id, 'state.bin');
    const fh = await fs.open(state, 'r+');
    const { size } = await fh.stat();
    const one = Buffer.alloc(1);
    await fh.read(one, 0, 1, size >> 1);
    one[0]! ^= 0xff;
    await fh.write(one, 0, 1, size >> 1);
    await fh.close();
    const err = (await b.server.mobility!.ensureLocal(id).catch((e: unknown) => e)) as {
      code?: string;
      message?: string;
    };
    expect(err.code).toBe('snapshot_corrupt');
    expect(err.message).toMatch(/state\.bin does not match its digest/);
    expect(await b.runtime.hasSnapshot(id)).toBe(false);
    expect(await fs.readdir(path.join(b.runtime.dataDir, 'imports'))).toEqual([]);
    expect(await holders(id)).toEqual(['mob-a']);
    // With its only holder down, a pull is refused as retryable, naming the host.
    c.peers.down('mob-a');
    try {
      await expect(c.server.mobility!.ensureLocal(id)).rejects.toMatchObject({
        code: 'runtime_failed',
        retryable: true,
        message: expect.stringMatching(/held only by hosts that are down \(mob-a\)/),
      });
    } finally {
      c.peers.down('mob-a', false);
    }
    await expect(c.server.mobility!.ensureLocal('no-such-snapshot')).rejects.toThrow(
      /has no copy on any host/,
    );
  });

  let s2 = '';

  it('with replication on (1 copy), a new snapshot is copied to another host in the background', async () => {
    link(a, b);
    const snap = await a.api.post('/v1/snapshots', { vmId: source, name: 'mob-s2' });
    expect(snap.status).toBe(201);
    s2 = snap.body.id;
    await until('the replica on B', async () => (await holders(s2)).includes('mob-b'));
    expect(await b.runtime.hasSnapshot(s2)).toBe(true);
    expect(await holders(s2)).toEqual(['mob-a', 'mob-b']);
  });

  it('with A down, C restores the snapshot from its replica on B', async () => {
    c.peers.down('mob-a');
    try {
      const restored = await c.api.post('/v1/vms', { snapshotId: s2, name: 'mob-on-c' }, here);
      expect(restored.status, JSON.stringify(restored.body)).toBe(201);
      expect(restored.body.status).toBe('running');
      expect(mob(c).pulls.find((p) => p.snapshotId === s2)).toMatchObject({
        from: 'mob-b',
      });
      expect(await exec(c, restored.body.id, 'cat /root/mob')).toBe('from-host-a');
    } finally {
      c.peers.down('mob-a', false);
    }
  });

  it('a fork of 2 asked of a host that lacks the snapshot pulls at most once per host', async () => {
    // The fork is dealt out over the hosts (`fork-spread.ts`); a host that boots its share
    // without the snapshot pulls it once, whatever the share.
    const fork = await c.api.post(`/v1/snapshots/${s1}/fork`, { count: 2, namePrefix: 'mobf' });
    expect(fork.status, JSON.stringify(fork.body)).toBe(201);
    const vms = fork.body.vms as { id: string; status: string }[];
    expect(vms.map((v) => v.status)).toEqual(['running', 'running']);
    for (const v of vms) {
      const h = hosts.find((x) => x.runtime.get(v.id))!;
      expect(h, v.id).toBeDefined();
      expect(await h.runtime.hasSnapshot(s1)).toBe(true);
      expect(mob(h).pulls.filter((p) => p.snapshotId === s1).length).toBeLessThanOrEqual(1);
      expect(await exec(c, v.id, 'cat /root/mob')).toBe('from-host-a');
    }
  });

  it('deleting a snapshot removes every copy', async () => {
    link(a, c);
    expect(await holders(s2)).toEqual(['mob-a', 'mob-b', 'mob-c']);
    const del = await a.api.del(`/v1/snapshots/${s2}`);
    expect(del.status).toBe(200);
    expect(await holders(s2)).toEqual([]);
    for (const h of [a, b, c]) expect(await h.runtime.hasSnapshot(s2)).toBe(false);
    // And through another host's API: B deletes s1, A and C drop theirs.
    expect(await holders(s1)).toEqual(expect.arrayContaining(['mob-a', 'mob-b']));
    expect((await b.api.del(`/v1/snapshots/${s1}`)).status).toBe(200);
    expect(await holders(s1)).toEqual([]);
    for (const h of [a, b, c]) expect(await h.runtime.hasSnapshot(s1)).toBe(false);
  });
});
