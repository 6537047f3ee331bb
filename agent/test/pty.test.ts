/**
 * Interactive commands at the byte level (`--unix` test mode): EXEC with a pty or an open stdin,
 * and the STDIN, RESIZE and FLOW frames, with hand-made frames rather than the AgentClient.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { RawConn, execPayload } from './raw-conn.js';
import {
  ExecTag,
  MsgType,
  decodeError,
  decodeExit,
  u32,
  winsize,
  type Tlv,
} from '@fastvm/runtime/agent-protocol';

const agentDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const agentBin = process.env.FASTVM_AGENT_BIN ?? path.join(agentDir, 'build/fastvm-agent');
const EINVAL = 22;
const EBADF = 9;
const ENOTTY = 25;
const ENOBUFS = 105;

let tmp = '';
let proc: ChildProcess | undefined;
let sock = '';

/** The shared raw connection, with helpers for interactive commands. */
class Conn extends RawConn {
  /** Collects STDOUT of id until `text` has appeared in it. */
  async stdoutUntil(id: number, text: string, timeoutMs = 5000): Promise<string> {
    let out = '';
    const deadline = Date.now() + timeoutMs;
    while (!out.includes(text)) {
      const f = await this.next(
        (fr) => fr.id === id && fr.type === MsgType.Stdout,
        deadline - Date.now(),
      );
      out += f.payload.toString();
    }
    return out;
  }

  /** Waits for EXIT of id, returning it with the STDOUT/STDERR that came before it. */
  async exit(
    id: number,
    timeoutMs = 5000,
  ): Promise<{ code: number; signal: number; raw: Buffer; out: string; err: string }> {
    const exit = await this.next((f) => f.id === id && f.type === MsgType.Exit, timeoutMs);
    const frames = this.take(id);
    const bytes = (t: number): Buffer =>
      Buffer.concat(frames.filter((f) => f.type === t).map((f) => f.payload));
    const e = decodeExit(exit.payload);
    const raw = bytes(MsgType.Stdout);
    return {
      code: e.exitCode,
      signal: e.signal,
      raw,
      out: raw.toString(),
      err: bytes(MsgType.Stderr).toString(),
    };
  }

  /** A PING round trip: every earlier frame has been handled by then. */
  async sync(id: number): Promise<void> {
    this.send(MsgType.Ping, id, Buffer.from('sync'));
    await this.next((f) => f.id === id && f.type === MsgType.Pong);
  }
}

/** A connection to this file's agent, past the HELLO handshake. */
async function connect(): Promise<Conn> {
  const c = await Conn.open(sock, 5000);
  await c.hello();
  return c;
}

const pty = (rows: number, cols: number): Tlv => [ExecTag.Pty, winsize(rows, cols)];
const stdinOpen: Tlv = [ExecTag.StdinOpen, Buffer.alloc(0)];

async function expectError(c: Conn, id: number, code: number, text: RegExp): Promise<void> {
  const f = await c.next((fr) => fr.id === id && fr.type === MsgType.Error);
  const e = decodeError(f.payload);
  expect(e.code).toBe(code);
  expect(e.message).toMatch(text);
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return !/^\d+ \(.*\) Z/.test(fs.readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

beforeAll(() => {
  if (!process.env.FASTVM_AGENT_BIN)
    execFileSync('make', ['-s', '-C', agentDir], { stdio: 'inherit' });
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'fastvm-agent-pty-'));
  sock = path.join(tmp, 'agent.sock');
  proc = spawn(agentBin, ['--unix', sock], { stdio: 'ignore' });
});

