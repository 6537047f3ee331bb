/**
 * `/metrics` with the FakeRuntime: names, labels and values after a launch and an exec; request
 * counts by route pattern; loopback or the admin token only.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_QUOTA_LIMITS } from '../src/domain/index.js';
import { isLoopback } from '../src/routes/metrics.js';
import { Metrics } from '../src/services/metrics.js';
import { QuotaService } from '../src/services/quota.js';
import { TestClient, startTestServer, type TestServer } from './helpers.js';

const TOKEN = 'metrics-secret-token';

/** The value of the sample `name{labels}` in `text`, or undefined. */
function sample(text: string, name: string, labels: Record<string, string>): number | undefined {
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    const m = /^([^{ ]+)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const got = Object.fromEntries(
      [...(m[2] ?? '').matchAll(/(\w+)="([^"]*)"/g)].map((x) => [x[1], x[2]]),
    );
    if (Object.entries(labels).every(([k, v]) => got[k] === v)) return Number(m[3]);
  }
  return undefined;
}

describe('/metrics', () => {
  let t: TestServer;
  let api: TestClient;
  let orgId: string;

  beforeAll(async () => {
    t = await startTestServer({ metricsToken: TOKEN });
    api = new TestClient(t.url, t.key);
    orgId = (await api.get('/v1/org/quotas')).body.orgId;
  });
  afterAll(async () => {
    await t.cleanup();
  });

  it('reports VMs, operations, quota use and API requests after a launch and an exec', async () => {
    const vm = await api.post('/v1/vms', { machineType: 'c1m2', name: 'm' });
    expect(vm.status).toBe(201);
    const exec = await api.post(`/v1/vms/${vm.body.id}/exec`, { command: ['echo', 'hi'] });
    expect(exec.status).toBe(200);
    await api.get(`/v1/vms/${vm.body.id}`);

    const res = await fetch(`${t.url}/metrics`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
    const text = await res.text();
    expect(sample(text, 'fastvm_vms', { status: 'running', machine: 'c1m2' })).toBe(1);
    expect(sample(text, 'fastvm_operations_total', { operation: 'launch', outcome: 'ok' })).toBe(1);
    expect(sample(text, 'fastvm_operations_total', { operation: 'exec', outcome: 'ok' })).toBe(1);
    expect(sample(text, 'fastvm_operation_duration_seconds_count', { operation: 'launch' })).toBe(
      1,
    );
    expect(sample(text, 'fastvm_operation_duration_seconds_count', { operation: 'exec' })).toBe(1);
    expect(sample(text, 'fastvm_quota_usage', { org: orgId, dimension: 'vcpu' })).toBe(1);
    expect(sample(text, 'fastvm_quota_usage', { org: orgId, dimension: 'memoryMiB' })).toBe(2048);
    expect(sample(text, 'fastvm_quota_limit', { org: orgId, dimension: 'vcpu' })).toBe(64);
    // Route patterns, not raw URLs.
    expect(
      sample(text, 'fastvm_http_requests_total', {
        method: 'GET',
        route: '/v1/vms/:id',
        status: '200',
      }),
    ).toBe(1);
    expect(
      sample(text, 'fastvm_http_requests_total', {
        method: 'POST',
        route: '/v1/vms',
        status: '201',
      }),
    ).toBe(1);
    expect(text).not.toContain(vm.body.id);
    await api.del(`/v1/vms/${vm.body.id}`);
  });

  it('refuses non-loopback callers without the token with a 404', async () => {
    const { app } = t.server;
    const outside = await app.inject({ method: 'GET', url: '/metrics', remoteAddress: '10.1.2.3' });
    expect(outside.statusCode).toBe(404);
    expect(outside.json()).toMatchObject({ code: 'not_found' });
    const wrong = await app.inject({
      method: 'GET',
      url: '/metrics',
      remoteAddress: '10.1.2.3',
      headers: { authorization: 'Bearer nope' },
    });
    expect(wrong.statusCode).toBe(404);
    const withToken = await app.inject({
      method: 'GET',
      url: '/metrics',
      remoteAddress: '10.1.2.3',
      headers: { authorization: `Bearer ${TOKEN}` },
    });
    expect(withToken.statusCode).toBe(200);
    expect(withToken.body).toContain('fastvm_vms');
    const local = await app.inject({ method: 'GET', url: '/metrics', remoteAddress: '::1' });
    expect(local.statusCode).toBe(200);
    // Not in the API description.
    expect(JSON.stringify((await api.get('/openapi.json')).body)).not.toContain('/metrics');
  });

  it('reports the warm pool when the runtime has one', async () => {
    const { store } = t.server;
    const metrics = new Metrics({
      store,
      quotas: new QuotaService(store, DEFAULT_QUOTA_LIMITS),
      runtime: { poolReady: (machine: string) => (machine === 'c1m2' ? 2 : 0) },
    });
    const { text } = await metrics.scrape();
    expect(sample(text, 'fastvm_pool_ready', { machine: 'c1m2' })).toBe(2);
    expect(sample(text, 'fastvm_pool_ready', { machine: 'c2m4' })).toBe(0);
    const { text: noPool } = await new Metrics({
      store,
      quotas: new QuotaService(store, DEFAULT_QUOTA_LIMITS),
      runtime: {},
    }).scrape();
    expect(noPool).not.toContain('fastvm_pool_ready');
  });

  it('recognises loopback addresses', () => {
    for (const a of ['127.0.0.1', '127.8.9.10', '::1', '::ffff:127.0.0.1']) {
      expect(isLoopback(a)).toBe(true);
    }
    for (const a of ['10.0.0.1', '::ffff:10.0.0.1', '1127.0.0.1', '::2', undefined]) {
      expect(isLoopback(a)).toBe(false);
    }
  });
});
