/**
 * Three real hosts on this machine: three `fastvm-server serve` processes (QEMU runtime, VM
 * networking each on its own bridge and subnet), each in its own network namespace (`mi-a`,
 * `mi-b`, `mi-c`) reached through veth pairs on a test bridge (`mibr0`, 10.253.0.0/24), sharing
 * one scratch PostgreSQL database, with snapshot mobility and one replica per snapshot
 * (`FASTVM_SNAPSHOT_REPLICAS=1`). Launch through each host, a VM operation through a host that
 * does not own the VM, a snapshot taken on A replicated to one peer and restored on the third
 * (which pulls it), fork 6 dealt out over the hosts (the one without the snapshot pulls it), the
 * cross-host quota race, kill -9 of a host's server and its QEMUs, its return, drain, and a
 * snapshot restored from its replica after its taking host was killed (-9) and declared lost.
 *
 * Skips (saying why) without root, `ip netns`, PostgreSQL or the guest cache.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from '../src/cli.js';
import { createScratchDb, type ScratchDb } from './cluster-db.js';
import { TestClient, makeDataDir, sleep } from './helpers.js';

const MAIN = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../src/main.ts');
const SECRET = 'cluster-vm-test-secret-0123456789';
const KEY = 'fvm_cluster_vm_test_bootstrap_key_0000001';
const TIMEOUT_MS = 4000;
const BRIDGE = 'mibr0';
const NAMES = ['a', 'b', 'c'] as const;

function sh(cmd: string, args: string[]): string {
  return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

function whyNot(): string | undefined {
  if (process.getuid?.() !== 0) return 'needs root (network namespaces)';
  try {
    sh('ip', ['netns', 'list']);
  } catch {
    return 'ip netns is unavailable';
  }
  if (
    !fs.existsSync(path.join(process.env.HOME ?? '/root', '.cache/fastvm/guest.json')) &&
    !process.env.FASTVM_CACHE_DIR
  ) {
    return 'no guest cache (run npm run setup)';
  }
  return undefined;
}

const skipWhy = whyNot();
const scratch = skipWhy ? { why: skipWhy } : await createScratchDb();
const why = skipWhy ?? scratch.why;
if (why) console.warn(`cluster VM tests skipped: ${why}`);

interface Host {
  name: (typeof NAMES)[number];
  id: string;
  ip: string;
  dataDir: string;
  child?: ChildProcess;
  api: TestClient;
  log: string;
}

describe.skipIf(Boolean(why))(`three real hosts${why ? ` — skipped: ${why}` : ''}`, () => {
  const db = (scratch as { db?: ScratchDb }).db!;
  const hosts: Host[] = [];
  const host = (name: string) => hosts.find((h) => h.name === name)!;

  function netUp(): void {
    netDown();
    sh('ip', ['link', 'add', BRIDGE, 'type', 'bridge']);
    sh('ip', ['addr', 'add', '10.253.0.1/24', 'dev', BRIDGE]);
    sh('ip', ['link', 'set', BRIDGE, 'up']);
    NAMES.forEach((n, i) => {
      const ns = `mi-${n}`;
      sh('ip', ['netns', 'add', ns]);
      sh('ip', ['link', 'add', `mi-${n}-h`, 'type', 'veth', 'peer', 'name', `mi-${n}-n`]);
      sh('ip', ['link', 'set', `mi-${n}-n`, 'netns', ns]);
      sh('ip', ['link', 'set', `mi-${n}-h`, 'master', BRIDGE, 'up']);
      sh('ip', ['-n', ns, 'addr', 'add', `10.253.0.${11 + i}/24`, 'dev', `mi-${n}-n`]);
      sh('ip', ['-n', ns, 'link', 'set', `mi-${n}-n`, 'up']);
      sh('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
    });
  }

  function netDown(): void {
    for (const n of NAMES) {
      try {
        sh('ip', ['netns', 'del', `mi-${n}`]);
      } catch {
        /* not there */
      }
      try {
        sh('ip', ['link', 'del', `mi-${n}-h`]);
      } catch {
        /* gone with the namespace */
      }
    }
    try {
      sh('ip', ['link', 'del', BRIDGE]);
    } catch {
      /* not there */
    }
  }

  async function startHost(h: Host): Promise<void> {
    const i = NAMES.indexOf(h.name);
    const out = fs.openSync(h.log, 'a');
    const child = spawn(
      'ip',
      [
        'netns',
        'exec',
        `mi-${h.name}`,
        process.execPath,
        '--import',
        'tsx',
        MAIN,
        'serve',
        '--host',
        h.ip,
        '--port',
        '8080',
        '--data-dir',
        h.dataDir,
        '--database-url',
        db.url,
        '--log-level',
        process.env.FASTVM_TEST_LOG_LEVEL ?? 'warn',
      ],
      {
        env: {
          ...process.env,
          FASTVM_CLUSTER_SECRET: SECRET,
          FASTVM_HOST_ID: h.id,
          FASTVM_ADVERTISE_URL: `http://${h.ip}:8080`,
          FASTVM_HEARTBEAT_MS: '500',
          FASTVM_HOST_TIMEOUT_MS: String(TIMEOUT_MS),
          FASTVM_SNAPSHOT_REPLICAS: '1',
          FASTVM_BOOTSTRAP_KEY: KEY,
          FASTVM_POOL: '0',
          FASTVM_SSH_PORT: 'off',
          FASTVM_PROXY_PORT: '0',
          FASTVM_PRUNE: 'off',
          FASTVM_BRIDGE: `mivm-${h.name}`,
          FASTVM_IPV4_SUBNET: `10.254.${i}.0/24`,
          FASTVM_IPV6_PREFIX: `fd00:6d69:${i}::/64`,
        },
        stdio: ['ignore', out, out],
      },
    );
    fs.closeSync(out);
    h.child = child;
    const deadline = Date.now() + 120_000;
    for (;;) {
      if (child.exitCode !== null) {
        throw new Error(`host ${h.id} exited:\n${fs.readFileSync(h.log, 'utf8').slice(-4000)}`);
      }
      const ok = await fetch(`http://${h.ip}:8080/healthz`).then(
        (r) => r.ok,
        () => false,
      );
      if (ok) return;
      if (Date.now() > deadline) {
        throw new Error(
          `host ${h.id} did not start:\n${fs.readFileSync(h.log, 'utf8').slice(-4000)}`,
        );
      }
      await sleep(300);
    }
  }

  /** The host whose runtime runs the VM (its directory in that host's runtime data dir). */
  const runsOn = (vmId: string): string[] =>
    hosts
      .filter((h) => fs.existsSync(path.join(h.dataDir, 'runtime', 'vms', vmId, 'vm.json')))
      .map((h) => h.id);

  /** Whether the host's runtime holds the snapshot (an import is renamed into place whole). */
  const holds = (h: Host, snapshotId: string): boolean =>
    fs.existsSync(path.join(h.dataDir, 'runtime', 'snapshots', snapshotId));
  /** The VM of the first test that runs on the host. */
  const vmOn = (hostId: string): string =>
    Object.values(vms).find((id) => runsOn(id)[0] === hostId)!;
  /** The one host besides `taker` that holds the snapshot, once replication has copied it. */
  async function replicaOf(snapshotId: string, taker: Host): Promise<Host> {
    // Replication retries a pull that failed (a loaded holder still digesting the snapshot).
    const deadline = Date.now() + 300_000;
    for (;;) {
      const copies = hosts.filter((h) => h !== taker && holds(h, snapshotId));
      if (copies.length > 0) {
        expect(copies).toHaveLength(1); // FASTVM_SNAPSHOT_REPLICAS=1
        return copies[0]!;
      }
      if (Date.now() > deadline) throw new Error(`no replica of ${snapshotId} appeared`);
      await sleep(300);
    }
  }
  function cli(...args: string[]): Promise<number> {
    const io = { out: () => {}, err: (l: string) => console.warn(l) };
    return runCli([...args, '--database-url', db.url], io);
  }

  /** QEMU pids of a host (from its VMs' records). */
  function qemuPids(h: Host): number[] {
    const dir = path.join(h.dataDir, 'runtime', 'vms');
    const pids: number[] = [];
    for (const id of fs.existsSync(dir) ? fs.readdirSync(dir) : []) {
      try {
        const rec = JSON.parse(fs.readFileSync(path.join(dir, id, 'vm.json'), 'utf8')) as {
          pid?: number;
        };
        if (rec.pid && rec.pid > 0) {
          const cmd = fs.readFileSync(`/proc/${rec.pid}/cmdline`, 'utf8');
          if (cmd.includes(h.dataDir)) pids.push(rec.pid);
        }
      } catch {
        /* gone */
      }
    }
    return pids;
  }

  beforeAll(async () => {
    netUp();
    for (const [i, name] of NAMES.entries()) {
      const dataDir = await makeDataDir();
      const ip = `10.253.0.${11 + i}`;
      hosts.push({
        name,
        id: `mi-${name}`,
        ip,
        dataDir,
        api: new TestClient(`http://${ip}:8080`, KEY),
        log: path.join(dataDir, 'server.log'),
      });
    }
    // One after another: the first creates the schema and the bootstrap key.
    for (const h of hosts) await startHost(h);
  }, 400_000);

  afterAll(async () => {
    const running = (h: Host) => h.child?.exitCode === null && h.child.signalCode === null;
    for (const h of hosts.filter(running)) {
      // Delete what is left (through a host still running), so that no VM outlives the test.
      const list = await h.api.get('/v1/vms').catch(() => undefined);
      for (const vm of (list?.body ?? []) as { id: string }[]) {
        await h.api.del(`/v1/vms/${vm.id}`).catch(() => {});
      }
      break;
    }
    for (const h of hosts) {
      if (running(h)) {
        h.child!.kill('SIGTERM');
        await new Promise((r) => h.child!.once('exit', r));
      }
      for (const pid of qemuPids(h)) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          /* gone */
        }
      }
      h.api.close();
    }
    netDown();
    for (const h of hosts) {
      if (process.env.FASTVM_KEEP_LOGS) console.log(h.log);
      else await fsp.rm(h.dataDir, { recursive: true, force: true });
    }
    await db?.drop();
  }, 180_000);

  const vms: Record<string, string> = {};

  it('launches through each host, spread over the three, each run once', async () => {
    for (const h of hosts) {
      const res = await h.api.post('/v1/vms', { machineType: 'c1m2', name: `via-${h.name}` });
      expect(res.status, res.text).toBe(201);
      vms[h.name] = res.body.id;
      expect(runsOn(res.body.id)).toEqual([res.headers['x-fastvm-host']]);
    }
    expect(new Set(Object.values(vms).map((id) => runsOn(id)[0])).size).toBe(3);
    const list = await host('c').api.get('/v1/vms');
    expect(list.body.map((v: { id: string }) => v.id).sort()).toEqual(Object.values(vms).sort());
  }, 240_000);

  it('runs a VM operation on its host when asked through another', async () => {
    const vmId = vms.a!;
    const home = runsOn(vmId)[0]!;
    const other = hosts.find((h) => h.id !== home)!;
    const res = await other.api.post(`/v1/vms/${vmId}/exec`, {
      command: ['sh', '-c', 'echo $((6*7)); hostname'],
    });
    expect(res.status, res.text).toBe(200);
    expect(res.body.stdout).toMatch(/^42\n/);
    expect(res.headers['x-fastvm-host']).toBe(home);
    const stream = await other.api.post(
      `/v1/vms/${vmId}/exec`,
      { command: ['sh', '-c', 'for i in 1 2 3; do echo line$i; done'] },
      { headers: { accept: 'application/x-ndjson' } },
    );
    expect(stream.status).toBe(200);
    const out = stream.text
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { t: string; d?: string })
      .filter((f) => f.t === 'o')
      .map((f) => Buffer.from(f.d!, 'base64').toString())
      .join('');
    expect(out).toBe('line1\nline2\nline3\n');
  }, 120_000);

  let s1 = '';

  it('a snapshot taken on A is replicated to one peer and restored on the third, which pulls it', async () => {
    const a = host('a');
    const vmId = vmOn(a.id);
    expect(vmId).toBeDefined();
    // Written through another host (forwarded to A).
    const put = await host('b').api.post(`/v1/vms/${vmId}/exec`, {
      command: ['sh', '-c', 'echo marker > /root/m; sync'],
    });
    expect(put.status, put.text).toBe(200);
    const snap = await host('c').api.post('/v1/snapshots', { vmId, name: 'snap-a' });
    expect(snap.status, snap.text).toBe(201);
    s1 = snap.body.id;
    expect(holds(a, s1)).toBe(true);
    const replica = await replicaOf(s1, a);
    const third = hosts.find((h) => h !== a && h !== replica)!;
    expect(holds(third, s1)).toBe(false);
    // The holders drained, placement has the third host only: it pulls the snapshot.
    expect(await cli('hosts', 'drain', a.id)).toBe(0);
    expect(await cli('hosts', 'drain', replica.id)).toBe(0);
    try {
      const restored = await replica.api.post('/v1/vms', { snapshotId: s1 });
      expect(restored.status, restored.text).toBe(201);
      expect(restored.headers['x-fastvm-host']).toBe(third.id);
      expect(runsOn(restored.body.id)).toEqual([third.id]);
      expect(holds(third, s1)).toBe(true);
      const cat = await a.api.post(`/v1/vms/${restored.body.id}/exec`, {
        command: ['cat', '/root/m'],
      });
      expect(cat.body.stdout).toBe('marker\n');
      expect((await a.api.del(`/v1/vms/${restored.body.id}`)).status).toBeLessThan(300);
    } finally {
      expect(await cli('hosts', 'undrain', a.id)).toBe(0);
      expect(await cli('hosts', 'undrain', replica.id)).toBe(0);
    }
  }, 400_000);

  it('fork 6 is dealt out over the hosts; the host without the snapshot pulls it', async () => {
    const a = host('a');
    const vmId = vmOn(a.id);
    const snap = await host('b').api.post('/v1/snapshots', { vmId, name: 'snap-fork' });
    expect(snap.status, snap.text).toBe(201);
    const id = snap.body.id as string;
    const replica = await replicaOf(id, a);
    const third = hosts.find((h) => h !== a && h !== replica)!;
    expect(holds(third, id)).toBe(false);
    const fork = await third.api.post(`/v1/snapshots/${id}/fork`, { count: 6 });
    expect(fork.status, fork.text).toBe(201);
    const forks = (fork.body.vms ?? fork.body) as { id: string; status: string }[];
    expect(forks).toHaveLength(6);
    const where = forks.map((vm) => runsOn(vm.id));
    for (const w of where) expect(w).toHaveLength(1);
    const used = new Set(where.map((w) => w[0]!));
    // Dealt out: every host got a share (each has room for several c1m2), the third by a pull.
    expect([...used].sort()).toEqual(hosts.map((h) => h.id).sort());
    expect(holds(third, id)).toBe(true);
    for (const h of hosts) {
      const vm = forks[where.findIndex((w) => w[0] === h.id)]!;
      const cat = await a.api.post(`/v1/vms/${vm.id}/exec`, { command: ['cat', '/root/m'] });
      expect(cat.body.stdout, `${vm.id} on ${h.id}`).toBe('marker\n');
    }
    for (const vm of forks) {
      const del = await host('c').api.del(`/v1/vms/${vm.id}`);
      expect(del.status).toBeLessThan(300);
    }
  }, 400_000);

  it('admits exactly the quota for concurrent launches through two hosts', async () => {
    const io = {
      lines: [] as string[],
      out(l: string) {
        this.lines.push(l);
      },
      err(l: string) {
        this.lines.push(l);
      },
    };
    expect(await runCli(['orgs', 'create', 'mi-race', '--database-url', db.url], io)).toBe(0);
    const key = /api key \(shown once\): (\S+)/.exec(io.lines.join('\n'))![1]!;
    expect(
      await runCli(
        ['quotas', 'set', '--org', 'mi-race', '--vcpu', '2', '--database-url', db.url],
        io,
      ),
    ).toBe(0);
    const results = await Promise.all(
      Array.from({ length: 6 }, (_, i) =>
        hosts[i % 2]!.api.withKey(key).post('/v1/vms', { machineType: 'c1m2' }),
      ),
    );
    const ok = results.filter((r) => r.status === 201);
    expect(ok, results.map((r) => r.text).join('\n')).toHaveLength(2);
    for (const r of results.filter((x) => x.status !== 201)) expect(r.status).toBe(429);
    for (const r of ok) await hosts[0]!.api.withKey(key).del(`/v1/vms/${r.body.id}`);
  }, 240_000);

  it('kill -9 of a host: its VMs error after the timeout, quota released; restarted: reconciled', async () => {
    const b = host('b');
    const vmId = Object.values(vms).find((id) => runsOn(id)[0] === b.id)!;
    expect(vmId).toBeDefined();
    const a = host('a');
    const before = (await a.api.get('/v1/org/quotas')).body;
    const pids = qemuPids(b);
    expect(pids.length).toBeGreaterThan(0);
    b.child!.kill('SIGKILL');
    for (const pid of pids) process.kill(pid, 'SIGKILL');
    await new Promise((r) => (b.child!.exitCode !== null ? r(null) : b.child!.once('exit', r)));
    // Before the timeout a forward fails fast.
    const t0 = Date.now();
    const early = await a.api.post(`/v1/vms/${vmId}/exec`, { command: ['true'] });
    expect([503]).toContain(early.status);
    expect(Date.now() - t0).toBeLessThan(5000);
    let vm = (await a.api.get(`/v1/vms/${vmId}`)).body;
    const deadline = Date.now() + TIMEOUT_MS + 10_000;
    while (vm.status !== 'error' && Date.now() < deadline) {
      await sleep(300);
      vm = (await a.api.get(`/v1/vms/${vmId}`)).body;
    }
    expect(vm.status).toBe('error');
    expect(JSON.stringify(vm)).toContain(`${b.id} was lost`);
    const after = (await a.api.get('/v1/org/quotas')).body;
    expect(after.usage.vcpu).toBe(before.usage.vcpu - 1);
    // Restart: the VM stays error (not revived, not duplicated), the host is active again.
    await startHost(b);
    const again = (await a.api.get(`/v1/vms/${vmId}`)).body;
    expect(again.status).toBe('error');
    const all = (await a.api.get('/v1/vms')).body as { id: string }[];
    expect(all.filter((v) => v.id === vmId)).toHaveLength(1);
    expect(qemuPids(b)).toEqual([]);
    const io = {
      lines: [] as string[],
      out(l: string) {
        this.lines.push(l);
      },
      err(l: string) {
        this.lines.push(l);
      },
    };
    expect(await runCli(['hosts', 'ls', '--database-url', db.url], io)).toBe(0);
    expect(io.lines.join('\n')).toMatch(/mi-b\tactive/);
  }, 300_000);

  it('drain: new launches avoid the drained host', async () => {
    const io = {
      lines: [] as string[],
      out(l: string) {
        this.lines.push(l);
      },
      err(l: string) {
        this.lines.push(l);
      },
    };
    expect(await runCli(['hosts', 'drain', 'mi-c', '--database-url', db.url], io)).toBe(0);
    const placed: string[] = [];
    for (let i = 0; i < 2; i++) {
      const r = await host('c').api.post('/v1/vms', { machineType: 'c1m2', name: `drain-${i}` });
      expect(r.status, r.text).toBe(201);
      placed.push(runsOn(r.body.id)[0]!);
      await host('c').api.del(`/v1/vms/${r.body.id}`);
    }
    expect(placed).not.toContain('mi-c');
    expect(await runCli(['hosts', 'undrain', 'mi-c', '--database-url', db.url], io)).toBe(0);
  }, 240_000);

  it('a snapshot outlives the kill -9 of its taking host: restored from its replica', async () => {
    const a = host('a');
    const vmId = vmOn(a.id);
    const snap = await host('b').api.post('/v1/snapshots', { vmId, name: 'snap-survives' });
    expect(snap.status, snap.text).toBe(201);
    const id = snap.body.id as string;
    const replica = await replicaOf(id, a);
    const third = hosts.find((h) => h !== a && h !== replica)!;
    const pids = qemuPids(a);
    a.child!.kill('SIGKILL');
    for (const pid of pids) process.kill(pid, 'SIGKILL');
    await new Promise((r) => (a.child!.exitCode !== null ? r(null) : a.child!.once('exit', r)));
    // A declared lost (its VM errors), the snapshot stays ready.
    const deadline = Date.now() + TIMEOUT_MS + 15_000;
    let vm = (await third.api.get(`/v1/vms/${vmId}`)).body;
    while (vm.status !== 'error' && Date.now() < deadline) {
      await sleep(300);
      vm = (await third.api.get(`/v1/vms/${vmId}`)).body;
    }
    expect(vm.status).toBe('error');
    expect((await third.api.get(`/v1/snapshots/${id}`)).body.status).toBe('ready');
    const restored = await third.api.post('/v1/vms', { snapshotId: id });
    expect(restored.status, restored.text).toBe(201);
    const ran = runsOn(restored.body.id);
    expect(ran).toHaveLength(1);
    expect([replica.id, third.id]).toContain(ran[0]);
    expect(holds(host(ran[0]!.slice(3)), id)).toBe(true);
    const cat = await third.api.post(`/v1/vms/${restored.body.id}/exec`, {
      command: ['cat', '/root/m'],
    });
    expect(cat.body.stdout).toBe('marker\n');
    expect((await third.api.del(`/v1/vms/${restored.body.id}`)).status).toBeLessThan(300);
  }, 450_000);
});
