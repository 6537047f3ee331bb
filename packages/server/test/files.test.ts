/**
 * File transfer through the API with the FakeRuntime (issue 8): presign, the storage URLs
 * (fixed-length, chunked and empty PUTs, exact GETs, signatures, expiry, size limit, aborted
 * uploads), files/fetch into the guest (chunked through the agent, atomic, errors as exit codes),
 * and staging clean-up. Real VMs: `files-vm.test.ts`.
 */
import crypto from 'node:crypto';
import fs from 'node:fs/promises';
import http from 'node:http';
import path from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ServiceContext } from '../src/services/context.js';
import { FileService } from '../src/services/files.js';
import { TestClient, startTestServer, type TestServer } from './helpers.js';

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
