/**
 * Environment variables (`envVars`, contract §3.1, §3.6, §4.2.1) with the FakeRuntime:
 * validation (400 in the error shape), storage, GET and list, the merge on restore, the
 * snapshot's copy, and the environment handed to the runtime for exec, streaming exec and the
 * console. The same against a real VM is in env-vars-vm.test.ts.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FakeCall } from '../src/testing/index.js';
import { ConsoleClient, consoleUrl } from './console-helpers.js';
import { TRANSPORTS, TestClient, startTestServer, type TestServer } from './helpers.js';

/** The `env` of the last runtime call of `method` on `vmId`. */
function lastEnv(calls: readonly FakeCall[], method: string, vmId: string): unknown {
  const call = calls.filter((c) => c.method === method && c.args[0] === vmId).at(-1);
  expect(call, `${method} on ${vmId}`).toBeDefined();
  return (call!.args[1] as { env?: unknown }).env;
}

describe.each(TRANSPORTS)('envVars over %s', (transport) => {
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

  it('refuses bad names, values and sizes with a 400 naming the field', async () => {
    const cases: Array<[unknown, string]> = [
      [{ '': 'v' }, 'envVars'],
      [{ '1ABC': 'v' }, 'envVars.1ABC'],
      [{ 'A=B': 'v' }, 'envVars.A=B'],
      [{ 'A\0B': 'v' }, 'envVars.A\0B'],
      [{ 'A-B': 'v' }, 'envVars.A-B'],
      [{ 'A B': 'v' }, 'envVars.A B'],
      [{ A: 'x\0y' }, 'envVars.A'],
      [{ A: 'line\nbreak' }, 'envVars.A'],
      [{ A: 'cr\r' }, 'envVars.A'],
      [{ A: 1 }, 'envVars.A'],
      [{ ['K'.repeat(257)]: 'v' }, `envVars.${'K'.repeat(257)}`],
      [Object.fromEntries(Array.from({ length: 257 }, (_, i) => [`K${i}`, 'v'])), 'envVars'],
      [
        Object.fromEntries(Array.from({ length: 17 }, (_, i) => [`K${i}`, 'v'.repeat(4000)])),
        'envVars',
      ],
      ['A=1', 'envVars'],
    ];
    for (const [envVars, field] of cases) {
      const res = await api.post('/v1/vms', { machineType: 'c1m2', envVars });
      expect(res.status, JSON.stringify(envVars).slice(0, 80)).toBe(400);
      expect(res.body).toMatchObject({ code: 'bad_request', field, error: expect.any(String) });
    }
    expect(t.runtime.calls.filter((c) => c.method === 'launch')).toHaveLength(0);
  });

  it('accepts the limits: 256 names of 256 bytes, 64 KiB of JSON, empty values', async () => {
    const many = Object.fromEntries(
      Array.from({ length: 256 }, (_, i) => [
        `V${i}`.padEnd(i === 0 ? 256 : 200, '_'),
        'x'.repeat(49),
      ]),
    );
    expect(Buffer.byteLength(JSON.stringify(many))).toBeLessThanOrEqual(65536);
    const res = await api.post('/v1/vms', { machineType: 'c1m2', envVars: many });
    expect(res.status).toBe(201);
    expect(res.body.envVars).toEqual(many);
    const odd = { _: '', a_B9: 'tab\there "quoted" $HOME ünï=' };
    const res2 = await api.post('/v1/vms', { machineType: 'c1m2', envVars: odd });
    expect(res2.status).toBe(201);
    expect(res2.body.envVars).toEqual(odd);
    for (const r of [res, res2]) await api.del(`/v1/vms/${r.body.id}`);
  });

  it('stores them and returns them on launch, GET and list ({} when none)', async () => {
    const launched = await api.post('/v1/vms', {
      machineType: 'c1m2',
      name: `env-${transport}`,
      envVars: { FOO: 'bar', EMPTY: '' },
    });
    expect(launched.status).toBe(201);
    expect(launched.body.envVars).toEqual({ FOO: 'bar', EMPTY: '' });
    const got = await api.get(`/v1/vms/${launched.body.id}`);
    expect(got.body.envVars).toEqual({ FOO: 'bar', EMPTY: '' });
    const listed = (await api.get('/v1/vms')).body.find(
      (v: { id: string }) => v.id === launched.body.id,
    );
    expect(listed.envVars).toEqual({ FOO: 'bar', EMPTY: '' });
    const plain = await api.post('/v1/vms', { machineType: 'c1m2', envVars: {} });
    expect(plain.status).toBe(201);
    expect(plain.body.envVars).toEqual({});
    const none = await api.post('/v1/vms', { machineType: 'c1m2' });
    expect((await api.get(`/v1/vms/${none.body.id}`)).body.envVars).toEqual({});
    for (const r of [launched, plain, none]) await api.del(`/v1/vms/${r.body.id}`);
  });

  it('gives every exec and streaming exec the VM’s variables as its environment', async () => {
    const vm = (await api.post('/v1/vms', { machineType: 'c1m2', envVars: { FOO: 'bar' } })).body;
    const res = await api.post(`/v1/vms/${vm.id}/exec`, { command: ['printenv', 'FOO'] });
    expect(res.status).toBe(200);
    expect(lastEnv(t.runtime.calls, 'exec', vm.id)).toEqual({ FOO: 'bar' });
    // The command itself is not rewritten.
    const call = t.runtime.calls.filter((c) => c.method === 'exec').at(-1)!;
    expect((call.args[1] as { argv: string[] }).argv).toEqual(['printenv', 'FOO']);
    const streamed = await api.post(
      `/v1/vms/${vm.id}/exec`,
      { command: 'echo hi' },
      { headers: { accept: 'application/x-ndjson' } },
    );
    expect(streamed.status).toBe(200);
    expect(lastEnv(t.runtime.calls, 'exec', vm.id)).toEqual({ FOO: 'bar' });
    const bare = (await api.post('/v1/vms', { machineType: 'c1m2' })).body;
    await api.post(`/v1/vms/${bare.id}/exec`, { command: ['true'] });
    expect(lastEnv(t.runtime.calls, 'exec', bare.id)).toBeUndefined();
    for (const v of [vm, bare]) await api.del(`/v1/vms/${v.id}`);
  });

  it('gives the console shell the VM’s variables over its own TERM', async () => {
    const vm = (
      await api.post('/v1/vms', { machineType: 'c1m2', envVars: { FOO: 'bar', LANG: 'C' } })
    ).body;
    const tok = (await api.post(`/v1/vms/${vm.id}/console-token`)).body;
    const ws = await ConsoleClient.open(consoleUrl(t.url, tok, '&rows=24&cols=80'));
    try {
      const deadline = Date.now() + 3000;
      while (!t.runtime.calls.some((c) => c.method === 'openPty' && c.args[0] === vm.id)) {
        if (Date.now() > deadline) throw new Error('no pty opened');
        await new Promise((r) => setTimeout(r, 10));
      }
      expect(lastEnv(t.runtime.calls, 'openPty', vm.id)).toEqual({
        TERM: 'xterm-256color',
        FOO: 'bar',
        LANG: 'C',
      });
    } finally {
      ws.close();
    }
    await api.del(`/v1/vms/${vm.id}`);
  });

  it('snapshots capture them; a restore merges its own over the snapshot’s', async () => {
    const vm = (await api.post('/v1/vms', { machineType: 'c1m2', envVars: { A: '1', B: '2' } }))
      .body;
    const snap = await api.post('/v1/snapshots', { vmId: vm.id });
    expect(snap.status).toBe(201);
    expect(snap.body.envVars).toEqual({ A: '1', B: '2' });
    expect((await api.get(`/v1/snapshots/${snap.body.id}`)).body.envVars).toEqual({
      A: '1',
      B: '2',
    });

    const same = await api.post('/v1/vms', { snapshotId: snap.body.id });
    expect(same.status).toBe(201);
    expect(same.body.envVars).toEqual({ A: '1', B: '2' });

    const merged = await api.post('/v1/vms', {
      snapshotId: snap.body.id,
      envVars: { B: 'two', C: '3' },
    });
    expect(merged.status).toBe(201);
    expect(merged.body.envVars).toEqual({ A: '1', B: 'two', C: '3' });
    expect((await api.get(`/v1/vms/${merged.body.id}`)).body.envVars).toEqual({
      A: '1',
      B: 'two',
      C: '3',
    });
    await api.post(`/v1/vms/${merged.body.id}/exec`, { command: ['true'] });
    expect(lastEnv(t.runtime.calls, 'exec', merged.body.id)).toEqual({ A: '1', B: 'two', C: '3' });

    const bad = await api.post('/v1/vms', {
      snapshotId: snap.body.id,
      envVars: { 'no-dash': 'x' },
    });
    expect(bad.status).toBe(400);
    expect(bad.body).toMatchObject({ code: 'bad_request', field: 'envVars.no-dash' });

    // The merged map must fit the limits too.
    const full = Object.fromEntries(Array.from({ length: 200 }, (_, i) => [`F${i}`, 'v']));
    const big = (await api.post('/v1/vms', { machineType: 'c1m2', envVars: full })).body;
    const bigSnap = (await api.post('/v1/snapshots', { vmId: big.id })).body;
    const more = Object.fromEntries(Array.from({ length: 100 }, (_, i) => [`G${i}`, 'v']));
    const over = await api.post('/v1/vms', { snapshotId: bigSnap.id, envVars: more });
    expect(over.status).toBe(400);
    expect(over.body).toMatchObject({ code: 'bad_request', field: 'envVars' });

    for (const v of [vm, same.body, merged.body, big]) await api.del(`/v1/vms/${v.id}`);
    for (const s of [snap.body, bigSnap]) await api.del(`/v1/snapshots/${s.id}`);
  });
});
