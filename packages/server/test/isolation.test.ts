import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ORG_SCOPED, VM_SCOPED } from '../src/routes/unimplemented.js';
import {
  TRANSPORTS,
  TestClient,
  createOrgWithKey,
  startTestServer,
  type TestServer,
} from './helpers.js';

describe.each(TRANSPORTS)('cross-org isolation over %s', (transport) => {
  let t: TestServer;
  let a: TestClient;
  let b: TestClient;
  let vm: { id: string; name: string };
  let snap: { id: string; name: string };

  beforeAll(async () => {
    t = await startTestServer();
    a = new TestClient(t.url, t.key, transport);
    b = new TestClient(t.url, await createOrgWithKey(t.server, 'org-b'), transport);
    vm = (await a.post('/v1/vms', { machineType: 'c1m2', name: 'a-private' })).body;
    snap = (await a.post('/v1/snapshots', { vmId: vm.id, name: 'a-snap' })).body;
  });
  afterAll(async () => {
    a.close();
    b.close();
    await t.cleanup();
  });

  it('org B gets 404 for org A VMs on every VM route, by id and by name', async () => {
    const calls: Array<[string, string, unknown]> = [
      ['GET', '', undefined],
      ['PATCH', '', { name: 'stolen' }],
      ['DELETE', '', undefined],
      ['POST', '/exec', { command: ['echo', 'hi'] }],
      ['PUT', '/firewall', { mode: 'open' }],
      ['PATCH', '/firewall', { mode: 'open' }],
    ];
    for (const [method, suffix, body] of calls) {
      for (const ref of [vm.id, vm.name]) {
        const res = await b.request(method, `/v1/vms/${encodeURIComponent(ref)}${suffix}`, {
          body,
        });
        expect(res.status, `${method} ${suffix} ${ref}`).toBe(404);
        expect(res.body.code).toBe('not_found');
      }
    }
    for (const [method, url] of VM_SCOPED) {
      const path = url.replace(':id', vm.id).replace(/:[A-Za-z]+/g, 'x');
      const res = await b.request(method, path, {
        body: method === 'GET' || method === 'DELETE' ? undefined : {},
      });
      expect(res.status, `${method} ${path}`).toBe(404);
    }
  });

  it('org B gets 404 for org A snapshots on every snapshot route', async () => {
    for (const ref of [snap.id, snap.name]) {
      expect((await b.get(`/v1/snapshots/${ref}`)).status).toBe(404);
      expect((await b.patch(`/v1/snapshots/${ref}`, { name: 'stolen' })).status).toBe(404);
      expect((await b.del(`/v1/snapshots/${ref}`)).status).toBe(404);
      expect((await b.post(`/v1/snapshots/${ref}/fork`, { count: 1 })).status).toBe(404);
      expect((await b.get(`/v1/snapshots/${ref}/lineage`)).status).toBe(404);
      const restore = await b.post('/v1/vms', { snapshotId: ref });
      expect(restore.status).toBe(404);
      expect(restore.body.field).toBe('snapshotId');
    }
    const snapOfForeignVm = await b.post('/v1/snapshots', { vmId: vm.id });
    expect(snapOfForeignVm.status).toBe(404);
    expect(snapOfForeignVm.body.field).toBe('vmId');
  });

  it('lists and quotas show only the caller org', async () => {
    expect((await b.get('/v1/vms')).body).toEqual([]);
    expect((await b.get('/v1/snapshots')).body).toEqual([]);
    const qa = (await a.get('/v1/org/quotas')).body;
    const qb = (await b.get('/v1/org/quotas')).body;
    expect(qa.orgId).not.toBe(qb.orgId);
    expect(qb.usage).toMatchObject({ vcpu: 0, snapshotCount: 0 });
    expect(qa.usage).toMatchObject({ vcpu: 1, snapshotCount: 1 });
  });

  it("org A's objects are untouched by org B's attempts", async () => {
    const got = (await a.get(`/v1/vms/${vm.id}`)).body;
    expect(got).toMatchObject({
      name: 'a-private',
      status: 'running',
      firewall: { mode: 'restricted' },
    });
    expect((await a.get(`/v1/snapshots/${snap.id}`)).body.name).toBe('a-snap');
    expect(t.runtime.calls.filter((c) => c.method === 'exec')).toHaveLength(0);
  });

  it('org-level unimplemented routes still require a key', async () => {
    for (const [method, url] of ORG_SCOPED) {
      const path = url.replace(/:[A-Za-z]+/g, 'x');
      const res = await b.request(method, path, { noAuth: true });
      expect(res.status, `${method} ${path}`).toBe(401);
    }
  });
});
