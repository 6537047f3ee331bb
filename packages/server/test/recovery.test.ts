import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { FakeRuntime } from '../src/testing/index.js';
import { TestClient, makeDataDir, sleep, startTestServer } from './helpers.js';

const MAIN = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../src/main.ts');

describe('restart recovery (in process)', () => {
  const dirs: string[] = [];
  afterAll(async () => {
    for (const d of dirs) await fs.rm(d, { recursive: true, force: true });
  });

  it('after a crash: records survive, interrupted work is marked, lost VMs stop, quotas recompute', async () => {
    const dataDir = await makeDataDir();
    dirs.push(dataDir);
    const runtime = new FakeRuntime();
    const first = await startTestServer({ dataDir, runtime, launchWaitMs: 50 });
    const api = new TestClient(first.url, first.key);

    const survivor = (await api.post('/v1/vms', { machineType: 'c1m2', name: 'survivor' })).body;
    const lost = (await api.post('/v1/vms', { machineType: 'c2m4', name: 'lost' })).body;
    const doomed = (await api.post('/v1/vms', { machineType: 'c1m2', name: 'half-deleted' })).body;
    const ready = (await api.post('/v1/snapshots', { vmId: survivor.id, name: 'keep' })).body;
    const vanished = (await api.post('/v1/snapshots', { vmId: survivor.id, name: 'vanished' }))
      .body;
    // A delete that got as far as marking the row when the server died.
    await first.server.store.transitionVm(doomed.id, { from: 'running', to: 'deleting' });

    // In-flight work at crash time: a slow launch and a slow snapshot.
    runtime.launchDelayMs = 10_000;
    const booting = await api.post('/v1/vms', { machineType: 'c1m2', name: 'booting' });
    expect(booting.status).toBe(202);
    runtime.snapshotDelayMs = 10_000;
    const pendingSnapshot = api
      .post('/v1/snapshots', { vmId: survivor.id, name: 'creating' })
      .catch(() => null);
    await sleep(100);

    await first.server.kill();
    void pendingSnapshot;
    runtime.launchDelayMs = 0;
    runtime.snapshotDelayMs = 0;
    runtime.forget(lost.id); // QEMU died while no server was watching
    runtime.forgetSnapshot(vanished.id);

    const second = await startTestServer({ dataDir, runtime });
    try {
      const api2 = new TestClient(second.url, first.key);
      expect(second.key).toBe(first.key);
      expect(second.server.recovery).toMatchObject({
        adopted: [survivor.id],
        lost: [lost.id],
        interruptedLaunches: [booting.body.id],
        finishedDeletes: [doomed.id],
        missingSnapshots: [vanished.id],
      });
      expect(second.server.recovery.interruptedSnapshots).toHaveLength(1);

      expect((await api2.get(`/v1/vms/${survivor.id}`)).body.status).toBe('running');
      expect((await api2.get(`/v1/vms/${lost.id}`)).body).toMatchObject({
        status: 'stopped',
        statusMessage: expect.stringMatching(/gone/),
      });
      expect((await api2.get(`/v1/vms/${booting.body.id}`)).body.status).toBe('error');
      expect((await api2.get(`/v1/vms/${doomed.id}`)).status).toBe(404);

      const snaps = (await api2.get('/v1/snapshots')).body as Array<{
        name: string;
        status: string;
      }>;
      const byName = Object.fromEntries(snaps.map((s) => [s.name, s.status]));
      expect(byName).toEqual({ keep: 'ready', vanished: 'error', creating: 'error' });

      // Only the survivor and the ready snapshot hold quota.
      expect((await api2.get('/v1/org/quotas')).body.usage).toMatchObject({
        vcpu: 1,
        memoryMiB: 2048,
        diskGiB: 10,
        snapshotCount: 1,
      });

      // The survivor still works, and the ready snapshot restores.
      const exec = await api2.post(`/v1/vms/${survivor.id}/exec`, { command: ['echo', 'alive'] });
      expect(exec.body.stdout).toBe('alive\n');
      expect((await api2.post('/v1/vms', { snapshotId: ready.id })).status).toBe(201);
    } finally {
      await second.server.close();
    }
  });

  it('a graceful restart detaches: VMs keep running and are re-adopted', async () => {
    const dataDir = await makeDataDir();
    dirs.push(dataDir);
    const runtime = new FakeRuntime();
    const first = await startTestServer({ dataDir, runtime });
    const api = new TestClient(first.url, first.key);
    const vm = (await api.post('/v1/vms', { machineType: 'c4m8' })).body;
    await first.server.close();
    expect(runtime.calls.some((c) => c.method === 'detach')).toBe(true);
    expect(runtime.get(vm.id)?.state).toBe('running');

    const second = await startTestServer({ dataDir, runtime });
    try {
      const api2 = new TestClient(second.url, first.key);
      expect(second.server.recovery.adopted).toEqual([vm.id]);
      expect((await api2.get(`/v1/vms/${vm.id}`)).body.status).toBe('running');
      expect((await api2.get('/v1/org/quotas')).body.usage.vcpu).toBe(4);
      expect(second.server.bootstrapKeyGenerated).toBe(false);
    } finally {
      await second.server.close();
    }
  });

  it('graceful close lets an in-flight exec finish', async () => {
    const t = await startTestServer();
    dirs.push(t.dataDir);
    const api = new TestClient(t.url, t.key);
    const vm = (await api.post('/v1/vms', { machineType: 'c1m2' })).body;
    const exec = api.post(`/v1/vms/${vm.id}/exec`, { command: 'sleep 0.5; echo done' });
    await sleep(100);
    const closing = t.server.close();
    const res = await exec;
    expect(res.body.stdout).toBe('done\n');
    await closing;
  });
});

