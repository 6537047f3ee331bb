/**
 * `GET /v1/vms/{id}` served ahead of the framework (`http/fast-reads.ts`): the same answer as the
 * full path, and the full path whenever anything is unusual. Also the SQLite store's read cache
 * behind it (a write is seen by the next read).
 */
import http2 from 'node:http2';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  TRANSPORTS,
  TestClient,
  createOrgWithKey,
  startTestServer,
  type TestServer,
} from './helpers.js';

describe.each(TRANSPORTS)('fast GET /v1/vms/{id} over %s', (transport) => {
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

  /** Only what the framework and the fast path must agree on (not Date, not the id itself). */
  const comparable = (h: Record<string, string>) => ({
    'content-type': h['content-type'],
    'content-length': h['content-length'],
    requestId: typeof h['x-request-id'],
  });

  it('answers exactly as the full path does, and sees every write at once', async () => {
    const vm = (await api.post('/v1/vms', { machineType: 'c1m2', name: 'fast-a' })).body;
    // The first request with a key goes the full way (the key's answer is not cached yet)...
    const slow = await api
      .withKey(await createOrgWithKey(t.server, `fast-${transport}`))
      .get('/v1/vms');
    expect(slow.status).toBe(200);
    // ...while the bootstrap key is cached by now: by id, the fast path; by name, the full one.
    const byId = await api.get(`/v1/vms/${vm.id}`);
    const byName = await api.get('/v1/vms/fast-a');
    expect(byId.status).toBe(200);
    expect(byId.text).toBe(byName.text);
    expect(comparable(byId.headers)).toEqual(comparable(byName.headers));
    // A client's own request id comes back.
    const mine = await api.get(`/v1/vms/${vm.id}`, { headers: { 'x-request-id': 'my-req-1' } });
    expect(mine.headers['x-request-id']).toBe('my-req-1');
    // The firewall shape follows the client's headers, as on every route.
    const v2 = await api.get(`/v1/vms/${vm.id}`, { headers: { 'x-fastvm-firewall-version': '2' } });
    expect(v2.body.firewall).toEqual(
      (await api.get('/v1/vms/fast-a', { headers: { 'x-fastvm-firewall-version': '2' } })).body
        .firewall,
    );
    expect(v2.body.firewall).not.toEqual(byId.body.firewall);

    // Writes are seen by the very next read (the store's read cache).
    for (let i = 0; i < 5; i++) {
      const name = `fast-renamed-${i}`;
      expect((await api.patch(`/v1/vms/${vm.id}`, { name })).status).toBe(200);
      expect((await api.get(`/v1/vms/${vm.id}`)).body.name).toBe(name);
    }
    expect((await api.post(`/v1/vms/${vm.id}/pause`)).status).toBe(200);
    expect((await api.get(`/v1/vms/${vm.id}`)).body.status).toBe('paused');
    expect((await api.del(`/v1/vms/${vm.id}`)).status).toBe(200);
    const gone = await api.get(`/v1/vms/${vm.id}`);
    expect(gone.status).toBe(404);
    expect(gone.body).toMatchObject({ code: 'not_found' });
  });

  it("never shows another org's VM, and refuses bad keys as before", async () => {
    const vm = (await api.post('/v1/vms', { machineType: 'c1m2' })).body;
    const other = api.withKey(await createOrgWithKey(t.server, `fast-other-${transport}`));
    // Twice: the second time the other key's answer is cached, so the fast path is asked.
    for (let i = 0; i < 2; i++) {
      const res = await other.get(`/v1/vms/${vm.id}`);
      expect(res.status).toBe(404);
      expect(res.body.code).toBe('not_found');
    }
    expect((await api.withKey('fvm_nope').get(`/v1/vms/${vm.id}`)).status).toBe(401);
    expect((await api.get(`/v1/vms/${vm.id}`, { noAuth: true })).status).toBe(401);
    // Odd forms of the path still get the route's answers.
    expect((await api.get(`/v1/vms/${vm.id}/`)).status).toBe(200);
    expect((await api.get(`/v1/vms/${vm.id}?x=1`)).status).toBe(200);
    expect((await api.get(`/v1/vms/${encodeURIComponent('no such vm')}`)).status).toBe(404);
    await api.del(`/v1/vms/${vm.id}`);
  });

  it('counts fast answers in /metrics under the route', async () => {
    const vm = (await api.post('/v1/vms', { machineType: 'c1m2' })).body;
    const count = async () => {
      const text = (await api.get('/metrics')).text;
      const line = text
        .split('\n')
        .find(
          (l) =>
            l.startsWith('fastvm_http_requests_total{') &&
            l.includes('route="/v1/vms/:id"') &&
            l.includes('method="GET"') &&
            l.includes('status="200"'),
        );
      return line ? Number(line.split(' ').at(-1)) : 0;
    };
    const before = await count();
    for (let i = 0; i < 7; i++) await api.get(`/v1/vms/${vm.id}`);
    expect((await count()) - before).toBe(7);
    await api.del(`/v1/vms/${vm.id}`);
  });
});

describe('fast GET over HTTP/2 streams', () => {
  it('survives streams the client resets while they are answered', async () => {
    const t = await startTestServer();
    const api = new TestClient(t.url, t.key, 'h2');
    const session = http2.connect(t.url);
    try {
      const vm = (await api.post('/v1/vms', { machineType: 'c1m2' })).body;
      expect((await api.get(`/v1/vms/${vm.id}`)).status).toBe(200);
      const resets = Array.from({ length: 50 }, (_, i) => {
        const req = session.request({ ':path': `/v1/vms/${vm.id}`, 'x-api-key': t.key });
        req.on('error', () => {});
        const code =
          i % 2 ? http2.constants.NGHTTP2_INTERNAL_ERROR : http2.constants.NGHTTP2_CANCEL;
        return new Promise<void>((resolve) => req.close(code, resolve));
      });
      await Promise.all(resets);
      const after = await api.get(`/v1/vms/${vm.id}`);
      expect(after.status).toBe(200);
      expect(after.body.id).toBe(vm.id);
    } finally {
      session.close();
      api.close();
      await t.cleanup();
    }
  });
});
