/**
 * Builds and snapshot imports over HTTP on the FakeRuntime (§4.7, §4.8): validation, status and
 * event order, the step cache, cancel, delete, per-org isolation, quota, context limits and a
 * restart in the middle of a build. What a build does inside a real guest (COPY, USER, …) is
 * `builds-vm.test.ts`.
 */
import fs from 'node:fs/promises';
import zlib from 'node:zlib';
import tarStream from 'tar-stream';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { FakeRuntime } from '../src/testing/index.js';
import {
  TestClient,
  createOrgWithKey,
  makeDataDir,
  sleep,
  startTestServer,
  type TestServer,
  zip,
} from './helpers.js';

async function tarGz(files: Record<string, string>): Promise<Buffer> {
  const pack = tarStream.pack();
  for (const [name, body] of Object.entries(files)) pack.entry({ name }, body);
  pack.finalize();
  const chunks: Buffer[] = [];
  for await (const c of pack) chunks.push(c as Buffer);
  return zlib.gzipSync(Buffer.concat(chunks));
}

async function put(url: string, body: Buffer, type: string): Promise<number> {
  const res = await fetch(url, { method: 'PUT', body, headers: { 'content-type': type } });
  await res.text();
  return res.status;
}

async function waitFor(
  api: TestClient,
  path: string,
  done: (body: { status: string }) => boolean,
  ms = 20_000,
): Promise<{ status: string; [k: string]: unknown }> {
  const until = Date.now() + ms;
  for (;;) {
    const res = await api.get(path);
    expect(res.status).toBe(200);
    if (done(res.body)) return res.body;
    if (Date.now() > until) throw new Error(`timed out: ${JSON.stringify(res.body)}`);
    await sleep(20);
  }
}

const terminalImport = (b: { status: string }) =>
  ['succeeded', 'failed', 'cancelled'].includes(b.status);
const terminalBuild = (b: { status: string }) => ['completed', 'failed'].includes(b.status);

