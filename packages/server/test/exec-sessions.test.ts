/**
 * Exec sessions (issue 18, part 5) over HTTP with the FakeRuntime: detached execs, attach from a
 * byte offset, listing, kill, keepAlive across a client disconnect, org scoping; and the session
 * store's buffer and count limits directly.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ExecSession, ExecSessions } from '../src/services/exec-sessions.js';
import type { VmRecord } from '../src/domain/index.js';
import { VmEvents } from '../src/services/vm-events.js';
import type { PreparedExec } from '../src/services/vm-service.js';
import {
  TRANSPORTS,
  TestClient,
  createOrgWithKey,
  sleep,
  startTestServer,
  type TestServer,
} from './helpers.js';

const NDJSON = { headers: { accept: 'application/x-ndjson' } };
const FIVE =
  'echo 1; sleep 0.2; echo 2; sleep 0.2; echo 3; sleep 0.2; echo 4; sleep 0.2; echo 5; exit 7';

interface Ev {
  t: string;
  d?: string;
  c?: number;
  to?: boolean;
  ms?: number;
}

function parse(text: string): { out: string; err: string; events: Ev[]; exit: Ev | undefined } {
  const events = text
    .trim()
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as Ev);
  const data = (t: string) =>
    events
      .filter((e) => e.t === t)
      .map((e) => Buffer.from(e.d ?? '', 'base64').toString())
      .join('');
  return { out: data('o'), err: data('e'), events, exit: events.find((e) => e.t === 'x') };
}

/** Reads an NDJSON response over HTTP/1.1 until `enough(text so far)`, then drops the connection. */
async function readUntil(
  url: string,
  init: RequestInit,
  enough: (text: string) => boolean,
): Promise<{ text: string; headers: Headers }> {
  const abort = new AbortController();
  const res = await fetch(url, { ...init, signal: abort.signal });
  const reader = res.body!.getReader();
  let text = '';
  const decoder = new TextDecoder();
  while (!enough(text)) {
    const { done, value } = await reader.read();
    if (done) break;
    text += decoder.decode(value, { stream: true });
  }
  abort.abort();
  await reader.cancel().catch(() => {});
  return { text, headers: res.headers };
}

