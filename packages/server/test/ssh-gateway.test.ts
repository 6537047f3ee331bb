/**
 * The SSH gateway with the FakeRuntime (no VMs): authentication and addressing with Debian's
 * OpenSSH client, exit statuses, stdout/stderr, stdin, refusals, the host key's persistence, and
 * the authenticator's signature check on its own. The real-VM half is ssh-gateway-vm.test.ts.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { utils, type ParsedKey } from 'ssh2';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { resolveServeConfig } from '../src/config.js';
import { SshAuthenticator, vmRefFromUsername } from '../src/ssh/auth.js';
import { HOST_KEY_FILE, loadOrCreateHostKey } from '../src/ssh/host-key.js';
import { FakeRuntime } from '../src/testing/index.js';
import {
  TestClient,
  createOrgWithKey,
  makeDataDir,
  startTestServer,
  type TestServer,
} from './helpers.js';
import { SshScratch, fingerprintOf, ssh } from './ssh-helpers.js';

const MAIN = path.resolve(import.meta.dirname, '..', 'src', 'main.ts');

describe('SSH gateway (FakeRuntime, OpenSSH client)', () => {
  let t: TestServer;
  let api: TestClient;
  let apiB: TestClient;
  let scratch: SshScratch;
  let keyA: { file: string; publicKey: string };
  let keyB: { file: string; publicKey: string };
  let stranger: { file: string; publicKey: string };
  let vmId: string;
  let vmIdB: string;
  const runtime = new FakeRuntime();

  const port = (): number => t.server.ssh!.port;
  const sshAs = (key: string, user: string, command: string[], input = '') =>
    ssh([...scratch.options(port(), key), `${user}@127.0.0.1`, ...command], input);

  beforeAll(async () => {
    scratch = await SshScratch.create();
    t = await startTestServer({ runtime, ssh: { port: 0 } });
    api = new TestClient(t.url, t.key);
    apiB = new TestClient(t.url, await createOrgWithKey(t.server, 'org-b'));
    [keyA, keyB, stranger] = await Promise.all([
      scratch.key('a'),
      scratch.key('b'),
      scratch.key('stranger'),
    ]);
    expect((await api.post('/v1/me/ssh-keys', { publicKey: keyA.publicKey })).status).toBe(200);
    expect((await apiB.post('/v1/me/ssh-keys', { publicKey: keyB.publicKey })).status).toBe(200);
    const res = await api.post('/v1/vms', { machineType: 'c1m2', name: 'box' });
    expect(res.status).toBe(201);
    vmId = res.body.id;
    const resB = await apiB.post('/v1/vms', { machineType: 'c1m2', name: 'box-b' });
    vmIdB = resB.body.id;
  });

  afterAll(async () => {
    await t?.cleanup();
    await scratch?.remove();
  });

  it('runs a command: stdout, stderr apart, and the exit status', async () => {
    const r = await sshAs(keyA.file, vmId, ['echo hi; echo oops >&2; exit 3']);
    expect(r).toEqual({ code: 3, stdout: 'hi\n', stderr: 'oops\n' });
    // As sshd does: the command string goes to the shell (`bash -c`), with the VM's env.
    const call = runtime.calls.filter((c) => c.method === 'openProcess').at(-1)!;
    expect(call.args[0]).toBe(vmId);
    expect((call.args[1] as { argv: string[] }).argv).toEqual([
      '/bin/bash',
      '-c',
      'echo hi; echo oops >&2; exit 3',
    ]);
  });

  it('logs in with RSA (rsa-sha2-512 signatures) and ECDSA keys too', async () => {
    for (const type of ['rsa', 'ecdsa']) {
      const k = await scratch.key(`k-${type}`, type);
      expect((await api.post('/v1/me/ssh-keys', { publicKey: k.publicKey })).status).toBe(200);
      const r = await sshAs(k.file, 'box', ['echo', type]);
      expect(r, type).toEqual({ code: 0, stdout: `${type}\n`, stderr: '' });
    }
  });

  it('forwards stdin until EOF', async () => {
    const r = await sshAs(keyA.file, vmId, ['cat'], 'hi\nthere\n');
    expect(r).toEqual({ code: 0, stdout: 'hi\nthere\n', stderr: '' });
  });

  it('addresses the VM by id, by id without hyphens and by name', async () => {
    for (const user of [
      vmId,
      vmId.replace(/-/g, ''),
      vmId.replace(/-/g, '').toUpperCase(),
      'box',
    ]) {
      const r = await sshAs(keyA.file, user, ['hostname']);
      expect(r.code, `${user}: ${r.stderr}`).toBe(0);
    }
  });

  it('runs many sessions on one multiplexed connection (ControlMaster): slots are given back', async () => {
    const mux = [
      '-o',
      'ControlMaster=auto',
      '-o',
      `ControlPath=${path.join(scratch.dir, 'cm-%C')}`,
      '-o',
      'ControlPersist=30',
    ];
    const target = `${vmId}@127.0.0.1`;
    try {
      for (let i = 0; i < 14; i++) {
        const r = await ssh([...scratch.options(port(), keyA.file), ...mux, target, `echo ${i}`]);
        expect(r, `session ${i}`).toEqual({ code: 0, stdout: `${i}\n`, stderr: '' });
      }
    } finally {
      await ssh([...scratch.options(port(), keyA.file), ...mux, '-O', 'exit', target]);
    }
  });

  it('refuses an unknown key, a password and keyboard-interactive (exit 255)', async () => {
    const r = await sshAs(stranger.file, vmId, ['true']);
    expect(r.code).toBe(255);
    expect(r.stderr).toContain('Permission denied');
    const pw = await ssh([
      ...scratch.options(port(), keyA.file),
      '-o',
      'PreferredAuthentications=password,keyboard-interactive',
      `${vmId}@127.0.0.1`,
      'true',
    ]);
    expect(pw.code).toBe(255);
    expect(pw.stderr).toMatch(/Permission denied \(publickey\)/);
  });

  it("never opens another org's VM, and answers it like an unknown VM", async () => {
    for (const user of [vmIdB, 'box-b', vmIdB.replace(/-/g, '')]) {
      const cross = await sshAs(keyA.file, user, ['true']);
      expect(cross.code).toBe(255);
      expect(cross.stderr).toContain('Permission denied');
    }
    const unknown = await sshAs(keyA.file, '00000000-0000-4000-8000-000000000000', ['true']);
    expect(unknown.code).toBe(255);
    expect(unknown.stderr.replace(/0{8}-.*?@/, '')).toBe(
      (await sshAs(keyA.file, vmIdB, ['true'])).stderr.replace(/[0-9a-f-]{36}@/, ''),
    );
    // Org B's key opens org B's VM and not org A's.
    expect((await sshAs(keyB.file, 'box-b', ['true'])).code).toBe(0);
    expect((await sshAs(keyB.file, vmId, ['true'])).code).toBe(255);
  });

  it('says a paused VM is not running (exit 1), and works again after resume', async () => {
    expect((await api.post(`/v1/vms/${vmId}/pause`)).status).toBe(200);
    try {
      const r = await sshAs(keyA.file, 'box', ['echo hi']);
      expect(r.code).toBe(1);
      expect(r.stdout).toBe('');
      expect(r.stderr).toMatch(/VM box is paused, not running/);
    } finally {
      expect((await api.post(`/v1/vms/${vmId}/resume`)).status).toBe(200);
    }
    expect((await sshAs(keyA.file, 'box', ['echo hi'])).stdout).toBe('hi\n');
  });

  it('stops letting a deleted key in', async () => {
    const extra = await scratch.key('extra');
    const added = await api.post('/v1/me/ssh-keys', { publicKey: extra.publicKey });
    expect((await sshAs(extra.file, vmId, ['true'])).code).toBe(0);
    const del = await api.del(`/v1/me/ssh-keys/${encodeURIComponent(added.body.fingerprint)}`);
    expect(del.status).toBe(200);
    expect((await sshAs(extra.file, vmId, ['true'])).code).toBe(255);
  });

  it('keeps its host key (0600 in the data dir) across a restart', async () => {
    const file = path.join(t.dataDir, HOST_KEY_FILE);
    expect((await fs.stat(file)).mode & 0o777).toBe(0o600);
    await fs.writeFile(`${file}.pub`, `${t.server.ssh!.hostPublicKey}\n`);
    const before = t.server.ssh!.hostKeyFingerprint;
    expect(await fingerprintOf(`${file}.pub`)).toBe(before);
    // The first login wrote known_hosts; a strict login after the restart must still match it.
    await t.server.close();
    t = await startTestServer({ runtime, dataDir: t.dataDir, ssh: { port: 0 } });
    api = new TestClient(t.url, t.key);
    expect(t.server.ssh!.hostKeyFingerprint).toBe(before);
    const r = await ssh([
      ...scratch.options(port(), keyA.file, true),
      '-o',
      'HostKeyAlias=fastvm-test',
      `${vmId}@127.0.0.1`,
      'echo again',
    ]);
    // The alias is new to known_hosts: add it from the key the server reported, then retry.
    expect(r.code).toBe(255);
    await fs.appendFile(scratch.knownHosts, `fastvm-test ${t.server.ssh!.hostPublicKey}\n`);
    const ok = await ssh([
      ...scratch.options(port(), keyA.file, true),
      '-o',
      'HostKeyAlias=fastvm-test',
      `${vmId}@127.0.0.1`,
      'echo again',
    ]);
    expect(ok).toEqual({ code: 0, stdout: 'again\n', stderr: '' });
  });
});

describe('SSH gateway port', () => {
  it('FASTVM_SSH_PORT: default 2222, 0 = any free port, off = no gateway', () => {
    expect(resolveServeConfig({}, {})).toMatchObject({ sshPort: 2222, sshPortSet: false });
    expect(resolveServeConfig({}, { FASTVM_SSH_PORT: '0' })).toMatchObject({
      sshPort: 0,
      sshPortSet: true,
    });
    expect(resolveServeConfig({}, { FASTVM_SSH_PORT: 'off' }).sshPort).toBeUndefined();
    expect(() => resolveServeConfig({}, { FASTVM_SSH_PORT: '70000' })).toThrow(/FASTVM_SSH_PORT/);
  });

  it('a busy port fails the start, unless the gateway is optional (the default port of serve)', async () => {
    const busy = net.createServer();
    await new Promise<void>((r) => busy.listen(0, '127.0.0.1', r));
    const port = (busy.address() as net.AddressInfo).port;
    const dataDir = await makeDataDir();
    try {
      await expect(startTestServer({ dataDir, ssh: { port } })).rejects.toThrow(/EADDRINUSE/);
      const t = await startTestServer({ ssh: { port, optional: true } });
      try {
        expect(t.server.ssh).toBeUndefined();
        expect((await fetch(`${t.url}/healthz`)).status).toBe(200);
      } finally {
        await t.cleanup();
      }
    } finally {
      busy.close();
      await fs.rm(dataDir, { recursive: true, force: true });
    }
  });
});

describe('SSH gateway of `main.ts serve` (a process of its own, plain Node ESM under tsx)', () => {
  it('starts on FASTVM_SSH_PORT, prints its port and host key, and lets a key in', async () => {
    const dataDir = await makeDataDir();
    const scratch = await SshScratch.create();
    const key = 'fvm_ssh_serve_test_key_0123456789abcdef';
    const child = spawn(
      process.execPath,
      ['--import', 'tsx', MAIN, 'serve', '--fake-runtime', '--port', '0', '--log-level', 'warn'],
      {
        env: {
          ...process.env,
          FASTVM_DATA_DIR: dataDir,
          FASTVM_BOOTSTRAP_KEY: key,
          FASTVM_SSH_PORT: '0',
          FASTVM_PROXY_PORT: '0', // the service proxy's default port may be taken on a shared host
        },
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    try {
      let output = '';
      const started = await new Promise<RegExpExecArray>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no start:\n${output}`)), 30_000);
        const onData = (chunk: Buffer): void => {
          output += chunk.toString();
          const m =
            /listening on (http:\S+)[\s\S]*SSH gateway on 127\.0\.0\.1:(\d+) \(host key (SHA256:\S+)\)/.exec(
              output,
            );
          if (m) {
            clearTimeout(timer);
            resolve(m);
          }
        };
        child.stdout.on('data', onData);
        child.stderr.on('data', onData);
        child.once('exit', (code) => reject(new Error(`exited with ${code}:\n${output}`)));
      });
      const [, url, port, fingerprint] = started;
      expect(fingerprint).toBe(
        (await loadOrCreateHostKey(dataDir)).fingerprint, // the file the process wrote
      );
      const api = new TestClient(url!, key);
      const k = await scratch.key('serve');
      expect((await api.post('/v1/me/ssh-keys', { publicKey: k.publicKey })).status).toBe(200);
      expect((await api.post('/v1/vms', { machineType: 'c1m2', name: 'p' })).status).toBe(201);
      const r = await ssh([...scratch.options(Number(port), k.file), 'p@127.0.0.1', 'echo up']);
      expect(r).toEqual({ code: 0, stdout: 'up\n', stderr: '' });
      api.close();
    } finally {
      if (child.exitCode === null && child.signalCode === null) {
        const exit = new Promise((r) => child.once('exit', r));
        child.kill('SIGTERM');
        await exit;
      }
      await scratch.remove();
      await fs.rm(dataDir, { recursive: true, force: true });
    }
  }, 60_000);
});

describe('SshAuthenticator', () => {
  let t: TestServer;
  let scratch: SshScratch;
  let auth: SshAuthenticator;
  let a: ParsedKey;
  let b: ParsedKey;
  let vmId: string;

  const parse = async (file: string): Promise<ParsedKey> => {
    const k = utils.parseKey(await fs.readFile(file));
    if (k instanceof Error) throw k;
    return k;
  };

  beforeAll(async () => {
    scratch = await SshScratch.create();
    t = await startTestServer();
    const api = new TestClient(t.url, t.key);
    const [ka, kb, kr] = await Promise.all([
      scratch.key('a'),
      scratch.key('b'),
      scratch.key('r', 'rsa'),
    ]);
    for (const k of [ka, kr]) {
      expect((await api.post('/v1/me/ssh-keys', { publicKey: k.publicKey })).status).toBe(200);
    }
    [a, b] = await Promise.all([parse(ka.file), parse(kb.file)]);
    vmId = (await api.post('/v1/vms', { machineType: 'c1m2', name: 'box' })).body.id;
    auth = new SshAuthenticator(t.server.store);
  });

  afterAll(async () => {
    await t?.cleanup();
    await scratch?.remove();
  });

  const offer = (signer: ParsedKey | undefined, username = 'box') => {
    const blob = Buffer.from('session id and request');
    return {
      username,
      algo: a.type,
      data: a.getPublicSSH(),
      ...(signer ? { blob, signature: signer.sign(blob) as Buffer } : {}),
    };
  };

  it('answers a key query from the key alone, and logs in only with a valid signature', async () => {
    expect(await auth.check(offer(undefined, 'no-such-vm'))).toMatchObject({ ok: true });
    expect(await auth.check(offer(a))).toMatchObject({
      ok: true,
      login: { vmId, vmRef: 'box', orgId: expect.any(String) },
    });
    expect(await auth.check(offer(b))).toMatchObject({ ok: false, reason: 'bad signature' });
    const forged = { ...offer(a), blob: Buffer.from('another session') };
    expect(await auth.check(forged)).toMatchObject({ ok: false, reason: 'bad signature' });
  });

  it('refuses a key offered under another algorithm, an unknown key and an unknown VM', async () => {
    expect(await auth.check({ ...offer(a), algo: 'ssh-rsa' })).toMatchObject({ ok: false });
    expect(await auth.check({ ...offer(b), data: b.getPublicSSH(), algo: b.type })).toMatchObject({
      ok: false,
      reason: 'unknown key',
    });
    expect(await auth.check(offer(a, 'nope'))).toMatchObject({ ok: false });
  });

  it('maps a hyphen-less hex id to the UUID form, and keeps the name as a fallback', () => {
    expect(vmRefFromUsername('0123456789ABCDEF0123456789abcdef')).toEqual([
      '01234567-89ab-cdef-0123-456789abcdef',
      '0123456789ABCDEF0123456789abcdef',
    ]);
    expect(vmRefFromUsername('web-1')).toEqual(['web-1']);
  });
});
