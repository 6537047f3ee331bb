/**
 * Environment variables against real QEMU VMs: a VM launched with `envVars` sees them in `exec`,
 * streaming exec and the console (the guest agent's process environment, the command is not
 * rewritten), and a restored fork sees the snapshot's merged with its own.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ServerHandle } from '../src/index.js';
import { ConsoleClient, consoleUrl } from './console-helpers.js';
import type { TestClient } from './helpers.js';
import { startVmTestServer, type VmTestServer } from './vm-server.js';

describe('envVars (real QEMU VMs)', () => {
  let vms: VmTestServer | undefined;
  let server: ServerHandle;
  let api: TestClient;

  beforeAll(async () => {
    vms = await startVmTestServer();
    ({ server, api } = vms);
  }, 180_000);

  afterAll(async () => {
    await vms?.close();
  });

  it('exec, streaming exec, the console and a restored fork see them', async () => {
    const envVars = { GREETING: 'hello world', QUOTED: `it's "$HOME" ; x`, EMPTY: '' };
    const launched = await api.post('/v1/vms', { machineType: 'c1m2', envVars });
    expect(launched.status).toBe(201);
    expect(launched.body.envVars).toEqual(envVars);
    const id = launched.body.id as string;

    const run = await api.post(`/v1/vms/${id}/exec`, {
      command: ['printenv', 'GREETING', 'QUOTED', 'EMPTY'],
    });
    expect(run.body).toMatchObject({ exitCode: 0, stdout: `hello world\nit's "$HOME" ; x\n\n` });
    // The agent's defaults stay underneath.
    const path = await api.post(`/v1/vms/${id}/exec`, { command: 'printenv PATH HOME' });
    expect(path.body.stdout).toMatch(/\/usr\/bin.*\n\/root\n$/);

    const streamed = await api.post(
      `/v1/vms/${id}/exec`,
      { command: 'printenv GREETING' },
      { headers: { accept: 'application/x-ndjson' } },
    );
    const events = streamed.text
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { t: string; d?: string; c?: number });
    const out = events
      .filter((e) => e.t === 'o')
      .map((e) => Buffer.from(e.d!, 'base64').toString())
      .join('');
    expect(out).toBe('hello world\n');
    expect(events.at(-1)?.t).toBe('x');
    expect(events.at(-1)?.c ?? 0).toBe(0); // the exit code is omitted when 0

    const tok = (await api.post(`/v1/vms/${id}/console-token`)).body;
    const c = await ConsoleClient.open(consoleUrl(server.url, tok));
    try {
      c.resize(120, 40);
      await c.waitFor(/[#$] $/);
      const seen = await c.run('echo "[$GREETING]@@$((40+2))"', /\[(.*)\]@@42/);
      expect(seen[1]).toBe('hello world');
    } finally {
      c.close();
    }

    const snap = await api.post('/v1/snapshots', { vmId: id });
    expect(snap.status).toBe(201);
    expect(snap.body.envVars).toEqual(envVars);
    const fork = await api.post('/v1/vms', {
      snapshotId: snap.body.id,
      envVars: { GREETING: 'hi fork', EXTRA: '1' },
    });
    expect(fork.status).toBe(201);
    expect(fork.body.envVars).toEqual({ ...envVars, GREETING: 'hi fork', EXTRA: '1' });
    const forkRun = await api.post(`/v1/vms/${fork.body.id}/exec`, {
      command: ['printenv', 'GREETING', 'EXTRA', 'QUOTED'],
    });
    expect(forkRun.body).toMatchObject({ exitCode: 0, stdout: `hi fork\n1\nit's "$HOME" ; x\n` });

    await api.del(`/v1/vms/${fork.body.id}`);
    await api.del(`/v1/vms/${id}`);
    await api.del(`/v1/snapshots/${snap.body.id}`);
  }, 180_000);
});