describe.each(TRANSPORTS)('exec sessions over %s', (transport) => {
  let t: TestServer;
  let api: TestClient;
  let vmId: string;

  beforeAll(async () => {
    t = await startTestServer();
    api = new TestClient(t.url, t.key, transport);
    vmId = (await api.post('/v1/vms', { machineType: 'c1m2' })).body.id;
  });

  afterAll(async () => {
    api.close();
    await t.cleanup();
  });

  it('detaches, then attaches from offset 0 and from the middle; lists the exit', async () => {
    const started = await api.post(`/v1/vms/${vmId}/exec`, { command: FIVE, detach: true });
    expect(started.status).toBe(202);
    const { execId } = started.body;
    expect(execId).toMatch(/^[0-9a-f-]{36}$/);
    expect(started.body).toMatchObject({
      vmId,
      status: 'running',
      exitCode: null,
      keepAlive: true,
    });
    expect(started.body.command).toEqual(['sh', '-c', FIVE]);

    await sleep(500);
    const all = await api.get(`/v1/vms/${vmId}/execs/${execId}/stream?fromOffset=0`);
    expect(all.status).toBe(200);
    expect(all.headers['content-type']).toMatch(/^application\/x-ndjson/);
    expect(all.headers['x-exec-id']).toBe(execId);
    expect(all.headers['x-exec-from-offset']).toBe('0');
    const whole = parse(all.text);
    expect(whole.out).toBe('1\n2\n3\n4\n5\n');
    expect(whole.exit).toMatchObject({ t: 'x', c: 7 });
    expect(whole.events.at(-1)?.t).toBe('x');

    const middle = await api.get(`/v1/vms/${vmId}/execs/${execId}/stream?fromOffset=4`);
    expect(middle.headers['x-exec-from-offset']).toBe('4');
    expect(parse(middle.text)).toMatchObject({ out: '3\n4\n5\n', exit: { c: 7 } });
    // Past the end: nothing but the exit.
    const past = await api.get(`/v1/vms/${vmId}/execs/${execId}/stream?fromOffset=99`);
    expect(past.headers['x-exec-from-offset']).toBe('10');
    expect(parse(past.text).events).toEqual([expect.objectContaining({ t: 'x', c: 7 })]);

    const list = await api.get(`/v1/vms/${vmId}/execs`);
    expect(list.status).toBe(200);
    const item = list.body.find((s: { execId: string }) => s.execId === execId);
    expect(item).toMatchObject({
      status: 'exited',
      exitCode: 7,
      timedOut: false,
      stdoutBytes: 10,
      stderrBytes: 0,
      outputBytes: 10,
      truncatedBefore: 0,
      error: null,
    });
    expect(Date.parse(item.endedAt)).toBeGreaterThanOrEqual(Date.parse(item.startedAt));
    expect(Date.parse(item.expiresAt) - Date.parse(item.endedAt)).toBe(10 * 60 * 1000);
    expect((await api.get(`/v1/vms/${vmId}/execs/${execId}`)).body).toEqual(item);
  });

  it('gives a streaming exec an id header and keeps its events as they were', async () => {
    const res = await api.post(
      `/v1/vms/${vmId}/exec`,
      { command: 'echo out; echo err >&2; exit 3' },
      NDJSON,
    );
    expect(res.status).toBe(200);
    const execId = res.headers['x-exec-id'];
    expect(execId).toMatch(/^[0-9a-f-]{36}$/);
    const { out, err, events } = parse(res.text);
    expect(out).toBe('out\n');
    expect(err).toBe('err\n');
    // Only the contract's event types, the exit last.
    expect(new Set(events.map((e) => e.t))).toEqual(new Set(['o', 'e', 'x']));
    expect(events.at(-1)).toMatchObject({ t: 'x', c: 3 });
    const listed = (await api.get(`/v1/vms/${vmId}/execs/${execId}`)).body;
    expect(listed).toMatchObject({ status: 'exited', exitCode: 3, keepAlive: false });
    expect(listed.stdoutBytes + listed.stderrBytes).toBe(8);
    // A plain stream's output is not kept after its end: attaching gets the exit only.
    expect(listed.truncatedBefore).toBe(8);
    const again = await api.get(`/v1/vms/${vmId}/execs/${execId}/stream`);
    expect(again.headers['x-exec-from-offset']).toBe('8');
    expect(parse(again.text).events).toEqual([expect.objectContaining({ t: 'x', c: 3 })]);
  });

  it('streams every byte of a fast, large output; attach later starts at what is kept', async () => {
    const res = await api.post(
      `/v1/vms/${vmId}/exec`,
      { command: 'head -c 3000000 /dev/zero', keepAlive: true },
      NDJSON,
    );
    expect(Buffer.byteLength(parse(res.text).out)).toBe(3_000_000);
    const execId = res.headers['x-exec-id'];
    const kept = 3_000_000 - 1024 * 1024;
    expect((await api.get(`/v1/vms/${vmId}/execs/${execId}`)).body).toMatchObject({
      outputBytes: 3_000_000,
      truncatedBefore: kept,
    });
    const later = await api.get(`/v1/vms/${vmId}/execs/${execId}/stream?fromOffset=10`);
    expect(later.headers['x-exec-from-offset']).toBe(String(kept));
    expect(later.headers['x-exec-truncated-before']).toBe(String(kept));
    expect(Buffer.byteLength(parse(later.text).out)).toBe(1024 * 1024);
  });

  it('kills a session on request', async () => {
    const { execId } = (
      await api.post(`/v1/vms/${vmId}/exec`, { command: ['sleep', '30'], detach: true })
    ).body;
    const killed = await api.del(`/v1/vms/${vmId}/execs/${execId}`);
    expect(killed.status).toBe(200);
    expect(killed.body).toMatchObject({ status: 'killed', exitCode: null });
    expect(killed.body.error).toMatch(/killed/);
  });

  it("answers 404 for unknown ids and for another org's sessions", async () => {
    const { execId } = (await api.post(`/v1/vms/${vmId}/exec`, { command: ['true'], detach: true }))
      .body;
    const unknown = await api.get(`/v1/vms/${vmId}/execs/00000000-0000-4000-8000-000000000000`);
    expect(unknown.status).toBe(404);
    expect(unknown.body.code).toBe('not_found');

    const other = api.withKey(await createOrgWithKey(t.server, `execs-other-${transport}`));
    for (const path of [
      `/v1/vms/${vmId}/execs`,
      `/v1/vms/${vmId}/execs/${execId}`,
      `/v1/vms/${vmId}/execs/${execId}/stream`,
    ]) {
      expect((await other.get(path)).status, path).toBe(404);
    }
    expect((await other.del(`/v1/vms/${vmId}/execs/${execId}`)).status).toBe(404);
    // Its own VM, our exec id: still 404.
    const ownVm = (await other.post('/v1/vms', { machineType: 'c1m2' })).body.id;
    expect((await other.get(`/v1/vms/${ownVm}/execs/${execId}`)).status).toBe(404);
    expect((await other.get(`/v1/vms/${ownVm}/execs`)).body).toEqual([]);
    other.close();
  });

  it('validates fromOffset', async () => {
    const { execId } = (await api.post(`/v1/vms/${vmId}/exec`, { command: ['true'], detach: true }))
      .body;
    for (const bad of ['-1', 'x', '1.5']) {
      const res = await api.get(`/v1/vms/${vmId}/execs/${execId}/stream?fromOffset=${bad}`);
      expect(res.status, bad).toBe(400);
    }
  });
});

