// The SDK against the real API server (@fastvm/server) backed by the in-memory FakeRuntime.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  AbortError,
  AuthenticationError,
  BadRequestError,
  FastVM,
  NotFoundError,
  QuotaExceededError,
  TimeoutError,
  VMLaunchError,
  VMNotReadyError,
  type CommandResult,
} from '../src/index.js';
import { startTestServer, type TestServer } from './helpers/server.js';
import { CountingProxy } from './helpers/tcp-proxy.js';
import { FakeRuntimeError } from '@fastvm/server/testing';

let server: TestServer;
let proxy: CountingProxy;
let client: FastVM;

beforeAll(async () => {
  server = await startTestServer({ launchWaitMs: 50 });
  proxy = await new CountingProxy(server.handle.port).start();
  // Every call of this client goes through the counting proxy.
  client = new FastVM({ apiKey: server.key, baseUrl: proxy.url });
  await client.warmup();
});

afterAll(async () => {
  await client?.close();
  await proxy?.stop();
  await server?.stop();
});

describe('the seed examples against the server', () => {
  it('quick start: launch → snapshot → restore → run echo hello', async () => {
    const vm = await client.launch({ machine: 'c1m2' });
    const snapshot = await client.snapshot(vm, { name: 'my-snap' });
    const restored = await client.restore(snapshot);
    const result = await client.run(restored, 'echo hello');
    expect(result.stdout).toBe('hello\n');
    expect(vm.status).toBe('running');
    expect(snapshot).toMatchObject({ name: 'my-snap', status: 'ready', vmId: vm.id });
    expect(restored.status).toBe('running');
    expect(restored.id).not.toBe(vm.id);
    expect(vm).toMatchObject({ machineName: 'c1m2', cpu: 1, memoryMib: 2048, diskGib: 10 });
  });

  it('branching: snapshot, restore 10 concurrently, run in each, pick the fastest', async () => {
    const baseVm = await client.launch({ name: 'branch-base' });
    const snap = await client.snapshot(baseVm, { name: 'branch-point' });
    const branches = await Promise.all(
      Array.from({ length: 10 }, (_, i) => client.restore(snap, { name: `branch-${i}` })),
    );
    const results: CommandResult[] = await Promise.all(
      branches.map((branch, i) => client.run(branch, `sleep 0.${(i % 5) + 1}; echo ${i}`)),
    );
    const best = results.reduce((a, b) => (b.durationMs < a.durationMs ? b : a));
    expect(new Set(branches.map((b) => b.id)).size).toBe(10);
    expect(branches.map((b) => b.name)).toEqual(
      Array.from({ length: 10 }, (_, i) => `branch-${i}`),
    );
    expect(results.map((r) => r.stdout)).toEqual(Array.from({ length: 10 }, (_, i) => `${i}\n`));
    expect(best.durationMs).toBe(Math.min(...results.map((r) => r.durationMs)));
    expect(['0\n', '5\n']).toContain(best.stdout);
  });

  it('long-running tasks: nohup-style detach returns at once', async () => {
    const vm = await client.launch();
    const started = performance.now();
    const res = await client.run(vm, ['true']);
    expect(res.exitCode).toBe(0);
    expect(performance.now() - started).toBeLessThan(1_000);
  });
});

describe('one HTTP/2 session per client', () => {
  it('every call so far (warmup, launches, 10 concurrent restores and runs) used a single session', () => {
    expect(client.stats.protocol).toBe('h2c');
    expect(client.stats.sessionsOpened).toBe(1);
    expect(proxy.connections).toBe(1);
    expect(client.stats.requests).toBeGreaterThanOrEqual(25);
  });

  it('stays on one session under 100 concurrent mixed calls', async () => {
    const vm = await client.launch();
    await Promise.all(
      Array.from({ length: 100 }, (_, i) =>
        i % 3 === 0 ? client.run(vm, 'true') : i % 3 === 1 ? client.get(vm) : client.list(),
      ),
    );
    expect(proxy.connections).toBe(1);
    expect(client.stats.sessionsOpened).toBe(1);
  });
});

