/**
 * File transfer through the API with the FakeRuntime (issue 8): presign, the storage URLs
 * (fixed-length, chunked and empty PUTs, exact GETs, signatures, expiry, size limit, aborted
 * uploads), files/fetch into the guest (chunked through the agent, atomic, errors as exit codes),
 * and staging clean-up. Real VMs: `files-vm.test.ts`.
 */
import crypto from 'node:crypto';
import fs from 'node:fs/promises';
import http from 'node:http';
import http2 from 'node:http2';
import path from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ServiceContext } from '../src/services/context.js';
import { FileService } from '../src/services/files.js';
import {
  TRANSPORTS,
  TestClient,
  createOrgWithKey,
  startTestServer,
  type TestServer,
  type Transport,
} from './helpers.js';

interface Raw {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

/** A plain HTTP/1.1 request (no API key), optionally chunked. */
function raw(
  method: string,
  url: string,
  body?: Buffer | Buffer[],
  headers: Record<string, string> = {},
): Promise<Raw> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method, headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () =>
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }),
      );
    });
    req.on('error', reject);
    if (Array.isArray(body)) {
      for (const b of body) req.write(b); // no Content-Length: chunked
      req.end();
    } else {
      req.end(body);
    }
  });
}

describe('file transfer (FakeRuntime)', () => {
  let t: TestServer;
  let api: TestClient;
  let vm: { id: string };
  let other: { id: string };
  let signer: FileService;

  beforeAll(async () => {
    t = await startTestServer();
    api = new TestClient(t.url, t.key);
    vm = (await api.post('/v1/vms', { machineType: 'c1m2', name: 'files' })).body;
    other = (await api.post('/v1/vms', { machineType: 'c1m2', name: 'other' })).body;
    // Same data dir, same signing key: lets tests mint expired or small-limit URLs.
    signer = await FileService.create({ logger: pino({ level: 'silent' }) } as ServiceContext, {
      dataDir: t.dataDir,
    });
  });
  afterAll(async () => {
    signer.close();
    await t.cleanup();
  });

  async function presign(id = vm.id, p = '/root/x'): Promise<Record<string, unknown>> {
    const res = await api.post(`/v1/vms/${id}/files/presign`, { path: p });
    expect(res.status).toBe(200);
    return res.body;
  }

  it('presign: two URLs to one object on the origin the client called, disk-sized limit', async () => {
    const p = await presign();
    expect(p).toEqual({
      uploadUrl: expect.stringMatching(new RegExp(`^${t.url}/storage/${vm.id}\\.[0-9a-f]{32}\\?`)),
      downloadUrl: p.uploadUrl,
      expiresInSec: 3600,
      maxUploadBytes: 10 * 2 ** 30,
    });
    expect((await api.post(`/v1/vms/${vm.id}/files/presign`, {}, { noAuth: true })).status).toBe(
      401,
    );
    expect((await api.post('/v1/vms/nope/files/presign', { path: '/x' })).status).toBe(404);
    // Python sends body-less POSTs with a JSON content type; path is optional for us.
    const empty = await api.post(`/v1/vms/${vm.id}/files/presign`, undefined, {
      rawBody: '',
      headers: { 'content-type': 'application/json' },
    });
    expect(empty.status).toBe(200);
  });

  it('PUT (fixed length, chunked, empty) then GET returns the exact bytes, no auth needed', async () => {
    const data = crypto.randomBytes(300_000);
    const p = await presign();
    const put = await raw('PUT', p.uploadUrl as string, data, {
      'content-type': 'application/octet-stream',
    });
    expect(put.status).toBe(200);
    const get = await raw('GET', p.downloadUrl as string);
    expect(get.status).toBe(200);
    expect(get.headers['content-type']).toBe('application/octet-stream');
    expect(get.headers['content-encoding']).toBeUndefined();
    expect(get.headers['content-length']).toBe(String(data.length));
    expect(get.body.equals(data)).toBe(true);
    const head = await raw('HEAD', p.downloadUrl as string);
    expect(head.status).toBe(200);
    expect(head.headers['content-length']).toBe(String(data.length));

    const q = await presign();
    const parts = [crypto.randomBytes(70_000), crypto.randomBytes(1), crypto.randomBytes(90_000)];
    expect((await raw('PUT', q.uploadUrl as string, parts)).status).toBe(200);
    expect((await raw('GET', q.downloadUrl as string)).body.equals(Buffer.concat(parts))).toBe(
      true,
    );

    const e = await presign();
    expect((await raw('PUT', e.uploadUrl as string, Buffer.alloc(0))).status).toBe(200);
    const got = await raw('GET', e.downloadUrl as string);
    expect(got.status).toBe(200);
    expect(got.body.length).toBe(0);
  });

  it('refuses wrong signatures, other URLs, expired URLs and unsupported methods', async () => {
    const p = await presign();
    const url = new URL(p.uploadUrl as string);
    const sig = url.searchParams.get('sig')!;
    const flipped = new URL(url);
    flipped.searchParams.set('sig', (sig[0] === 'A' ? 'B' : 'A') + sig.slice(1));
    for (const bad of [
      flipped.href,
      url.href.replace(/&sig=[^&]*/, ''),
      url.href.replace(/max=\d+/, 'max=99999999999999'),
      url.href.replace(/exp=(\d+)/, (_m, e: string) => `exp=${Number(e) + 1}`),
      url.href.replace(`/storage/${vm.id}.`, `/storage/${other.id}.`),
    ]) {
      const put = await raw('PUT', bad, Buffer.from('x'));
      expect(put.status, bad).toBe(403);
      expect(JSON.parse(put.body.toString()).code).toBe('forbidden');
      expect((await raw('GET', bad)).status).toBe(403);
    }
    const object = url.pathname.split('/').pop()!;
    const expired = `${t.url}${signer.sign(object, Math.floor(Date.now() / 1000) - 1, 1000)}`;
    const res = await raw('PUT', expired, Buffer.from('x'));
    expect(res.status).toBe(403);
    expect(JSON.parse(res.body.toString()).error).toMatch(/expired/);
    expect((await raw('GET', p.downloadUrl as string)).status).toBe(404); // nothing uploaded yet
    expect((await raw('DELETE', p.uploadUrl as string)).status).toBe(405);
    expect((await raw('GET', `${t.url}/storage/nonsense`)).status).toBe(400);
    expect((await raw('GET', `${t.url}/storage/%E0%A4%A`)).status).toBe(400);
  });

  it('enforces the size limit (413) by Content-Length and while streaming; aborts leave nothing', async () => {
    const object = `${vm.id}.${crypto.randomBytes(16).toString('hex')}`;
    const url = `${t.url}${signer.sign(object, Math.floor(Date.now() / 1000) + 60, 1000)}`;
    expect((await raw('PUT', url, Buffer.alloc(1000, 1))).status).toBe(200);
    const byLength = await raw('PUT', url, Buffer.alloc(1001, 2));
    expect(byLength.status).toBe(413);
    expect(JSON.parse(byLength.body.toString())).toMatchObject({
      code: 'payload_too_large',
      maxUploadBytes: 1000,
    });
    const streamed = await raw('PUT', url, [Buffer.alloc(600, 3), Buffer.alloc(600, 3)]).catch(
      (err: Error) => ({ status: -1, error: err }),
    );
    expect([413, -1]).toContain(streamed.status);
    // The earlier complete object is untouched.
    expect((await raw('GET', url)).body.equals(Buffer.alloc(1000, 1))).toBe(true);

    // An upload cut off mid-body leaves no partial object (and no temp file).
    const fresh = await presign();
    await new Promise<void>((resolve) => {
      const req = http.request(fresh.uploadUrl as string, {
        method: 'PUT',
        headers: { 'content-length': '100000' },
      });
      req.on('error', () => resolve());
      req.write(Buffer.alloc(50_000));
      setTimeout(() => {
        req.destroy();
        resolve();
      }, 100);
    });
    await new Promise((r) => setTimeout(r, 200));
    expect((await raw('GET', fresh.downloadUrl as string)).status).toBe(404);
    const staging = await fs.readdir(path.join(t.dataDir, 'staging'));
    expect(staging.filter((f) => f.startsWith('.tmp-'))).toEqual([]);
  });

  it('a download the client abandons closes its file', async () => {
    const p = await presign();
    expect((await raw('PUT', p.uploadUrl as string, crypto.randomBytes(8 * 2 ** 20))).status).toBe(
      200,
    );
    const object = new URL(p.uploadUrl as string).pathname.split('/').pop()!;
    const openFds = async (): Promise<number> => {
      let n = 0;
      for (const fd of await fs.readdir('/proc/self/fd')) {
        const target = await fs.readlink(`/proc/self/fd/${fd}`).catch(() => '');
        if (target.endsWith(`/staging/${object}`)) n++;
      }
      return n;
    };
    for (let i = 0; i < 3; i++) {
      await new Promise<void>((resolve) => {
        const req = http.get(p.downloadUrl as string, (res) => {
          res.once('data', () => {
            req.destroy();
            resolve();
          });
        });
        req.on('error', () => resolve());
      });
    }
    for (let i = 0; i < 50 && (await openFds()) > 0; i++)
      await new Promise((r) => setTimeout(r, 20));
    expect(await openFds()).toBe(0);
  });

  it('files/fetch writes the object into the guest in agent-sized chunks, atomically', async () => {
    const data = crypto.randomBytes(2.5 * 1024 * 1024);
    const p = await presign();
    await raw('PUT', p.uploadUrl as string, data);
    const execsBefore = t.runtime.calls.filter((c) => c.method === 'exec').length;
    const res = await api.post(`/v1/vms/${vm.id}/files/fetch`, {
      url: p.downloadUrl,
      path: '/root/big file ü.bin',
      timeoutSec: 0,
    });
    expect(res.status).toBe(200);
    expect(res.body).toMatchObject({ exitCode: 0, timedOut: false, stdout: '', stderr: '' });
    expect(t.runtime.readFile(vm.id, '/root/big file ü.bin')?.equals(data)).toBe(true);
    expect(t.runtime.calls.filter((c) => c.method === 'exec').length - execsBefore).toBe(3);
    expect(t.runtime.listFiles(vm.id).filter((f) => f.endsWith('.part'))).toEqual([]);

    // Overwrite with an empty object.
    const e = await presign();
    await raw('PUT', e.uploadUrl as string, Buffer.alloc(0));
    const over = await api.post(`/v1/vms/${vm.id}/files/fetch`, {
      url: e.downloadUrl,
      path: '/root/big file ü.bin',
    });
    expect(over.body.exitCode).toBe(0);
    expect(t.runtime.readFile(vm.id, '/root/big file ü.bin')?.length).toBe(0);
  });

  it('files/fetch reports guest failures as exit codes and leaves no partial file', async () => {
    const p = await presign();
    await raw('PUT', p.uploadUrl as string, Buffer.from('hello'));
    const res = await api.post(`/v1/vms/${vm.id}/files/fetch`, {
      url: p.downloadUrl,
      path: '/no/such/dir/file',
    });
    expect(res.status).toBe(200);
    expect(res.body.exitCode).not.toBe(0);
    expect(res.body.stderr).toMatch(/nonexistent|No such/);
    expect(t.runtime.listFiles(vm.id).filter((f) => f.startsWith('/no/'))).toEqual([]);
  });

  it('files/fetch refuses foreign, forged, expired and other VMs’ URLs, bad paths and non-running VMs', async () => {
    const p = await presign();
    await raw('PUT', p.uploadUrl as string, Buffer.from('x'));
    const fetch = (body: Record<string, unknown>, id = vm.id) =>
      api.post(`/v1/vms/${id}/files/fetch`, { path: '/root/f', ...body });

    const foreign = await fetch({ url: 'https://example.com/some/file' });
    expect(foreign.status).toBe(400);
    expect(foreign.body.field).toBe('url');
    expect((await fetch({ url: 'not a url' })).status).toBe(400);
    // Change the signature's first character (to one it is not: 'Z' alone was right 1 time in 64).
    const forged = (p.downloadUrl as string).replace(/sig=(.)/, (_, c: string) =>
      c === 'A' ? 'sig=B' : 'sig=A',
    );
    expect((await fetch({ url: forged })).status).toBe(403);
    const object = new URL(p.downloadUrl as string).pathname.split('/').pop()!;
    const expired = `${t.url}${signer.sign(object, Math.floor(Date.now() / 1000) - 5, 10)}`;
    const exp = await fetch({ url: expired });
    expect(exp.status).toBe(403);
    expect(exp.body.error).toMatch(/expired/);
    const otherVm = await fetch({ url: p.downloadUrl }, other.id);
    expect(otherVm.status).toBe(403);
    expect(otherVm.body.error).toMatch(/another VM/);

    expect((await fetch({ url: p.downloadUrl, path: 'relative/path' })).body.field).toBe('path');
    expect((await fetch({ url: p.downloadUrl, path: '/root/dir/' })).status).toBe(400);
    const q = await presign();
    const nothing = await fetch({ url: q.downloadUrl });
    expect(nothing.status).toBe(409);
    expect(nothing.body.error).toMatch(/nothing has been uploaded/);

    await api.post(`/v1/vms/${vm.id}/pause`);
    expect((await fetch({ url: p.downloadUrl })).status).toBe(409);
    await api.post(`/v1/vms/${vm.id}/resume`);
    expect((await fetch({ url: p.downloadUrl })).body.exitCode).toBe(0);
  });

  it('drops a VM’s staging objects when it is deleted, and old objects by age', async () => {
    const doomed = (await api.post('/v1/vms', { machineType: 'c1m2' })).body;
    const p = await presign(doomed.id);
    await raw('PUT', p.uploadUrl as string, Buffer.from('bye'));
    const staging = path.join(t.dataDir, 'staging');
    expect((await fs.readdir(staging)).some((f) => f.startsWith(doomed.id))).toBe(true);
    await api.del(`/v1/vms/${doomed.id}`);
    expect((await fs.readdir(staging)).some((f) => f.startsWith(doomed.id))).toBe(false);

    const q = await presign();
    await raw('PUT', q.uploadUrl as string, Buffer.from('old'));
    expect(await signer.gc(Date.now() + 23 * 3600 * 1000)).toBe(0);
    expect(await signer.gc(Date.now() + 25 * 3600 * 1000)).toBeGreaterThan(0);
    expect((await raw('GET', q.downloadUrl as string)).status).toBe(404);
  });
});