describe('exec sessions across a client disconnect (HTTP/1.1)', () => {
  let t: TestServer;
  let api: TestClient;
  let vmId: string;

  beforeAll(async () => {
    t = await startTestServer();
    api = new TestClient(t.url, t.key, 'h1');
    vmId = (await api.post('/v1/vms', { machineType: 'c1m2' })).body.id;
  });

  afterAll(async () => {
    await t.cleanup();
  });

  const post = (body: unknown): RequestInit => ({
    method: 'POST',
    headers: {
      'x-api-key': t.key,
      'content-type': 'application/json',
      accept: 'application/x-ndjson',
    },
    body: JSON.stringify(body),
  });

  it('keeps a keepAlive stream running after its client leaves; reattach gets the rest', async () => {
    const first = await readUntil(
      `${t.url}/v1/vms/${vmId}/exec`,
      post({ command: FIVE, keepAlive: true }),
      (text) => parse(text).out.includes('2\n'),
    );
    const execId = first.headers.get('x-exec-id')!;
    const seen = Buffer.byteLength(parse(first.text).out);
    await sleep(100);
    expect((await api.get(`/v1/vms/${vmId}/execs/${execId}`)).body.status).toBe('running');

    const rest = await api.get(`/v1/vms/${vmId}/execs/${execId}/stream?fromOffset=${seen}`);
    const { out, exit } = parse(rest.text);
    expect(parse(first.text).out + out).toBe('1\n2\n3\n4\n5\n');
    expect(exit).toMatchObject({ c: 7 });
  });

  it('leaving an attached stream does not kill the command', async () => {
    const { execId } = (await api.post(`/v1/vms/${vmId}/exec`, { command: FIVE, detach: true }))
      .body;
    await readUntil(
      `${t.url}/v1/vms/${vmId}/execs/${execId}/stream`,
      { headers: { 'x-api-key': t.key } },
      (text) => parse(text).out.includes('1\n'),
    );
    await sleep(1200);
    expect((await api.get(`/v1/vms/${vmId}/execs/${execId}`)).body).toMatchObject({
      status: 'exited',
      exitCode: 7,
    });
  });

  it('kills a plain streaming exec when its client leaves (as before)', async () => {
    const first = await readUntil(`${t.url}/v1/vms/${vmId}/exec`, post({ command: FIVE }), (text) =>
      parse(text).out.includes('1\n'),
    );
    const execId = first.headers.get('x-exec-id')!;
    await sleep(200);
    const s = (await api.get(`/v1/vms/${vmId}/execs/${execId}`)).body;
    expect(s.status).toBe('killed');
    expect(s.error).toMatch(/client disconnected/);
  });
});

