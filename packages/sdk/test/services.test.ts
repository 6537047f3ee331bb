// listServices / publishService / updateService / removeService against the real API server
// with the FakeRuntime (contract §4.4; issue 14).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConflictError, FastVM, QuotaExceededError } from '../src/index.js';
import { startTestServer, type TestServer } from './helpers/server.js';

let server: TestServer;
let client: FastVM;

beforeAll(async () => {
  server = await startTestServer();
  client = new FastVM({ apiKey: server.key, baseUrl: server.url });
});

afterAll(async () => {
  await client?.close();
  await server?.stop();
});

describe('published services', () => {
  it('publishes, lists, updates and removes; effectiveFirewall follows', async () => {
    const vm = await client.launch({ name: 'svc' });
    const hex = vm.id.replace(/-/g, '');
    const web = await client.publishService(vm, 'web', 8000);
    expect(web).toMatchObject({ name: 'web', port: 8000, h2c: false, auth: 'public', token: null });
    expect(web.url).toMatch(new RegExp(`^http://web--${hex}\\.proxy\\.localhost:\\d+$`));
    // An identical repeat is fine; another port under the name is a conflict.
    expect(await client.publishService(vm, 'web', 8000)).toEqual(web);
    await expect(client.publishService(vm, 'web', 8001)).rejects.toBeInstanceOf(ConflictError);

    const grpc = await client.publishService('svc', 'grpc', 50051, { h2c: true, auth: 'token' });
    expect(grpc.token).toMatch(/^fvs_/);
    expect((await client.listServices(vm)).map((s) => s.name)).toEqual(['grpc', 'web']);
    const got = await client.get(vm);
    expect(got.effectiveFirewall?.ingress?.map((r) => r.portStart)).toEqual([50051, 8000]);
    expect(got.firewall?.ingress).toEqual([]);

    const moved = await client.updateService(vm, 'web', 9000);
    expect(moved.port).toBe(9000);
    await client.removeService(vm, 'web');
    await client.removeService(vm, 'web'); // idempotent
    expect((await client.listServices(vm)).map((s) => s.name)).toEqual(['grpc']);
  });

  it('the 17th service is a QuotaExceededError with the contract body', async () => {
    const vm = await client.launch();
    for (let i = 0; i < 16; i++) await client.publishService(vm, `s${i}`, 2000 + i);
    const err = await client.publishService(vm, 's16', 3000).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(QuotaExceededError);
    expect((err as QuotaExceededError).body).toMatchObject({
      error: 'vm_service_quota_exceeded',
      count: 16,
    });
  });
});
