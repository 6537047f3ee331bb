/**
 * Published services over HTTP with the FakeRuntime (contract §4.4): codes, idempotency, 409,
 * the cap, validation, other orgs' VMs, `effectiveFirewall` and the policy handed to the
 * network, snapshots capturing the list and restores registering it again (or warning).
 * The proxy is in `services-proxy.test.ts`; real VMs in `services-vm.test.ts`.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FirewallPolicy } from '../src/domain/index.js';
import type { NetworkManager, VmNetworkAttachment } from '../src/services/network.js';
import {
  TRANSPORTS,
  TestClient,
  createOrgWithKey,
  startTestServer,
  type TestServer,
} from './helpers.js';

/** Records the policies the VM service and the service registry hand to the network. */
class RecordingNetwork implements NetworkManager {
  readonly applied: Array<{ vmId: string; policy: FirewallPolicy }> = [];
  readonly attached: Array<{ vmId: string; policy: FirewallPolicy }> = [];
  async attach(vmId: string, policy: FirewallPolicy): Promise<VmNetworkAttachment> {
    this.attached.push({ vmId, policy });
    return { publicIpv6: null };
  }
  async onFirewallChange(vmId: string, policy: FirewallPolicy): Promise<void> {
    this.applied.push({ vmId, policy });
  }
  async release(): Promise<void> {}
  async reconcile(): Promise<void> {}
  async close(): Promise<void> {}
  last(vmId: string): FirewallPolicy | undefined {
    return this.applied.filter((a) => a.vmId === vmId).at(-1)?.policy;
  }
}

const auto = (name: string, port: number) => ({
  protocol: 'tcp',
  portStart: port,
  sourceCidrs: ['::/0'],
  description: `auto: proxy service ${name}`,
});