describe('the remaining calls', () => {
  it('get/list/rename/remove VMs, by object, id and name', async () => {
    const vm = await client.launch({ name: 'crud-vm', diskGib: 12 });
    expect(vm.diskGib).toBe(12);
    expect((await client.get(vm.id)).name).toBe('crud-vm');
    expect((await client.get('crud-vm')).id).toBe(vm.id);
    const renamed = await client.rename(vm, 'crud-vm-2');
    expect(renamed.name).toBe('crud-vm-2');
    expect((await client.list()).map((v) => v.id)).toContain(vm.id);
    await client.remove(vm);
    await expect(client.get(vm.id)).rejects.toBeInstanceOf(NotFoundError);
  });

  it('sets and patches the firewall', async () => {
    const vm = await client.launch({
      firewall: {
        mode: 'restricted',
        ingress: [{ protocol: 'tcp', portStart: 22, description: 'SSH' }],
      },
    });
    expect(vm.firewall).toEqual({
      mode: 'restricted',
      ingress: [{ protocol: 'tcp', portStart: 22, description: 'SSH' }],
    });
    const set = await client.setFirewall(vm, {
      mode: 'restricted',
      ingress: [
        { protocol: 'udp', portStart: 8000, portEnd: 8010, sourceCidrs: ['2001:db8::/32'] },
      ],
    });
    expect(set.firewall?.ingress).toEqual([
      { protocol: 'udp', portStart: 8000, portEnd: 8010, sourceCidrs: ['2001:db8::/32'] },
    ]);
    const patched = await client.patchFirewall(vm, { mode: 'open' });
    expect(patched.firewall?.mode).toBe('open');
    expect(patched.firewall?.ingress).toHaveLength(1);
    const cleared = await client.patchFirewall(vm, { ingress: [] });
    expect(cleared.firewall?.ingress ?? []).toEqual([]);
  });

  it('speaks firewall v2 when asked, and v1 otherwise', async () => {
    const egress = {
      default: 'deny' as const,
      rules: [
        {
          action: 'allow' as const,
          kind: 'fqdn' as const,
          protocol: 'tcp' as const,
          ports: '443',
          value: '*.example.com',
        },
      ],
    };
    // A v2 write is answered in v2 even by a v1 client; its later reads are v1.
    const vm = await client.launch({ firewall: { egress, dns: { blockBypass: true } } });
    expect(vm.firewall).toBeNull();
    expect(vm.firewallV2?.egress).toEqual(egress);
    const v1 = await client.get(vm.id);
    expect(v1.firewall).toEqual({ mode: 'restricted', ingress: [] });
    expect(v1.firewallV2).toBeNull();
    // Straight to the server: the proxy counts this file's one connection.
    const v2client = new FastVM({ apiKey: server.key, baseUrl: server.url, firewallVersion: 2 });
    try {
      const v2 = await v2client.get(vm.id);
      expect(v2.firewall).toBeNull();
      expect(v2.firewallV2).toEqual({
        ingress: { default: 'deny', rules: [] },
        egress,
        dns: { mode: 'deny', domains: [], blockBypass: true },
      });
      // v1 writes through the v2 client keep egress and DNS.
      const set = await v2client.setFirewall(vm, { mode: 'open' });
      expect(set.firewallV2?.ingress).toEqual({ default: 'allow', rules: [] });
      expect(set.firewallV2?.egress).toEqual(egress);
      const patched = await v2client.patchFirewall(vm, { egress: { default: 'allow' } });
      expect(patched.firewallV2?.egress).toEqual({ default: 'allow', rules: [] });
    } finally {
      await v2client.close();
    }
  });

  it('lists, renames and removes snapshots; reports quotas', async () => {
    const vm = await client.launch();
    const snap = await client.snapshot(vm);
    expect(snap.name).not.toBe('');
    expect((await client.listSnapshots()).map((s) => s.id)).toContain(snap.id);
    expect((await client.renameSnapshot(snap, 'renamed-snap')).name).toBe('renamed-snap');
    expect((await client.getSnapshot('renamed-snap')).id).toBe(snap.id);
    const before = await client.quotas();
    expect(before.usage.snapshotCount).toBeGreaterThan(0);
    expect(before.limits.vcpu).toBeGreaterThan(0);
    await client.removeSnapshot(snap.id);
    expect((await client.quotas()).usage.snapshotCount).toBe(before.usage.snapshotCount - 1);
    await expect(client.getSnapshot(snap.id)).rejects.toBeInstanceOf(NotFoundError);
  });

  it('run: argv arrays, stderr, exit codes and the server-side timeout', async () => {
    const vm = await client.launch();
    const r = await client.run(vm, 'echo out; echo err >&2; exit 3');
    expect(r).toMatchObject({ exitCode: 3, stdout: 'out\n', stderr: 'err\n', timedOut: false });
    expect((await client.run(vm, ['echo', 'a b'])).stdout).toBe('a b\n');
    const slow = await client.run(vm, 'sleep 5', { timeoutSec: 1 });
    expect(slow.timedOut).toBe(true);
  });
});

