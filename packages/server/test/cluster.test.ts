/**
 * Several hosts over one PostgreSQL, with the FakeRuntime (the HTTP and coordination layers;
 * `cluster-vm.test.ts` runs real QEMU hosts in network namespaces): placement, forwarding,
 * org scoping through a forward, restore on the snapshot's host, the cross-host quota race,
 * the internal routes' token, a host lost and back, drain. Plus placement as a pure function.
 */
import fs from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from '../src/cli.js';
import { clusterFromEnv } from '../src/config.js';
import { loadHostId } from '../src/cluster/host-id.js';
import type { HostInfo } from '../src/cluster/host-registry.js';
import { place } from '../src/cluster/placement.js';
import { CLUSTER_TOKEN_HEADER, type SnapshotMobility } from '../src/cluster/seams.js';
import { startServer, type ServerHandle } from '../src/index.js';
import { FakeRuntime } from '../src/testing/index.js';
import { createScratchDb, type ScratchDb } from './cluster-db.js';
import { ConsoleClient, consoleUrl } from './console-helpers.js';
import { TestClient, createOrgWithKey, makeDataDir, sleep } from './helpers.js';

const SECRET = 'cluster-test-secret-0123456789';
const KEY = 'fvm_cluster_test_bootstrap_key_000000000001';
const TIMEOUT_MS = 1500;

function hostInfo(id: string, over: Partial<HostInfo> = {}): HostInfo {
  return {
    id,
    internalUrl: `http://${id}`,
    advertiseUrl: `http://${id}`,
    state: 'active',
    stateReason: null,
    memoryLimitMiB: 8192,
    vcpuLimit: 8,
    machineTypes: [],
    guestImage: '',
    heartbeatAt: new Date().toISOString(),
    startedAt: new Date().toISOString(),
    live: true,
    memoryUsedMiB: 0,
    vcpuUsed: 0,
    ...over,
  };
}

describe('placement', () => {
  it('picks the host with the most free memory that fits, skipping draining, lost and silent hosts', () => {
    const hosts = [
      hostInfo('a', { memoryUsedMiB: 4096 }),
      hostInfo('b', { memoryUsedMiB: 1024 }),
      hostInfo('c', { state: 'draining' }),
      hostInfo('d', { state: 'lost', live: false }),
      hostInfo('e', { live: false }),
    ];
    const r = place(hosts, { memoryMiB: 2048, vcpu: 1 });
    expect('host' in r && r.host.id).toBe('b');
  });

  it('prefers holders of the golden or snapshot unless they are much fuller', () => {
    const hosts = [hostInfo('a', { memoryUsedMiB: 1024 }), hostInfo('b')];
    const prefer = new Set(['a']);
    const r1 = place(hosts, { memoryMiB: 1024, vcpu: 1, prefer });
    expect('host' in r1 && r1.host.id).toBe('a');
    const full = [hostInfo('a', { memoryUsedMiB: 4096 }), hostInfo('b')];
    const r2 = place(full, { memoryMiB: 1024, vcpu: 1, prefer });
    expect('host' in r2 && r2.host.id).toBe('b');
  });

  it('says why nothing fits', () => {
    const hosts = [hostInfo('a', { memoryUsedMiB: 8000 }), hostInfo('b', { vcpuUsed: 8 })];
    const r = place(hosts, { memoryMiB: 1024, vcpu: 1 });
    expect(r).toMatchObject({ reason: 'no_room' });
    const only = place([hostInfo('a', { state: 'lost', live: false }), hostInfo('b')], {
      memoryMiB: 1,
      vcpu: 1,
      only: new Set(['a']),
    });
    expect(only).toMatchObject({ reason: 'no_host' });
    expect((only as { detail: string }).detail).toContain('a: lost');
    // A draining holder still restores what only it has.
    const drained = place([hostInfo('a', { state: 'draining' }), hostInfo('b')], {
      memoryMiB: 1,
      vcpu: 1,
      only: new Set(['a']),
    });
    expect('host' in drained && drained.host.id).toBe('a');
  });
});

