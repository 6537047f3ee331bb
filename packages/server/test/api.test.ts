import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hashApiKey } from '../src/services/orgs.js';
import { setTimeout as sleep } from 'node:timers/promises';
import { API_KEY_CACHE_MS } from '../src/auth.js';
import { ORG_SCOPED, VM_SCOPED } from '../src/routes/unimplemented.js';
import {
  TRANSPORTS,
  TestClient,
  createOrgWithKey,
  startTestServer,
  type TestServer,
} from './helpers.js';

describe.each(TRANSPORTS)('health, auth, errors and 501s over %s', (transport) => {
  let t: TestServer;
  let api: TestClient;

  beforeAll(async () => {
    t = await startTestServer();
    api = new TestClient(t.url, t.key, transport);
  });
  afterAll(async () => {
    api.close();
    await t.cleanup();
  });

  it('serves health probes with and without a key', async () => {
    for (const path of ['/healthz', '/livez', '/readyz']) {
      const anon = await api.get(path, { noAuth: true });
      expect(anon.status).toBe(200);
      expect(anon.body).toEqual({ status: 'ok' });
      expect(anon.headers['content-type']).toMatch(/^application\/json/);
      expect((await api.get(path)).status).toBe(200);
      expect(
        (await api.get(path, { headers: { 'x-api-key': 'fvm_wrong' }, noAuth: true })).status,
      ).toBe(200);
    }
  });

  it('rejects missing, unknown and malformed credentials with 401', async () => {
    for (const headers of [
      {} as Record<string, string>,
      { 'x-api-key': 'fvm_nope' },
      { authorization: 'Bearer fvm_nope' },
      { authorization: 'Basic abc' },
    ]) {
      const res = await api.get('/v1/vms', { noAuth: true, headers });
      expect(res.status).toBe(401);
      expect(res.body).toMatchObject({ code: 'unauthorized', error: expect.any(String) });
    }
    expect((await api.get('/v1/nonexistent', { noAuth: true })).status).toBe(401);
  });

  it('accepts Authorization: Bearer', async () => {
    const res = await api.get('/v1/vms', {
      noAuth: true,
      headers: { authorization: `Bearer ${t.key}` },
    });
    expect(res.status).toBe(200);
  });

  it('stops accepting a revoked key within API_KEY_CACHE_MS (1 s)', async () => {
    const key = await createOrgWithKey(t.server, `revoke-${transport}`);
    const client = api.withKey(key);
    expect((await client.get('/v1/vms')).status).toBe(200);
    const record = (await t.server.store.listApiKeys()).find((k) => k.prefix === key.slice(0, 12));
    expect(record).toBeDefined();
    expect(await t.server.store.revokeApiKey(record!.id, new Date().toISOString())).toBe(1);
    const revokedAt = Date.now();
    await sleep(Math.max(0, API_KEY_CACHE_MS - (Date.now() - revokedAt)));
    expect((await client.get('/v1/vms')).status).toBe(401);
    // An unknown key is never remembered: the next request with it is refused too.
    expect((await api.withKey(`${key}x`).get('/v1/vms')).status).toBe(401);
  });

  it('stores only key hashes', async () => {
    expect(await t.server.store.findActiveApiKey(hashApiKey(t.key))).toBeDefined();
    expect(await t.server.store.findActiveApiKey(t.key)).toBeUndefined();
  });

  it('answers 501 not_implemented for the rest of the catalogue', async () => {
    const vm = (await api.post('/v1/vms', { machineType: 'c1m2' })).body;
    for (const [method, url] of [...VM_SCOPED, ...ORG_SCOPED]) {
      const path = url.replace(':id', vm.id).replace(/:[A-Za-z]+/g, 'x');
      // Python sends Content-Type: application/json with an empty body on body-less POSTs.
      const res = await api.request(method, path, {
        ...(method === 'POST'
          ? { rawBody: '', headers: { 'content-type': 'application/json' } }
          : {}),
      });
      expect(res.status, `${method} ${path}`).toBe(501);
      expect(res.body.code).toBe('not_implemented');
      expect(res.body.error).toMatch(/not implemented yet/);
      expect(res.headers['x-should-retry']).toBe('false');
    }
    await api.del(`/v1/vms/${vm.id}`);
  });

  it('handles empty JSON bodies, invalid JSON and non-object bodies', async () => {
    const empty = await api.post('/v1/vms', undefined, {
      rawBody: '',
      headers: { 'content-type': 'application/json' },
    });
    expect(empty.status).toBe(400);
    expect(empty.body.field).toBe('machineType');
    const invalid = await api.post('/v1/vms', undefined, { rawBody: '{nope' });
    expect(invalid.status).toBe(400);
    expect(invalid.body).toMatchObject({ code: 'bad_request', field: 'body' });
    const array = await api.post('/v1/vms', [1, 2]);
    expect(array.status).toBe(400);
    const proto = await api.post('/v1/vms', undefined, {
      rawBody: '{"machineType":"c1m2","metadata":{"__proto__":{"x":"1"}}}',
    });
    expect(proto.status).toBe(400);
    const form = await api.post('/v1/vms', undefined, {
      rawBody: '{"machineType":"c1m2"}',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
    });
    expect(form.status).toBe(201);
    await api.del(`/v1/vms/${form.body.id}`);
  });

  it('limits body sizes (413)', async () => {
    const huge = await api.post('/v1/vms', {
      machineType: 'c1m2',
      name: 'x'.repeat(2 * 1024 * 1024),
    });
    expect(huge.status).toBe(413);
    expect(huge.body.code).toBe('payload_too_large');
  });

  it('echoes x-request-id and makes one up otherwise', async () => {
    const given = await api.get('/healthz', { headers: { 'x-request-id': 'trace-123' } });
    expect(given.headers['x-request-id']).toBe('trace-123');
    const made = await api.get('/healthz');
    expect(made.headers['x-request-id']).toMatch(/^[0-9a-f-]{36}$/);
    const err = await api.get('/v1/vms/nope', { headers: { 'x-request-id': 'trace-404' } });
    expect(err.headers['x-request-id']).toBe('trace-404');
  });

  it('unknown routes are 404 with the error body', async () => {
    const res = await api.get('/nothing-here');
    expect(res.status).toBe(404);
    expect(res.body.code).toBe('not_found');
  });

  it('serves the OpenAPI document generated from the routes', async () => {
    const res = await api.get('/openapi.json', { noAuth: true });
    expect(res.status).toBe(200);
    const doc = res.body;
    expect(doc.openapi).toBe('3.1.0');
    expect(Object.keys(doc.paths)).toEqual(
      expect.arrayContaining([
        '/healthz',
        '/v1/vms',
        '/v1/vms/{id}',
        '/v1/vms/{id}/exec',
        '/v1/vms/{id}/firewall',
        '/v1/snapshots',
        '/v1/snapshots/{id}',
        '/v1/org/quotas',
      ]),
    );
    expect(doc.paths['/v1/vms'].post.operationId).toBe('launchVm');
    // A Vm plus the restore's snapshotRestoreWarnings (contract §3.2).
    expect(doc.paths['/v1/vms'].post.responses['201'].content['application/json'].schema).toEqual({
      $ref: '#/components/schemas/VmLaunchResponse',
    });
    const vmSchema = doc.components.schemas.Vm;
    expect(vmSchema.required).toEqual(
      expect.arrayContaining(['id', 'name', 'status', 'memoryMiB', 'diskGiB']),
    );
    expect(doc.components.schemas.FirewallRule.properties.portStart).toMatchObject({
      minimum: 1,
      maximum: 65535,
    });
    expect(doc.components.schemas.ExecResult.required).toHaveLength(7);
    const launchBody = doc.paths['/v1/vms'].post.requestBody.content['application/json'].schema;
    expect(launchBody).toEqual({ $ref: '#/components/schemas/VmLaunchRequest' });
    expect(JSON.stringify(doc)).not.toContain('$defs');
  });
});