/**
 * A PUT whose body the test writes piece by piece (chunked over HTTP/1.1, DATA frames over h2c),
 * with the response as a promise (status -1: the connection went away without one).
 */
function streamingPut(
  url: string,
  transport: Transport = 'h1',
): {
  write(b: Buffer): void;
  end(b?: Buffer): void;
  abort(): void;
  response: Promise<Raw | { status: -1 }>;
} {
  if (transport === 'h2') {
    const u = new URL(url);
    const session = http2.connect(u.origin);
    session.on('error', () => {});
    const req = session.request({
      ':method': 'PUT',
      ':path': u.pathname + u.search,
      'content-type': 'application/octet-stream',
    });
    const response = new Promise<Raw | { status: -1 }>((resolve) => {
      let status = 0;
      let headers: http.IncomingHttpHeaders = {};
      const chunks: Buffer[] = [];
      req.on('response', (h) => {
        status = Number(h[':status']);
        headers = h as http.IncomingHttpHeaders;
      });
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => resolve({ status, headers, body: Buffer.concat(chunks) }));
      req.on('error', () =>
        resolve(status ? { status, headers, body: Buffer.concat(chunks) } : { status: -1 }),
      );
    });
    void response.then(() => session.close());
    return {
      write: (b) => void req.write(b),
      end: (b) => void req.end(b),
      abort: () => session.destroy(),
      response,
    };
  }
  const req = http.request(url, {
    method: 'PUT',
    headers: { 'content-type': 'application/octet-stream' },
  });
  const response = new Promise<Raw | { status: -1 }>((resolve) => {
    req.on('response', (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () =>
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }),
      );
      res.on('error', () => resolve({ status: -1 }));
    });
    // Writes after an early answer may fail (the server closes the connection): that's fine.
    req.on('error', () => setTimeout(() => resolve({ status: -1 }), 50));
  });
  req.flushHeaders();
  return {
    write: (b) => void req.write(b),
    end: (b) => void req.end(b),
    abort: () => req.destroy(),
    response,
  };
}

