// `fastvm ssh-key add|ls|rm` and `fastvm vm ssh` as subprocesses against the real API server with
// the FakeRuntime and its SSH gateway, with Debian's OpenSSH client; and the parsing of `vm ssh`.
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import type { Command } from 'commander';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startServer, type ServerHandle } from '@fastvm/server';
import { FakeRuntime } from '@fastvm/server/testing';
import type { RunF } from '../src/cmdutil.js';
import {
  gatewayHost,
  newVmSshCommand,
  sshArgv,
  type VmSshOptions,
} from '../src/commands/vm/ssh.js';
import { Factory, type IO } from '../src/factory.js';

const BIN = resolve(import.meta.dirname, '../bin/fastvm.cjs');
const KEY = 'fastvm-cli-ssh-test-key-0123456789';

let server: ServerHandle;
let dataDir: string;
let home: string;

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function fastvm(args: string[], input?: string, env: Record<string, string> = {}): Promise<Run> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], {
      env: {
        PATH: process.env['PATH'],
        HOME: home,
        XDG_CONFIG_HOME: join(home, '.config'),
        FASTVM_API_KEY: KEY,
        FASTVM_BASE_URL: server.url,
        ...env,
      },
      stdio: [input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout!.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolvePromise({ code, stdout, stderr }));
    if (input !== undefined) child.stdin!.end(input);
  });
}

const keyFile = (name: string): string => {
  const file = join(home, name);
  execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', name, '-f', file]);
  return file;
};

beforeAll(async () => {
  dataDir = mkdtempSync(join(tmpdir(), 'fastvm-cli-ssh-server-'));
  home = mkdtempSync(join(tmpdir(), 'fastvm-cli-ssh-home-'));
  server = await startServer({
    port: 0,
    dataDir,
    runtime: new FakeRuntime(),
    bootstrapKey: KEY,
    logLevel: 'silent',
    ssh: { port: 0 },
  });
});

afterAll(async () => {
  await server?.close();
  rmSync(dataDir, { recursive: true, force: true });
  rmSync(home, { recursive: true, force: true });
});

describe('fastvm ssh-key', () => {
  it('adds from a file and from stdin, lists (table and --json), removes by fingerprint and name', async () => {
    const a = keyFile('a');
    const b = keyFile('b');
    const added = await fastvm(['ssh-key', 'add', `${a}.pub`, '--name', 'laptop']);
    expect(added.stderr).toBe('');
    expect(added.code).toBe(0);
    const fpA = execFileSync('ssh-keygen', ['-lf', `${a}.pub`])
      .toString()
      .split(' ')[1]!;
    expect(added.stdout).toContain(fpA);
    const fromStdin = await fastvm(
      ['ssh-key', 'add', '-', '--json'],
      readFileSync(`${b}.pub`, 'utf8'),
    );
    expect(fromStdin.code).toBe(0);
    const keyB = JSON.parse(fromStdin.stdout) as Record<string, string>;
    expect(keyB['publicKey']).toBe(
      readFileSync(`${b}.pub`, 'utf8').split(' ').slice(0, 2).join(' '),
    );
    expect(keyB).not.toHaveProperty('name');

    const table = await fastvm(['ssh-key', 'ls']);
    expect(table.stdout).toMatch(/FINGERPRINT\s+NAME\s+TYPE\s+CREATED/);
    expect(table.stdout).toContain(`${fpA}  laptop`);
    const list = JSON.parse((await fastvm(['ssh-key', 'ls', '--json'])).stdout) as Array<
      Record<string, string>
    >;
    expect(list.map((k) => k['fingerprint'])).toEqual([fpA, keyB['fingerprint']]);

    const dup = await fastvm(['ssh-key', 'add', `${a}.pub`]);
    expect(dup.code).toBe(1);
    expect(dup.stderr).toMatch(/exists/);
    const priv = await fastvm(['ssh-key', 'add', a]);
    expect(priv.code).toBe(1);
    expect(priv.stderr).toMatch(/private key/);

    expect((await fastvm(['ssh-key', 'rm', 'laptop'])).stdout).toBe(`Removed SSH key ${fpA}\n`);
    const rm = await fastvm(['ssh-key', 'rm', keyB['fingerprint']!, '--json']);
    expect(JSON.parse(rm.stdout)).toEqual({ id: keyB['fingerprint'], deleted: true });
    expect((await fastvm(['ssh-key', 'ls'])).stdout).toMatch(/^No SSH keys/);
  });
});

