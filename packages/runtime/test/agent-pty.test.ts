/**
 * AgentClient.spawn against the real agent binary in its `--unix` test mode: interactive shells
 * on a pty (`tty`, `stty size` after a resize, `exit N`, hangup), streamed stdin and output flow
 * control.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { AgentClient, AgentError, type AgentProcess } from '../src/agent-client.js';
import { RuntimeError } from '../src/types.js';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const agentBin = process.env.FASTVM_AGENT_BIN ?? path.join(repo, 'agent/build/fastvm-agent');

let tmp = '';
let agent: ChildProcess | undefined;
let client: AgentClient;

/** Output of a spawned command, with a way to wait for a pattern in it. */
class Screen {
  text = '';
  #waiters: Array<() => void> = [];

  readonly onData = (chunk: Buffer): void => {
    this.text += chunk.toString('utf8');
    for (const w of this.#waiters.splice(0)) w();
  };

  /** Resolves with the match once `re` matches the output after `from`. */
  async waitFor(re: RegExp, from = 0, timeoutMs = 5000): Promise<RegExpExecArray> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const m = re.exec(this.text.slice(from));
      if (m) return m;
      const left = deadline - Date.now();
      if (left <= 0)
        throw new Error(`timed out waiting for ${re}; output: ${JSON.stringify(this.text)}`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.#waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }
}

/** A bash without rc files and a fixed prompt, on a pty. */
async function shell(screen: Screen, rows = 24, cols = 80): Promise<AgentProcess> {
  const proc = await client.spawn({
    argv: ['bash', '--norc', '--noprofile', '-i'],
    env: { PS1: 'PROMPT$ ' },
    pty: { rows, cols },
    onStdout: screen.onData,
  });
  await screen.waitFor(/PROMPT\$ /);
  return proc;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return !/^\d+ \(.*\) Z/.test(fs.readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

/** The process's command name, '' once it is gone. */
function comm(pid: number): string {
  try {
    return fs.readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
  } catch {
    return '';
  }
}

beforeAll(async () => {
  if (!process.env.FASTVM_AGENT_BIN) {
    execFileSync('make', ['-s', '-C', path.join(repo, 'agent')], { stdio: 'inherit' });
  }
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'fastvm-agent-pty-client-'));
  const sock = path.join(tmp, 'agent.sock');
  agent = spawn(agentBin, ['--unix', sock], { stdio: 'ignore' });
  client = await AgentClient.connect(sock, { timeoutMs: 5000 });
});

afterAll(async () => {
  client?.close();
  if (agent && agent.exitCode === null && agent.signalCode === null) {
    const exited = new Promise((r) => agent!.once('exit', r));
    agent.kill('SIGTERM');
    await exited;
  }
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

describe('AgentClient.spawn with a pty', () => {
  it('runs tty, stty size after a resize, and exit with its code', async () => {
    const screen = new Screen();
    const sh = await shell(screen, 30, 100);
    expect(sh.pid).toBeGreaterThan(1);

    let mark = screen.text.length;
    sh.write('tty; stty size\n');
    const tty = await screen.waitFor(/(\/dev\/pts\/\d+)\r\n(\d+ \d+)\r\n/, mark);
    expect(tty[2]).toBe('30 100');

    sh.resize(52, 163);
    mark = screen.text.length;
    sh.write('stty size\n');
    expect((await screen.waitFor(/(\d+ \d+)\r\n/, mark))[1]).toBe('52 163');

    sh.write('exit 3\n');
    expect(await sh.exited).toMatchObject({ exitCode: 3, signal: 0, timedOut: false });
    // Calls after the exit are ignored.
    sh.write('ignored\n');
    sh.resize(10, 10);
  });

  it('echoes keystrokes through the agent and the line discipline; ^C interrupts', async () => {
    const screen = new Screen();
    const sh = await shell(screen);
    sh.write('cat\n');
    await screen.waitFor(/cat\r\n/);
    const samples: number[] = [];
    for (let i = 0; i < 50; i++) {
      const from = screen.text.length;
      const t0 = performance.now();
      sh.write('x');
      await screen.waitFor(/x/, from);
      samples.push(performance.now() - t0);
    }
    samples.sort((a, b) => a - b);
    console.log(
      `pty keystroke echo over the unix socket: p50 ${samples[25]!.toFixed(3)} ms, ` +
        `p90 ${samples[45]!.toFixed(3)} ms`,
    );
    sh.write('\x03'); // ^C: the line discipline sends SIGINT to cat, the foreground job
    await screen.waitFor(/\^C\r\n.*PROMPT\$ $/s);
    sh.write('exit\n'); // with the status of the last command: cat, killed by SIGINT
    expect((await sh.exited).exitCode).toBe(130);
  });

  it('close() hangs up: the shell gets SIGHUP and passes it on to its jobs', async () => {
    const screen = new Screen();
    const sh = await shell(screen);
    const mark = screen.text.length;
    sh.write('sleep 300 & echo "job=$!"\n');
    const job = Number((await screen.waitFor(/job=(\d+)\r\n.*PROMPT\$ /s, mark))[1]);
    // bash prints the job's pid right after its fork; until the child has executed `sleep` it
    // still runs bash's own hangup handler, and a hangup then is lost when it executes.
    const execDeadline = Date.now() + 3000;
    while (comm(job) !== 'sleep' && Date.now() < execDeadline) {
      await new Promise((r) => setTimeout(r, 10));
    }
    expect(comm(job)).toBe('sleep');
    sh.close();
    const exit = await sh.exited;
    expect({ exitCode: exit.exitCode, signal: exit.signal }).toEqual({ exitCode: 129, signal: 1 });
    const deadline = Date.now() + 3000;
    while (alive(job) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    expect(alive(job)).toBe(false);
  });

  it('close() kills a shell that ignores the hangup after the grace period', async () => {
    const screen = new Screen();
    const proc = await client.spawn({
      argv: ['sh', '-c', 'trap "" HUP; echo ready; exec sleep 300'],
      pty: { rows: 24, cols: 80 },
      onStdout: screen.onData,
    });
    await screen.waitFor(/ready/);
    const t0 = Date.now();
    proc.close(200);
    const exit = await proc.exited;
    expect(exit).toMatchObject({ exitCode: 137, signal: 9 });
    expect(Date.now() - t0).toBeGreaterThanOrEqual(150);
  });

  it('validates sizes and refuses what needs a pty or open stdin', async () => {
    await expect(
      client.spawn({ argv: ['true'], pty: { rows: 0, cols: 80 }, onStdout: () => {} }),
    ).rejects.toThrow(RuntimeError);
    await expect(
      client.spawn({ argv: ['true'], pty: { rows: 24, cols: 70_000 }, onStdout: () => {} }),
    ).rejects.toThrow(/cols must be an integer/);
    const proc = await client.spawn({ argv: ['sleep', '30'], onStdout: () => {} });
    expect(() => proc.resize(10, 10)).toThrow(/no pty/);
    expect(() => proc.write('x')).toThrow(/without pty or stdinOpen/);
    proc.kill();
    expect((await proc.exited).exitCode).toBe(137);
    // A command that cannot be executed still starts (STARTED precedes the failure), then exits
    // 127 like a shell's "command not found".
    const missing = await client.spawn({
      argv: ['/nonexistent'],
      pty: { rows: 24, cols: 80 },
      onStdout: () => {},
    });
    expect(await missing.exited).toMatchObject({ exitCode: 127, signal: 0, timedOut: false });
  });
});

describe('AgentClient.spawn with stdinOpen', () => {
  it('streams input to a pipe and ends it', async () => {
    const out: Buffer[] = [];
    const proc = await client.spawn({
      argv: ['sha256sum'],
      stdinOpen: true,
      onStdout: (c) => out.push(c),
    });
    const data = crypto.randomBytes(300 * 1024);
    proc.write(data.subarray(0, 100_000)); // split across 64 KiB frames
    proc.write(data.subarray(100_000));
    proc.end();
    expect((await proc.exited).exitCode).toBe(0);
    const want = crypto.createHash('sha256').update(data).digest('hex');
    expect(Buffer.concat(out).toString()).toContain(want);
  });

  it('reports refused input through onError and keeps running', async () => {
    const errors: AgentError[] = [];
    const proc = await client.spawn({
      argv: ['sleep', '30'],
      stdinOpen: true,
      onStdout: () => {},
      onError: (e) => errors.push(e),
    });
    proc.write(Buffer.alloc(1536 * 1024)); // sleep reads nothing: the agent queues 1 MiB at most
    await client.ping(); // everything before it has been handled
    expect(errors.length).toBeGreaterThan(0);
    expect(errors[0]).toBeInstanceOf(AgentError);
    expect(errors[0]!.errno).toBe(105);
    proc.kill();
    expect((await proc.exited).exitCode).toBe(137);
  });

  it('pauseOutput holds output back until resumeOutput', async () => {
    let received = 0;
    const proc = await client.spawn({
      argv: ['sh', '-c', 'read go; exec head -c 4000000 /dev/zero'],
      stdinOpen: true,
      onStdout: (c) => (received += c.length),
    });
    proc.pauseOutput();
    proc.write('go\n');
    await new Promise((r) => setTimeout(r, 200));
    await client.ping();
    const held = received;
    await new Promise((r) => setTimeout(r, 200));
    expect(received).toBe(held); // nothing read while paused: head blocks on the full pipe
    expect(held).toBeLessThan(4_000_000);
    proc.resumeOutput();
    expect((await proc.exited).exitCode).toBe(0);
    expect(received).toBe(4_000_000);
  });

  it('rejects exited when the connection is lost', async () => {
    const other = await AgentClient.connect(path.join(tmp, 'agent.sock'), { timeoutMs: 5000 });
    // The new connection replaced ours in test mode: reconnect the shared client for later tests.
    const proc = await other.spawn({ argv: ['sleep', '30'], onStdout: () => {} });
    other.close();
    await expect(proc.exited).rejects.toMatchObject({ code: 'agent_unavailable' });
    client = await AgentClient.connect(path.join(tmp, 'agent.sock'), { timeoutMs: 5000 });
  });
});