describe('builds and snapshot imports (fake runtime)', () => {
  let t: TestServer;
  let api: TestClient;

  beforeAll(async () => {
    // No image source: registry references fail clearly, with no traffic (registry pulls are
    // tested against a local registry in images*.test.ts).
    t = await startTestServer({ builds: { contextMaxBytes: 64 * 1024 }, images: false });
    api = new TestClient(t.url, t.key);
  });
  afterAll(async () => {
    await t.cleanup();
  });
  afterEach(() => {
    t.runtime.failExec = undefined;
  });

  async function uploadZip(files: Record<string, string>, client = api): Promise<string> {
    const p = await client.post('/v1/snapshot-imports/context-presign', {});
    expect(p.status).toBe(200);
    expect(p.body).toMatchObject({ expiresInSec: expect.any(Number), maxUploadBytes: 64 * 1024 });
    expect(await put(p.body.uploadUrl, zip(files), 'application/zip')).toBe(200);
    return p.body.contextRef;
  }

  it('imports a Dockerfile build: phases in order, a ready snapshot that restores with ENV', async () => {
    const contextRef = await uploadZip({
      Dockerfile:
        'FROM fastvm/base\nARG GREETING=hi\nENV A=1 B="two words"\nRUN echo hello build\nCMD ["serve"]\nEXPOSE 8080\nLABEL x=y\n',
    });
    const res = await api.post('/v1/snapshot-imports', {
      source: { type: 'dockerfile', contextRef, buildArgs: { GREETING: 'hello' } },
      name: 'my-image',
    });
    expect(res.status).toBe(202);
    expect(res.body).toMatchObject({
      status: 'pending',
      name: 'my-image',
      source: { type: 'dockerfile', dockerfilePath: 'Dockerfile' },
    });
    const done = await waitFor(api, `/v1/snapshot-imports/${res.body.id}`, terminalImport);
    expect(done.status).toBe('succeeded');
    const events = done.events as Array<{ phase: string; status: string }>;
    expect(events.map((e) => `${e.phase}:${e.status}`)).toEqual([
      'preparing:started',
      'preparing:completed',
      'fetch_context:started',
      'fetch_context:completed',
      'build:started',
      'pull:skipped',
      'build:completed',
      'saving:started',
      'saving:completed',
      'done:completed',
    ]);
    expect(done.progress).toBeUndefined();
    expect(done.steps).toEqual({ total: 1, cached: 0, ran: 1 });
    const logs = await api.get(`/v1/snapshot-imports/${res.body.id}/logs`);
    expect(logs.body.data).toContain('hello build');
    expect(logs.body.done).toBe(true);

    const snap = await api.get(`/v1/snapshots/${done.snapshotId as string}`);
    expect(snap.status).toBe(200);
    expect(snap.body).toMatchObject({ status: 'ready', name: 'my-image' });
    expect(snap.body.envVars).toMatchObject({ A: '1', B: 'two words' });
    expect(snap.body.envVars.GREETING).toBeUndefined();
    expect(snap.body.metadata).toMatchObject({
      'image.cmd': '["serve"]',
      'image.exposedPorts': '[8080]',
      'image.labels': '{"x":"y"}',
    });
    const vm = await api.post('/v1/vms', { snapshotId: done.snapshotId });
    expect(vm.status).toBe(201);
    const exec = await api.post(`/v1/vms/${vm.body.id}/exec`, { command: ['sh', '-c', 'echo $A'] });
    expect(exec.status).toBe(200);
    await api.del(`/v1/vms/${vm.body.id}`);

    // No build VM is left.
    expect(t.runtime.runningVmIds().filter((id) => id.startsWith('bld-'))).toEqual([]);

    // Rebuilt unchanged: every step from the cache.
    const again = await api.post('/v1/snapshot-imports', {
      source: {
        type: 'dockerfile',
        contextRef: await uploadZip({
          Dockerfile:
            'FROM fastvm/base\nARG GREETING=hi\nENV A=1 B="two words"\nRUN echo hello build\nCMD ["serve"]\nEXPOSE 8080\nLABEL x=y\n',
        }),
        buildArgs: { GREETING: 'hello' },
      },
    });
    const cached = await waitFor(api, `/v1/snapshot-imports/${again.body.id}`, terminalImport);
    expect(cached.status).toBe('succeeded');
    expect(cached.steps).toEqual({ total: 1, cached: 1, ran: 0 });
    expect(cached.snapshotId).not.toBe(done.snapshotId);

    // A different build arg changes the RUN's key.
    const other = await api.post('/v1/snapshot-imports', {
      source: {
        type: 'dockerfile',
        contextRef: await uploadZip({
          Dockerfile:
            'FROM fastvm/base\nARG GREETING=hi\nENV A=1 B="two words"\nRUN echo hello build\n',
        }),
      },
    });
    const rerun = await waitFor(api, `/v1/snapshot-imports/${other.body.id}`, terminalImport);
    expect(rerun.steps).toEqual({ total: 1, cached: 0, ran: 1 });

    // Listed newest first; the step cache's snapshots are not the org's snapshots.
    const list = await api.get('/v1/snapshot-imports');
    expect(list.body.map((x: { id: string }) => x.id).slice(0, 3)).toEqual([
      other.body.id,
      again.body.id,
      res.body.id,
    ]);
    const snaps = (await api.get('/v1/snapshots')).body as Array<{ id: string }>;
    expect(snaps.map((s) => s.id).sort()).toEqual(
      [done.snapshotId, cached.snapshotId, rerun.snapshotId].sort(),
    );

    // DELETE removes the import and its snapshot.
    const del = await api.del(`/v1/snapshot-imports/${res.body.id}`);
    expect(del.status).toBe(200);
    expect(del.body).toEqual({ id: res.body.id, deleted: true });
    expect((await api.get(`/v1/snapshots/${done.snapshotId as string}`)).status).toBe(404);
    expect((await api.get(`/v1/snapshot-imports/${res.body.id}`)).status).toBe(404);
  });

  it('image imports of the platform base; registry images fail clearly without an image source', async () => {
    const ok = await api.post('/v1/snapshot-imports', {
      source: { type: 'image', image: 'debian:bookworm' },
    });
    expect(ok.status).toBe(202);
    const done = await waitFor(api, `/v1/snapshot-imports/${ok.body.id}`, terminalImport);
    expect(done.status).toBe('succeeded');
    expect(done.source).toEqual({
      type: 'image',
      image: 'debian:bookworm',
      platform: 'linux/amd64',
    });

    const reg = await api.post('/v1/snapshot-imports', {
      source: {
        type: 'image',
        image: 'example.com/app:1',
        registryUsername: 'u',
        registryPassword: 'sekret',
      },
    });
    expect(reg.status).toBe(202);
    expect(JSON.stringify(reg.body)).not.toContain('sekret');
    const failed = await waitFor(api, `/v1/snapshot-imports/${reg.body.id}`, terminalImport);
    expect(failed.status).toBe('failed');
    expect(failed.error).toMatch(/registry images are not available on this server/);
    expect(JSON.stringify(failed)).not.toContain('sekret');
    expect(failed.source).toMatchObject({ registryUsername: 'u' });
  });

  it('validates import requests (§4.7)', async () => {
    const bad = async (body: unknown, field: RegExp) => {
      const res = await api.post('/v1/snapshot-imports', body);
      expect(res.status, JSON.stringify(res.body)).toBe(400);
      expect(JSON.stringify(res.body)).toMatch(field);
    };
    await bad({}, /source/);
    await bad({ source: { type: 'image' } }, /source.image/);
    await bad({ source: { type: 'image', image: 'x', contextRef: 'y' } }, /source.contextRef/);
    await bad({ source: { type: 'dockerfile', contextRef: 'y', image: 'x' } }, /source.image/);
    await bad({ source: { type: 'dockerfile' } }, /source.contextRef/);
    await bad(
      { source: { type: 'dockerfile', contextRef: 'y', dockerfilePath: '../Dockerfile' } },
      /dockerfilePath/,
    );
    await bad(
      { source: { type: 'dockerfile', contextRef: 'y', dockerfilePath: '/abs' } },
      /dockerfilePath/,
    );
    const many = Object.fromEntries(Array.from({ length: 65 }, (_, i) => [`A${i}`, 'v']));
    await bad({ source: { type: 'dockerfile', contextRef: 'y', buildArgs: many } }, /64 entries/);
    await bad(
      { source: { type: 'dockerfile', contextRef: 'y', buildArgs: { A: 'x'.repeat(9000) } } },
      /8192 bytes/,
    );
    await bad(
      {
        source: {
          type: 'dockerfile',
          contextRef: 'y',
          registryUsername: 'u',
          registryPassword: 'p',
        },
      },
      /registryHost/,
    );
    await bad(
      { source: { type: 'dockerfile', contextRef: 'y', registryHost: 'https://x/y' } },
      /registryHost/,
    );
    await bad({ source: { type: 'image', image: 'x', platform: 'linux/arm64' } }, /platform/);
    await bad({ source: { type: 'image', image: 'x' }, machineType: 'huge' }, /machineType/);
    await bad({ source: { type: 'image', image: 'x' }, diskGiB: 0 }, /diskGiB/);
    await bad({ source: { type: 'dockerfile', contextRef: 'bctx-nope.0123' } }, /contextRef/);
    // Context size cap: declared size → 400, upload past the cap → 413.
    const big = await api.post('/v1/snapshot-imports/context-presign', { sizeBytes: 1 << 30 });
    expect(big.status).toBe(400);
    const p = await api.post('/v1/snapshot-imports/context-presign');
    expect(p.status).toBe(200);
    expect(await put(p.body.uploadUrl, Buffer.alloc(65 * 1024), 'application/zip')).toBe(413);
  });

  it('a contextRef is single-use and per org', async () => {
    const ref = await uploadZip({ Dockerfile: 'FROM fastvm/base\n' });
    const otherKey = await createOrgWithKey(t.server, 'builds-other-org');
    const other = api.withKey(otherKey);
    const stolen = await other.post('/v1/snapshot-imports', {
      source: { type: 'dockerfile', contextRef: ref },
    });
    expect(stolen.status).toBe(400);
    const mine = await api.post('/v1/snapshot-imports', {
      source: { type: 'dockerfile', contextRef: ref },
    });
    expect(mine.status).toBe(202);
    const reuse = await api.post('/v1/snapshot-imports', {
      source: { type: 'dockerfile', contextRef: ref },
    });
    expect(reuse.status).toBe(400);
    await waitFor(api, `/v1/snapshot-imports/${mine.body.id}`, terminalImport);
    // Another org sees nothing of it.
    expect((await other.get(`/v1/snapshot-imports/${mine.body.id}`)).status).toBe(404);
    expect((await other.post(`/v1/snapshot-imports/${mine.body.id}/cancel`)).status).toBe(404);
    expect((await other.del(`/v1/snapshot-imports/${mine.body.id}`)).status).toBe(404);
    expect((await other.get('/v1/snapshot-imports')).body).toEqual([]);
    expect((await other.get(`/v1/builds/${mine.body.id}`)).status).toBe(404);
  });

  it('failed builds name the Dockerfile line; errors are capped', async () => {
    const cases: Array<[string, RegExp]> = [
      [
        'FROM fastvm/base\nRUN true\nHEALTHCHECK CMD true\n',
        /^Dockerfile line 3: HEALTHCHECK is not supported/,
      ],
      [
        'FROM fastvm/base\nCOPY ../x /x\n',
        /^Dockerfile line 2: COPY \.\.\/x: the path is outside the build context/,
      ],
      ['FROM fastvm/base\nRUN exit 3\n', /^Dockerfile line 2: RUN exit 3 failed with exit code 3/],
      ['FROM fastvm/base\nCOPY missing /x\n', /^Dockerfile line 2: COPY missing: not found/],
    ];
    for (const [dockerfile, want] of cases) {
      const res = await api.post('/v1/snapshot-imports', {
        source: { type: 'dockerfile', contextRef: await uploadZip({ Dockerfile: dockerfile }) },
      });
      const done = await waitFor(api, `/v1/snapshot-imports/${res.body.id}`, terminalImport);
      expect(done.status).toBe('failed');
      expect(done.error).toMatch(want);
      const events = done.events as Array<{ phase: string; status: string }>;
      expect(events.at(-1)).toMatchObject({ phase: 'build', status: 'failed' });
      expect(done.snapshotId).toBeUndefined();
    }
    const res = await api.post('/v1/snapshot-imports', {
      source: {
        type: 'dockerfile',
        contextRef: await uploadZip({ 'other/Dockerfile': 'FROM fastvm/base\n' }),
      },
    });
    const done = await waitFor(api, `/v1/snapshot-imports/${res.body.id}`, terminalImport);
    expect(done.error).toMatch(/Dockerfile was not found in the build context/);
    const long = await api.post('/v1/builds', {
      dockerfileContent: `FROM fastvm/base\nRUN ${'x'.repeat(10000)}\n`,
    });
    const longDone = await waitFor(api, `/v1/builds/${long.body.id}`, terminalBuild);
    expect(Buffer.byteLength(longDone.error as string)).toBeLessThanOrEqual(4096);
    expect(t.runtime.runningVmIds().filter((id) => id.startsWith('bld-'))).toEqual([]);
  });

  it('/v1/builds: tar.gz context, progress while running, completed with a snapshot', async () => {
    const p = await api.post('/v1/build-contexts/presign');
    expect(p.status).toBe(200);
    expect(p.body).toMatchObject({
      uploadUrl: expect.any(String),
      downloadUrl: expect.any(String),
    });
    expect(await put(p.body.uploadUrl, await tarGz({ 'app.txt': 'x' }), 'application/gzip')).toBe(
      200,
    );
    const res = await api.post('/v1/builds', {
      dockerfileContent: 'FROM fastvm/base\nRUN sleep 0.3\nRUN echo second\n',
      contextDownloadUrl: p.body.downloadUrl,
      name: 'b1',
    });
    expect(res.status).toBe(202);
    expect(res.body).toMatchObject({ status: 'pending', imageRef: 'fastvm/base', name: 'b1' });
    const running = await waitFor(api, `/v1/builds/${res.body.id}`, (b) => b.status === 'running');
    expect(running.progress).toEqual(expect.any(String));
    const done = await waitFor(api, `/v1/builds/${res.body.id}`, terminalBuild);
    expect(done).toMatchObject({ status: 'completed', snapshotId: expect.any(String) });
    expect(done.progress).toBeUndefined();
    // Builds and imports are separate lists.
    expect((await api.get(`/v1/snapshot-imports/${res.body.id}`)).status).toBe(404);

    const image = await api.post('/v1/builds', { imageRef: 'fastvm/base' });
    expect(image.status).toBe(202);
    expect((await waitFor(api, `/v1/builds/${image.body.id}`, terminalBuild)).status).toBe(
      'completed',
    );

    const bad = async (body: unknown, want: RegExp) => {
      const r = await api.post('/v1/builds', body);
      expect(r.status, JSON.stringify(r.body)).toBe(400);
      expect(JSON.stringify(r.body)).toMatch(want);
    };
    await bad({}, /imageRef or dockerfileContent/);
    await bad(
      { dockerfileContent: 'FROM x', contextDownloadUrl: 'https://example.com/ctx.tgz' },
      /contextDownloadUrl/,
    );
    const forged = p.body.downloadUrl.replace(/sig=[^&]+/, 'sig=AAAA');
    await bad({ dockerfileContent: 'FROM x', contextDownloadUrl: forged }, /contextDownloadUrl/);
    // Another org's context URL is refused.
    const otherKey = await createOrgWithKey(t.server, 'builds-url-org');
    const stolen = await api.withKey(otherKey).post('/v1/builds', {
      dockerfileContent: 'FROM fastvm/base',
      contextDownloadUrl: p.body.downloadUrl,
    });
    expect(stolen.status).toBe(400);
  });

  it('cancel stops a running build, leaves no VM and no stray snapshot; delete is 409 while it runs', async () => {
    const res = await api.post('/v1/snapshot-imports', {
      source: {
        type: 'dockerfile',
        contextRef: await uploadZip({
          Dockerfile: 'FROM fastvm/base\nRUN echo one\nRUN sleep 30\n',
        }),
      },
    });
    await waitFor(api, `/v1/snapshot-imports/${res.body.id}/logs`, (b) =>
      String((b as unknown as { data: string }).data).includes('#2 line 3'),
    );
    const del = await api.del(`/v1/snapshot-imports/${res.body.id}`);
    expect(del.status).toBe(409);
    const before = t.runtime.snapshotIds().length;
    const c = await api.post(`/v1/snapshot-imports/${res.body.id}/cancel`);
    expect(c.status).toBe(200);
    expect(c.body.status).toBe('cancelled');
    const events = c.body.events as Array<{ phase: string; status: string }>;
    expect(events.at(-1)).toMatchObject({ phase: 'build', status: 'cancelled' });
    expect(t.runtime.runningVmIds().filter((id) => id.startsWith('bld-'))).toEqual([]);
    // The completed first step stays cached; nothing else was added.
    expect(t.runtime.snapshotIds().length).toBe(before);
    // Idempotent.
    const again = await api.post(`/v1/snapshot-imports/${res.body.id}/cancel`);
    expect(again.body.status).toBe('cancelled');
    expect((await api.del(`/v1/snapshot-imports/${res.body.id}`)).status).toBe(200);
  });

  it('the step cache is per org', async () => {
    const dockerfile = 'FROM fastvm/base\nRUN echo per-org-cache\n';
    const first = await api.post('/v1/builds', { dockerfileContent: dockerfile });
    expect((await waitFor(api, `/v1/builds/${first.body.id}`, terminalBuild)).steps).toEqual({
      total: 1,
      cached: 0,
      ran: 1,
    });
    const other = api.withKey(await createOrgWithKey(t.server, 'builds-cache-org'));
    const theirs = await other.post('/v1/builds', { dockerfileContent: dockerfile });
    expect((await waitFor(other, `/v1/builds/${theirs.body.id}`, terminalBuild)).steps).toEqual({
      total: 1,
      cached: 0,
      ran: 1,
    });
    const mine = await api.post('/v1/builds', { dockerfileContent: dockerfile });
    expect((await waitFor(api, `/v1/builds/${mine.body.id}`, terminalBuild)).steps).toEqual({
      total: 1,
      cached: 1,
      ran: 0,
    });
  });

  it('quota is checked before work starts', async () => {
    const key = await createOrgWithKey(t.server, 'builds-quota-org');
    const org = api.withKey(key);
    const orgId = (await org.get('/v1/org/quotas')).body.orgId;
    await t.server.store.setQuotaOverrides(orgId, { snapshotCount: 0 });
    const res = await org.post('/v1/snapshot-imports', {
      source: { type: 'image', image: 'fastvm/base' },
    });
    expect(res.status).toBe(429);
    await t.server.store.setQuotaOverrides(orgId, { snapshotCount: null, vcpu: 0 });
    expect((await org.post('/v1/builds', { imageRef: 'fastvm/base' })).status).toBe(429);
  });
});

