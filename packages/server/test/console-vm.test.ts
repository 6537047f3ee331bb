/**
 * The console against a real QEMU VM: token → WebSocket → `/bin/bash -l` on a pty from the
 * guest agent. Input is sent as text frames and the size as resize messages, exactly as the
 * official Python CLI does (contract §5).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ServerHandle } from '../src/index.js';
import { ConsoleClient, consoleUrl } from './console-helpers.js';
import { startVmTestServer, type VmTestServer } from './vm-server.js';
import { TestClient, createOrgWithKey, sleep } from './helpers.js';

/** A shell prompt at the end of the output (root's `#`). */
const PROMPT = /[#$] $/;

describe('console (real QEMU VM)', () => {
  let t: VmTestServer | undefined;
  let server: ServerHandle;
  let api: TestClient;
  let vmId: string;

  async function token(client = api): Promise<{ token: string; websocketPath: string }> {
    const res = await client.post(`/v1/vms/${vmId}/console-token`);
    expect(res.status).toBe(200);
    return res.body;
  }

  /** Counts login shells in the guest (bash processes that are not this exec's). */
  async function guestShells(): Promise<number> {
    const res = await api.post(`/v1/vms/${vmId}/exec`, {
      command: ['sh', '-c', 'ps -eo comm= | grep -cx bash || true'],
    });
    return Number(res.body.stdout.trim());
  }

  beforeAll(async () => {
    t = await startVmTestServer();
    ({ server, api } = t);
    const res = await api.post('/v1/vms', { machineType: 'c1m2', name: 'console-vm' });
    expect(res.status).toBe(201);
    vmId = res.body.id;
  }, 180_000);

  afterAll(async () => {
    await t?.close();
  });

  it('runs tty, stty size after a resize, and exit 3 (status in the close frame)', async () => {
    const c = await ConsoleClient.open(consoleUrl(server.url, await token()));
    c.resize(100, 30);
    await c.waitFor(PROMPT);
    // "@@$((40+2))" is typed but "@@42" is only printed: it marks the end of the output.
    const tty = await c.run('tty; echo "@@$((40+2))"', /(\/dev\/pts\/\d+)\r\n@@42\r\n/);
    expect(tty[1]).toMatch(/^\/dev\/pts\/\d+$/);
    expect((await c.run('stty size; echo "@@$((40+2))"', /(\d+ \d+)\r\n@@42/))[1]).toBe('30 100');
    c.resize(132, 50);
    expect((await c.run('stty size; echo "@@$((40+2))"', /(\d+ \d+)\r\n@@42/))[1]).toBe('50 132');
    // A login shell (bash -l: $0 is the path, the profile ran) as root, with TERM set.
    const env = await c.run(
      'echo "$TERM $0 $(id -un) $(shopt -q login_shell && echo login)"',
      /(xterm-256color \S+ \S+ \S+)\r\n/,
    );
    expect(env[1]).toBe('xterm-256color /bin/bash root login');
    c.type('exit 3\r');
    expect(await c.closed).toEqual({ code: 1000, reason: '{"type":"exit","exitCode":3}' });
  });

  it('echoes every keystroke (latency printed, not asserted: speed lives in the bench)', async () => {
    const c = await ConsoleClient.open(consoleUrl(server.url, await token(), '&rows=24&cols=80'));
    await c.waitFor(PROMPT);
    c.type('cat\r');
    await c.waitFor(/cat\r\n/);
    const samples: number[] = [];
    for (let i = 0; i < 40; i++) {
      const from = c.text.length;
      const t0 = performance.now();
      c.type('k');
      await c.waitFor(/k/, from);
      samples.push(performance.now() - t0);
    }
    samples.sort((a, b) => a - b);
    console.log(
      `console keystroke echo (WebSocket → server → agent → guest pty and back): ` +
        `p50 ${samples[20]!.toFixed(2)} ms, p90 ${samples[36]!.toFixed(2)} ms, max ${samples[39]!.toFixed(2)} ms`,
    );
    // ^C interrupts cat (and flushes typed-ahead input), then the shell exits.
    const from = c.text.length;
    c.type('\x03');
    await c.waitFor(PROMPT, from);
    c.type('exit 0\r');
    expect(await c.closed).toEqual({ code: 1000, reason: '{"type":"exit","exitCode":0}' });
  });

  it('hangs the shell up when the client goes away', async () => {
    const before = await guestShells();
    const c = await ConsoleClient.open(consoleUrl(server.url, await token()));
    await c.waitFor(PROMPT);
    // A foreground job in the shell, too: the hangup reaches it through the shell.
    c.type('sleep 1000\r');
    await c.waitFor(/sleep 1000\r\n/);
    expect(await guestShells()).toBe(before + 1);
    c.ws.terminate(); // no close frame: as if the network went away
    const deadline = Date.now() + 5000;
    while ((await guestShells()) !== before && Date.now() < deadline) await sleep(100);
    expect(await guestShells()).toBe(before);
    const sleeps = await api.post(`/v1/vms/${vmId}/exec`, {
      command: ['sh', '-c', 'pgrep -x sleep || echo none'],
    });
    expect(sleeps.body.stdout.trim()).toBe('none');
  });

  it('tokens: single use, absent or wrong refused, other orgs get 404', async () => {
    const tok = await token();
    const c = await ConsoleClient.open(consoleUrl(server.url, tok));
    expect((await ConsoleClient.refused(consoleUrl(server.url, tok))).status).toBe(401);
    c.close();
    const base = server.url.replace('http://', 'ws://');
    expect((await ConsoleClient.refused(`${base}/v1/vms/${vmId}/console/ws`)).status).toBe(401);
    expect(
      (await ConsoleClient.refused(`${base}/v1/vms/${vmId}/console/ws?session=fvc_nope`)).status,
    ).toBe(401);
    const other = new TestClient(server.url, await createOrgWithKey(server, 'console-vm-other'));
    const res = await other.post(`/v1/vms/${vmId}/console-token`);
    expect(res.status).toBe(404);
  });
});
