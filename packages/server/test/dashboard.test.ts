/**
 * The web console's files as the server serves them (FakeRuntime, a hand-made dist/): index.html
 * at `/` and for page paths browsers ask for, `/assets/` with content types and long caching,
 * the CSP, and the API's own answers (`/v1`, health, metrics, OpenAPI, 404s) unchanged.
 */
import fs from 'node:fs/promises';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DASHBOARD_CSP } from '../src/routes/dashboard.js';
import { TestClient, startTestServer, type TestServer } from './helpers.js';

const HTML = '<!doctype html><title>console</title><script type="module" src="/assets/app-1.js">';
const html = { accept: 'text/html,application/xhtml+xml,*/*;q=0.8' };

/** GET with the path exactly as given. */
function rawGet(base: string, p: string): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const req = http.get(new URL(base), { path: p }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () =>
        resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString() }),
      );
    });
    req.on('error', reject);
  });
}

describe('dashboard files', () => {
  let t: TestServer;
  let api: TestClient;
  let dist: string;

  beforeAll(async () => {
    dist = await fs.mkdtemp(path.join(os.tmpdir(), 'fastvm-dashboard-test-'));
    await fs.mkdir(path.join(dist, 'assets'));
    await fs.writeFile(path.join(dist, 'index.html'), HTML);
    await fs.writeFile(path.join(dist, 'assets', 'app-1.js'), 'console.log(1)');
    await fs.writeFile(path.join(dist, 'assets', 'app-1.css'), 'body{}');
    await fs.writeFile(path.join(dist, 'assets', 'data.bin'), 'x');
    await fs.writeFile(path.join(dist, 'secret.txt'), 'not an asset');
    t = await startTestServer({ dashboardDir: dist });
    api = new TestClient(t.url, undefined);
  });
  afterAll(async () => {
    await t.cleanup();
    await fs.rm(dist, { recursive: true, force: true });
  });

  it('serves index.html at / with the CSP, revalidated on every load', async () => {
    const res = await api.get('/', { headers: html });
    expect(res.status).toBe(200);
    expect(res.text).toBe(HTML);
    expect(res.headers['content-type']).toBe('text/html; charset=utf-8');
    expect(res.headers['cache-control']).toBe('no-cache');
    expect(res.headers['content-security-policy']).toBe(DASHBOARD_CSP);
    expect(DASHBOARD_CSP).toContain("connect-src 'self'");
    expect(DASHBOARD_CSP).toContain("script-src 'self';");
    expect(res.headers['x-content-type-options']).toBe('nosniff');
    // Any Accept: `/` is the console's.
    expect((await api.get('/')).text).toBe(HTML);
    const head = await api.request('HEAD', '/');
    expect(head.status).toBe(200);
    expect(head.text).toBe('');
  });

  it('answers client-side routes with index.html for browsers, JSON 404 for API clients', async () => {
    for (const p of ['/vms', '/vms/abc', '/snapshots', '/snapshots/xyz?q=1', '/org', '/org/']) {
      const res = await api.get(p, { headers: html });
      expect(res.status, p).toBe(200);
      expect(res.text, p).toBe(HTML);
    }
    const json = await api.get('/vms/abc');
    expect(json.status).toBe(404);
    // Other paths are not pages, whoever asks.
    for (const p of ['/x/y', '/vms/a/b', '/V1/VMS', '//v1//vms', '/orgs']) {
      const res = await api.get(p, { headers: html });
      expect(res.status, p).toBe(404);
      expect(res.body.code, p).toBe('not_found');
    }
    expect(json.body).toMatchObject({ code: 'not_found', error: 'no route for GET /vms/abc' });
    const post = await api.post('/org', {}, { headers: html });
    expect(post.status).toBe(404);
    expect(post.body.code).toBe('not_found');
  });

  it('never answers an API, asset or storage path with the page', async () => {
    const v1 = await api.get('/v1/nope', { headers: html });
    expect(v1.status).toBe(401);
    expect(v1.body.code).toBe('unauthorized');
    const keyed = await api.withKey(t.key).get('/v1/nope', { headers: html });
    expect(keyed.status).toBe(404);
    expect(keyed.body.code).toBe('not_found');
    const asset = await api.get('/assets/missing.js', { headers: html });
    expect(asset.status).toBe(404);
    expect(asset.body.error).toBe('no dashboard asset /assets/missing.js');
    const storage = await api.get('/storage/nope', { headers: html });
    expect(storage.headers['content-type']).toContain('application/json');
    expect(storage.text).not.toBe(HTML);
  });

  it('serves assets with their content type and a year of immutable caching', async () => {
    const js = await api.get('/assets/app-1.js');
    expect(js.status).toBe(200);
    expect(js.text).toBe('console.log(1)');
    expect(js.headers['content-type']).toBe('text/javascript; charset=utf-8');
    expect(js.headers['cache-control']).toBe('public, max-age=31536000, immutable');
    const css = await api.get('/assets/app-1.css');
    expect(css.headers['content-type']).toBe('text/css; charset=utf-8');
    // Unknown types and anything outside assets/ are not served.
    expect((await api.get('/assets/data.bin')).status).toBe(404);
    // Sent as written (fetch would resolve the dot segments itself).
    for (const p of ['/assets/../secret.txt', '/assets/%2e%2e/secret.txt', '/assets/./app-1.js']) {
      const res = await rawGet(t.url, p);
      expect(res.status, p).toBe(404);
      expect(res.text).not.toContain('not an asset');
    }
    expect((await api.get('/secret.txt')).status).toBe(404);
  });

  it('keeps the API’s other public paths', async () => {
    expect((await api.get('/healthz', { headers: html })).body).toEqual({ status: 'ok' });
    expect((await api.get('/readyz')).status).toBe(200);
    expect((await api.get('/openapi.json', { headers: html })).body.openapi).toMatch(/^3\./);
    const metrics = await api.get('/metrics', { headers: html });
    expect(metrics.status).toBe(200);
    expect(metrics.headers['content-type']).toContain('text/plain');
  });

  it('says how to build it when there is no build', async () => {
    const bare = await startTestServer({
      dashboardDir: path.join(dist, 'does-not-exist'),
    });
    try {
      const client = new TestClient(bare.url, undefined);
      const res = await client.get('/', { headers: html });
      expect(res.status).toBe(404);
      expect(res.body.error).toMatch(/^the dashboard is not built: run `npm run build`/);
      expect((await client.get('/vms/a', { headers: html })).body.code).toBe('not_found');
    } finally {
      await bare.cleanup();
    }
    const off = await startTestServer({ dashboardDir: false });
    try {
      const res = await new TestClient(off.url, undefined).get('/', { headers: html });
      expect(res.status).toBe(404);
      expect(res.body.error).toBe('no route for GET /');
    } finally {
      await off.cleanup();
    }
  });
});