describe('the session store', () => {
  const vm = { id: 'vm-1', orgId: 'org-1' };

  it('keeps the last bufferBytes and reports what was dropped', () => {
    const s = new ExecSession(vm, ['x'], true, 8);
    s.push('stdout', Buffer.from('abcde'));
    s.push('stderr', Buffer.from('fgh'));
    expect(s.truncatedBefore).toBe(0);
    s.push('stdout', Buffer.from('ijk'));
    expect(s.outputBytes).toBe(11);
    expect(s.truncatedBefore).toBe(3);
    expect([s.stdoutBytes, s.stderrBytes]).toEqual([8, 3]);
    const got: string[] = [];
    const { from } = s.follow(0, (e) => {
      if (e.type !== 'exit' && e.type !== 'error') got.push(`${e.type}:${e.offset}:${e.data}`);
    });
    expect(from).toBe(3);
    expect(got).toEqual(['stdout:3:de', 'stderr:5:fgh', 'stdout:8:ijk']);
    got.length = 0;
    s.follow(6, (e) => {
      if (e.type === 'stdout' || e.type === 'stderr') got.push(`${e.offset}:${e.data}`);
    });
    expect(got).toEqual(['6:gh', '8:ijk']);
  });

  it('bounds sessions per VM: an ended one makes room, running ones refuse (429)', async () => {
    const pending: Array<() => void> = [];
    const runner = {
      runExec: () =>
        new Promise<never>((resolve) => pending.push(() => resolve(exitResult as never))),
    };
    const exitResult = {
      exitCode: 0,
      stdout: Buffer.alloc(0),
      stderr: Buffer.alloc(0),
      timedOut: false,
      durationMs: 1,
      stdoutTruncated: false,
      stderrTruncated: false,
    };
    const store = new ExecSessions(runner, { limits: { maxPerVm: 2, retainMs: 50 } });
    const prepared = { vm, argv: ['true'], env: {}, timeoutMs: 1000 } as unknown as PreparedExec;
    const a = store.start(prepared, { keepAlive: true });
    store.start(prepared, { keepAlive: true });
    expect(() => store.start(prepared, { keepAlive: true })).toThrow(
      expect.objectContaining({ code: 'quota_exceeded', dimension: 'execSessions' }),
    );
    pending[0]!();
    await sleep(0);
    expect(a.status).toBe('exited');
    const c = store.start(prepared, { keepAlive: true });
    expect(store.list(vm).map((s) => s.id)).not.toContain(a.id);
    expect(store.list(vm)).toContain(c);
    // Ended sessions are forgotten after retainMs.
    pending[1]!();
    pending[2]!();
    await sleep(80);
    expect(store.list(vm)).toEqual([]);
    store.close();
  });

  it("forgets a deleted VM's sessions and kills the running ones", () => {
    const events = new VmEvents();
    let signal: AbortSignal | undefined;
    const runner = {
      runExec: (_p: PreparedExec, streams: { signal?: AbortSignal }) => {
        signal = streams.signal;
        return new Promise<never>(() => {});
      },
    };
    const store = new ExecSessions(runner, { events });
    const prepared = {
      vm,
      argv: ['sleep', '9'],
      env: {},
      timeoutMs: 1000,
    } as unknown as PreparedExec;
    store.start(prepared, { keepAlive: true });
    events.changed({ ...vm, status: 'running' } as unknown as VmRecord);
    expect(store.list(vm)).toHaveLength(1);
    events.changed({ ...vm, status: 'deleted' } as unknown as VmRecord);
    expect(store.list(vm)).toEqual([]);
    expect(signal?.aborted).toBe(true);
    store.close();
  });
});
