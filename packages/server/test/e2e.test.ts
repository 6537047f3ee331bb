/**
 * End to end with real QEMU VMs: the HTTP API over HTTP/1.1 and h2c, and the TypeScript SDK
 * running the seed's Quick Start and Branching examples, against the real runtime.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { FastVM } from 'fastvm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { QemuRuntime } from '@fastvm/runtime';
import { disposeRuntime, testRuntime } from '../../runtime/test/helpers.js';
import { startServer, type ServerHandle } from '../src/index.js';
import { TRANSPORTS, TestClient, makeDataDir } from './helpers.js';

describe('end to end (real QEMU VMs)', () => {
  let runtime: QemuRuntime;
  let server: ServerHandle;
  let dataDir: string;

  beforeAll(async () => {
    runtime = await testRuntime();
    dataDir = await makeDataDir();
    server = await startServer({
      port: 0,
      dataDir,
      runtime,
      logLevel: process.env.FASTVM_TEST_LOG_LEVEL ?? 'silent',
      launchWaitMs: 60_000,
    });
  });

  afterAll(async () => {
    await server?.close();
    await disposeRuntime(runtime);
    if (dataDir) await fs.rm(dataDir, { recursive: true, force: true });
  });

  for (const transport of TRANSPORTS) {
    it(`launches, runs, snapshots and restores over ${transport}`, async () => {
      const c = new TestClient(server.url, server.bootstrapKey, transport);
      try {
        const launched = await c.request('POST', '/v1/vms', {
          body: { machineType: 'c1m2', name: `e2e-${transport}` },
        });
        expect(launched.status).toBe(201);
        expect(launched.body.status).toBe('running');
        expect(launched.body).toMatchObject({
          cpu: 1,
          memoryMiB: 2048,
          diskGiB: 10,
          machineName: 'c1m2',
        });
        const id = launched.body.id as string;

        const hello = await c.request('POST', `/v1/vms/${id}/exec`, {
          body: { command: ['echo', 'hello'] },
        });
        expect(hello.status).toBe(200);
        expect(hello.body).toMatchObject({
          exitCode: 0,
          stdout: 'hello\n',
          stderr: '',
          timedOut: false,
        });

        const failing = await c.request('POST', `/v1/vms/${id}/exec`, {
          body: { command: 'echo err >&2; exit 7' },
        });
        expect(failing.body).toMatchObject({ exitCode: 7, stderr: 'err\n' });

        await c.request('POST', `/v1/vms/${id}/exec`, {
          body: { command: 'echo kept > /root/state' },
        });
        const snap = await c.request('POST', '/v1/snapshots', {
          body: { vmId: id, name: `snap-${transport}` },
        });
        expect(snap.status).toBe(201);
        expect(snap.body.status).toBe('ready');

        const restored = await c.request('POST', '/v1/vms', { body: { snapshotId: snap.body.id } });
        expect(restored.status).toBe(201);
        expect(restored.body.sourceName).toBe(`snap-${transport}`);
        const state = await c.request('POST', `/v1/vms/${restored.body.id}/exec`, {
          body: { command: ['cat', '/root/state'] },
        });
        expect(state.body.stdout).toBe('kept\n');

        for (const vm of [id, restored.body.id as string]) {
          expect((await c.request('DELETE', `/v1/vms/${vm}`)).body).toEqual({
            id: vm,
            deleted: true,
          });
        }
        expect((await c.request('DELETE', `/v1/snapshots/${snap.body.id}`)).status).toBe(200);
        const quotas = await c.request('GET', '/v1/org/quotas');
        expect(quotas.body.usage).toMatchObject({ vcpu: 0, memoryMiB: 0, snapshotCount: 0 });
      } finally {
        c.close();
      }
    });
  }

  it("runs the seed's Quick Start and Branching examples through the SDK", async () => {
    await using client = new FastVM({ apiKey: server.bootstrapKey, baseUrl: server.url });
    await client.warmup();

    // Quick Start
    const vm = await client.launch({ machine: 'c1m2' });
    const snapshot = await client.snapshot(vm, { name: 'my-snap' });
    const restored = await client.restore(snapshot);
    const result = await client.run(restored, 'echo hello');
    expect(result.stdout).toBe('hello\n');
    expect(result.exitCode).toBe(0);

    // Branching: snapshot, restore 10 concurrently, run in each, pick the fastest.
    await client.run(vm, 'echo 21 > /root/base');
    const snap = await client.snapshot(vm, { name: 'branch-point' });
    const branches = await Promise.all(
      Array.from({ length: 10 }, (_, i) => client.restore(snap, { name: `branch-${i}` })),
    );
    const results = await Promise.all(
      branches.map((b, i) => client.run(b, `echo $(( $(cat /root/base) * 2 + ${i} ))`)),
    );
    results.forEach((r, i) => expect(r.stdout).toBe(`${42 + i}\n`));
    const best = results.reduce((a, b) => (b.durationMs < a.durationMs ? b : a));
    expect(best.durationMs).toBeGreaterThanOrEqual(0);
    expect(client.stats).toMatchObject({ protocol: 'h2c', sessionsOpened: 1 });

    for (const b of [vm, restored, ...branches]) await client.remove(b);
    for (const s of [snapshot, snap]) await client.removeSnapshot(s);
    expect(await client.list()).toEqual([]);
  });

  it('keeps VMs across a server restart and re-adopts them', async () => {
    const c = new TestClient(server.url, server.bootstrapKey, 'h1');
    const launched = await c.request('POST', '/v1/vms', { body: { machineType: 'c1m2' } });
    const id = launched.body.id as string;
    c.close();
    await server.close(); // graceful: the runtime detaches, QEMU keeps running
    runtime = await testRuntime(runtime.dataDir);
    server = await startServer({ port: 0, dataDir, runtime, logLevel: 'silent' });
    const c2 = new TestClient(server.url, server.bootstrapKey, 'h2');
    try {
      const got = await c2.request('GET', `/v1/vms/${id}`);
      expect(got.body.status).toBe('running');
      const r = await c2.request('POST', `/v1/vms/${id}/exec`, { body: { command: ['hostname'] } });
      expect(r.body.stdout).toBe(`vm-${id.slice(0, 8)}\n`);
      expect((await c2.request('DELETE', `/v1/vms/${id}`)).status).toBe(200);
    } finally {
      c2.close();
    }
    expect(path.isAbsolute(runtime.dataDir)).toBe(true);
  });
});
