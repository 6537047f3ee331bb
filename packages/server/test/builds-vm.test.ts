/**
 * Builds in real QEMU build VMs: a Dockerfile on `fastvm/base` with COPY (--chown, a glob,
 * .dockerignore), ENV, WORKDIR, USER and RUN, restored and checked inside the guest; the step
 * cache (unchanged rebuild: every step cached; a changed last RUN: only it reruns); multi-stage
 * `COPY --from`; `COPY ../x` failing on its line; cancel leaving no build VM behind.
 */
import zlib from 'node:zlib';
import tarStream from 'tar-stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sleep, type TestClient } from './helpers.js';
import { startVmTestServer, type VmTestServer } from './vm-server.js';

async function tarGz(files: Record<string, string>): Promise<Buffer> {
  const pack = tarStream.pack();
  for (const [name, body] of Object.entries(files)) pack.entry({ name, mode: 0o644 }, body);
  pack.finalize();
  const chunks: Buffer[] = [];
  for await (const c of pack) chunks.push(c as Buffer);
  return zlib.gzipSync(Buffer.concat(chunks));
}

const CONTEXT = {
  'a.txt': 'alpha\n',
  'b.txt': 'beta\n',
  'secret.txt': 'do not copy\n',
  'notes.md': 'not a txt\n',
  'conf/app.conf': 'key=value\n',
  '.dockerignore': 'secret.txt\n',
};

const dockerfile = (lastRun: string) =>
  [
    'FROM fastvm/base',
    "RUN echo 'app:x:1234:1234::/home/app:/bin/sh' >> /etc/passwd && echo 'app:x:1234:' >> /etc/group && mkdir -p /home/app /srv/app && chown 1234:1234 /home/app /srv/app",
    'ENV GREETING=hello APP_DIR=/srv/app',
    'WORKDIR $APP_DIR',
    'COPY --chown=app *.txt conf ./',
    'USER app',
    lastRun,
    'CMD ["/bin/sh", "-c", "cat built.txt"]',
  ].join('\n');

