/**
 * The SSH gateway against a real QEMU VM, with Debian's OpenSSH client: commands with exit
 * status, stdout/stderr and stdin (4 MiB through the agent's 1 MiB input queue), the VM's
 * envVars and `SetEnv`, an interactive shell and a resize driven through tmux, addressing by
 * name/id, wrong and cross-org keys, sftp without an sftp-server in the guest, and the host key
 * across a server restart (the VM is adopted and answers again). One VM.
 */
import { execFile, spawn } from 'node:child_process';
import { randomBytes, createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { QemuRuntime } from '@fastvm/runtime';
import { disposeRuntime, testRuntime } from '../../runtime/test/helpers.js';
import { startServer, type ServerHandle } from '../src/index.js';
import { TestClient, createOrgWithKey, makeDataDir, sleep } from './helpers.js';
import { SshScratch, ssh } from './ssh-helpers.js';

const run = promisify(execFile);

describe('SSH gateway (real QEMU VM, OpenSSH client)', () => {
  let runtime: QemuRuntime;
  let server: ServerHandle;
  let dataDir: string;
  let api: TestClient;
  let scratch: SshScratch;
  let keyA: { file: string; publicKey: string };
  let keyB: { file: string; publicKey: string };
  let stranger: { file: string; publicKey: string };
  let vmId: string;

  const start = (): Promise<ServerHandle> =>
    startServer({
      port: 0,
      dataDir,
      runtime,
      logLevel: process.env.FASTVM_TEST_LOG_LEVEL ?? 'silent',
      launchWaitMs: 60_000,
      ssh: { port: 0 },
    });
  const login = (key: string, user: string, strict = false): string[] => [
    ...scratch.options(server.ssh!.port, key, strict),
    `${user}@127.0.0.1`,
  ];
  // A tmux server of our own, its socket in the scratch dir (removed with it).
  const tmux = (...args: string[]) =>
    run('tmux', ['-S', path.join(scratch.dir, 'tmux.sock'), ...args]);

  beforeAll(async () => {
    scratch = await SshScratch.create();
    runtime = await testRuntime();
    dataDir = await makeDataDir();
    server = await start();
    api = new TestClient(server.url, server.bootstrapKey);
    const apiB = new TestClient(server.url, await createOrgWithKey(server, 'org-b'));
    [keyA, keyB, stranger] = await Promise.all([
      scratch.key('a'),
      scratch.key('b'),
      scratch.key('stranger'),
    ]);
    expect((await api.post('/v1/me/ssh-keys', { publicKey: keyA.publicKey })).status).toBe(200);
    expect((await apiB.post('/v1/me/ssh-keys', { publicKey: keyB.publicKey })).status).toBe(200);
    apiB.close();
    const res = await api.post('/v1/vms', {
      machineType: 'c1m2',
      name: 'ssh-vm',
      envVars: { GREETING: 'hello from envVars' },
    });
    expect(res.status).toBe(201);
    vmId = res.body.id;
  }, 180_000);

  afterAll(async () => {
    await tmux('kill-server').catch(() => {});
    api?.close();
    await server?.close();
    await disposeRuntime(runtime);
    if (dataDir) await fs.rm(dataDir, { recursive: true, force: true });
    await scratch?.remove();
  });

  it('runs a command: stdout, stderr apart, exit status 3', async () => {
    const r = await ssh([...login(keyA.file, vmId), 'echo hi; echo oops >&2; exit 3']);
    expect(r).toEqual({ code: 3, stdout: 'hi\n', stderr: 'oops\n' });
  });

  it('forwards stdin with EOF, also 4 MiB (more than the agent queues at once)', async () => {
    expect(await ssh([...login(keyA.file, 'ssh-vm'), 'cat'], 'hi\n')).toEqual({
      code: 0,
      stdout: 'hi\n',
      stderr: '',
    });
    const big = randomBytes(4 * 1024 * 1024).toString('base64'); // ~5.6 MB of text
    const want = createHash('sha256').update(big).digest('hex');
    const r = await ssh([...login(keyA.file, 'ssh-vm'), 'sha256sum'], big, 120_000);
    expect(r).toEqual({ code: 0, stdout: `${want}  -\n`, stderr: '' });
  }, 150_000);

  it("gives commands the VM's envVars and the client's SetEnv", async () => {
    const r = await ssh([
      ...scratch.options(server.ssh!.port, keyA.file),
      '-o',
      'SetEnv=EXTRA=from-client',
      `${vmId}@127.0.0.1`,
      'echo "$GREETING/$EXTRA"',
    ]);
    expect(r).toEqual({ code: 0, stdout: 'hello from envVars/from-client\n', stderr: '' });
  });

  it('finds the VM by name, id and hex id; refuses a wrong key and a key of another org', async () => {
    const want = `vm-${vmId.slice(0, 8)}\n`;
    for (const user of ['ssh-vm', vmId, vmId.replace(/-/g, '')]) {
      const r = await ssh([...login(keyA.file, user), 'hostname']);
      expect(r, user).toMatchObject({ code: 0 });
      expect(r.stdout === want || r.stdout === 'ssh-vm\n', r.stdout).toBe(true);
    }
    for (const key of [stranger.file, keyB.file]) {
      const r = await ssh([...login(key, vmId), 'echo no']);
      expect(r.code).toBe(255);
      expect(r.stdout).toBe('');
      expect(r.stderr).toContain('Permission denied');
    }
  });

  it('hangs the command up when the client goes away', async () => {
    const child = spawn('ssh', [...login(keyA.file, vmId), 'sleep 313'], { stdio: 'ignore' });
    const guestSleeps = async (): Promise<number> => {
      const res = await api.post(`/v1/vms/${vmId}/exec`, {
        command: ['sh', '-c', 'pgrep -fc "^sleep 313" || true'],
      });
      return Number(res.body.stdout.trim());
    };
    const until = Date.now() + 20_000;
    while ((await guestSleeps()) === 0 && Date.now() < until) await sleep(100);
    expect(await guestSleeps()).toBe(1);
    child.kill('SIGKILL');
    const gone = Date.now() + 20_000;
    while ((await guestSleeps()) !== 0 && Date.now() < gone) await sleep(200);
    expect(await guestSleeps()).toBe(0);
  }, 60_000);

  it('says clearly that sftp and scp need an sftp-server (or scp) in the guest', async () => {
    const r = await ssh([...login(keyA.file, vmId), '-s', 'sftp']);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('/usr/lib/openssh/sftp-server');
    // scp (SFTP protocol by default, and the legacy protocol with -O) through the OpenSSH client.
    const file = path.join(scratch.dir, 'payload');
    await fs.writeFile(file, 'data\n');
    const opts = scratch.options(server.ssh!.port, keyA.file).map((a) => (a === '-p' ? '-P' : a));
    const scp = await run('scp', [...opts, file, `${vmId}@127.0.0.1:/tmp/payload`]).catch(
      (e: { code: number; stderr: string }) => e,
    );
    expect(scp.stderr).toContain('/usr/lib/openssh/sftp-server');
    const legacy = await run('scp', ['-O', ...opts, file, `${vmId}@127.0.0.1:/tmp/payload`]).catch(
      (e: { code: number; stderr: string }) => e,
    );
    expect(legacy.stderr).toMatch(/scp: (command )?not found/);
  });

  it('opens an interactive shell on a pty (driven through tmux), resizes it, exits with its status', async () => {
    const status = path.join(scratch.dir, 'status');
    const cmd = ['ssh', '-tt', ...login(keyA.file, 'ssh-vm')]
      .map((a) => `'${a.replace(/'/g, `'\\''`)}'`)
      .join(' ');
    await tmux(
      'new-session',
      '-d',
      '-s',
      'ssh',
      '-x',
      '120',
      '-y',
      '40',
      `${cmd}; echo $? > ${status}; sleep 30`,
    );
    await tmux('set-option', '-t', 'ssh', 'status', 'off');
    const pane = async (): Promise<string> =>
      (await tmux('capture-pane', '-p', '-t', 'ssh', '-S', '-200')).stdout;
    const waitFor = async (re: RegExp): Promise<string> => {
      const until = Date.now() + 30_000;
      for (;;) {
        const text = await pane();
        if (re.test(text)) return text;
        if (Date.now() > until) throw new Error(`timed out waiting for ${re}; pane:\n${text}`);
        await sleep(100);
      }
    };
    await waitFor(/[#$]\s*$/m);
    await tmux('send-keys', '-t', 'ssh', 'uname -a; tty', 'Enter');
    const shown = await waitFor(/\/dev\/pts\/\d+/);
    expect(shown).toMatch(/Linux \S+ 6\.1/);
    await tmux('send-keys', '-t', 'ssh', 'echo "size=$(stty size)"', 'Enter');
    await waitFor(/size=\d+ 120/);
    await tmux('resize-window', '-t', 'ssh', '-x', '100', '-y', '30');
    const { stdout: dims } = await tmux(
      'display-message',
      '-p',
      '-t',
      'ssh',
      '#{pane_height} #{pane_width}',
    );
    await sleep(300);
    await tmux('send-keys', '-t', 'ssh', 'clear; echo "size=$(stty size)"', 'Enter');
    await waitFor(new RegExp(`size=${dims.trim()}`));
    await tmux('send-keys', '-t', 'ssh', 'exit 7', 'Enter');
    const until = Date.now() + 20_000;
    while ((await fs.readFile(status, 'utf8').catch(() => '')) === '' && Date.now() < until) {
      await sleep(100);
    }
    expect((await fs.readFile(status, 'utf8')).trim()).toBe('7');
  }, 90_000);

  it('keeps its host key across a server restart (strict known_hosts), and the VM answers', async () => {
    const before = server.ssh!.hostKeyFingerprint;
    // Earlier logins recorded the key for [127.0.0.1]:<port>; the restart gets a new port, so
    // record it under an alias and log in strictly through that.
    await fs.appendFile(scratch.knownHosts, `fastvm-vm-test ${server.ssh!.hostPublicKey}\n`);
    api.close();
    await server.close(); // the runtime detaches; QEMU keeps running
    runtime = await testRuntime(runtime.dataDir);
    server = await start();
    api = new TestClient(server.url, server.bootstrapKey);
    expect(server.ssh!.hostKeyFingerprint).toBe(before);
    const r = await ssh([
      ...login(keyA.file, 'ssh-vm', true),
      '-o',
      'HostKeyAlias=fastvm-vm-test',
      'echo still $GREETING',
    ]);
    expect(r).toEqual({ code: 0, stdout: 'still hello from envVars\n', stderr: '' });
  }, 120_000);
});
