/**
 * Issue 18 against real QEMU VMs through the API.
 * Part 4, the source is not disturbed: a buffered exec, a streaming exec, a console session and
 * a TCP connection in the guest all run on, unbroken and in order, across a snapshot of their
 * VM and a fork restored from it.
 * Part 5, exec sessions: detached commands, attach from offset 0 and from the middle, the exit
 * status in the list, another org's 404, a disconnect and reattach, a pause in the middle.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ServerHandle } from '../src/index.js';
import { ConsoleClient, consoleUrl } from './console-helpers.js';
import { startVmTestServer, type VmTestServer } from './vm-server.js';
import { TestClient, createOrgWithKey, sleep } from './helpers.js';

const NDJSON = { headers: { accept: 'application/x-ndjson' } };
const COUNT_30 = 'for i in $(seq 1 30); do echo $i; sleep 0.1; done';
const LINES_30 = Array.from({ length: 30 }, (_, i) => `${i + 1}\n`).join('');
const FIVE_THEN_7 = 'for i in 1 2 3 4 5; do echo $i; sleep 0.2; done; exit 7';

interface Ev {
  t: string;
  d?: string;
  c?: number;
}

function parse(text: string): { out: string; err: string; exit: Ev | undefined; last: Ev } {
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
  return {
    out: data('o'),
    err: data('e'),
    exit: events.find((e) => e.t === 'x'),
    last: events.at(-1)!,
  };
}

/** Reads an NDJSON response until `enough(text so far)`, then drops the connection. */
async function readUntil(
  url: string,
  init: RequestInit,
  enough: (text: string) => boolean,
): Promise<{ text: string; headers: Headers }> {
  const abort = new AbortController();
  const res = await fetch(url, { ...init, signal: abort.signal });
  const reader = res.body!.getReader();
  const decoder = new TextDecoder();
  let text = '';
  while (!enough(text)) {
    const { done, value } = await reader.read();
    if (done) break;
    text += decoder.decode(value, { stream: true });
  }
  abort.abort();
  await reader.cancel().catch(() => {});
  return { text, headers: res.headers };
}

