// `fastvm console` / `fastvm vm console` as a subprocess: with piped input against the server's
// fake shell, and in a pseudo-terminal (`script` from util-linux) against a real QEMU VM, where
// the CLI puts the terminal in raw mode, follows its size (SIGWINCH) and exits with the
// shell's status.
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { QemuRuntime } from '@fastvm/runtime';
import { startServer, type ServerHandle } from '@fastvm/server';
import { FakeRuntime } from '@fastvm/server/testing';
import { disposeRuntime, testRuntime } from '../../runtime/test/helpers.js';

const BIN = resolve(import.meta.dirname, '../bin/fastvm.cjs');
const KEY = 'fastvm-cli-console-key-0123456789';

let home: string;

const quote = (s: string): string => `'${s.replace(/'/g, `'\\''`)}'`;

/** A running `fastvm` (or `script` around it) whose output can be awaited. */
class Proc {
  output = '';
  readonly exited: Promise<number | null>;

  constructor(readonly child: ChildProcessWithoutNullStreams) {
    child.stdout.on('data', (c: Buffer) => (this.output += c.toString()));
    child.stderr.on('data', (c: Buffer) => (this.output += c.toString()));
    this.exited = new Promise((r) => child.on('close', (code) => r(code)));
  }

  async waitFor(re: RegExp, from = 0, timeoutMs = 20_000): Promise<RegExpExecArray> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const m = re.exec(this.output.slice(from));
      if (m) return m;
      if (Date.now() > deadline || this.child.exitCode !== null) {
        throw new Error(`no ${re} in output: ${JSON.stringify(this.output.slice(from))}`);
      }
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  /** Types a line (Enter is \r on a raw terminal) and waits for `re` after it. */
  async run(line: string, re: RegExp): Promise<RegExpExecArray> {
    const from = this.output.length;
    this.child.stdin.write(`${line}\r`);
    return this.waitFor(re, from);
  }
}

function env(url: string): NodeJS.ProcessEnv {
  return {
    PATH: process.env['PATH'],
    HOME: home,
    XDG_CONFIG_HOME: join(home, '.config'),
    FASTVM_API_KEY: KEY,
    FASTVM_BASE_URL: url,
    TERM: 'xterm',
  };
}

/** `fastvm ARGS` with piped stdin/stdout (no terminal). */
function fastvm(url: string, args: string[]): Proc {
  return new Proc(spawn(process.execPath, [BIN, ...args], { env: env(url) }));
}

/**
 * `fastvm ARGS` on the pseudo-terminal of `script`, after `stty rows R cols C`; `before` runs
 * first in the same shell (e.g. a background job that resizes the terminal later).
 */
function fastvmTTY(url: string, args: string[], before = ''): Proc {
  const cmd = [process.execPath, BIN, ...args].map(quote).join(' ');
  return new Proc(
    spawn('script', ['-qfec', `stty rows 33 cols 111; ${before} exec ${cmd}`, '/dev/null'], {
      env: env(url),
    }),
  );
}

beforeAll(() => {
  home = mkdtempSync(join(tmpdir(), 'fastvm-cli-console-'));
});

afterAll(() => {
  rmSync(home, { recursive: true, force: true });
});

describe('fastvm console (fake shell, piped input)', () => {
  let server: ServerHandle;
  let dataDir: string;

  beforeAll(async () => {
    dataDir = mkdtempSync(join(tmpdir(), 'fastvm-cli-console-server-'));
    server = await startServer({
      port: 0,
      dataDir,
      runtime: new FakeRuntime(),
      bootstrapKey: KEY,
      logLevel: 'silent',
    });
  });

  afterAll(async () => {
    await server?.close();
    rmSync(dataDir, { recursive: true, force: true });
  });

  async function launch(name: string): Promise<void> {
    const p = fastvm(server.url, ['vm', 'launch', '-n', name, '--json']);
    expect(await p.exited).toBe(0);
  }

  it('types stdin into the shell and exits with its status', async () => {
    await launch('pipe-vm');
    const p = fastvm(server.url, ['console', 'pipe-vm']);
    p.child.stdin.end('tty\nstty size\nexit 4\n');
    expect(await p.exited).toBe(4);
    expect(p.output).toMatch(/\/dev\/pts\/0\r\n/);
    expect(p.output).toMatch(/24 80\r\n/); // no terminal: the server's default size
  });

  it('sends Ctrl-D at the end of input (vm console)', async () => {
    await launch('eof-vm');
    const p = fastvm(server.url, ['vm', 'console', 'eof-vm']);
    p.child.stdin.end('echo before-eof\n');
    expect(await p.exited).toBe(0);
    expect(p.output).toMatch(/before-eof\r\n.*exit/s);
  });

  it('reports an unknown VM', async () => {
    const p = fastvm(server.url, ['console', 'no-such-vm']);
    p.child.stdin.end();
    expect(await p.exited).toBe(1);
    expect(p.output).toMatch(/^Error: 404/m);
  });

  it('is listed in the help', async () => {
    const p = fastvm(server.url, ['vm', 'console', '--help']);
    expect(await p.exited).toBe(0);
    expect(p.output).toMatch(/Ctrl-\] disconnects/);
  });
});

describe('fastvm vm console in a pseudo-terminal (real QEMU VM)', () => {
  let runtime: QemuRuntime;
  let server: ServerHandle;
  let dataDir: string;
  let vmId: string;

  beforeAll(async () => {
    runtime = await testRuntime();
    dataDir = mkdtempSync(join(tmpdir(), 'fastvm-cli-console-vm-'));
    server = await startServer({
      port: 0,
      dataDir,
      runtime,
      bootstrapKey: KEY,
      logLevel: 'silent',
      launchWaitMs: 60_000,
    });
    const p = fastvm(server.url, ['vm', 'launch', '-n', 'tty-vm', '--json']);
    expect(await p.exited).toBe(0);
    vmId = (JSON.parse(p.output) as { id: string }).id;
  }, 180_000);

  afterAll(async () => {
    await server?.close();
    await disposeRuntime(runtime);
    rmSync(dataDir, { recursive: true, force: true });
  });

  it('runs tty, follows the terminal size and a resize, and exits with the status', async () => {
    const go = join(home, 'resize-now');
    // Once the test creates `go`, a job in the same terminal session resizes it (through
    // /dev/tty: a background job's stdin is /dev/null): the CLI gets SIGWINCH and sends the size.
    const resizer = `(while [ ! -e ${quote(go)} ]; do sleep 0.05; done; stty rows 41 cols 97 < /dev/tty) &`;
    const p = fastvmTTY(server.url, ['vm', 'console', 'tty-vm'], resizer);
    await p.waitFor(/Connected to tty-vm\. Ctrl-\] disconnects\./);
    await p.waitFor(/[#$] $/);
    const tty = await p.run('tty; echo "@@$((40+2))"', /(\/dev\/pts\/\d+)\r\n@@42\r\n/);
    expect(tty[1]).toMatch(/^\/dev\/pts\/\d+$/);
    expect((await p.run('stty size; echo "@@$((40+2))"', /(\d+ \d+)\r\n@@42/))[1]).toBe('33 111');
    writeFileSync(go, '');
    const deadline = Date.now() + 5000;
    let size = '';
    while (size !== '41 97' && Date.now() < deadline) {
      size = (await p.run('stty size; echo "@@$((40+2))"', /(\d+ \d+)\r\n@@42/))[1]!;
    }
    expect(size).toBe('41 97');
    // Raw mode: Ctrl-C reaches the VM (interrupting sleep there) instead of killing the CLI.
    const from = p.output.length;
    // The job prints once it runs, so it is the terminal's foreground job by then.
    p.child.stdin.write('sh -c "echo st""arted; exec sleep 30"\r');
    await p.waitFor(/started\r\n/, from);
    p.child.stdin.write('\x03');
    await p.waitFor(/\^C\r\n.*[#$] $/s, from);
    p.child.stdin.write('exit 5\r');
    expect(await p.exited).toBe(5);
    expect(existsSync(go)).toBe(true);
  });

  it('Ctrl-] disconnects, restores the terminal and exits 0', async () => {
    // After the CLI exits, `stty -a` shows whether it left the terminal as it found it.
    const cmd = [process.execPath, BIN, 'console', vmId].map(quote).join(' ');
    const p = new Proc(
      spawn(
        'script',
        [
          '-qfec',
          `stty rows 30 cols 90; ${cmd}; echo "cli=$?"; stty -a; echo stty-done`,
          '/dev/null',
        ],
        {
          env: env(server.url),
        },
      ),
    );
    await p.waitFor(/[#$] $/);
    p.child.stdin.write('\x1d');
    await p.waitFor(/cli=0[\s\S]*stty-done/);
    expect(p.output).toMatch(/Disconnected \(the shell was hung up\)/);
    const after = p.output.slice(p.output.indexOf('cli=0'));
    expect(after).toMatch(/(^|\s)icanon(\s|$)/m); // cooked mode again, not raw
    expect(after).toMatch(/(^|\s)echo(\s|$)/m);
    p.child.stdin.end();
    expect(await p.exited).toBe(0);
  });
});