describe('builds (real QEMU VMs)', () => {
  let vms: VmTestServer | undefined;
  let api: TestClient;

  beforeAll(async () => {
    vms = await startVmTestServer();
    ({ api } = vms);
  }, 180_000);

  afterAll(async () => {
    await vms?.close();
  });

  async function context(files: Record<string, string>): Promise<string> {
    const p = await api.post('/v1/build-contexts/presign');
    expect(p.status).toBe(200);
    const res = await fetch(p.body.uploadUrl, {
      method: 'PUT',
      body: await tarGz(files),
      headers: { 'content-type': 'application/gzip' },
    });
    expect(res.status).toBe(200);
    return p.body.downloadUrl as string;
  }

  async function build(body: Record<string, unknown>, ms = 150_000) {
    const res = await api.post('/v1/builds', body);
    expect(res.status, JSON.stringify(res.body)).toBe(202);
    const until = Date.now() + ms;
    for (;;) {
      const got = await api.get(`/v1/builds/${res.body.id}`);
      if (got.body.status === 'completed' || got.body.status === 'failed') {
        const logs = await api.get(`/v1/builds/${res.body.id}/logs`);
        return { ...got.body, log: logs.body.data as string };
      }
      if (Date.now() > until) throw new Error(`build timed out: ${JSON.stringify(got.body)}`);
      await sleep(200);
    }
  }

  const exec = async (vmId: string, command: string) =>
    (await api.post(`/v1/vms/${vmId}/exec`, { command: ['sh', '-c', command] })).body as {
      exitCode: number;
      stdout: string;
      stderr: string;
    };

  it('builds, restores with files/env/user, and caches steps', async () => {
    const url = await context(CONTEXT);
    const run = 'RUN echo "$GREETING from $(id -un) in $(pwd)" > built.txt';
    const first = await build({
      dockerfileContent: dockerfile(run),
      contextDownloadUrl: url,
      name: 'app-image',
    });
    expect(first.status, first.error ?? first.log).toBe('completed');
    expect(first.steps).toEqual({ total: 3, cached: 0, ran: 3 });

    const vm = await api.post('/v1/vms', { snapshotId: first.snapshotId });
    expect(vm.status).toBe(201);
    const id = vm.body.id as string;
    try {
      const files = await exec(
        id,
        'cd /srv/app && stat -c "%n %U:%G %a" a.txt b.txt app.conf built.txt && ls && cat built.txt',
      );
      expect(files.exitCode, files.stderr).toBe(0);
      expect(files.stdout).toContain('a.txt app:app 644');
      expect(files.stdout).toContain('b.txt app:app 644');
      expect(files.stdout).toContain('app.conf app:app 644');
      expect(files.stdout).toContain('built.txt app:app');
      expect(files.stdout).not.toContain('secret.txt');
      expect(files.stdout).not.toContain('notes.md');
      expect(files.stdout).toContain('hello from app in /srv/app\n');
      const env = await exec(id, 'echo "$GREETING $APP_DIR"');
      expect(env.stdout).toBe('hello /srv/app\n');
    } finally {
      await api.del(`/v1/vms/${id}`);
    }
    const snap = await api.get(`/v1/snapshots/${first.snapshotId as string}`);
    expect(snap.body.metadata).toMatchObject({
      'image.user': 'app',
      'image.workdir': '/srv/app',
      'image.cmd': '["/bin/sh","-c","cat built.txt"]',
    });

    // Unchanged: every step restored from the cache.
    const again = await build({ dockerfileContent: dockerfile(run), contextDownloadUrl: url });
    expect(again.status, again.error).toBe('completed');
    expect(again.steps).toEqual({ total: 3, cached: 3, ran: 0 });
    expect(again.log).toContain('#3 CACHED');

    // Only the last RUN changed: it alone reruns.
    const changed = await build({
      dockerfileContent: dockerfile('RUN echo "changed by $(id -u)" > built.txt'),
      contextDownloadUrl: url,
    });
    expect(changed.status, changed.error).toBe('completed');
    expect(changed.steps).toEqual({ total: 3, cached: 2, ran: 1 });
    const vm2 = await api.post('/v1/vms', { snapshotId: changed.snapshotId });
    try {
      expect((await exec(vm2.body.id, 'cat /srv/app/built.txt')).stdout).toBe('changed by 1234\n');
    } finally {
      await api.del(`/v1/vms/${vm2.body.id}`);
    }
    expect(vms!.runtime.list().filter((v) => v.id.startsWith('bld-'))).toEqual([]);
  }, 600_000);

  it('multi-stage COPY --from, ADD of a tar, --chmod, and COPY ../x failing on its line', async () => {
    const inner = await tarGz({ 'pkg/lib.txt': 'from-the-archive\n' });
    const p = await api.post('/v1/build-contexts/presign');
    const pack = tarStream.pack();
    pack.entry({ name: 'bundle.tar.gz', mode: 0o644 }, inner);
    pack.entry({ name: 'run.sh', mode: 0o644 }, 'echo script-ran\n');
    pack.finalize();
    const chunks: Buffer[] = [];
    for await (const c of pack) chunks.push(c as Buffer);
    await fetch(p.body.uploadUrl, { method: 'PUT', body: zlib.gzipSync(Buffer.concat(chunks)) });
    const multi = await build({
      dockerfileContent: [
        'FROM fastvm/base AS builder',
        'RUN mkdir -p /out && echo artifact-$((6*7)) > /out/a.bin',
        'FROM fastvm/base',
        'COPY --from=builder /out/a.bin /opt/',
        'ADD bundle.tar.gz /opt/bundle/',
        'COPY --chmod=755 run.sh /usr/local/bin/run.sh',
        'RUN cat /opt/a.bin /opt/bundle/pkg/lib.txt && run.sh && stat -c %a /usr/local/bin/run.sh',
      ].join('\n'),
      contextDownloadUrl: p.body.downloadUrl,
    });
    expect(multi.status, multi.error ?? multi.log).toBe('completed');
    expect(multi.log).toContain('artifact-42\nfrom-the-archive\nscript-ran\n755\n');

    const escape = await build({
      dockerfileContent: 'FROM fastvm/base\nRUN true\nCOPY ../x /x\n',
      contextDownloadUrl: await context({ 'a.txt': 'a' }),
    });
    expect(escape.status).toBe('failed');
    expect(escape.error).toMatch(
      /^Dockerfile line 3: COPY \.\.\/x: the path is outside the build context/,
    );
  }, 600_000);

  it('cancel stops the build VM and leaves nothing behind', async () => {
    const contextRef = await (async () => {
      const p = await api.post('/v1/snapshot-imports/context-presign', {});
      expect(p.status).toBe(200);
      return p.body.contextRef as string;
    })();
    expect(contextRef).toEqual(expect.any(String));
    const res = await api.post('/v1/builds', {
      dockerfileContent: 'FROM fastvm/base\nRUN echo running-$((40+2)) && sleep 300\n',
    });
    const until = Date.now() + 120_000;
    for (;;) {
      const logs = await api.get(`/v1/builds/${res.body.id}/logs`);
      if (String(logs.body.data).includes('running-42')) break;
      if (Date.now() > until) throw new Error('the RUN never started');
      await sleep(200);
    }
    // The build VM is up (the RUN is running in it).
    expect(vms!.runtime.list().filter((v) => v.id.startsWith('bld-')).length).toBe(1);
    const cancelled = await api.post(`/v1/builds/${res.body.id}/cancel`);
    expect(cancelled.status).toBe(200);
    expect(cancelled.body.status).toBe('failed');
    expect(cancelled.body.error).toMatch(/cancelled/);
    expect(vms!.runtime.list().filter((v) => v.id.startsWith('bld-'))).toEqual([]);
  }, 300_000);
});
