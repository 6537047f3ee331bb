/**
 * Registry images end to end through the HTTP API (real QEMU, a real `docker-registry` on
 * 127.0.0.1 with basic auth): `POST /v1/snapshot-imports` of an image → §4.7 events, a
 * `succeeded` import whose snapshot restores with the top layer's file, without the whited-out
 * one, with the image's ENV; a Dockerfile import `FROM` that image with COPY and RUN, and its
 * unchanged rebuild served by the step cache; an unknown tag and a wrong password failing with
 * clear reasons; the password never in any response; and `fastvm image import REF --json` (the
 * built binary, spawned) against the same registry with live progress.
 *
 * The image's goldens go to a private golden directory (removed at the end), not the shared
 * guest cache.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { defaultCacheDir } from '@fastvm/runtime';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { disposeRuntime, testRuntime } from '../../runtime/test/helpers.js';
import { startServer, type ServerHandle } from '../src/index.js';
import { TestClient, makeDataDir, sleep, zip } from './helpers.js';
import {
  busyboxLayer,
  haveRegistry,
  pushImage,
  startRegistry,
  tarOf,
  type TestRegistry,
} from './registry-helpers.js';

const busybox = busyboxLayer();
const ready = haveRegistry() && Boolean(busybox);
const AUTH = { username: 'ix-user', password: 'ix-Pa55-never-echoed' };

type Body = { status: string; [k: string]: unknown };

describe.skipIf(!ready)('registry images through the API (real QEMU VMs)', () => {
  let registry: TestRegistry;
  let server: ServerHandle;
  let runtime: Awaited<ReturnType<typeof testRuntime>>;
  let api: TestClient;
  let dataDir: string;
  let goldenDir: string;
  let image: string;
  /** Every response body seen, to check the password never appears in any. */
  const seen: string[] = [];

  beforeAll(async () => {
    registry = await startRegistry({ auth: AUTH });
    await pushImage(registry, 'ix/busy', 'v1', {
      layers: [
        { tar: (await busybox)!, compression: 'gzip' },
        {
          tar: await tarOf([
            { type: 'dir', path: 'etc' },
            { type: 'file', path: 'etc/old.txt', data: 'old\n' },
          ]),
          compression: 'zstd',
        },
        {
          tar: await tarOf([
            { type: 'whiteout', path: 'etc/old.txt' },
            { type: 'dir', path: 'srv' },
            { type: 'file', path: 'srv/top.txt', data: 'from the top layer\n' },
          ]),
        },
      ],
      config: { Env: ['GREETING=hi', 'PATH=/bin'], Cmd: ['/bin/sh'] },
    });
    image = `${registry.host}/ix/busy:v1`;
    const cache = defaultCacheDir();
    goldenDir = fs.mkdtempSync(path.join(cache, 'test', 'ixg-'));
    for (const f of ['accel.json', 'tsc.json']) {
      const from = path.join(cache, 'golden', f);
      if (fs.existsSync(from)) fs.copyFileSync(from, path.join(goldenDir, f));
    }
    runtime = await testRuntime(undefined, { goldenDir, pool: 0, prewarm: [] });
    dataDir = await makeDataDir();
    server = await startServer({
      port: 0,
      logLevel: process.env.FASTVM_TEST_LOG_LEVEL ?? 'silent',
      launchWaitMs: 60_000,
      dataDir,
      runtime,
    });
    api = new TestClient(server.url, server.bootstrapKey);
  }, 180_000);

  afterAll(async () => {
    api?.close();
    await server?.close();
    if (runtime) await disposeRuntime(runtime);
    await registry?.stop();
    for (const d of [dataDir, goldenDir]) if (d) fs.rmSync(d, { recursive: true, force: true });
  });

  const get = async (p: string) => {
    const res = await api.get(p);
    seen.push(JSON.stringify(res.body));
    return res;
  };

  async function waitImport(id: string, ms = 300_000): Promise<Body> {
    const until = Date.now() + ms;
    for (;;) {
      const res = await get(`/v1/snapshot-imports/${id}`);
      expect(res.status).toBe(200);
      const b = res.body as Body;
      if (['succeeded', 'failed', 'cancelled'].includes(b.status)) {
        const logs = await get(`/v1/snapshot-imports/${id}/logs`);
        return { ...b, log: logs.body.data as string };
      }
      if (Date.now() > until) throw new Error(`import timed out: ${JSON.stringify(b)}`);
      await sleep(250);
    }
  }

  async function importImage(source: Record<string, unknown>, name?: string): Promise<Body> {
    const res = await api.post('/v1/snapshot-imports', {
      source,
      ...(name ? { name } : {}),
    });
    seen.push(JSON.stringify(res.body));
    expect(res.status, JSON.stringify(res.body)).toBe(202);
    return waitImport(res.body.id as string);
  }

  const exec = async (vmId: string, command: string) =>
    (await api.post(`/v1/vms/${vmId}/exec`, { command: ['sh', '-c', command] })).body as {
      exitCode: number;
      stdout: string;
      stderr: string;
    };

  async function withVm<T>(snapshotId: string, f: (id: string) => Promise<T>): Promise<T> {
    const vm = await api.post('/v1/vms', { snapshotId });
    expect(vm.status, JSON.stringify(vm.body)).toBe(201);
    try {
      return await f(vm.body.id as string);
    } finally {
      await api.del(`/v1/vms/${vm.body.id as string}`);
    }
  }

  const creds = { registryUsername: AUTH.username, registryPassword: AUTH.password };
  let imported: Body;

  it('imports a registry image: §4.7 events, a snapshot that restores with its files and ENV', async () => {
    imported = await importImage({ type: 'image', image, ...creds }, 'ix-busy');
    expect(imported.status, `${String(imported.error)}\n${String(imported.log)}`).toBe('succeeded');
    const events = imported.events as Array<{ phase: string; status: string }>;
    expect(events.map((e) => `${e.phase}:${e.status}`)).toEqual([
      'preparing:started',
      'preparing:completed',
      'pull:started',
      'pull:completed',
      'build:started',
      'build:completed',
      'saving:started',
      'saving:completed',
      'done:completed',
    ]);
    expect(imported.source).toEqual({
      type: 'image',
      image,
      platform: 'linux/amd64',
      registryUsername: AUTH.username,
    });
    expect(imported.progress).toBeUndefined();
    const snap = await get(`/v1/snapshots/${imported.snapshotId as string}`);
    expect(snap.body).toMatchObject({ status: 'ready', name: 'ix-busy' });
    expect(snap.body.envVars).toMatchObject({ GREETING: 'hi' });

    await withVm(imported.snapshotId as string, async (id) => {
      const r = await exec(
        id,
        'cat /srv/top.txt; test -e /etc/old.txt && echo old-present || echo old-absent; echo "greeting=$GREETING"',
      );
      expect(r.exitCode, r.stderr).toBe(0);
      expect(r.stdout).toBe('from the top layer\nold-absent\ngreeting=hi\n');
    });
    expect(runtime.list().filter((v) => v.id.startsWith('bld-'))).toEqual([]);
  }, 600_000);

  it('builds FROM the registry image with COPY and RUN; an unchanged rebuild is all cache', async () => {
    const files = {
      Dockerfile: [
        `FROM ${image}`,
        'ENV WHO=builder',
        'COPY hello.txt /srv/copied.txt',
        'RUN echo "ran as $WHO with $GREETING" > /srv/ran.txt && cat /srv/top.txt',
      ].join('\n'),
      'hello.txt': 'copied from the context\n',
    };
    const build = async () => {
      const p = await api.post('/v1/snapshot-imports/context-presign', {});
      expect(p.status).toBe(200);
      const up = await fetch(p.body.uploadUrl as string, {
        method: 'PUT',
        body: new Uint8Array(zip(files)),
        headers: { 'content-type': 'application/zip' },
      });
      expect(up.status).toBe(200);
      return importImage({
        type: 'dockerfile',
        contextRef: p.body.contextRef,
        registryHost: registry.host,
        ...creds,
      });
    };
    const first = await build();
    expect(first.status, `${String(first.error)}\n${String(first.log)}`).toBe('succeeded');
    expect(first.steps).toEqual({ total: 2, cached: 0, ran: 2 });
    expect(first.log).toContain('from the top layer\n');
    await withVm(first.snapshotId as string, async (id) => {
      const r = await exec(id, 'cat /srv/copied.txt /srv/ran.txt /srv/top.txt; echo "$WHO"');
      expect(r.exitCode, r.stderr).toBe(0);
      expect(r.stdout).toBe(
        'copied from the context\nran as builder with hi\nfrom the top layer\nbuilder\n',
      );
    });

    const again = await build();
    expect(again.status, String(again.error)).toBe('succeeded');
    expect(again.steps).toEqual({ total: 2, cached: 2, ran: 0 });
    expect(again.log).toMatch(/#1 CACHED/);
    expect(again.log).toMatch(/#2 CACHED/);
    expect(again.log).not.toContain('from the top layer');
    expect(again.snapshotId).not.toBe(first.snapshotId);
  }, 900_000);

  it('an unknown tag and a wrong password fail with clear reasons', async () => {
    const missing = `${registry.host}/ix/busy:nope`;
    const unknown = await importImage({ type: 'image', image: missing, ...creds });
    expect(unknown.status).toBe('failed');
    // About the image (an image import has no Dockerfile), not a stack trace.
    expect(unknown.error).toMatch(new RegExp(`^${missing.replace(/[.:/]/g, '\\$&')}: .*not found`));
    expect(unknown.error).not.toMatch(/\n\s+at |Dockerfile/);
    const phases = (unknown.events as Array<{ phase: string; status: string }>).map(
      (e) => `${e.phase}:${e.status}`,
    );
    expect(phases).toEqual([
      'preparing:started',
      'preparing:completed',
      'pull:started',
      'pull:failed',
    ]);

    // The image is cached on the server by now: a wrong password still must not get it.
    const wrong = await importImage({
      type: 'image',
      image,
      registryUsername: AUTH.username,
      registryPassword: 'ix-wrong-Secret-9',
    });
    expect(wrong.status).toBe('failed');
    expect(wrong.error).toMatch(new RegExp(`^${image.replace(/[.:/]/g, '\\$&')}: `));
    expect(wrong.error).toMatch(/credentials/);
    expect(wrong.error).not.toMatch(/\n\s+at /);
    expect(JSON.stringify(wrong)).not.toContain('ix-wrong-Secret-9');
    expect(wrong.snapshotId).toBeUndefined();
  }, 600_000);

  it('fastvm image import REF: live progress, --json at the end', async () => {
    const home = fs.mkdtempSync(path.join(dataDir, 'home-'));
    let stdout = '';
    let stdoutAt = 0;
    const progress: Array<{ at: number; text: string }> = [];
    // The real `fastvm` binary (built by vitest's globalSetup), as a user runs it.
    const child = spawn(
      process.execPath,
      [
        path.resolve(import.meta.dirname, '../../cli/bin/fastvm.cjs'),
        'image',
        'import',
        image,
        '-n',
        'ix-cli',
        '--username',
        AUTH.username,
        '--password-env',
        'IX_REGISTRY_PASSWORD',
        '--json',
      ],
      {
        env: {
          PATH: process.env.PATH ?? '/usr/bin:/bin',
          HOME: home,
          XDG_CONFIG_HOME: path.join(home, '.config'),
          FASTVM_API_KEY: server.bootstrapKey,
          FASTVM_BASE_URL: server.url,
          IX_REGISTRY_PASSWORD: AUTH.password,
        },
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    child.stdout.on('data', (c: Buffer) => {
      stdout += c.toString();
      stdoutAt = Date.now();
    });
    child.stderr.on('data', (c: Buffer) => progress.push({ at: Date.now(), text: c.toString() }));
    const code = await new Promise<number | null>((r) => child.on('close', r));
    const stderr = progress.map((p) => p.text).join('');
    expect(code, stderr).toBe(0);
    expect(stderr).toMatch(/==> preparing/);
    expect(stderr).toMatch(/==> pull completed/);
    expect(stderr).toMatch(/==> done completed/);
    // Live: the first progress line came well before the end, not all at once.
    expect(stdoutAt - progress[0]!.at).toBeGreaterThan(250);
    const snap = JSON.parse(stdout) as { id: string; name: string; status: string };
    expect(snap).toMatchObject({ name: 'ix-cli', status: 'ready' });
    expect(stdout + stderr).not.toContain(AUTH.password);
    await withVm(snap.id, async (id) => {
      expect((await exec(id, 'cat /srv/top.txt')).stdout).toBe('from the top layer\n');
    });
  }, 600_000);

  it('the password appears in no response (one, list, events, logs)', async () => {
    const list = await get('/v1/snapshot-imports');
    expect(list.status).toBe(200);
    expect((list.body as unknown[]).length).toBeGreaterThanOrEqual(4);
    for (const b of list.body as Array<{ id: string }>) {
      await get(`/v1/snapshot-imports/${b.id}`);
      await get(`/v1/snapshot-imports/${b.id}/logs`);
    }
    await get('/v1/snapshots');
    expect(seen.length).toBeGreaterThan(10);
    for (const s of seen) expect(s).not.toContain(AUTH.password);
  }, 120_000);
});