describe('errors against the server', () => {
  it('401 → AuthenticationError', async () => {
    const bad = new FastVM({ apiKey: 'wrong-key', baseUrl: server.url });
    const err = await bad.list().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(AuthenticationError);
    expect((err as AuthenticationError).status).toBe(401);
    expect((err as Error).message).toMatch(/^401 /);
    await bad.close();
  });

  it('404 → NotFoundError for unknown and malformed ids', async () => {
    for (const id of ['vm_does_not_exist_000000', '00000000-0000-4000-8000-000000000000']) {
      const err = await client.get(id).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(NotFoundError);
      expect((err as NotFoundError).status).toBe(404);
    }
    await expect(client.run('nope', 'true')).rejects.toBeInstanceOf(NotFoundError);
    await expect(client.restore('no-such-snapshot')).rejects.toBeInstanceOf(NotFoundError);
  });

  it('429 with a dimension → QuotaExceededError', async () => {
    const small = await startTestServer({ quotaDefaults: { vcpu: 1 } });
    const c = new FastVM({ apiKey: small.key, baseUrl: small.url });
    await c.launch();
    const err = await c.launch().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(QuotaExceededError);
    expect((err as QuotaExceededError).status).toBe(429);
    expect((err as QuotaExceededError).dimension).toBe('vcpu');
    await c.close();
    await small.stop();
  });

  it('a boot that fails after the 202 → VMLaunchError; a slow one → VMNotReadyError', async () => {
    server.runtime.failLaunch = new FakeRuntimeError('boot_failed', 'kernel panic');
    server.runtime.launchDelayMs = 200; // longer than the server's launchWaitMs: 202, then error
    try {
      const err = await client.launch().catch((e: unknown) => e);
      expect(err).toBeInstanceOf(VMLaunchError);
      expect((err as VMLaunchError).status).toBe('error');
    } finally {
      server.runtime.failLaunch = undefined;
    }
    // The 202 comes after the server's launchWaitMs; the timeout leaves a loaded host room for it.
    server.runtime.launchDelayMs = 4_000;
    try {
      const err = await client.launch({ timeout: 1_500 }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(VMNotReadyError);
      expect(err).toBeInstanceOf(TimeoutError);
    } finally {
      server.runtime.launchDelayMs = 0;
    }
  });

  it('AbortSignal cancels a running command and the session survives', async () => {
    const vm = await client.launch();
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 100);
    const started = performance.now();
    await expect(client.run(vm, 'sleep 10', { signal: ac.signal })).rejects.toBeInstanceOf(
      AbortError,
    );
    expect(performance.now() - started).toBeLessThan(2_000);
    await expect(client.run(vm, 'sleep 10', { timeout: 200 })).rejects.toBeInstanceOf(TimeoutError);
    expect((await client.run(vm, 'echo still here')).stdout).toBe('still here\n');
    expect(proxy.connections).toBe(1);
  });
});

describe('large bodies on the shared HTTP/2 session', () => {
  it('a 10 MiB exec stdin (~14 MB of JSON) while 16 other calls run on the same session', async () => {
    const vm = await client.launch({ machine: 'c1m2' });
    const big = Buffer.alloc(10 * 2 ** 20, 0x61);
    const streamed = (async () => {
      let bytes = 0;
      let exitCode = -1;
      for await (const ev of client.stream(vm, 'cat', { stdin: big })) {
        if (ev.type === 'stdout') bytes += ev.data.length;
        if (ev.type === 'exit') exitCode = ev.exitCode;
      }
      return { bytes, exitCode };
    })();
    const [out, ...gets] = await Promise.all([
      streamed,
      ...Array.from({ length: 16 }, () => client.get(vm)),
    ]);
    expect(out).toEqual({ bytes: big.length, exitCode: 0 });
    expect(gets.every((g) => g.id === vm.id)).toBe(true);
    await client.remove(vm);
  });
});

describe('environment variables', () => {
  it('launch and restore send envVars (merged over the snapshot’s); VMs carry them', async () => {
    const vm = await client.launch({ envVars: { FOO: 'bar', KEEP: '1' } });
    expect(vm.envVars).toEqual({ FOO: 'bar', KEEP: '1' });
    expect((await client.get(vm)).envVars).toEqual({ FOO: 'bar', KEEP: '1' });
    const snap = await client.snapshot(vm);
    const fork = await client.restore(snap, { envVars: { FOO: 'fork' } });
    expect(fork.envVars).toEqual({ FOO: 'fork', KEEP: '1' });
    const plain = await client.launch();
    expect(plain.envVars).toEqual({});
    await expect(client.launch({ envVars: { 'BAD-NAME': 'x' } })).rejects.toBeInstanceOf(
      BadRequestError,
    );
    for (const v of [vm, fork, plain]) await client.remove(v);
    await client.removeSnapshot(snap);
  });
});