/** Pino records (parsed) written by a server under test. */
function capturingLogger(): { logger: pino.Logger; records: Array<Record<string, unknown>> } {
  const records: Array<Record<string, unknown>> = [];
  const logger = pino(
    { level: 'debug' },
    { write: (line: string) => void records.push(JSON.parse(line) as Record<string, unknown>) },
  );
  return { logger, records };
}

const errorsIn = (records: Array<Record<string, unknown>>) =>
  records
    .filter((r) => (r.level as number) >= 50)
    .map((r) => `${String(r.msg)} ${JSON.stringify(r.err ?? '')}`);

async function until(
  what: string,
  cond: () => Promise<boolean> | boolean,
  ms = 5000,
): Promise<void> {
  for (const end = Date.now() + ms; Date.now() < end;) {
    if (await cond()) return;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`timed out waiting for ${what}`);
}

describe('staging: revocation with the VM, per-org cap, restarts (FakeRuntime)', () => {
  const CAP = 1000;
  let dataDir: string;
  let t: TestServer;
  let api: TestClient;
  let log: ReturnType<typeof capturingLogger>;
  const staging = () => fs.readdir(path.join(dataDir, 'staging'));

  /** A restart keeps the port, so URLs minted before it still lead here. */
  async function start(): Promise<void> {
    log = capturingLogger();
    t = await startTestServer({
      ...(dataDir ? { dataDir, port: t.server.port } : {}),
      logger: log.logger,
      storage: { stagingBytesPerOrg: CAP },
    });
    dataDir = t.dataDir;
    api = new TestClient(t.url, t.key);
  }
  async function launch(a = api): Promise<string> {
    const res = await a.post('/v1/vms', { machineType: 'c1m2' });
    expect(res.status).toBe(201);
    return res.body.id as string;
  }
  async function presign(id: string, a = api): Promise<string> {
    const res = await a.post(`/v1/vms/${id}/files/presign`, { path: '/root/x' });
    expect(res.status).toBe(200);
    return res.body.uploadUrl as string;
  }

  beforeAll(start);
  afterAll(async () => {
    await t.cleanup();
  });

  it.each(TRANSPORTS)(
    'an upload still streaming when its VM is deleted ends in a clean 404 and leaves nothing (%s)',
    async (transport) => {
      const id = await launch();
      const put = streamingPut(await presign(id), transport);
      put.write(Buffer.alloc(300, 1));
      await until('the upload to start', async () =>
        (await staging()).some((f) => f.startsWith(`.tmp-${id}.`)),
      );
      expect((await api.del(`/v1/vms/${id}`)).status).toBe(200);
      put.write(Buffer.alloc(300, 2));
      put.end();
      const res = await put.response;
      expect(res.status).toBe(404);
      expect(JSON.parse((res as Raw).body.toString())).toMatchObject({ code: 'not_found' });
      expect((await staging()).filter((f) => f.includes(id))).toEqual([]);
      expect(errorsIn(log.records)).toEqual([]);
    },
  );

  it('revokes presigned URLs with their VM: PUT, GET and HEAD answer 404 afterwards', async () => {
    const id = await launch();
    const url = await presign(id);
    const unused = await presign(id);
    expect((await raw('PUT', url, Buffer.from('kept until the VM goes'))).status).toBe(200);
    expect((await raw('GET', url)).status).toBe(200);
    expect((await api.del(`/v1/vms/${id}`)).status).toBe(200);
    for (const [method, u] of [
      ['PUT', url],
      ['PUT', unused],
      ['GET', url],
      ['HEAD', url],
      ['GET', unused],
    ] as const) {
      const res = await raw(method, u, method === 'PUT' ? Buffer.from('after delete') : undefined);
      expect(res.status, `${method} ${u}`).toBe(404);
      if (method !== 'HEAD') {
        expect(JSON.parse(res.body.toString()), method).toMatchObject({
          code: 'not_found',
          error: expect.stringMatching(/deleted/),
        });
      }
    }
    expect((await staging()).filter((f) => f.includes(id))).toEqual([]);
    expect(errorsIn(log.records)).toEqual([]);
  });

  it.each(TRANSPORTS)(
    'an upload the client abandons leaves nothing and logs no error (%s)',
    async (transport) => {
      const id = await launch();
      const put = streamingPut(await presign(id), transport);
      put.write(Buffer.alloc(200, 1));
      await until('the upload to start', async () =>
        (await staging()).some((f) => f.startsWith(`.tmp-${id}.`)),
      );
      put.abort();
      await until('the temp file to go', async () =>
        (await staging()).every((f) => !f.startsWith(`.tmp-${id}.`)),
      );
      await new Promise((r) => setTimeout(r, 100));
      expect(errorsIn(log.records)).toEqual([]);
      await api.del(`/v1/vms/${id}`);
    },
  );

  it('bounds staged bytes per org (429), counting uploads while they stream; other orgs are not affected', async () => {
    const id = await launch();
    const [a, b, c, d] = [
      await presign(id),
      await presign(id),
      await presign(id),
      await presign(id),
    ];
    const p = await api.post(`/v1/vms/${id}/files/presign`, {});
    expect(p.body.maxUploadBytes).toBe(CAP); // never more than the org may stage
    expect((await raw('PUT', a, Buffer.alloc(600, 1))).status).toBe(200);
    const over = await raw('PUT', b, Buffer.alloc(600, 2));
    expect(over.status).toBe(429);
    expect(JSON.parse(over.body.toString())).toMatchObject({
      code: 'quota_exceeded',
      dimension: 'staging_bytes',
      limit: CAP,
      usage: 600,
    });
    expect(over.headers['x-should-retry']).toBe('false');

    // Two chunked uploads in parallel, 300 bytes each, with 400 left: the second is refused
    // while it streams, the first completes.
    const first = streamingPut(c);
    first.write(Buffer.alloc(300, 3));
    await until('the first upload to be counted', async () =>
      (await staging()).some(
        (f) => f.startsWith('.tmp-') && f.includes(c.split('/').pop()!.split('?')[0]!),
      ),
    );
    await new Promise((r) => setTimeout(r, 50));
    const second = streamingPut(d);
    second.write(Buffer.alloc(300, 4));
    const refused = await second.response;
    expect(refused.status).toBe(429);
    first.end();
    expect((await first.response).status).toBe(200);
    // Replacing an object frees its old bytes once the new one is in place.
    expect((await raw('PUT', a, Buffer.alloc(100, 5))).status).toBe(200);
    expect((await raw('PUT', b, Buffer.alloc(500, 6))).status).toBe(200);
    expect((await raw('PUT', d, Buffer.alloc(101, 7))).status).toBe(429);

    // Another org has its own budget.
    const other = new TestClient(t.url, await createOrgWithKey(t.server, 'staging-other'));
    const theirs = await launch(other);
    expect((await raw('PUT', await presign(theirs, other), Buffer.alloc(900, 8))).status).toBe(200);

    // Deleting the VM frees its org's staged bytes.
    await api.del(`/v1/vms/${id}`);
    const next = await launch();
    expect((await raw('PUT', await presign(next), Buffer.alloc(CAP, 9))).status).toBe(200);
    await api.del(`/v1/vms/${next}`);
    await other.del(`/v1/vms/${theirs}`);
    expect(errorsIn(log.records)).toEqual([]);
  });

  it('after a restart (clean or kill -9) staged bytes are counted from disk and nothing leaks', async () => {
    const id = await launch();
    const url = await presign(id);
    expect((await raw('PUT', url, Buffer.alloc(700, 1))).status).toBe(200);
    // A crash mid-upload leaves a temp file; an object whose VM is gone is left over too.
    const crashing = streamingPut(await presign(id));
    crashing.write(Buffer.alloc(100, 2));
    await until('the upload to start', async () =>
      (await staging()).some((f) => f.startsWith('.tmp-')),
    );
    const ghost = `vm-gone-${crypto.randomBytes(4).toString('hex')}.${crypto.randomBytes(16).toString('hex')}`;
    await fs.writeFile(path.join(dataDir, 'staging', ghost), Buffer.alloc(50));
    await t.server.kill();
    crashing.abort();
    await start();
    expect((await staging()).filter((f) => f.startsWith('.tmp-') || f === ghost)).toEqual([]);
    // The URL minted before the restart still works, and its bytes still count.
    expect((await raw('GET', url)).body.length).toBe(700);
    const res = await raw('PUT', await presign(id), Buffer.alloc(301, 3));
    expect(res.status).toBe(429);
    expect(JSON.parse(res.body.toString())).toMatchObject({ usage: 700 });
    expect((await raw('PUT', await presign(id), Buffer.alloc(300, 3))).status).toBe(200);

    // A clean restart too.
    await t.server.close();
    await start();
    expect((await raw('PUT', await presign(id), Buffer.alloc(1, 4))).status).toBe(429);
    await api.del(`/v1/vms/${id}`);
    expect(await staging()).toEqual([]);
    expect(errorsIn(log.records)).toEqual([]);
  });
});
