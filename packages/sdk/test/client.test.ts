// Unit tests of the client against a local HTTP/2 mock (test/helpers/mock-server.ts).
import { inspect } from 'node:util';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import {
  AbortError,
  AuthenticationError,
  BadRequestError,
  ConflictError,
  FastVM,
  FastVMError,
  InternalServerError,
  NotFoundError,
  QuotaExceededError,
  RateLimitError,
  SnapshotError,
  SnapshotNotReadyError,
  TimeoutError,
  VMLaunchError,
  VMNotReadyError,
} from '../src/index.js';
import { EXEC_OK, MockServer, wireSnapshot, wireVm } from './helpers/mock-server.js';

let server: MockServer;
let client: FastVM;

beforeEach(async () => {
  server = await new MockServer().start();
  client = new FastVM({ apiKey: 'test-key', baseUrl: server.url, maxRetries: 2 });
});

afterEach(async () => {
  await client.close();
  await server.stop();
  vi.unstubAllEnvs();
});

describe('configuration', () => {
  it('reads FASTVM_API_KEY and FASTVM_BASE_URL, treating empty values as unset', () => {
    vi.stubEnv('FASTVM_API_KEY', 'from-env');
    vi.stubEnv('FASTVM_BASE_URL', '');
    expect(new FastVM().baseUrl).toBe('https://api.fastvm.org');
    vi.stubEnv('FASTVM_BASE_URL', 'http://example.test:9000/prefix/');
    expect(new FastVM().baseUrl).toBe('http://example.test:9000/prefix');
    expect(new FastVM({ baseUrl: 'http://other' }).baseUrl).toBe('http://other');
  });

  it('throws a clear error without an API key', () => {
    vi.stubEnv('FASTVM_API_KEY', '');
    expect(() => new FastVM()).toThrow(FastVMError);
    expect(() => new FastVM()).toThrow(/FASTVM_API_KEY/);
    expect(() => new FastVM({ apiKey: '' })).toThrow(/FASTVM_API_KEY/);
  });

  it('rejects nonsense timeouts and retry counts', () => {
    expect(() => new FastVM({ apiKey: 'k', timeout: 0 })).toThrow(/timeout/);
    expect(() => new FastVM({ apiKey: 'k', maxRetries: -1 })).toThrow(/maxRetries/);
  });

  it('keeps the API key out of what callers can inspect: the client, its stats and its errors', async () => {
    server.handler = (req) =>
      req.path === '/v1/vms/vm-1'
        ? { body: wireVm() }
        : { status: 401, body: { error: 'unauthorized', message: 'bad key' } };
    await client.get('vm-1'); // a live session and request state
    const unauthorized = await client.list().catch((e: unknown) => e);
    expect(unauthorized).toBeInstanceOf(AuthenticationError);
    const unreachable = new FastVM({
      apiKey: 'test-key',
      baseUrl: 'http://127.0.0.1:9',
      maxRetries: 0,
    });
    const refused = await unreachable.get('vm-1').catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(FastVMError);
    for (const [what, value] of Object.entries({
      client,
      stats: client.stats,
      unauthorized,
      refused,
      unreachable,
    })) {
      // Everything reachable that is not #private: own and inherited properties, getters,
      // non-enumerable ones, error causes.
      const seen = inspect(value, { showHidden: true, depth: Infinity, getters: true });
      expect(seen, what).not.toContain('test-key');
      expect(JSON.stringify(value) ?? '', what).not.toContain('test-key');
      expect(String(value), what).not.toContain('test-key');
    }
    await unreachable.close();
  });
});