/** Starts `main.ts serve --fake-runtime` as a child and waits for its URL. */
async function spawnServer(
  dataDir: string,
  env: Record<string, string> = {},
): Promise<{ child: ChildProcess; url: string }> {
  const child = spawn(
    process.execPath,
    ['--import', 'tsx', MAIN, 'serve', '--fake-runtime', '--port', '0', '--log-level', 'warn'],
    {
      env: { ...process.env, FASTVM_DATA_DIR: dataDir, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  let output = '';
  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`server did not start:\n${output}`)), 20_000);
    const onData = (chunk: Buffer): void => {
      output += chunk.toString();
      const m = /listening on (http:\/\/\S+)/.exec(output);
      if (m?.[1]) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    };
    child.stdout?.on('data', onData);
    child.stderr?.on('data', onData);
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`server exited with ${code}:\n${output}`));
    });
  });
  return { child, url };
}

function exited(child: ChildProcess): Promise<number | null> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(child.exitCode);
  return new Promise((resolve) => child.once('exit', (code) => resolve(code)));
}

describe('kill -9 of the server process', () => {
  it('keeps every record, marks interrupted launches, re-adopts running VMs', async () => {
    const dataDir = await makeDataDir();
    const key = 'fvm_kill9_test_key_0123456789abcdef';
    try {
      const first = await spawnServer(dataDir, {
        FASTVM_BOOTSTRAP_KEY: key,
        FASTVM_FAKE_LAUNCH_DELAY_MS: '0',
      });
      const api = new TestClient(first.url, key);
      const vm = (await api.post('/v1/vms', { machineType: 'c2m4', name: 'precious' })).body;
      expect(vm.status).toBe('running');
      const snap = (await api.post('/v1/snapshots', { vmId: vm.id, name: 'snap' })).body;
      expect(snap.status).toBe('ready');
      await api.patch(`/v1/vms/${vm.id}`, { metadata: { committed: 'yes' } });
      first.child.kill('SIGKILL');
      await exited(first.child);

      // Second life: slow launches, killed while one is in flight.
      const second = await spawnServer(dataDir, { FASTVM_FAKE_LAUNCH_DELAY_MS: '3000' });
      const api2 = new TestClient(second.url, key);
      const inflight = api2
        .post('/v1/vms', { machineType: 'c1m2', name: 'inflight' })
        .catch(() => null);
      let inflightId: string | undefined;
      for (let i = 0; i < 50 && !inflightId; i++) {
        await sleep(50);
        const list = (await api2.get('/v1/vms')).body as Array<{ id: string; name: string }>;
        inflightId = list.find((v) => v.name === 'inflight')?.id;
      }
      expect(inflightId).toBeDefined();
      second.child.kill('SIGKILL');
      await exited(second.child);
      await inflight;

      const third = await spawnServer(dataDir);
      try {
        const api3 = new TestClient(third.url, key);
        const got = (await api3.get(`/v1/vms/${vm.id}`)).body;
        expect(got).toMatchObject({
          status: 'running',
          name: 'precious',
          metadata: { committed: 'yes' },
        });
        expect((await api3.get(`/v1/snapshots/${snap.id}`)).body.status).toBe('ready');
        expect((await api3.get(`/v1/vms/${inflightId}`)).body.status).toBe('error');
        expect((await api3.get('/v1/org/quotas')).body.usage).toMatchObject({
          vcpu: 2,
          memoryMiB: 4096,
          snapshotCount: 1,
        });
        expect((await api3.post(`/v1/vms/${vm.id}/exec`, { command: 'echo ok' })).body.stdout).toBe(
          'ok\n',
        );
        const restored = await api3.post('/v1/vms', { snapshotId: snap.id });
        expect(restored.status).toBe(201);

        // SIGTERM: graceful shutdown exits 0.
        third.child.kill('SIGTERM');
        expect(await exited(third.child)).toBe(0);
      } finally {
        third.child.kill('SIGKILL');
      }
    } finally {
      await fs.rm(dataDir, { recursive: true, force: true });
    }
  }, 60_000);
});