afterAll(async () => {
  if (proc && proc.exitCode === null && proc.signalCode === null) {
    const exited = new Promise((r) => proc!.once('exit', r));
    proc.kill('SIGTERM');
    await exited;
  }
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

describe('EXEC on a pty', () => {
  it('is the controlling terminal and stdin/stdout/stderr, with the given size', async () => {
    const c = await connect();
    const script =
      'tty; stty size; test -t 0 && test -t 1 && test -t 2 && echo all-ttys; ' +
      'echo to-stderr >&2; ps -o tty= -p $$ | tr -d " "';
    c.send(MsgType.Exec, 1, execPayload(['sh', '-c', script], [pty(33, 101)]));
    const r = await c.exit(1);
    expect(r.code).toBe(0);
    expect(r.err).toBe(''); // a pty has one output stream: everything arrives as STDOUT
    const lines = r.out.split('\r\n'); // the terminal's ONLCR turns \n into \r\n
    expect(lines[0]).toMatch(/^\/dev\/pts\/\d+$/);
    expect(lines.slice(1, 4)).toEqual(['33 101', 'all-ttys', 'to-stderr']);
    expect(lines[4]).toBe(lines[0]!.replace('/dev/', '')); // the session's controlling tty
    c.close();
  });

  it('defaults to 24 × 80 and runs input typed through STDIN', async () => {
    const c = await connect();
    c.send(MsgType.Exec, 2, execPayload(['sh'], [pty(0, 0)]));
    await c.next((f) => f.id === 2 && f.type === MsgType.Started);
    c.send(MsgType.Stdin, 2, Buffer.from('stty size; exit 5\n'));
    const r = await c.exit(2);
    expect(r.code).toBe(5);
    expect(r.out).toContain('24 80\r\n');
    c.close();
  });

  it('RESIZE sets the window size and the foreground job gets SIGWINCH', async () => {
    const c = await connect();
    const script =
      'trap \'echo "winch $(stty size)"\' WINCH; echo ready; while :; do sleep 0.02; done';
    c.send(MsgType.Exec, 3, execPayload(['sh', '-c', script], [pty(24, 80)]));
    await c.stdoutUntil(3, 'ready');
    c.send(MsgType.Resize, 3, winsize(50, 132));
    expect(await c.stdoutUntil(3, 'winch 50 132')).toContain('winch 50 132');
    c.send(MsgType.Signal, 3, u32(9));
    expect((await c.exit(3)).code).toBe(137);
    c.close();
  });

  it('an empty STDIN hangs the terminal up: the session leader gets SIGHUP', async () => {
    const c = await connect();
    c.send(MsgType.Exec, 4, execPayload(['sleep', '30'], [pty(24, 80)]));
    await c.next((f) => f.id === 4 && f.type === MsgType.Started);
    c.send(MsgType.Stdin, 4, Buffer.alloc(0));
    const r = await c.exit(4);
    expect({ code: r.code, signal: r.signal }).toEqual({ code: 129, signal: 1 });
    c.close();
  });

  it('a new host session hangs up the ptys of the previous one', async () => {
    const first = await connect();
    first.send(MsgType.Exec, 5, execPayload(['sleep', '30'], [pty(24, 80)]));
    const started = await first.next((f) => f.id === 5 && f.type === MsgType.Started);
    const pid = started.payload.readUInt32LE(0);
    expect(alive(pid)).toBe(true);
    const second = await connect(); // replaces the first connection, then HELLO
    const deadline = Date.now() + 3000;
    while (alive(pid) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    expect(alive(pid)).toBe(false);
    await second.sync(6);
    first.close();
    second.close();
  });

  it('refuses a malformed pty field and RESIZE payload; RESIZE needs a pty', async () => {
    const c = await connect();
    c.send(MsgType.Exec, 10, execPayload(['true'], [[ExecTag.Pty, Buffer.from([24, 0])]]));
    await expectError(c, 10, EINVAL, /pty must be rows/);
    c.send(MsgType.Exec, 11, execPayload(['sleep', '30']));
    await c.next((f) => f.id === 11 && f.type === MsgType.Started);
    c.send(MsgType.Resize, 11, Buffer.from([1, 2, 3]));
    await expectError(c, 11, EINVAL, /rows \(u16\) then cols/);
    c.send(MsgType.Resize, 11, winsize(10, 10));
    await expectError(c, 11, ENOTTY, /has no pty/);
    c.send(MsgType.Stdin, 11, Buffer.from('x'));
    await expectError(c, 11, EBADF, /without stdin_open or pty/);
    c.send(MsgType.Flow, 11, Buffer.from([2]));
    await expectError(c, 11, EINVAL, /flow: payload/);
    // Frames for ids that are not running are ignored, like SIGNAL.
    c.send(MsgType.Stdin, 999, Buffer.from('x'));
    c.send(MsgType.Resize, 999, winsize(10, 10));
    c.send(MsgType.Flow, 999, Buffer.from([0]));
    await c.sync(12);
    expect(c.take(999)).toEqual([]);
    c.send(MsgType.Signal, 11, u32(9));
    expect((await c.exit(11)).code).toBe(137);
    c.close();
  });
});

describe('EXEC with stdin_open', () => {
  it('feeds STDIN frames to a pipe until an empty one closes it', async () => {
    const c = await connect();
    c.send(
      MsgType.Exec,
      20,
      execPayload(['sh', '-c', 'cat; echo eof'], [[ExecTag.Stdin, 'first '], stdinOpen]),
    );
    await c.next((f) => f.id === 20 && f.type === MsgType.Started);
    c.send(MsgType.Stdin, 20, Buffer.from('second '));
    c.send(MsgType.Stdin, 20, Buffer.from([0, 255, 10]));
    c.send(MsgType.Stdin, 20, Buffer.alloc(0));
    c.send(MsgType.Stdin, 20, Buffer.from('after EOF: dropped'));
    const r = await c.exit(20);
    expect(r.code).toBe(0);
    expect(r.raw.equals(Buffer.from('first second \x00\xff\neof\n', 'latin1'))).toBe(true);
    c.close();
  });

  it('refuses input beyond 1 MiB queued with ENOBUFS and keeps the command', async () => {
    const c = await connect();
    c.send(MsgType.Exec, 21, execPayload(['sleep', '30'], [stdinOpen]));
    await c.next((f) => f.id === 21 && f.type === MsgType.Started);
    const chunk = Buffer.alloc(64 * 1024, 0x61);
    for (let i = 0; i < 20; i++) c.send(MsgType.Stdin, 21, chunk); // sleep never reads
    await expectError(c, 21, ENOBUFS, /over 1048576 bytes queued/);
    c.send(MsgType.Signal, 21, u32(9));
    expect((await c.exit(21)).code).toBe(137);
    c.close();
  });
});

describe('FLOW', () => {
  it('stops reading output (the command blocks) until resumed', async () => {
    const c = await connect();
    c.send(MsgType.Exec, 30, execPayload(['cat'], [stdinOpen]));
    await c.next((f) => f.id === 30 && f.type === MsgType.Started);
    c.send(MsgType.Flow, 30, Buffer.from([0]));
    const input = crypto.randomBytes(512 * 1024);
    for (let off = 0; off < input.length; off += 64 * 1024) {
      c.send(MsgType.Stdin, 30, input.subarray(off, off + 64 * 1024));
    }
    await new Promise((r) => setTimeout(r, 300));
    await c.sync(31);
    expect(c.take(30)).toEqual([]); // nothing read while stopped
    c.send(MsgType.Flow, 30, Buffer.from([1]));
    c.send(MsgType.Stdin, 30, Buffer.alloc(0));
    const exit = await c.next((f) => f.id === 30 && f.type === MsgType.Exit);
    const out = Buffer.concat(
      c
        .take(30)
        .filter((f) => f.type === MsgType.Stdout)
        .map((f) => f.payload),
    );
    expect(decodeExit(exit.payload).exitCode).toBe(0);
    expect(out.equals(input)).toBe(true);
    c.close();
  });
});