describe('fastvm vm ssh', () => {
  it('runs a command in the VM through the gateway with the system ssh (exit status, stdin)', async () => {
    const k = keyFile('vm-ssh');
    expect((await fastvm(['ssh-key', 'add', `${k}.pub`])).code).toBe(0);
    expect((await fastvm(['vm', 'launch', '-n', 'box'])).code).toBe(0);
    const opts = [
      '-i',
      k,
      '-o',
      'StrictHostKeyChecking=no',
      '-o',
      `UserKnownHostsFile=${join(home, 'known_hosts')}`,
      '-o',
      'IdentitiesOnly=yes',
      '-o',
      'BatchMode=yes',
      '-o',
      'LogLevel=ERROR',
    ];
    const port = String(server.ssh!.port);
    const r = await fastvm([
      'vm',
      'ssh',
      'box',
      '--port',
      port,
      ...opts,
      '--',
      'echo',
      'hi;',
      'exit',
      '3',
    ]);
    expect(r).toEqual({ code: 3, stdout: 'hi\n', stderr: '' });
    // The port from FASTVM_SSH_PORT; stdin goes through.
    const cat = await fastvm(['vm', 'ssh', 'box', ...opts, '--', 'cat'], 'piped\n', {
      FASTVM_SSH_PORT: port,
    });
    expect(cat).toEqual({ code: 0, stdout: 'piped\n', stderr: '' });
    const unknown = await fastvm(['vm', 'ssh', 'nope', '--port', port, ...opts]);
    expect(unknown.code).toBe(1);
  });

  it('opens an interactive shell on a terminal (driven through tmux) and exits with its status', async () => {
    const k = keyFile('vm-ssh-tty');
    expect((await fastvm(['ssh-key', 'add', `${k}.pub`])).code).toBe(0);
    expect((await fastvm(['vm', 'launch', '-n', 'tty-box'])).code).toBe(0);
    const status = join(home, 'tty-status');
    const q = (a: string): string => `'${a.replace(/'/g, `'\\''`)}'`;
    const cli = [process.execPath, BIN, 'vm', 'ssh', 'tty-box', '-p', String(server.ssh!.port)]
      .concat(['-i', k, '-o', 'StrictHostKeyChecking=no', '-o', 'IdentitiesOnly=yes'])
      .concat(['-o', `UserKnownHostsFile=${join(home, 'known_hosts')}`, '-o', 'LogLevel=ERROR'])
      .map(q)
      .join(' ');
    const env = `FASTVM_API_KEY=${KEY} FASTVM_BASE_URL=${server.url} HOME=${q(home)}`;
    const socket = join(home, 'tmux.sock'); // our own tmux server, removed with `home`
    const tmux = (...args: string[]): string =>
      execFileSync('tmux', ['-S', socket, ...args]).toString();
    tmux(
      'new-session',
      '-d',
      '-s',
      't',
      '-x',
      '100',
      '-y',
      '30',
      `env ${env} ${cli}; echo $? > ${q(status)}; sleep 30`,
    );
    try {
      const waitFor = async (re: RegExp): Promise<void> => {
        const until = Date.now() + 20_000;
        while (!re.test(tmux('capture-pane', '-p', '-t', 't'))) {
          if (Date.now() > until)
            throw new Error(`no ${re} in:\n${tmux('capture-pane', '-p', '-t', 't')}`);
          await new Promise((r) => setTimeout(r, 100));
        }
      };
      await waitFor(/fake\$/); // the FakeRuntime's shell prompt
      tmux('send-keys', '-t', 't', 'echo hello-tty', 'Enter');
      await waitFor(/^hello-tty$/m);
      tmux('send-keys', '-t', 't', 'exit 5', 'Enter');
      const until = Date.now() + 20_000;
      // The shell's exit status is the ssh's, and `fastvm vm ssh` exits with it.
      const readStatus = (): string =>
        existsSync(status) ? readFileSync(status, 'utf8').trim() : '';
      while (readStatus() === '' && Date.now() < until)
        await new Promise((r) => setTimeout(r, 100));
      const code = readStatus();
      expect(code).toBe('5');
    } finally {
      try {
        tmux('kill-server');
      } catch {
        /* already gone */
      }
    }
  });

  it('parses the VM, the command after --, port, identity and -o options into the ssh argv', async () => {
    const io: IO = {
      stdout: { write: () => true, isTTY: false },
      stderr: { write: () => true, isTTY: false },
      stdin: { isTTY: false },
      env: { FASTVM_SSH_PORT: '2022' },
    } as unknown as IO;
    const parse = async (args: string[]): Promise<VmSshOptions> => {
      let got: VmSshOptions | undefined;
      const runF: RunF<VmSshOptions> = async (o) => {
        got = o;
        return 0;
      };
      const cmd: Command = newVmSshCommand(new Factory(io), runF);
      await cmd.parseAsync(args, { from: 'user' });
      return got!;
    };
    const o = await parse(['dev', '-i', 'k', '-o', 'A=1', '-o', 'B=2', '--', 'uname', '-a']);
    expect(o).toMatchObject({ vm: 'dev', identity: 'k', sshOptions: ['A=1', 'B=2'] });
    expect(o.command).toEqual(['uname', '-a']);
    expect(sshArgv(o, 'id-1', '127.0.0.1')).toEqual([
      '-p',
      '2022',
      '-i',
      'k',
      '-o',
      'A=1',
      '-o',
      'B=2',
      'id-1@127.0.0.1',
      '--',
      'uname',
      '-a',
    ]);
    const shell = await parse(['dev', '--port', '2200']);
    expect(sshArgv(shell, 'id-1', 'h')).toEqual(['-p', '2200', 'id-1@h']);
    await expect(parse(['dev', '--port', '70000'])).rejects.toThrow(/port/);
    expect(gatewayHost('https://api.example.com/v1')).toBe('api.example.com');
    expect(gatewayHost('http://[::1]:8080')).toBe('::1');
  });
});