describe('builds across a restart (fake runtime)', () => {
  it('a build cut off by a crash is failed with a reason at the next start, never stuck', async () => {
    const dataDir = await makeDataDir();
    const stateFile = `${dataDir}/fake-runtime.json`;
    const first = await startTestServer({ dataDir, runtime: new FakeRuntime({ stateFile }) });
    const api = new TestClient(first.url, first.key);
    const res = await api.post('/v1/builds', {
      dockerfileContent: 'FROM fastvm/base\nRUN echo a\nRUN sleep 60\n',
    });
    expect(res.status).toBe(202);
    await waitFor(api, `/v1/builds/${res.body.id}/logs`, (b) =>
      String((b as unknown as { data: string }).data).includes('#2 line 3'),
    );
    await first.server.kill();

    const runtime = new FakeRuntime({ stateFile });
    const second = await startTestServer({ dataDir, runtime });
    try {
      const api2 = new TestClient(second.url, second.key);
      const got = await api2.get(`/v1/builds/${res.body.id}`);
      expect(got.status).toBe(200);
      expect(got.body.status).toBe('failed');
      expect(got.body.error).toMatch(/server restarted/);
      // The build VM was not adopted (not an org VM): stopped.
      expect(runtime.runningVmIds().filter((id) => id.startsWith('bld-'))).toEqual([]);
      // Resubmitted: the first RUN comes from the cache.
      const again = await api2.post('/v1/builds', {
        dockerfileContent: 'FROM fastvm/base\nRUN echo a\nRUN echo b\n',
      });
      const done = await waitFor(api2, `/v1/builds/${again.body.id}`, terminalBuild);
      expect(done).toMatchObject({ status: 'completed', steps: { total: 2, cached: 1, ran: 1 } });
    } finally {
      await second.server.close();
      await fs.rm(dataDir, { recursive: true, force: true });
    }
  });
});