describe('requests and results', () => {
  it('sends the API key and maps wire fields to camelCase (memoryMib, diskGib)', async () => {
    server.handler = () => ({ body: wireVm({ publicIpv6: '2001:db8::1', metadata: { a: 'b' } }) });
    const vm = await client.get('vm-1');
    expect(server.requests[0]!.headers['x-api-key']).toBe('test-key');
    expect(server.requests[0]!.path).toBe('/v1/vms/vm-1');
    expect(vm).toMatchObject({
      id: 'vm-1',
      memoryMib: 2048,
      diskGib: 10,
      machineName: 'c1m2',
      publicIpv6: '2001:db8::1',
      firewall: null,
      deletedAt: null,
      metadata: { a: 'b' },
    });
  });

  it('accepts objects as well as ids, and percent-encodes path segments', async () => {
    server.handler = () => ({ body: wireVm() });
    await client.get({ id: 'my vm/1' });
    expect(server.requests[0]!.path).toBe('/v1/vms/my%20vm%2F1');
    await expect(client.get('..')).rejects.toThrow(FastVMError);
  });

  it('launch sends machineType/diskGiB/firewall and returns at once when already running', async () => {
    server.handler = () => ({ status: 201, body: wireVm() });
    const vm = await client.launch({
      machine: 'c2m4',
      name: 'w',
      diskGib: 20,
      firewall: {
        mode: 'restricted',
        ingress: [{ protocol: 'tcp', portStart: 22, description: 'ssh' }],
      },
    });
    expect(vm.status).toBe('running');
    expect(server.requests).toHaveLength(1);
    expect(server.requests[0]!.body).toEqual({
      machineType: 'c2m4',
      name: 'w',
      diskGiB: 20,
      firewall: {
        mode: 'restricted',
        ingress: [{ protocol: 'tcp', portStart: 22, description: 'ssh' }],
      },
    });
  });

  it('launch defaults to c1m2 and polls GET until running', async () => {
    server.handler = (req, n) => {
      if (req.method === 'POST') return { status: 202, body: wireVm({ status: 'provisioning' }) };
      return { body: wireVm({ status: n < 4 ? 'provisioning' : 'running' }) };
    };
    const vm = await client.launch();
    expect(vm.status).toBe('running');
    expect(server.requests[0]!.body).toEqual({ machineType: 'c1m2' });
    expect(server.requests.map((r) => r.method)).toEqual(['POST', 'GET', 'GET', 'GET']);
  });

  it('launch fails with VMLaunchError on a terminal status', async () => {
    server.handler = (req) =>
      req.method === 'POST'
        ? { status: 202, body: wireVm({ status: 'provisioning' }) }
        : { body: wireVm({ status: 'error' }) };
    const err = await client.launch().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(VMLaunchError);
    expect(err).toMatchObject({ vmId: 'vm-1', status: 'error' });
  });

  it('launch fails with VMNotReadyError (a TimeoutError) when the VM never runs', async () => {
    server.handler = () => ({ status: 202, body: wireVm({ status: 'provisioning' }) });
    const err = await client.launch({ timeout: 300 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(VMNotReadyError);
    expect(err).toBeInstanceOf(TimeoutError);
    expect(err).toMatchObject({ vmId: 'vm-1', lastStatus: 'provisioning', timeoutMs: 300 });
  });

  it('restore posts snapshotId and waits', async () => {
    server.handler = (req) =>
      req.method === 'POST'
        ? { status: 202, body: wireVm({ id: 'vm-2', status: 'provisioning' }) }
        : { body: wireVm({ id: 'vm-2' }) };
    const vm = await client.restore({ id: 'snap-1' }, { name: 'r1' });
    expect(vm.id).toBe('vm-2');
    expect(server.requests[0]!.body).toEqual({ snapshotId: 'snap-1', name: 'r1' });
    expect(server.requests[1]!.path).toBe('/v1/vms/vm-2');
  });

  it('run wraps a string in sh -c and passes arrays and timeoutSec through', async () => {
    server.handler = () => ({ body: EXEC_OK });
    const res = await client.run('vm-1', 'echo hello');
    expect(res).toEqual({ ...EXEC_OK });
    await client.run({ id: 'vm-1' }, ['ls', '-l'], { timeoutSec: 5 });
    expect(server.requests[0]!.body).toEqual({ command: ['sh', '-c', 'echo hello'] });
    expect(server.requests[1]!.body).toEqual({ command: ['ls', '-l'], timeoutSec: 5 });
    expect(server.requests[1]!.path).toBe('/v1/vms/vm-1/exec');
  });

  it('snapshot polls GET /v1/snapshots/{id} until ready', async () => {
    server.handler = (req, n) =>
      req.method === 'POST'
        ? { status: 201, body: wireSnapshot({ status: 'creating' }) }
        : { body: wireSnapshot({ status: n < 3 ? 'creating' : 'ready' }) };
    const snap = await client.snapshot('vm-1', { name: 'my-snap' });
    expect(snap.status).toBe('ready');
    expect(server.requests[0]!.body).toEqual({ vmId: 'vm-1', name: 'my-snap' });
    expect(server.requests.slice(1).map((r) => r.path)).toEqual([
      '/v1/snapshots/snap-1',
      '/v1/snapshots/snap-1',
    ]);
  });

  it('snapshot fails with SnapshotError / SnapshotNotReadyError', async () => {
    server.handler = (req) =>
      req.method === 'POST'
        ? { status: 201, body: wireSnapshot({ status: 'creating' }) }
        : { body: wireSnapshot({ status: 'error' }) };
    await expect(client.snapshot('vm-1')).rejects.toBeInstanceOf(SnapshotError);
    server.handler = () => ({ status: 201, body: wireSnapshot({ status: 'creating' }) });
    await expect(client.snapshot('vm-1', { timeout: 250 })).rejects.toBeInstanceOf(
      SnapshotNotReadyError,
    );
  });

  it('maps the remaining calls to their wire paths', async () => {
    server.handler = (req) => {
      if (req.path === '/v1/org/quotas') {
        const v = { vcpu: 1, memoryMiB: 2048, diskGiB: 10, snapshotCount: 2, volumeCount: 0 };
        return { body: { orgId: 'org-1', limits: { ...v, vcpu: 8 }, usage: v } };
      }
      if (req.path.startsWith('/v1/snapshots'))
        return {
          body:
            req.method === 'GET' && req.path === '/v1/snapshots'
              ? [wireSnapshot()]
              : wireSnapshot(),
        };
      if (req.path === '/v1/vms') return { body: [wireVm(), wireVm({ id: 'vm-2' })] };
      if (req.method === 'DELETE') return { body: { id: 'vm-1', deleted: true } };
      return { body: wireVm({ firewall: { mode: 'open' } }) };
    };
    expect((await client.list()).map((v) => v.id)).toEqual(['vm-1', 'vm-2']);
    expect(await client.remove('vm-1')).toBeUndefined();
    await client.rename('vm-1', 'new-name');
    const fw = await client.setFirewall('vm-1', { mode: 'open' });
    expect(fw.firewall).toEqual({ mode: 'open' });
    await client.patchFirewall('vm-1', { ingress: [] });
    expect((await client.listSnapshots())[0]!.id).toBe('snap-1');
    await client.getSnapshot('snap-1');
    await client.renameSnapshot('snap-1', 'v2');
    await client.removeSnapshot({ id: 'snap-1' });
    const q = await client.quotas();
    expect(q).toEqual({
      orgId: 'org-1',
      limits: {
        vcpu: 8,
        memoryMib: 2048,
        diskGib: 10,
        snapshotCount: 2,
        volumeCount: 0,
        volumeGib: 0,
      },
      usage: {
        vcpu: 1,
        memoryMib: 2048,
        diskGib: 10,
        snapshotCount: 2,
        volumeCount: 0,
        volumeGib: 0,
      },
    });
    expect(
      server.requests.map((r) => `${r.method} ${r.path} ${JSON.stringify(r.body ?? null)}`),
    ).toEqual([
      'GET /v1/vms null',
      'DELETE /v1/vms/vm-1 null',
      'PATCH /v1/vms/vm-1 {"name":"new-name"}',
      'PUT /v1/vms/vm-1/firewall {"mode":"open"}',
      'PATCH /v1/vms/vm-1/firewall {"ingress":[]}',
      'GET /v1/snapshots null',
      'GET /v1/snapshots/snap-1 null',
      'PATCH /v1/snapshots/snap-1 {"name":"v2"}',
      'DELETE /v1/snapshots/snap-1 null',
      'GET /v1/org/quotas null',
    ]);
  });
});

describe('errors', () => {
  it.each([
    [400, BadRequestError],
    [401, AuthenticationError],
    [404, NotFoundError],
    [409, ConflictError],
  ])(
    'maps %i to its error class with status, body, message and request id',
    async (status, cls) => {
      server.handler = () => ({
        status,
        body: { error: 'nope', code: 'some_code' },
        headers: { 'x-request-id': 'req-123', 'x-should-retry': 'false' },
      });
      const err = await client.get('vm-1').catch((e: unknown) => e);
      expect(err).toBeInstanceOf(cls);
      expect(err).toMatchObject({
        status,
        code: 'some_code',
        body: { error: 'nope', code: 'some_code' },
        requestId: 'req-123',
      });
      expect((err as Error).message).toBe(`${status} nope`);
    },
  );

  it('distinguishes QuotaExceededError (with dimension) from RateLimitError', async () => {
    server.handler = () => ({ status: 429, body: { error: 'quota exceeded', dimension: 'vcpu' } });
    const quota = await client.launch().catch((e: unknown) => e);
    expect(quota).toBeInstanceOf(QuotaExceededError);
    expect((quota as QuotaExceededError).dimension).toBe('vcpu');
    server.handler = () => ({
      status: 429,
      body: { error: 'slow down' },
      headers: { 'x-should-retry': 'false' },
    });
    expect(await client.get('vm-1').catch((e: unknown) => e)).toBeInstanceOf(RateLimitError);
  });
});

describe('retries', () => {
  it('retries a GET after 503, honouring retry-after-ms', async () => {
    server.handler = (_req, n) =>
      n === 1
        ? { status: 503, body: { error: 'busy' }, headers: { 'retry-after-ms': '150' } }
        : { body: wireVm() };
    const started = performance.now();
    const vm = await client.get('vm-1');
    expect(vm.id).toBe('vm-1');
    expect(server.requests).toHaveLength(2);
    expect(performance.now() - started).toBeGreaterThanOrEqual(140);
  });

  it('honours retry-after in seconds and gives up after maxRetries', async () => {
    server.handler = () => ({
      status: 500,
      body: { error: 'down' },
      headers: { 'retry-after': '0' },
    });
    const err = await client.list().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(InternalServerError);
    expect(server.requests).toHaveLength(3);
  });

  it('does not retry when the server says x-should-retry: false, and retries 4xx when it says true', async () => {
    server.handler = () => ({
      status: 503,
      body: { error: 'no' },
      headers: { 'x-should-retry': 'false' },
    });
    await expect(client.get('vm-1')).rejects.toBeInstanceOf(InternalServerError);
    expect(server.requests).toHaveLength(1);
    server.handler = (_r, n) =>
      n === 2
        ? {
            status: 400,
            body: { error: 'x' },
            headers: { 'x-should-retry': 'true', 'retry-after-ms': '1' },
          }
        : { body: wireVm() };
    await client.get('vm-1');
    expect(server.requests).toHaveLength(3);
  });

  it('never retries exec, launch or snapshot POSTs on HTTP errors', async () => {
    server.handler = () => ({
      status: 503,
      body: { error: 'busy' },
      headers: { 'retry-after-ms': '1' },
    });
    await expect(client.run('vm-1', 'true')).rejects.toBeInstanceOf(InternalServerError);
    await expect(client.launch()).rejects.toBeInstanceOf(InternalServerError);
    await expect(client.snapshot('vm-1')).rejects.toBeInstanceOf(InternalServerError);
    expect(server.requests.map((r) => r.method)).toEqual(['POST', 'POST', 'POST']);
  });

  it('retries a POST the server refused before processing (REFUSED_STREAM)', async () => {
    server.handler = (_r, n) => (n === 1 ? { reset: 7 /* REFUSED_STREAM */ } : { body: EXEC_OK });
    const res = await client.run('vm-1', 'true');
    expect(res.exitCode).toBe(0);
    expect(server.requests).toHaveLength(2);
  });

  it('does not retry a POST whose stream was reset after it was sent', async () => {
    server.handler = () => ({ reset: 2 /* INTERNAL_ERROR */ });
    await expect(client.run('vm-1', 'true')).rejects.toMatchObject({
      name: 'ConnectionError',
      requestSent: true,
    });
    expect(server.requests).toHaveLength(1);
  });
});

describe('cancellation and timeouts', () => {
  it('aborts an in-flight call with AbortError', async () => {
    server.handler = () => ({ body: EXEC_OK, delayMs: 2_000 });
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 50);
    const started = performance.now();
    const err = await client
      .run('vm-1', 'sleep 10', { signal: ac.signal })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(AbortError);
    expect(performance.now() - started).toBeLessThan(1_000);
    await expect(client.get('vm-1', { signal: AbortSignal.abort() })).rejects.toBeInstanceOf(
      AbortError,
    );
  });

  it('aborts a blocking launch while it polls', async () => {
    server.handler = () => ({ status: 202, body: wireVm({ status: 'provisioning' }) });
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 150);
    await expect(client.launch({ signal: ac.signal })).rejects.toBeInstanceOf(AbortError);
  });

  it('times out with TimeoutError', async () => {
    server.handler = () => ({ body: EXEC_OK, delayMs: 2_000 });
    const started = performance.now();
    await expect(client.run('vm-1', 'sleep 10', { timeout: 100 })).rejects.toBeInstanceOf(
      TimeoutError,
    );
    expect(performance.now() - started).toBeLessThan(1_000);
    // The session survives a cancelled stream.
    server.handler = () => ({ body: wireVm() });
    await client.get('vm-1');
    expect(client.stats.sessionsOpened).toBe(1);
  });

  it('applies the client timeout to GETs, retries included', async () => {
    const fast = new FastVM({ apiKey: 'k', baseUrl: server.url, timeout: 200 });
    server.handler = () => ({ status: 503, body: { error: 'busy' } });
    const started = performance.now();
    await expect(fast.get('vm-1')).rejects.toBeInstanceOf(FastVMError);
    expect(performance.now() - started).toBeLessThan(1_000);
    await fast.close();
  });
});
