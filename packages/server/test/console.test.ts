/**
 * The console over the real server with the FakeRuntime's fake shell: tokens (single use,
 * expiry, scope, org isolation, state checks) and the WebSocket protocol of contract §5
 * (resize control messages, text and binary input, exit status in the close frame, hangup on
 * client close, VM loss). The same flow against a real VM is in console-vm.test.ts.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FakePty } from '../src/testing/index.js';
import { ConsoleClient, consoleUrl } from './console-helpers.js';
import {
  TestClient,
  createOrgWithKey,
  sleep,
  startTestServer,
  type TestServer,
} from './helpers.js';

let t: TestServer;
let api: TestClient;

async function launch(client = api, name?: string): Promise<string> {
  const res = await client.post('/v1/vms', { machineType: 'c1m2', ...(name ? { name } : {}) });
  expect(res.status).toBe(201);
  return res.body.id as string;
}

async function token(
  vmRef: string,
  client = api,
): Promise<{ token: string; websocketPath: string }> {
  const res = await client.post(`/v1/vms/${vmRef}/console-token`);
  expect(res.status).toBe(200);
  return res.body;
}

function lastPty(vmId: string): FakePty {
  const ptys = t.runtime.ptys.get(vmId) ?? [];
  return ptys[ptys.length - 1]!;
}

async function waitUntil(cond: () => boolean, timeoutMs = 3000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await sleep(10);
  }
}

beforeAll(async () => {
  t = await startTestServer();
  api = new TestClient(t.url, t.key);
});

afterAll(async () => {
  await t?.cleanup();
});

describe('POST /v1/vms/{id}/console-token', () => {
  it('returns a single-use token, its lifetime and the WebSocket path', async () => {
    const id = await launch(api, 'console-a');
    // The Python client sends Content-Type: application/json with an empty body.
    const res = await api.request('POST', `/v1/vms/console-a/console-token`, {
      headers: { 'content-type': 'application/json' },
    });
    expect(res.status).toBe(200);
    expect(res.headers['content-type']).toMatch(/^application\/json/);
    expect(res.body).toEqual({
      token: expect.stringMatching(/^fvc_[A-Za-z0-9_-]{32}$/),
      expiresInSec: 60,
      websocketPath: `/v1/vms/${id}/console/ws`,
    });
    const h2 = new TestClient(t.url, t.key, 'h2');
    expect((await h2.post(`/v1/vms/${id}/console-token`)).status).toBe(200);
    h2.close();
  });

  it('needs an API key, and hides other orgs’ VMs (404)', async () => {
    const id = await launch();
    expect(
      (await api.post(`/v1/vms/${id}/console-token`, undefined, { noAuth: true })).status,
    ).toBe(401);
    const other = new TestClient(t.url, await createOrgWithKey(t.server, 'console-other'));
    const res = await other.post(`/v1/vms/${id}/console-token`);
    expect(res.status).toBe(404);
    expect(res.body.code).toBe('not_found');
    expect((await api.post('/v1/vms/vm_does_not_exist_000000/console-token')).status).toBe(404);
  });

  it('is 409 (not retried) for a VM that is not running', async () => {
    const id = await launch();
    t.runtime.crash(id);
    await waitUntil(() => t.runtime.get(id) === undefined);
    await sleep(50); // the server records the exit
    const res = await api.post(`/v1/vms/${id}/console-token`);
    expect(res.status).toBe(409);
    expect(res.headers['x-should-retry']).toBe('false');
    expect(res.body).toMatchObject({ code: 'conflict', status: 'stopped' });
  });
});

describe('console WebSocket', () => {
  it('runs a shell: tty, stty size after a resize, exit 3 → close 1000 with the status', async () => {
    const id = await launch();
    const tok = await token(id);
    const c = await ConsoleClient.open(consoleUrl(t.url, tok));
    c.resize(100, 30); // first thing the official CLI sends
    await c.waitFor(/fake\$ $/);
    expect(t.runtime.calls.filter((x) => x.method === 'openPty').at(-1)!.args).toEqual([
      id,
      { argv: ['/bin/bash', '-l'], env: { TERM: 'xterm-256color' }, rows: 30, cols: 100 },
    ]);
    expect((await c.run('tty', /(\/dev\/pts\/\d+)\r\n/))[1]).toBe('/dev/pts/0');
    expect((await c.run('stty size', /(\d+ \d+)\r\n/))[1]).toBe('30 100');
    c.resize(132, 50);
    expect((await c.run('stty size', /(\d+ \d+)\r\n/))[1]).toBe('50 132');
    c.type('exit 3\r');
    expect(await c.closed).toEqual({ code: 1000, reason: '{"type":"exit","exitCode":3}' });
    expect(c.binary.every(Boolean)).toBe(true); // output goes out as binary frames
    expect(c.text).toContain('logout');
  });

  it('refuses a used, unknown, absent or other VM’s token before upgrading (401)', async () => {
    const a = await launch();
    const b = await launch();
    const tok = await token(a);
    const first = await ConsoleClient.open(consoleUrl(t.url, tok));
    const again = await ConsoleClient.refused(consoleUrl(t.url, tok));
    expect(again).toEqual({ status: 401, body: expect.objectContaining({ code: 'unauthorized' }) });
    first.close();

    const base = t.url.replace('http://', 'ws://');
    expect((await ConsoleClient.refused(`${base}/v1/vms/${a}/console/ws`)).status).toBe(401);
    const bogus = `${base}/v1/vms/${a}/console/ws?session=fvc_${'A'.repeat(32)}`;
    expect((await ConsoleClient.refused(bogus)).status).toBe(401);
    expect((await ConsoleClient.refused(`${base}/v1/vms/${a}/console/ws?session=x`)).status).toBe(
      401,
    );
    // A token works only on its own VM's path, and is used up by the attempt.
    const forA = await token(a);
    const onB = await ConsoleClient.refused(
      consoleUrl(t.url, { ...forA, websocketPath: `/v1/vms/${b}/console/ws` }),
    );
    expect(onB.status).toBe(401);
    expect((await ConsoleClient.refused(consoleUrl(t.url, forA))).status).toBe(401);
    // An API key is no substitute for the token.
    const withKey = await ConsoleClient.refused(`${base}/v1/vms/${a}/console/ws?api_key=${t.key}`);
    expect(withKey.status).toBe(401);
  });

  it('expires unused tokens', async () => {
    const own = await startTestServer({ consoleTokenTtlSec: 1 });
    try {
      const client = new TestClient(own.url, own.key);
      const id = await launch(client);
      const tok = await token(id, client);
      expect(tok).toMatchObject({ expiresInSec: 1 });
      await sleep(1100);
      const res = await ConsoleClient.refused(consoleUrl(own.url, tok));
      expect(res.status).toBe(401);
      const fresh = await ConsoleClient.open(consoleUrl(own.url, await token(id, client)));
      fresh.close();
    } finally {
      await own.cleanup();
    }
  });

  it('answers a plain GET with 400 and does not use the token up', async () => {
    const id = await launch();
    const tok = await token(id);
    const res = await api.get(`${tok.websocketPath}?session=${tok.token}`, { noAuth: true });
    expect(res.status).toBe(400);
    const c = await ConsoleClient.open(consoleUrl(t.url, tok));
    c.close();
  });

  it('types binary frames verbatim, text frames unless they are resize messages', async () => {
    const id = await launch();
    const c = await ConsoleClient.open(consoleUrl(t.url, await token(id)));
    c.resize(90, 20);
    await c.waitFor(/fake\$ $/);
    const resizeLike = JSON.stringify({ type: 'resize', cols: 1, rows: 1 });
    c.send(Buffer.from(`echo ${resizeLike}\r`));
    await c.waitFor(/"rows":1}\r\n/);
    c.type('{"type":"other"}');
    c.type('{"type":"resize","cols":"x"}'); // a control message with bad numbers: ignored
    c.type('\r');
    await c.waitFor(/{"type":"other"}: command not found/);
    const pty = lastPty(id);
    expect(pty.sizes).toEqual([{ rows: 20, cols: 90 }]);
    expect(pty.typed).toBe(`echo ${resizeLike}\r{"type":"other"}\r`);
    c.close();
  });

  it('starts at the URL’s size without waiting, and hangs the shell up when the client leaves', async () => {
    const id = await launch();
    const c = await ConsoleClient.open(consoleUrl(t.url, await token(id), '&rows=40&cols=120'));
    await c.waitFor(/fake\$ $/);
    const pty = lastPty(id);
    expect(pty.sizes).toEqual([{ rows: 40, cols: 120 }]);
    c.close();
    await c.closed;
    await waitUntil(() => pty.done);
    expect(await pty.exited).toMatchObject({ exitCode: 129, signal: 1 });
  });

  it('starts at 24 × 80 when the client says nothing', async () => {
    const id = await launch();
    const c = await ConsoleClient.open(consoleUrl(t.url, await token(id)));
    await c.waitFor(/fake\$ $/);
    expect(lastPty(id).sizes).toEqual([{ rows: 24, cols: 80 }]);
    c.close();
  });

  it('closes with 1011 when the VM goes away, and refuses new sessions on it', async () => {
    const id = await launch();
    const tok2 = await token(id);
    const c = await ConsoleClient.open(consoleUrl(t.url, await token(id)));
    await c.waitFor(/fake\$ $/);
    expect((await api.del(`/v1/vms/${id}`)).status).toBe(200);
    const closed = await c.closed;
    expect(closed.code).toBe(1011);
    expect(closed.reason).toMatch(/^console lost: /);
    const res = await ConsoleClient.refused(consoleUrl(t.url, tok2));
    expect(res.status).toBe(404);
  });

  it('limits console sessions per VM', async () => {
    const id = await launch();
    const open: ConsoleClient[] = [];
    for (let i = 0; i < 16; i++)
      open.push(await ConsoleClient.open(consoleUrl(t.url, await token(id))));
    const res = await ConsoleClient.refused(consoleUrl(t.url, await token(id)));
    expect(res).toMatchObject({ status: 409, body: { code: 'conflict' } });
    for (const c of open) c.close();
    await Promise.all(open.map((c) => c.closed));
    await sleep(20);
    const again = await ConsoleClient.open(consoleUrl(t.url, await token(id)));
    again.close();
  });
});