describe('branching leaves the source alone; exec sessions (real QEMU VMs)', () => {
  let t: VmTestServer | undefined;
  let server: ServerHandle;
  let api: TestClient;
  let vmId: string;
  const created: { vms: string[]; snaps: string[] } = { vms: [], snaps: [] };

  const snapshotAndFork = async (): Promise<void> => {
    const snap = await api.post('/v1/snapshots', { vmId });
    expect(snap.status).toBe(201);
    created.snaps.push(snap.body.id);
    const fork = await api.post('/v1/vms', { snapshotId: snap.body.id });
    expect(fork.status).toBe(201);
    created.vms.push(fork.body.id);
  };

  beforeAll(async () => {
    t = await startVmTestServer();
    ({ server, api } = t);
    const vm = await api.post('/v1/vms', { machineType: 'c1m2' });
    expect(vm.status).toBe(201);
    vmId = vm.body.id;
  }, 180_000);

  afterAll(async () => {
    for (const id of created.vms) await api?.del(`/v1/vms/${id}`);
    for (const id of created.snaps) await api?.del(`/v1/snapshots/${id}`);
    await t?.close();
  });

  describe('part 4: a snapshot and a fork do not disturb the source', () => {
    it('a buffered (JSON) exec', async () => {
      const run = api.post(`/v1/vms/${vmId}/exec`, { command: COUNT_30 });
      await sleep(1000);
      await snapshotAndFork();
      const res = await run;
      expect(res.status).toBe(200);
      expect(res.body).toMatchObject({ exitCode: 0, stdout: LINES_30, stderr: '' });
    }, 60_000);

    it('a streaming (NDJSON) exec', async () => {
      const run = api.post(`/v1/vms/${vmId}/exec`, { command: COUNT_30 }, NDJSON);
      await sleep(1000);
      await snapshotAndFork();
      const res = await run;
      const { out, exit, last } = parse(res.text);
      expect(out).toBe(LINES_30);
      expect(exit).toEqual(expect.objectContaining({ t: 'x' }));
      expect(exit?.c).toBeUndefined();
      expect(last.t).toBe('x');
    }, 60_000);

    it('a console session, typed into before and after', async () => {
      const tok = (await api.post(`/v1/vms/${vmId}/console-token`)).body;
      const c = await ConsoleClient.open(consoleUrl(server.url, tok));
      try {
        c.resize(100, 30);
        await c.waitFor(/[#$] $/);
        await c.run('echo before-$((40+2))', /before-42/);
        await snapshotAndFork();
        await c.run('echo after-$((40+3))', /after-43/);
      } finally {
        c.close();
      }
    }, 60_000);

    it('a TCP connection in the guest, messages every 0.1 s', async () => {
      // A python3 server and client on the guest's loopback: the client sends 30 numbered
      // lines over one connection, the server echoes them, the client prints the echoes.
      const script = [
        'import socket, threading, time',
        's = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(1)',
        'def serve():',
        '    c, _ = s.accept()',
        '    f = c.makefile("rwb", buffering=0)',
        '    for line in f: f.write(line)',
        'threading.Thread(target=serve, daemon=True).start()',
        'k = socket.create_connection(s.getsockname()); f = k.makefile("rwb", buffering=0)',
        'for i in range(1, 31):',
        '    f.write(b"%d\\n" % i); print(f.readline().decode(), end="", flush=True)',
        '    time.sleep(0.1)',
      ].join('\n');
      const run = api.post(`/v1/vms/${vmId}/exec`, { command: ['python3', '-c', script] }, NDJSON);
      await sleep(1500);
      await snapshotAndFork();
      const { out, err, exit } = parse((await run).text);
      expect(err).toBe('');
      expect(out).toBe(LINES_30);
      expect(exit?.c).toBeUndefined();
    }, 60_000);
  });

  describe('part 5: exec sessions', () => {
    it('detached: attach from 0 and from the middle, list the exit, 404 for others', async () => {
      const started = await api.post(`/v1/vms/${vmId}/exec`, {
        command: FIVE_THEN_7,
        detach: true,
      });
      expect(started.status).toBe(202);
      const { execId } = started.body;
      await sleep(500);
      const all = await api.get(`/v1/vms/${vmId}/execs/${execId}/stream?fromOffset=0`);
      expect(all.headers['x-exec-from-offset']).toBe('0');
      expect(parse(all.text)).toMatchObject({ out: '1\n2\n3\n4\n5\n', exit: { c: 7 } });

      const middle = await api.get(`/v1/vms/${vmId}/execs/${execId}/stream?fromOffset=6`);
      expect(parse(middle.text)).toMatchObject({ out: '4\n5\n', exit: { c: 7 } });

      const listed = (await api.get(`/v1/vms/${vmId}/execs`)).body.find(
        (s: { execId: string }) => s.execId === execId,
      );
      expect(listed).toMatchObject({ status: 'exited', exitCode: 7, stdoutBytes: 10 });

      const other = api.withKey(await createOrgWithKey(server, 'exec-sessions-vm-other'));
      expect((await other.get(`/v1/vms/${vmId}/execs/${execId}`)).status).toBe(404);
      expect((await other.get(`/v1/vms/${vmId}/execs/${execId}/stream`)).status).toBe(404);
      expect((await other.get(`/v1/vms/${vmId}/execs`)).status).toBe(404);
      other.close();
    }, 60_000);

    it('a keepAlive stream survives its client; reattaching gets the rest in order', async () => {
      const first = await readUntil(
        `${server.url}/v1/vms/${vmId}/exec`,
        {
          method: 'POST',
          headers: {
            'x-api-key': server.bootstrapKey,
            'content-type': 'application/json',
            accept: 'application/x-ndjson',
          },
          body: JSON.stringify({ command: COUNT_30, keepAlive: true }),
        },
        (text) => parse(text).out.includes('5\n'),
      );
      const execId = first.headers.get('x-exec-id')!;
      const seen = parse(first.text).out;
      await sleep(500);
      const rest = await api.get(
        `/v1/vms/${vmId}/execs/${execId}/stream?fromOffset=${Buffer.byteLength(seen)}`,
      );
      const { out, exit } = parse(rest.text);
      expect(seen + out).toBe(LINES_30);
      expect(exit).toBeDefined();
      expect(exit?.c).toBeUndefined();
    }, 60_000);

    it('a session of a paused VM freezes with it and resumes with it', async () => {
      const { execId } = (
        await api.post(`/v1/vms/${vmId}/exec`, {
          command: 'for i in $(seq 1 10); do echo $i; sleep 0.2; done',
          detach: true,
        })
      ).body;
      await sleep(700);
      expect((await api.post(`/v1/vms/${vmId}/pause`)).status).toBeLessThan(300);
      const atPause = (await api.get(`/v1/vms/${vmId}/execs/${execId}`)).body;
      expect(atPause.status).toBe('running');
      await sleep(1500);
      const later = (await api.get(`/v1/vms/${vmId}/execs/${execId}`)).body;
      expect(later).toMatchObject({ status: 'running', outputBytes: atPause.outputBytes });
      expect((await api.post(`/v1/vms/${vmId}/resume`)).status).toBeLessThan(300);
      const all = await api.get(`/v1/vms/${vmId}/execs/${execId}/stream`);
      const { out, exit } = parse(all.text);
      expect(out).toBe(Array.from({ length: 10 }, (_, i) => `${i + 1}\n`).join(''));
      expect(exit).toBeDefined();
      expect(exit?.c).toBeUndefined();
    }, 60_000);

    it('a pause longer than the host-side backstop (timeout + 10 s) does not fail a command', async () => {
      const { execId } = (
        await api.post(`/v1/vms/${vmId}/exec`, {
          command: 'sleep 0.6; echo done',
          timeoutSec: 1,
          detach: true,
        })
      ).body;
      await sleep(150);
      expect((await api.post(`/v1/vms/${vmId}/pause`)).status).toBeLessThan(300);
      await sleep(11_500);
      expect((await api.get(`/v1/vms/${vmId}/execs/${execId}`)).body.status).toBe('running');
      expect((await api.post(`/v1/vms/${vmId}/resume`)).status).toBeLessThan(300);
      const { out, exit } = parse((await api.get(`/v1/vms/${vmId}/execs/${execId}/stream`)).text);
      expect(out).toBe('done\n');
      expect(exit).toBeDefined();
      expect(exit?.c).toBeUndefined();
    }, 60_000);
  });
});