describe('cluster settings', () => {
  it('reads FASTVM_CLUSTER_SECRET and the rest, refusing bad values', () => {
    expect(clusterFromEnv({})).toBeUndefined();
    expect(
      clusterFromEnv({
        FASTVM_CLUSTER_SECRET: SECRET,
        FASTVM_HOST_ID: 'mh-a',
        FASTVM_ADVERTISE_URL: 'http://10.0.0.2:8080/',
        FASTVM_HEARTBEAT_MS: '1000',
        FASTVM_HOST_TIMEOUT_MS: '5000',
        FASTVM_SNAPSHOT_REPLICAS: '2',
      }),
    ).toEqual({
      secret: SECRET,
      hostId: 'mh-a',
      advertiseUrl: 'http://10.0.0.2:8080',
      heartbeatMs: 1000,
      hostTimeoutMs: 5000,
      snapshotReplicas: 2,
    });
    expect(clusterFromEnv({ FASTVM_CLUSTER_SECRET: SECRET })?.snapshotReplicas).toBe(0);
    expect(() =>
      clusterFromEnv({ FASTVM_CLUSTER_SECRET: SECRET, FASTVM_SNAPSHOT_REPLICAS: '17' }),
    ).toThrow(/FASTVM_SNAPSHOT_REPLICAS/);
    expect(() => clusterFromEnv({ FASTVM_CLUSTER_SECRET: 'short' })).toThrow(/16 characters/);
    expect(() => clusterFromEnv({ FASTVM_CLUSTER_SECRET: SECRET, FASTVM_HOST_ID: 'A_b' })).toThrow(
      /FASTVM_HOST_ID/,
    );
    expect(() =>
      clusterFromEnv({ FASTVM_CLUSTER_SECRET: SECRET, FASTVM_ADVERTISE_URL: '10.0.0.2:8080' }),
    ).toThrow(/FASTVM_ADVERTISE_URL/);
    expect(() =>
      clusterFromEnv({
        FASTVM_CLUSTER_SECRET: SECRET,
        FASTVM_HEARTBEAT_MS: '3000',
        FASTVM_HOST_TIMEOUT_MS: '5000',
      }),
    ).toThrow(/twice/);
  });

  it('keeps a generated host id in the data dir', async () => {
    const dir = await makeDataDir();
    try {
      const id = await loadHostId(dir);
      expect(id).toMatch(/^h-[0-9a-f]{12}$/);
      expect(await loadHostId(dir)).toBe(id);
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });
});

it('with SQLite the cluster secret changes nothing (one host, no internal routes)', async () => {
  const dataDir = await makeDataDir();
  const server = await startServer({
    port: 0,
    dataDir,
    runtime: new FakeRuntime(),
    bootstrapKey: KEY,
    logLevel: 'silent',
    dashboardDir: false,
    cluster: { secret: SECRET },
  });
  try {
    expect(server.cluster).toBeUndefined();
    const api = new TestClient(server.url, KEY);
    const r = await api.get('/internal/v1/host', {
      noAuth: true,
      headers: { [CLUSTER_TOKEN_HEADER]: SECRET },
    });
    expect(r.status).toBe(404);
    const vm = await api.post('/v1/vms', { machineType: 'c1m2' });
    expect(vm.status).toBe(201);
    expect(vm.headers['x-fastvm-host']).toBeUndefined();
    api.close();
  } finally {
    await server.close();
    await fs.rm(dataDir, { recursive: true, force: true });
  }
});

interface Host {
  id: string;
  dataDir: string;
  runtime: FakeRuntime;
  server: ServerHandle;
  api: TestClient;
}

const scratch = await createScratchDb();
if (!scratch.db) {
  console.warn(`cluster tests skipped: ${scratch.why}`);
}

describe.skipIf(!scratch.db)(
  `three hosts on one PostgreSQL${scratch.db ? '' : ` — skipped: ${scratch.why}`}`,
  () => {
    const db = scratch.db as ScratchDb;
    const hosts: Host[] = [];
    const byId = (id: string) => hosts.find((h) => h.id === id)!;

    async function start(id: string, dataDir: string, runtime: FakeRuntime): Promise<Host> {
      const server = await startServer({
        port: 0,
        dataDir,
        runtime,
        databaseUrl: db.url,
        bootstrapKey: KEY,
        logLevel: process.env.FASTVM_TEST_LOG_LEVEL ?? 'silent',
        dashboardDir: false,
        // Four c1m2 per host on paper, whatever this machine has.
        hostCapacity: {
          hostMemoryMiB: 8192,
          hostCpus: 4,
          reserveMiB: 0,
          memoryOvercommit: 1,
          cpuOvercommit: 1,
          memAvailableMiB: () => 1_000_000,
        },
        // Mobility off: this suite pins the placement of restores on the taking host.
        cluster: {
          secret: SECRET,
          hostId: id,
          heartbeatMs: 200,
          hostTimeoutMs: TIMEOUT_MS,
          mobility: false,
        },
      });
      return { id, dataDir, runtime, server, api: new TestClient(server.url, KEY) };
    }

    beforeAll(async () => {
      for (const id of ['mh-a', 'mh-b', 'mh-c']) {
        hosts.push(await start(id, await makeDataDir(), new FakeRuntime()));
      }
    });

    afterAll(async () => {
      for (const h of hosts) {
        h.api.close();
        await h.server.close().catch(() => {});
        await fs.rm(h.dataDir, { recursive: true, force: true });
      }
      await db.drop();
    });

    const owner = (vmId: string) => hosts.filter((h) => h.runtime.get(vmId)).map((h) => h.id);

    it('registers every host and guards the internal routes with the token', async () => {
      const a = byId('mh-a');
      const list = await a.server.cluster!.list();
      expect(list.map((h) => [h.id, h.state, h.live])).toEqual([
        ['mh-a', 'active', true],
        ['mh-b', 'active', true],
        ['mh-c', 'active', true],
      ]);
      expect((await a.server.cluster!.peers()).map((p) => p.id)).toEqual(['mh-b', 'mh-c']);
      const none = await a.api.get('/internal/v1/host', { noAuth: true });
      expect(none.status).toBe(401);
      const wrong = await a.api.get('/internal/v1/host', {
        noAuth: true,
        headers: { [CLUSTER_TOKEN_HEADER]: 'nope' },
      });
      expect(wrong.status).toBe(403);
      const ok = await a.api.get('/internal/v1/host', {
        noAuth: true,
        headers: { [CLUSTER_TOKEN_HEADER]: SECRET },
      });
      expect(ok.status).toBe(200);
      expect(ok.body.id).toBe('mh-a');
      const doc = await a.api.get('/openapi.json');
      expect(JSON.stringify(doc.body)).not.toContain('/internal/');
    });

    const vms: Record<string, string> = {};

    it('places launches by free capacity, whichever host is asked, and runs each once', async () => {
      for (const h of hosts) {
        const res = await h.api.post('/v1/vms', { machineType: 'c1m2', name: `via-${h.id}` });
        expect(res.status, res.text).toBe(201);
        vms[h.id] = res.body.id;
        expect(owner(res.body.id)).toEqual([res.headers['x-fastvm-host']]);
      }
      // Spread: one on each host (equal room, ties broken by free vCPUs).
      expect(new Set(Object.values(vms).map((id) => owner(id)[0])).size).toBe(3);
      // Lists and reads are the shared store, on every host.
      for (const h of hosts) {
        const list = await h.api.get('/v1/vms');
        expect(list.body.map((v: { id: string }) => v.id).sort()).toEqual(
          Object.values(vms).sort(),
        );
      }
    });

    it('forwards operations on a VM to its host, streaming, with the caller key checked there', async () => {
      const vmId = vms['mh-a']!;
      const home = owner(vmId)[0]!;
      const other = hosts.find((h) => h.id !== home)!;
      const exec = await other.api.post(`/v1/vms/${vmId}/exec`, { command: ['echo', 'hello'] });
      expect(exec.status, exec.text).toBe(200);
      expect(exec.body.stdout).toBe('hello\n');
      expect(exec.headers['x-fastvm-host']).toBe(home);
      // Streaming exec (NDJSON) through the forward.
      const stream = await other.api.post(
        `/v1/vms/${vmId}/exec`,
        { command: ['echo', 'streamed'] },
        { headers: { accept: 'application/x-ndjson' } },
      );
      expect(stream.status).toBe(200);
      expect(stream.headers['content-type']).toContain('ndjson');
      expect(stream.text).toContain(Buffer.from('streamed\n').toString('base64'));
      expect(stream.text).toContain('"t":"x"');
      // Over h2c too (the answer's headers are written to an HTTP/2 stream).
      const h2 = new TestClient(other.server.url, KEY, 'h2');
      const viaH2 = await h2.post(`/v1/vms/${vmId}/exec`, { command: ['echo', 'h2'] });
      h2.close();
      expect(viaH2.status, viaH2.text).toBe(200);
      expect(viaH2.body.stdout).toBe('h2\n');
      expect(viaH2.headers['x-fastvm-host']).toBe(home);
      // Addressed by name, too; a read is served where it was asked.
      const byName = await other.api.post(`/v1/vms/via-mh-a/exec`, { command: ['hostname'] });
      expect(byName.status).toBe(200);
      const read = await other.api.get(`/v1/vms/${vmId}`);
      expect(read.headers['x-fastvm-host']).toBe(other.id);
      // Another org's key: the same 404 as an unknown id, from any host.
      const key2 = await createOrgWithKey(other.server, 'other-org');
      const stranger = other.api.withKey(key2);
      const r = await stranger.post(`/v1/vms/${vmId}/exec`, { command: ['true'] });
      expect(r.status).toBe(404);
      // A bad key is refused before anything is forwarded.
      const bad = await other.api.withKey('fvm_wrong').post(`/v1/vms/${vmId}/exec`, {
        command: ['true'],
      });
      expect(bad.status).toBe(401);
      // A forged forward without the token is routed as usual (and served by the owner).
      const forged = await other.api.post(
        `/v1/vms/${vmId}/exec`,
        { command: ['true'] },
        { headers: { 'x-fastvm-forwarded-by': 'mh-x' } },
      );
      expect(forged.headers['x-fastvm-host']).toBe(home);
    });

    it('forwards the console WebSocket to the VM host, both ways; refusals pass through', async () => {
      const vmId = vms['mh-c']!;
      const home = owner(vmId)[0]!;
      const other = hosts.find((h) => h.id !== home)!;
      const tok = await other.api.post(`/v1/vms/${vmId}/console-token`);
      expect(tok.status, tok.text).toBe(200);
      const c = await ConsoleClient.open(consoleUrl(other.server.url, tok.body));
      await c.waitFor(/fake\$ $/);
      c.type('echo through-the-forward\r');
      await c.waitFor(/through-the-forward/);
      expect(byId(home).runtime.calls.some((x) => x.method === 'openPty')).toBe(true);
      expect(other.runtime.calls.some((x) => x.method === 'openPty')).toBe(false);
      c.close();
      // A used (single-use) token: the owner's refusal comes back as an HTTP answer.
      const again = await ConsoleClient.refused(consoleUrl(other.server.url, tok.body));
      expect(again.status).toBe(401);
    });

    it('snapshots on the VM host; restore and fork without mobility run there; delete there', async () => {
      const vmId = vms['mh-b']!;
      const home = owner(vmId)[0]!;
      const elsewhere = hosts.filter((h) => h.id !== home);
      const snap = await elsewhere[0]!.api.post('/v1/snapshots', { vmId, name: 'snap-b' });
      expect(snap.status, snap.text).toBe(201);
      expect(await byId(home).runtime.hasSnapshot(snap.body.id)).toBe(true);
      const restored = await elsewhere[1]!.api.post('/v1/vms', { snapshotId: snap.body.id });
      expect(restored.status, restored.text).toBe(201);
      expect(owner(restored.body.id)).toEqual([home]);
      const fork = await elsewhere[0]!.api.post(`/v1/snapshots/${snap.body.id}/fork`, { count: 2 });
      expect(fork.status, fork.text).toBe(201);
      for (const vm of fork.body.vms ?? fork.body) expect(owner(vm.id)).toEqual([home]);
      for (const vm of [...(fork.body.vms ?? fork.body), restored.body]) {
        expect((await elsewhere[1]!.api.del(`/v1/vms/${vm.id}`)).status).toBeLessThan(300);
        expect(owner(vm.id)).toEqual([]);
      }
      const del = await elsewhere[1]!.api.del(`/v1/snapshots/${snap.body.id}`);
      expect(del.status, del.text).toBeLessThan(300);
      expect(await byId(home).runtime.hasSnapshot(snap.body.id)).toBe(false);
    });

    it('keeps quotas exact across hosts: concurrent launches through every host', async () => {
      const a = byId('mh-a');
      const key = await createOrgWithKey(a.server, 'race-org');
      const org = (await a.server.store.findOrg('race-org'))!;
      await a.server.store.setQuotaOverrides(org.id, { vcpu: 3 });
      const results = await Promise.all(
        Array.from({ length: 9 }, (_, i) =>
          hosts[i % 3]!.api.withKey(key).post('/v1/vms', { machineType: 'c1m2' }),
        ),
      );
      expect(results.filter((r) => r.status === 201)).toHaveLength(3);
      // The rest: over the org's quota, or (placement is optimistic: concurrent launches may pick
      // the same host) over that host's capacity, which it checks first.
      for (const r of results.filter((x) => x.status !== 201)) {
        expect([429, 503], r.text).toContain(r.status);
        expect(['quota_exceeded', 'host_capacity']).toContain(r.body.code);
      }
      expect(results.filter((r) => r.status === 429).length).toBeGreaterThan(0);
      const usage = await a.server.store.getUsage(org.id);
      expect(usage.vcpu).toBe(3);
      for (const r of results.filter((x) => x.status === 201)) {
        await a.api.withKey(key).del(`/v1/vms/${r.body.id}`);
      }
    });

    it('drain: new launches avoid the host; undrain brings it back', async () => {
      const io = {
        lines: [] as string[],
        out(l: string) {
          this.lines.push(l);
        },
        err(l: string) {
          this.lines.push(l);
        },
      };
      expect(await runCli(['hosts', 'drain', 'mh-b', '--database-url', db.url], io)).toBe(0);
      const placed: string[] = [];
      for (let i = 0; i < 4; i++) {
        const r = await byId('mh-b').api.post('/v1/vms', {
          machineType: 'c1m2',
          name: `drained-${i}`,
        });
        expect(r.status, r.text).toBe(201);
        placed.push(r.headers['x-fastvm-host']!);
        await byId('mh-b').api.del(`/v1/vms/${r.body.id}`);
      }
      expect(placed).not.toContain('mh-b');
      io.lines.length = 0;
      expect(await runCli(['hosts', 'ls', '--database-url', db.url], io)).toBe(0);
      expect(io.lines.join('\n')).toMatch(/mh-b\tdraining/);
      expect(await runCli(['hosts', 'undrain', 'mh-b', '--database-url', db.url], io)).toBe(0);
      expect(await runCli(['hosts', 'drain', 'mh-zz', '--database-url', db.url], io)).toBe(1);
      const list = await byId('mh-a').server.cluster!.list();
      expect(list.find((h) => h.id === 'mh-b')!.state).toBe('active');
    });

    it('a host that stops heartbeating: fast 503s, then its VMs error with quota released; back: reconciled', async () => {
      const c = byId('mh-c');
      const vmId = Object.values(vms).find((id) => owner(id)[0] === 'mh-c')!;
      const a = byId('mh-a');
      const orgId = (await a.server.store.findOrg('default'))!.id;
      const usageBefore = await a.server.store.getUsage(orgId);
      await c.server.kill();
      // Not yet lost: forwarding fails fast and says so.
      const t0 = Date.now();
      const early = await a.api.post(`/v1/vms/${vmId}/exec`, { command: ['true'] });
      expect(early.status).toBe(503);
      expect(early.body.code).toBe('unavailable');
      expect(early.body.error).toContain('mh-c');
      expect(Date.now() - t0).toBeLessThan(3000);
      // Lost after the timeout.
      const deadline = Date.now() + 10_000;
      let vm = (await a.api.get(`/v1/vms/${vmId}`)).body;
      while (vm.status !== 'error' && Date.now() < deadline) {
        await sleep(200);
        vm = (await a.api.get(`/v1/vms/${vmId}`)).body;
      }
      expect(vm.status).toBe('error');
      expect(vm.error ?? vm.errorMessage ?? JSON.stringify(vm)).toContain('mh-c was lost');
      const usageAfter = await a.server.store.getUsage(orgId);
      expect(usageAfter.vcpu).toBe(usageBefore.vcpu - 1);
      expect(usageAfter.memoryMiB).toBe(usageBefore.memoryMiB - 2048);
      const hostsNow = await a.server.cluster!.list();
      expect(hostsNow.find((h) => h.id === 'mh-c')!.state).toBe('lost');
      // Its VMs answer from the store, quickly, on any host.
      const exec = await byId('mh-b').api.post(`/v1/vms/${vmId}/exec`, { command: ['true'] });
      expect(exec.status).toBe(409);
      // Launches avoid the lost host.
      const r = await a.api.post('/v1/vms', { machineType: 'c1m2', name: 'while-c-lost' });
      expect(r.status).toBe(201);
      expect(r.headers['x-fastvm-host']).not.toBe('mh-c');
      await a.api.del(`/v1/vms/${r.body.id}`);

      // Back (its QEMUs, here the fake runtime's VMs, survived): the VM is stopped, not revived.
      expect(c.runtime.get(vmId)).toBeDefined();
      const idx = hosts.indexOf(c);
      hosts[idx] = await start('mh-c', c.dataDir, c.runtime);
      expect(c.runtime.get(vmId)).toBeUndefined();
      const after = (await a.api.get(`/v1/vms/${vmId}`)).body;
      expect(after.status).toBe('error');
      const all = (await a.api.get('/v1/vms')).body as { id: string }[];
      expect(all.filter((v) => v.id === vmId)).toHaveLength(1);
      const list = await a.server.cluster!.list();
      expect(list.find((h) => h.id === 'mh-c')!.state).toBe('active');
      // And it takes new VMs again.
      const del = await a.api.del(`/v1/vms/${vmId}`);
      expect(del.status).toBeLessThan(300);
    });
  },
);

/**
 * A stand-in for snapshot mobility over FakeRuntimes (the real one streams layers between
 * hosts; here a host "pulls" by copying the fake snapshot record): enough to drive the
 * placement and fork-spreading side, which is what this file tests.
 */
class FakeMobility implements SnapshotMobility {
  static runtimes = new Map<string, FakeRuntime>();
  readonly pulls: string[] = [];
  constructor(private readonly self: string) {}
  async holders(snapshotId: string): Promise<string[]> {
    const out: string[] = [];
    for (const [id, rt] of FakeMobility.runtimes)
      if (await rt.hasSnapshot(snapshotId)) out.push(id);
    return out;
  }
  async ensureLocal(snapshotId: string): Promise<void> {
    const mine = FakeMobility.runtimes.get(this.self)!;
    if (await mine.hasSnapshot(snapshotId)) return;
    for (const rt of FakeMobility.runtimes.values()) {
      const snaps = (rt as unknown as { snapshots: Map<string, unknown> }).snapshots;
      const s = snaps.get(snapshotId);
      if (s) {
        (mine as unknown as { snapshots: Map<string, unknown> }).snapshots.set(snapshotId, s);
        this.pulls.push(snapshotId);
        return;
      }
    }
    throw new Error(`no host holds ${snapshotId}`);
  }
  async recordLocal(): Promise<void> {}
  async forget(): Promise<void> {}
}

const scratch2 = scratch.db ? await createScratchDb() : scratch;

describe.skipIf(!scratch2.db)('with snapshot mobility: fork N spreads over the hosts', () => {
  const db = scratch2.db as ScratchDb;
  const hosts: Array<{
    id: string;
    dataDir: string;
    runtime: FakeRuntime;
    server: ServerHandle;
    api: TestClient;
    mobility: FakeMobility;
  }> = [];

  beforeAll(async () => {
    for (const id of ['mh-m1', 'mh-m2', 'mh-m3']) {
      const runtime = new FakeRuntime();
      FakeMobility.runtimes.set(id, runtime);
      const mobility = new FakeMobility(id);
      const dataDir = await makeDataDir();
      const server = await startServer({
        port: 0,
        dataDir,
        runtime,
        databaseUrl: db.url,
        bootstrapKey: KEY,
        logLevel: process.env.FASTVM_TEST_LOG_LEVEL ?? 'silent',
        dashboardDir: false,
        hostCapacity: {
          hostMemoryMiB: 65536,
          hostCpus: 32,
          reserveMiB: 0,
          memoryOvercommit: 1,
          cpuOvercommit: 1,
          memAvailableMiB: () => 1_000_000,
        },
        cluster: {
          secret: SECRET,
          hostId: id,
          heartbeatMs: 200,
          hostTimeoutMs: TIMEOUT_MS,
          // The factory form, as the integration wires it (given the registry as peers).
          mobility: ({ hostId, peers }) => {
            expect(peers.self.id).toBe(hostId);
            return mobility;
          },
        },
      });
      hosts.push({ id, dataDir, runtime, server, api: new TestClient(server.url, KEY), mobility });
    }
  });

  afterAll(async () => {
    for (const h of hosts) {
      h.api.close();
      await h.server.close().catch(() => {});
      await fs.rm(h.dataDir, { recursive: true, force: true });
    }
    FakeMobility.runtimes.clear();
    await db.drop();
  });

  it('deals 6 forks out over the three hosts, each pulling the snapshot; quota counted once', async () => {
    const [m1, m2, m3] = hosts as [(typeof hosts)[0], (typeof hosts)[0], (typeof hosts)[0]];
    const vm = await m1.api.post('/v1/vms', { machineType: 'c1m2', name: 'src' });
    expect(vm.status, vm.text).toBe(201);
    const home = vm.headers['x-fastvm-host']!;
    const snap = await m2.api.post('/v1/snapshots', { vmId: vm.body.id, name: 'src-snap' });
    expect(snap.status, snap.text).toBe(201);
    const fork = await m3.api.post(`/v1/snapshots/${snap.body.id}/fork`, { count: 6 });
    expect(fork.status, fork.text).toBe(201);
    const ids = (fork.body.vms as { id: string; status: string }[]).map((v) => v.id);
    expect(fork.body.vms.every((v: { status: string }) => v.status === 'running')).toBe(true);
    const where = ids.map((id) => hosts.filter((h) => h.runtime.get(id)).map((h) => h.id));
    for (const w of where) expect(w).toHaveLength(1);
    const counts = new Map<string, number>();
    for (const [w] of where) counts.set(w!, (counts.get(w!) ?? 0) + 1);
    expect([...counts.values()].sort()).toEqual([2, 2, 2]);
    // The hosts other than the snapshot's pulled it.
    for (const h of hosts) expect(h.mobility.pulls.includes(snap.body.id)).toBe(h.id !== home);
    const org = (await m1.server.store.findOrg('default'))!;
    expect((await m1.server.store.getUsage(org.id)).vcpu).toBe(7);
    // Each fork is an ordinary VM of its host: exec through any host.
    for (const id of ids) {
      const r = await m1.api.post(`/v1/vms/${id}/exec`, { command: ['echo', 'ok'] });
      expect(r.body.stdout).toBe('ok\n');
    }
    for (const id of [...ids, vm.body.id])
      expect((await m2.api.del(`/v1/vms/${id}`)).status).toBeLessThan(300);
    for (const h of hosts) for (const id of ids) expect(h.runtime.get(id)).toBeUndefined();
  });

  it('a fork that fails on one host deletes every fork, on every host', async () => {
    const [m1, m2] = hosts as [(typeof hosts)[0], (typeof hosts)[0]];
    const vm = await m1.api.post('/v1/vms', { machineType: 'c1m2', name: 'src2' });
    const snap = await m1.api.post('/v1/snapshots', { vmId: vm.body.id, name: 'src2-snap' });
    expect(snap.status).toBe(201);
    const failing = hosts.find((h) => h.id !== vm.headers['x-fastvm-host'])!;
    failing.runtime.failRestore = new Error('injected restore failure');
    try {
      const fork = await m2.api.post(`/v1/snapshots/${snap.body.id}/fork`, { count: 6 });
      expect(fork.status).toBeGreaterThanOrEqual(500);
      expect(fork.text).toContain('injected restore failure');
    } finally {
      failing.runtime.failRestore = undefined;
    }
    const list = (await m1.api.get('/v1/vms')).body as { id: string; name: string }[];
    expect(list.map((v) => v.name)).toEqual(['src2']);
    // Every fork that was restored anywhere is gone again.
    let restored = 0;
    for (const h of hosts) {
      for (const c of h.runtime.calls.filter((x) => x.method === 'restore')) {
        const id = (c.args[0] as { id: string }).id;
        restored++;
        expect(h.runtime.get(id)).toBeUndefined();
      }
    }
    expect(restored).toBeGreaterThan(6); // the first test's six, and some of these
    await m1.api.del(`/v1/vms/${vm.body.id}`);
  });
});