describe.each(TRANSPORTS)('services over %s', (transport) => {
  let t: TestServer;
  let api: TestClient;
  let network: RecordingNetwork;
  let vmId: string;

  beforeAll(async () => {
    network = new RecordingNetwork();
    t = await startTestServer({ network });
    api = new TestClient(t.url, t.key, transport);
    const vm = await api.post('/v1/vms', { machineType: 'c1m2', name: 'svc-vm' });
    expect(vm.status).toBe(201);
    vmId = vm.body.id;
  });
  afterAll(async () => {
    api.close();
    await t.cleanup();
  });

  it('POST 201, identical repeat 201, conflicting repeat 409, GET sorted, url', async () => {
    const hex = vmId.replace(/-/g, '');
    const web = await api.post(`/v1/vms/${vmId}/services`, { name: 'web', port: 8000 });
    expect(web.status).toBe(201);
    expect(web.body).toEqual({
      name: 'web',
      port: 8000,
      h2c: false,
      auth: 'public',
      url: `http://web--${hex}.proxy.localhost:${t.server.proxy.port}`,
    });
    const again = await api.post(`/v1/vms/${vmId}/services`, {
      name: 'web',
      port: 8000,
      h2c: false,
    });
    expect(again.status).toBe(201);
    expect(again.body).toEqual(web.body);
    const otherPort = await api.post(`/v1/vms/${vmId}/services`, { name: 'web', port: 8001 });
    expect(otherPort.status).toBe(409);
    expect(otherPort.body.code).toBe('conflict');
    expect(otherPort.headers['x-should-retry']).toBe('false');
    const otherH2c = await api.post(`/v1/vms/${vmId}/services`, {
      name: 'web',
      port: 8000,
      h2c: true,
    });
    expect(otherH2c.status).toBe(409);

    expect((await api.post(`/v1/vms/${vmId}/services`, { name: 'api', port: 9000 })).status).toBe(
      201,
    );
    const list = await api.get(`/v1/vms/svc-vm/services`);
    expect(list.status).toBe(200);
    expect(list.body.map((s: { name: string }) => s.name)).toEqual(['api', 'web']);
  });

  it('PUT registers or updates (200, same values a no-op); DELETE 204 without body, idempotent', async () => {
    const put = await api.put(`/v1/vms/${vmId}/services/grpc`, { port: 50051, h2c: true });
    expect(put.status).toBe(200);
    expect(put.body).toMatchObject({ name: 'grpc', port: 50051, h2c: true, auth: 'public' });
    const changes = network.applied.length;
    const same = await api.put(`/v1/vms/${vmId}/services/grpc`, { port: 50051, h2c: true });
    expect(same.status).toBe(200);
    expect(network.applied.length).toBe(changes); // nothing changed, nothing applied
    const moved = await api.put(`/v1/vms/${vmId}/services/grpc`, { port: 50052, h2c: true });
    expect(moved.body.port).toBe(50052);

    const del = await api.del(`/v1/vms/${vmId}/services/grpc`, { headers: { accept: '*/*' } });
    expect(del.status).toBe(204);
    expect(del.text).toBe('');
    const again = await api.del(`/v1/vms/${vmId}/services/grpc`);
    expect(again.status).toBe(204);
    const never = await api.del(`/v1/vms/${vmId}/services/never-was`);
    expect(never.status).toBe(204);
    const names = (await api.get(`/v1/vms/${vmId}/services`)).body.map(
      (s: { name: string }) => s.name,
    );
    expect(names).not.toContain('grpc');
  });

  it('refuses bad names and ports with 400 naming the field', async () => {
    const bad: Array<[unknown, string]> = [
      [{ name: 'Web', port: 8000 }, 'name'],
      [{ name: 'a'.repeat(30), port: 8000 }, 'name'],
      [{ name: '', port: 8000 }, 'name'],
      [{ name: 'a--b', port: 8000 }, 'name'],
      [{ name: '-web', port: 8000 }, 'name'],
      [{ name: 'web_1', port: 8000 }, 'name'],
      [{ name: 'web', port: 80 }, 'port'],
      [{ name: 'web', port: 1023 }, 'port'],
      [{ name: 'web', port: 65536 }, 'port'],
      [{ name: 'web', port: 8000.5 }, 'port'],
      [{ port: 8000 }, 'name'],
      [{ name: 'web', port: 8000, auth: 'nope' }, 'auth'],
    ];
    for (const [body, field] of bad) {
      const r = await api.post(`/v1/vms/${vmId}/services`, body);
      expect(r.status, JSON.stringify(body)).toBe(400);
      expect(r.body.field, JSON.stringify(body)).toBe(field);
    }
    expect(
      (await api.post(`/v1/vms/${vmId}/services`, { name: 'a'.repeat(29), port: 1024 })).status,
    ).toBe(201);
    await api.del(`/v1/vms/${vmId}/services/${'a'.repeat(29)}`);
    const put = await api.put(`/v1/vms/${vmId}/services/UPPER`, { port: 8000 });
    expect(put.status).toBe(400);
  });

  it('caps a VM at 16 services with the contract body', async () => {
    const vm = await api.post('/v1/vms', { machineType: 'c1m2' });
    const id = vm.body.id as string;
    for (let i = 0; i < 16; i++) {
      const r = await api.post(`/v1/vms/${id}/services`, { name: `s${i}`, port: 2000 + i });
      expect(r.status).toBe(201);
    }
    const over = await api.post(`/v1/vms/${id}/services`, { name: 's16', port: 3000 });
    expect(over.status).toBe(429);
    expect(over.body).toMatchObject({ error: 'vm_service_quota_exceeded', count: 16 });
    expect(over.headers['x-should-retry']).toBe('false');
    const overPut = await api.put(`/v1/vms/${id}/services/s16`, { port: 3000 });
    expect(overPut.status).toBe(429);
    // Repeating one of the 16 is still fine, and so is updating one.
    expect((await api.post(`/v1/vms/${id}/services`, { name: 's3', port: 2003 })).status).toBe(201);
    expect((await api.put(`/v1/vms/${id}/services/s3`, { port: 4003 })).status).toBe(200);
    expect((await api.get(`/v1/vms/${id}/services`)).body).toHaveLength(16);
    await api.del(`/v1/vms/${id}`);
  });

  it('holds the cap and idempotency under concurrent requests', async () => {
    const vm = await api.post('/v1/vms', { machineType: 'c1m2' });
    const id = vm.body.id as string;
    const results = await Promise.all(
      Array.from({ length: 20 }, (_, i) =>
        api.post(`/v1/vms/${id}/services`, { name: `c${i}`, port: 3000 + i }),
      ),
    );
    const codes = results.map((r) => r.status).sort();
    expect(codes.filter((c) => c === 201)).toHaveLength(16);
    expect(codes.filter((c) => c === 429)).toHaveLength(4);
    const same = await Promise.all(
      Array.from({ length: 5 }, () =>
        api.post(`/v1/vms/${id}/services`, { name: 'c0', port: 3000 }),
      ),
    );
    // c0 may or may not be among the 16; either way every repeat gets the same answer.
    expect(new Set(same.map((r) => r.status)).size).toBe(1);
    expect((await api.get(`/v1/vms/${id}/services`)).body).toHaveLength(16);
    await api.del(`/v1/vms/${id}`);
  });

  it("answers 404 for another org's VM on every route, and for unknown VMs", async () => {
    const other = api.withKey(await createOrgWithKey(t.server, `other-${transport}`));
    const routes: Array<() => Promise<{ status: number }>> = [
      () => other.get(`/v1/vms/${vmId}/services`),
      () => other.post(`/v1/vms/${vmId}/services`, { name: 'x', port: 8000 }),
      () => other.put(`/v1/vms/${vmId}/services/web`, { port: 8000 }),
      () => other.del(`/v1/vms/${vmId}/services/web`),
      () => api.get(`/v1/vms/00000000-0000-0000-0000-000000000000/services`),
      () => api.del(`/v1/vms/vm_does_not_exist_000000/services/web`),
    ];
    for (const call of routes) expect((await call()).status).toBe(404);
    // Nothing changed for the owner.
    const names = (await api.get(`/v1/vms/${vmId}/services`)).body.map(
      (s: { name: string }) => s.name,
    );
    expect(names).toEqual(['api', 'web']);
  });

  it('effectiveFirewall = firewall + auto-rules, applied to the network on every change', async () => {
    const vm = await api.get(`/v1/vms/${vmId}`);
    expect(vm.body.firewall).toEqual({ mode: 'restricted', ingress: [] });
    expect(vm.body.effectiveFirewall).toEqual({
      mode: 'restricted',
      ingress: [auto('api', 9000), auto('web', 8000)],
    });
    expect(network.last(vmId)).toEqual(vm.body.effectiveFirewall);

    // User rules come first; a firewall change keeps the auto-rules in what the host gets.
    const rule = { protocol: 'udp', portStart: 5353, description: 'mdns' };
    const put = await api.put(`/v1/vms/${vmId}/firewall`, { mode: 'restricted', ingress: [rule] });
    expect(put.status).toBe(200);
    expect(put.body.firewall.ingress).toEqual([rule]);
    expect(put.body.effectiveFirewall.ingress).toEqual([
      rule,
      auto('api', 9000),
      auto('web', 8000),
    ]);
    expect(network.last(vmId)).toEqual(put.body.effectiveFirewall);

    const patched = await api.patch(`/v1/vms/${vmId}/firewall`, { mode: 'open' });
    expect(patched.body.effectiveFirewall).toEqual({ mode: 'open', ingress: [rule] });
    expect(network.last(vmId)).toEqual({ mode: 'open', ingress: [rule] });
    await api.patch(`/v1/vms/${vmId}/firewall`, { mode: 'restricted', ingress: [] });

    // Deleting a service removes its rule at once; lists show the effective policy too.
    await api.del(`/v1/vms/${vmId}/services/api`);
    expect(network.last(vmId)).toEqual({ mode: 'restricted', ingress: [auto('web', 8000)] });
    const listed = (await api.get('/v1/vms')).body.find((v: { id: string }) => v.id === vmId);
    expect(listed.effectiveFirewall.ingress).toEqual([auto('web', 8000)]);
    expect(listed.firewall.ingress).toEqual([]);
    await api.post(`/v1/vms/${vmId}/services`, { name: 'api', port: 9000 });
  });

  it('token services return their token to the owner; api_key ones none', async () => {
    const tok = await api.post(`/v1/vms/${vmId}/services`, {
      name: 'secret',
      port: 7000,
      auth: 'token',
    });
    expect(tok.status).toBe(201);
    expect(tok.body.token).toMatch(/^fvs_[A-Za-z0-9_-]{32}$/);
    const listed = (await api.get(`/v1/vms/${vmId}/services`)).body.find(
      (s: { name: string }) => s.name === 'secret',
    );
    expect(listed.token).toBe(tok.body.token);
    // An identical repeat without auth matches; a different auth conflicts.
    expect(
      (await api.post(`/v1/vms/${vmId}/services`, { name: 'secret', port: 7000 })).status,
    ).toBe(201);
    expect(
      (await api.post(`/v1/vms/${vmId}/services`, { name: 'secret', port: 7000, auth: 'public' }))
        .status,
    ).toBe(409);
    const keyed = await api.put(`/v1/vms/${vmId}/services/secret`, { port: 7000, auth: 'api_key' });
    expect(keyed.body).toMatchObject({ auth: 'api_key' });
    expect(keyed.body.token).toBeUndefined();
    await api.del(`/v1/vms/${vmId}/services/secret`);
  });

  it('snapshots capture the list; a restore registers it for the new VM', async () => {
    await api.post(`/v1/vms/${vmId}/services`, { name: 'tok', port: 7100, auth: 'token' });
    const tokenBefore = (await api.get(`/v1/vms/${vmId}/services`)).body.find(
      (s: { name: string }) => s.name === 'tok',
    ).token;
    const snap = await api.post('/v1/snapshots', { vmId, name: `svc-snap-${transport}` });
    expect(snap.status).toBeLessThan(300);
    const snapshot = (await api.get(`/v1/snapshots/${snap.body.id}`)).body;
    expect(snapshot.services).toEqual([
      { name: 'api', port: 9000, h2c: false },
      { name: 'tok', port: 7100, h2c: false },
      { name: 'web', port: 8000, h2c: false },
    ]);
    // Later changes to the VM do not touch the snapshot.
    await api.del(`/v1/vms/${vmId}/services/tok`);

    const fork = await api.post('/v1/vms', { snapshotId: snap.body.id });
    expect(fork.status).toBe(201);
    expect(fork.body.snapshotRestoreWarnings).toBeUndefined();
    const forkId = fork.body.id as string;
    expect(fork.body.effectiveFirewall.ingress).toEqual([
      auto('api', 9000),
      auto('tok', 7100),
      auto('web', 8000),
    ]);
    // The restored VM booted with the auto-rules in place.
    expect(network.attached.find((a) => a.vmId === forkId)?.policy).toEqual(
      fork.body.effectiveFirewall,
    );
    const services = (await api.get(`/v1/vms/${forkId}/services`)).body;
    expect(services.map((s: { url: string }) => s.url)).toEqual(
      ['api', 'tok', 'web'].map(
        (n) => `http://${n}--${forkId.replace(/-/g, '')}.proxy.localhost:${t.server.proxy.port}`,
      ),
    );
    const tok = services.find((s: { name: string }) => s.name === 'tok');
    expect(tok.auth).toBe('token');
    expect(tok.token).toMatch(/^fvs_/);
    expect(tok.token).not.toBe(tokenBefore);
    await api.del(`/v1/vms/${forkId}`);
  });

  it('a restore that cannot register the services registers none and says so', async () => {
    const snap = await api.post('/v1/snapshots', { vmId, name: `broken-${transport}` });
    // A list no VM could publish (as an older server with other rules might have captured).
    const broken = Array.from({ length: 17 }, (_, i) => ({
      name: `b${i}`,
      port: 3000 + i,
      h2c: i === 0,
      auth: 'public',
    }));
    const db = (t.server.store as unknown as { db: import('kysely').Kysely<never> }).db;
    await (
      db as unknown as import('kysely').Kysely<{ snapshots: { id: string; services: string } }>
    )
      .updateTable('snapshots')
      .set({ services: JSON.stringify(broken) })
      .where('id', '=', snap.body.id)
      .execute();
    const fork = await api.post('/v1/vms', { snapshotId: snap.body.id });
    expect(fork.status).toBe(201);
    expect(fork.body.snapshotRestoreWarnings).toEqual({
      servicesRegistrationFailed: true,
      reason: expect.stringContaining('17 services'),
      unregisteredServices: broken.map(({ name, port, h2c }) => ({ name, port, h2c })),
    });
    expect((await api.get(`/v1/vms/${fork.body.id}/services`)).body).toEqual([]);
    expect(fork.body.effectiveFirewall).toEqual(fork.body.firewall);
    await api.del(`/v1/vms/${fork.body.id}`);
  });
});
