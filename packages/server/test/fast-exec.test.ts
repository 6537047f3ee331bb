/**
 * `POST /v1/vms/{id}/exec` served ahead of the framework (`http/fast-exec.ts`): the route's
 * answers, its errors and its metrics, the app's answer for every body that is not a plain exec,
 * and the command killed when its client leaves. (The route's own tests in vms.test.ts run
 * through it too.)
 */
import http from 'node:http';
import http2 from 'node:http2';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TRANSPORTS, TestClient, startTestServer, type TestServer } from './helpers.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe.each(TRANSPORTS)('fast POST /v1/vms/{id}/exec over %s', (transport) => {
  let t: TestServer;
  let api: TestClient;
  let vm: { id: string; name: string };

  beforeAll(async () => {
    t = await startTestServer();
    api = new TestClient(t.url, t.key, transport);
    vm = (await api.post('/v1/vms', { machineType: 'c1m2', name: `fx-${transport}` })).body;
    // The VM is in the store's read cache once it has been read.
    expect((await api.get(`/v1/vms/${vm.id}`)).status).toBe(200);
  });
  afterAll(async () => {
    api.close();
    await t.cleanup();
  });

  const execCount = async (status: number) => {
    const line = (await api.get('/metrics')).text
      .split('\n')
      .find(
        (l) =>
          l.startsWith('fastvm_http_requests_total{') &&
          l.includes('route="/v1/vms/:id/exec"') &&
          l.includes(`status="${status}"`),
      );
    return line ? Number(line.split(' ').at(-1)) : 0;
  };

  it('answers as the route does (by name the full path runs it), counted under the route', async () => {
    const before = await execCount(200);
    const body = { command: ['sh', '-c', 'echo out; echo err >&2; exit 3'] };
    const fast = await api.post(`/v1/vms/${vm.id}/exec`, body, {
      headers: { 'x-request-id': 'fx-req-1' },
    });
    const full = await api.post(`/v1/vms/${vm.name}/exec`, body);
    expect(fast.status).toBe(200);
    expect(fast.headers['x-request-id']).toBe('fx-req-1');
    expect(fast.headers['content-type']).toBe(full.headers['content-type']);
    const { durationMs: _a, ...a } = fast.body;
    const { durationMs: _b, ...b } = full.body;
    expect(a).toEqual(b);
    expect(a).toEqual({
      exitCode: 3,
      stdout: 'out\n',
      stderr: 'err\n',
      timedOut: false,
      stdoutTruncated: false,
      stderrTruncated: false,
    });
    expect(Object.keys(fast.body).sort()).toEqual(Object.keys(full.body).sort());
    // A string command, stdin and a timeout, as the route takes them.
    const cat = await api.post(`/v1/vms/${vm.id}/exec`, {
      command: 'cat',
      stdin: Buffer.from('héllo').toString('base64'),
      timeoutSec: 30,
    });
    expect(cat.body).toMatchObject({ exitCode: 0, stdout: 'héllo' });
    expect((await execCount(200)) - before).toBe(3);
  });

  it('gives every other body to the app: the same answers as before', async () => {
    const raw = (body: string, headers: Record<string, string> = {}) =>
      api.post(`/v1/vms/${vm.id}/exec`, undefined, {
        headers: { 'content-type': 'application/json', ...headers },
        rawBody: body,
      });
    const invalid = await raw('{"command": [');
    expect(invalid.status).toBe(400);
    expect(invalid.body.code).toBe('bad_request');
    expect(invalid.body.requestId).toBe(invalid.headers['x-request-id']);
    const empty = await api.post(`/v1/vms/${vm.id}/exec`, { command: [] });
    expect(empty.status).toBe(400);
    expect((await api.post(`/v1/vms/${vm.id}/exec`, { command: [''] })).status).toBe(400);
    expect((await raw('{"command":["true"],"__proto__":{"x":1}}')).status).toBe(400);
    const detached = await api.post(`/v1/vms/${vm.id}/exec`, { command: 'true', detach: true });
    expect(detached.status).toBe(202);
    expect(detached.body.execId).toEqual(expect.any(String));
    const ndjson = await api.post(
      `/v1/vms/${vm.id}/exec`,
      { command: 'echo hi' },
      { headers: { accept: 'application/x-ndjson' } },
    );
    expect(ndjson.status).toBe(200);
    expect(
      ndjson.text
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l).t),
    ).toEqual(['o', 'x']);
    expect(
      (await api.withKey('fvm_nope').post(`/v1/vms/${vm.id}/exec`, { command: 'true' })).status,
    ).toBe(401);
    expect((await api.post('/v1/vms/no-such-vm/exec', { command: 'true' })).status).toBe(404);
  });

  it('maps errors as the error handler does, and refuses a body over the limit', async () => {
    const big = 'x'.repeat(17 * 1024 * 1024);
    const tooBig = await api.post(`/v1/vms/${vm.id}/exec`, { command: 'cat', stdin: big });
    expect(tooBig.status).toBe(413);
    expect(tooBig.body.code).toBe('payload_too_large');
    // The connection still serves requests.
    expect((await api.post(`/v1/vms/${vm.id}/exec`, { command: 'true' })).body.exitCode).toBe(0);
  });
});

describe('fast exec: a client that goes away', () => {
  let t: TestServer;
  let api: TestClient;
  let vmId: string;

  beforeAll(async () => {
    t = await startTestServer();
    api = new TestClient(t.url, t.key, 'h2');
    vmId = (await api.post('/v1/vms', { machineType: 'c1m2' })).body.id;
    expect((await api.get(`/v1/vms/${vmId}`)).status).toBe(200);
  });
  afterAll(async () => {
    api.close();
    await t.cleanup();
  });

  const exists = async (dir: string) =>
    (await api.post(`/v1/vms/${vmId}/exec`, { command: `test -d ${dir}` })).body.exitCode === 0;
  const body = (dir: string) => JSON.stringify({ command: `sleep 1; mkdir ${dir}` });

  it('kills the command when an HTTP/2 stream is reset', async () => {
    const session = http2.connect(t.url);
    const req = session.request({
      ':method': 'POST',
      ':path': `/v1/vms/${vmId}/exec`,
      'x-api-key': t.key,
      'content-type': 'application/json',
    });
    req.on('error', () => {});
    req.end(body('/h2-left'));
    await sleep(300);
    req.close(http2.constants.NGHTTP2_CANCEL);
    await sleep(1500);
    session.close();
    expect(await exists('/h2-left')).toBe(false);
    // Control: the same command left alone does make the directory.
    expect((await api.post(`/v1/vms/${vmId}/exec`, JSON.parse(body('/h2-stayed')))).status).toBe(
      200,
    );
    expect(await exists('/h2-stayed')).toBe(true);
  });

  it('kills the command when an HTTP/1.1 client disconnects', async () => {
    const req = http.request(`${t.url}/v1/vms/${vmId}/exec`, {
      method: 'POST',
      headers: { 'x-api-key': t.key, 'content-type': 'application/json' },
    });
    req.on('error', () => {});
    req.end(body('/h1-left'));
    await sleep(300);
    req.destroy();
    await sleep(1500);
    expect(await exists('/h1-left')).toBe(false);
  });
});
