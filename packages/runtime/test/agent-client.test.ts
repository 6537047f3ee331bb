/**
 * AgentClient against the real agent binary, run on the host in its `--unix` test mode (the same
 * code as in the guest, minus the PID 1 duties and the virtio-serial port).
 */
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { AgentClient, AgentError } from '../src/agent-client.js';
import {
  FrameDecoder,
  MsgType,
  encodeFrame,
  encodeTlv,
  decodeTlv,
  scanHelloAck,
} from '../src/agent-protocol.js';
import { RuntimeError } from '../src/types.js';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
// FASTVM_AGENT_BIN runs the tests against another build (e.g. one with sanitizers).
const agentBin = process.env.FASTVM_AGENT_BIN ?? path.join(repo, 'agent/build/fastvm-agent');

let tmp = '';
/** Agents started by the tests, stopped in afterAll. */
const agents = new Set<ChildProcess>();
/** Host processes left behind on purpose (background jobs), killed in afterAll. */
const strays = new Set<number>();

interface RunningAgent {
  readonly proc: ChildProcess;
  readonly sock: string;
  readonly log: () => string;
}

async function startAgent(
  name: string,
  extra: string[] = [],
  softNofile?: number,
): Promise<RunningAgent> {
  const sock = path.join(tmp, `${name}.sock`);
  const args = ['--unix', sock, ...extra];
  const stdio: ['ignore', 'ignore', 'pipe'] = ['ignore', 'ignore', 'pipe'];
  // With softNofile, start it with a lower soft RLIMIT_NOFILE (the shell execs the agent).
  const proc = softNofile
    ? spawn('sh', ['-c', `ulimit -Sn ${softNofile} && exec "$0" "$@"`, agentBin, ...args], {
        stdio,
      })
    : spawn(agentBin, args, { stdio });
  agents.add(proc);
  let log = '';
  proc.stderr!.on('data', (d: Buffer) => (log += d.toString()));
  return { proc, sock, log: () => log };
}

async function stopAgent(proc: ChildProcess): Promise<void> {
  agents.delete(proc);
  if (proc.exitCode !== null || proc.signalCode !== null) return;
  const exited = new Promise((resolve) => proc.once('exit', resolve));
  proc.kill('SIGTERM');
  const timer = setTimeout(() => proc.kill('SIGKILL'), 2000);
  await exited;
  clearTimeout(timer);
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    // A zombie is dead for our purposes (and would mean nobody reaps it).
    return !/^\d+ \(.*\) Z/.test(fs.readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

/** PIDs of every process in process group pgid (zombies included). */
function groupMembers(pgid: number): number[] {
  const out: number[] = [];
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${entry}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (Number(fields[2]) === pgid) out.push(Number(entry));
    } catch {
      // exited meanwhile
    }
  }
  return out;
}

async function waitFor(cond: () => boolean, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (cond()) return true;
    await new Promise((r) => setTimeout(r, 20));
  }
  return cond();
}

beforeAll(() => {
  if (!process.env.FASTVM_AGENT_BIN) {
    execFileSync('make', ['-s', '-C', path.join(repo, 'agent')], { stdio: 'inherit' });
  }
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'fastvm-agent-test-'));
});

afterAll(async () => {
  for (const pid of strays) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
  await Promise.all([...agents].map(stopAgent));
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

describe('agent protocol codec', () => {
  it('decodes frames split at any byte and resynchronises on garbage', () => {
    const a = encodeFrame(MsgType.Pong, 7, Buffer.from('hello'));
    const b = encodeFrame(MsgType.Exit, 9, Buffer.alloc(12));
    const oversized = Buffer.from(encodeFrame(MsgType.Pong, 1));
    oversized.writeUInt32LE(0x7fffffff, 12); // a "header" with an impossible length
    const stream = Buffer.concat([Buffer.from('xxFVM'), a, oversized, Buffer.from('FV'), b]);
    for (let split = 0; split <= stream.length; split++) {
      const d = new FrameDecoder();
      const frames = [...d.push(stream.subarray(0, split)), ...d.push(stream.subarray(split))];
      expect(frames.map((f) => [f.type, f.id, f.payload.toString()])).toEqual([
        [MsgType.Pong, 7, 'hello'],
        [MsgType.Exit, 9, Buffer.alloc(12).toString()],
      ]);
      expect(d.buffered).toBe(0);
    }
  });

  it('round-trips TLV records', () => {
    const tlv = encodeTlv([
      [1, 'echo'],
      [4, Buffer.from([0, 255, 1])],
      [2, ''],
    ]);
    expect(decodeTlv(tlv).map((r) => [r.tag, [...r.value]])).toEqual([
      [1, [...Buffer.from('echo')]],
      [4, [0, 255, 1]],
      [2, []],
    ]);
    expect(() => decodeTlv(tlv.subarray(0, tlv.length - 1))).toThrow(/truncated/);
  });

  it('finds the HELLO_ACK behind a stale partial frame', () => {
    const nonce = crypto.randomBytes(8);
    const ackPayload = Buffer.concat([nonce, Buffer.from([1, 0, 0, 0]), Buffer.from('1.0.0')]);
    const stale = encodeFrame(MsgType.Stdout, 3, Buffer.alloc(1000)).subarray(0, 100);
    const stream = Buffer.concat([
      stale,
      encodeFrame(MsgType.HelloAck, 0, ackPayload),
      Buffer.from('tail'),
    ]);
    const scan = scanHelloAck(stream, nonce);
    expect(scan.found).toBe(true);
    if (scan.found) {
      expect(scan.ack.agentVersion).toBe('1.0.0');
      expect(scan.rest.toString()).toBe('tail');
    }
    // A decoder would have swallowed the ACK into the stale frame's declared length.
    expect(new FrameDecoder().push(stream)).toEqual([]);
  });
});

describe('AgentClient with the agent in --unix mode', () => {
  let agent: RunningAgent;
  let client: AgentClient;

  beforeAll(async () => {
    agent = await startAgent('main', [], 256);
    // Connecting right after spawn also exercises the retry while the socket does not exist.
    client = await AgentClient.connect(agent.sock, { timeoutMs: 5000 });
  });

  afterAll(async () => {
    client?.close();
    if (agent) await stopAgent(agent.proc);
  });

  it('is ready and answers ping', async () => {
    expect(client.state).toBe('ready');
    expect(client.agentVersion.length).toBeGreaterThan(0);
    const payload = crypto.randomBytes(1000);
    expect((await client.ping(payload)).equals(payload)).toBe(true);
    expect((await client.ping()).length).toBe(0);
  });

  it('reconnects when a HELLO goes unanswered (helloAttemptMs), and only then', async () => {
    // A socket whose first connection swallows everything (as a stuck virtio-serial port does)
    // and whose later connections reach an agent of its own (a new connection replaces the old
    // one in the agent, so the suite's client must not share it).
    const own = await startAgent('reconnect');
    const stuck = async (name: string) => {
      const sock = path.join(tmp, `${name}.sock`);
      let n = 0;
      const server = net.createServer((c) => {
        if (n++ === 0) return c.on('data', () => {});
        const up = net.createConnection(own.sock);
        c.pipe(up).pipe(c);
        c.on('error', () => up.destroy());
        up.on('error', () => c.destroy());
      });
      await new Promise<void>((resolve) => server.listen(sock, resolve));
      return { sock, server, connections: () => n };
    };
    const a = await stuck('stuck-a');
    const t0 = performance.now();
    const c = await AgentClient.connect(a.sock, { timeoutMs: 5000, helloAttemptMs: 300 });
    expect(performance.now() - t0).toBeGreaterThanOrEqual(290);
    expect(a.connections()).toBe(2);
    expect((await c.ping(Buffer.from('hi'))).toString()).toBe('hi');
    c.close();
    const b = await stuck('stuck-b');
    await expect(AgentClient.connect(b.sock, { timeoutMs: 600 })).rejects.toThrow(/HELLO/);
    expect(b.connections()).toBe(1);
    for (const s of [a.server, b.server]) s.close();
    await stopAgent(own.proc);
  });

  it('runs echo', async () => {
    const r = await client.exec({ argv: ['echo', 'hello'] });
    expect(r.exitCode).toBe(0);
    expect(r.stdout.toString()).toBe('hello\n');
    expect(r.stderr.length).toBe(0);
    expect(r.timedOut).toBe(false);
    expect(r.stdoutTruncated).toBe(false);
    expect(r.durationMs).toBeGreaterThanOrEqual(0);
    expect(r.durationMs).toBeLessThan(5000);
  });

  it('runs python3 --version', async () => {
    const r = await client.exec({ argv: ['python3', '--version'] });
    expect(r.exitCode).toBe(0);
    expect(Buffer.concat([r.stdout, r.stderr]).toString()).toMatch(/^Python 3\.\d+/);
  });

  it('reports exit codes and stderr', async () => {
    const r = await client.exec({ argv: ['sh', '-c', 'echo out; echo oops >&2; exit 3'] });
    expect(r.exitCode).toBe(3);
    expect(r.stdout.toString()).toBe('out\n');
    expect(r.stderr.toString()).toBe('oops\n');
  });

  it('reports death by signal as 128 + signal', async () => {
    const r = await client.exec({ argv: ['sh', '-c', 'kill -TERM $$'] });
    expect(r.exitCode).toBe(128 + 15);
  });

  it('feeds stdin, binary-safe, and closes it', async () => {
    const all = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
    const r = await client.exec({ argv: ['cat'], stdin: all });
    expect(r.stdout.equals(all)).toBe(true);

    const empty = await client.exec({ argv: ['cat'], stdin: new Uint8Array(0) });
    expect(empty.exitCode).toBe(0);
    expect(empty.stdout.length).toBe(0);

    // No stdin field: /dev/null.
    const none = await client.exec({ argv: ['sh', '-c', 'cat; readlink /proc/self/fd/0'] });
    expect(none.stdout.toString()).toBe('/dev/null\n');
  });

  it('round-trips ~1 MiB of stdin without deadlocking', async () => {
    const big = crypto.randomBytes(1_000_000);
    const r = await client.exec({ argv: ['cat'], stdin: big });
    expect(r.exitCode).toBe(0);
    expect(r.stdout.length).toBe(big.length);
    expect(r.stdout.equals(big)).toBe(true);
    // A command that does not read its stdin still finishes.
    const ignored = await client.exec({ argv: ['true'], stdin: big });
    expect(ignored.exitCode).toBe(0);
  });

  it('rejects stdin that does not fit in one frame', async () => {
    await expect(
      client.exec({ argv: ['cat'], stdin: Buffer.alloc(1 << 20) }),
    ).rejects.toMatchObject({
      name: 'RuntimeError',
      code: 'invalid_argument',
    });
  });

  it('caps output at capBytes and flags the truncation', async () => {
    const unit = 'abcdefg\n';
    const total = 5 * 1024 * 1024;
    const cap = 4 * 1024 * 1024;
    const r = await client.exec({
      argv: ['sh', '-c', `yes abcdefg | head -c ${total}; echo tail >&2`],
      capBytes: cap,
    });
    expect(r.exitCode).toBe(0);
    expect(r.stdout.length).toBe(4194304);
    expect(r.stdoutTruncated).toBe(true);
    expect(r.stdout.equals(Buffer.from(unit.repeat(cap / unit.length)))).toBe(true);
    expect(r.stderr.toString()).toBe('tail\n');
    expect(r.stderrTruncated).toBe(false);

    // Without a cap everything comes through, in 64 KiB chunks at most.
    const chunks: number[] = [];
    const full = await client.exec({
      argv: ['sh', '-c', `yes abcdefg | head -c ${total}`],
      onStdout: (c) => chunks.push(c.length),
    });
    expect(full.stdout.length).toBe(total);
    expect(full.stdoutTruncated).toBe(false);
    expect(Math.max(...chunks)).toBeLessThanOrEqual(64 * 1024);
  });

  it('kills the whole process group on timeout', async () => {
    let pgid = 0;
    const started = Date.now();
    const r = await client.exec({
      argv: ['sh', '-c', 'echo $$; sleep 60 & sleep 60'],
      timeoutMs: 500,
      onStdout: (c) => (pgid ||= Number.parseInt(c.toString(), 10)),
    });
    const took = Date.now() - started;
    expect(r.timedOut).toBe(true);
    expect(r.exitCode).toBe(128 + 9);
    expect(took).toBeGreaterThanOrEqual(450);
    expect(took).toBeLessThan(2000);
    expect(pgid).toBeGreaterThan(1);
    // The background sleep was killed too, and reaped (the agent is its subreaper).
    expect(await waitFor(() => groupMembers(pgid).length === 0, 2000)).toBe(true);
  });

  it('returns while a nohup background job keeps running', async () => {
    const started = Date.now();
    const r = await client.exec({
      argv: ['sh', '-c', 'nohup sleep 300 >/dev/null 2>&1 & echo started $!'],
    });
    expect(Date.now() - started).toBeLessThan(2000);
    const m = /^started (\d+)\n$/.exec(r.stdout.toString());
    expect(m).not.toBeNull();
    const pid = Number(m![1]);
    strays.add(pid);
    // $! is the forked shell until it has exec'd sleep.
    const cmdline = (): string => fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    expect(await waitFor(() => cmdline() === 'sleep\x00300\x00', 2000)).toBe(true);
    await new Promise((res) => setTimeout(res, 100));
    expect(alive(pid)).toBe(true);
    process.kill(pid, 'SIGKILL');
    // The agent reaps the orphan: no zombie is left behind.
    expect(await waitFor(() => !fs.existsSync(`/proc/${pid}`), 2000)).toBe(true);
    strays.delete(pid);
  });

  it('returns while a background job still holds stdout', async () => {
    const started = Date.now();
    const r = await client.exec({ argv: ['sh', '-c', 'sleep 300 & echo x $!'] });
    expect(Date.now() - started).toBeLessThan(2000);
    const m = /^x (\d+)\n$/.exec(r.stdout.toString());
    expect(m).not.toBeNull();
    const pid = Number(m![1]);
    strays.add(pid);
    expect(alive(pid)).toBe(true);
    process.kill(pid, 'SIGKILL');
    strays.delete(pid);
  });

  it('reports a command that cannot start as exit 127 and keeps serving', async () => {
    const r = await client.exec({ argv: ['no-such-command-fastvm'] });
    expect(r.exitCode).toBe(127);
    expect(r.stderr.toString()).toBe(
      "fastvm-agent: cannot run 'no-such-command-fastvm': No such file or directory\n",
    );
    expect(r.stdout.length).toBe(0);
    expect((await client.ping(Buffer.from('still here'))).toString()).toBe('still here');

    const dir = fs.mkdtempSync(path.join(tmp, 'noexec-'));
    const script = path.join(dir, 'script.sh');
    fs.writeFileSync(script, '#!/bin/sh\necho hi\n', { mode: 0o644 });
    const denied = await client.exec({ argv: [script] });
    expect(denied.exitCode).toBe(126);
    expect(denied.stderr.toString()).toContain('Permission denied');

    const badCwd = await client.exec({ argv: ['true'], cwd: path.join(dir, 'missing') });
    expect(badCwd.exitCode).toBe(127);
    expect(badCwd.stderr.toString()).toContain('cannot change directory');
  });

  it('runs 20 commands concurrently', async () => {
    const started = Date.now();
    const results = await Promise.all(
      Array.from({ length: 20 }, (_, i) =>
        client.exec({ argv: ['sh', '-c', 'sleep 0.3; echo "n$1"; exit $1', 'sh', String(i)] }),
      ),
    );
    // Concurrent, not one after another (20 × 0.3 s).
    expect(Date.now() - started).toBeLessThan(3000);
    results.forEach((r, i) => {
      expect(r.stdout.toString()).toBe(`n${i}\n`);
      expect(r.exitCode).toBe(i);
    });
  });

  it('streams output before the command exits', async () => {
    const chunks: Array<{ at: number; text: string }> = [];
    const r = await client.exec({
      argv: ['sh', '-c', 'echo a; sleep 0.5; echo b'],
      onStdout: (c) => chunks.push({ at: Date.now(), text: c.toString() }),
    });
    const doneAt = Date.now();
    expect(r.stdout.toString()).toBe('a\nb\n');
    expect(chunks[0]!.text).toBe('a\n');
    expect(doneAt - chunks[0]!.at).toBeGreaterThanOrEqual(300);
  });

  it('applies env and cwd', async () => {
    const dir = fs.mkdtempSync(path.join(tmp, 'cwd-'));
    const r = await client.exec({
      argv: ['sh', '-c', 'echo "$FOO|$HOME|$LANG|$TERM|$USER|$PATH"; pwd'],
      env: { FOO: 'bar baz', LANG: 'C' },
      cwd: dir,
    });
    expect(r.stdout.toString()).toBe(
      `bar baz|/root|C|xterm-256color|root|/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n${dir}\n`,
    );
    const home = await client.exec({ argv: ['pwd'] });
    expect(home.stdout.toString()).toBe(fs.existsSync('/root') ? '/root\n' : '/\n');
  });

  it('gives commands the file descriptor limit the agent inherited', async () => {
    // The agent raised its own soft limit to serve many commands, but not theirs.
    const r = await client.exec({ argv: ['sh', '-c', 'ulimit -Sn'] });
    expect(r.stdout.toString()).toBe('256\n');
  });

  it('starts commands with no signal ignored or blocked, and a PATH of their own', async () => {
    // /proc/self/status of the command itself (exec replaces sh): the agent ignores SIGPIPE and
    // blocks the signals it reads from its signalfd; the command inherits neither.
    const r = await client.exec({
      argv: ['sh', '-c', 'exec grep -E "^Sig(Ign|Blk)" /proc/self/status'],
    });
    expect(r.stdout.toString()).toBe('SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n');
    // A command's PATH is its own: the next command without one gets the default PATH.
    const odd = await client.exec({ argv: ['sh', '-c', 'true'], env: { PATH: '/nonexistent' } });
    expect(odd.exitCode).toBe(127);
    const after = await client.exec({ argv: ['sh', '-c', 'echo "$PATH"'] });
    expect(after.stdout.toString()).toBe(
      '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n',
    );
  });

  it('passes only stdin, stdout and stderr to the command', async () => {
    const r = await client.exec({ argv: ['sh', '-c', 'ls /proc/self/fd'] });
    // 0-2, plus the descriptor ls uses to read the directory.
    expect(
      r.stdout
        .toString()
        .trim()
        .split('\n')
        .map(Number)
        .sort((x, y) => x - y),
    ).toEqual([0, 1, 2, 3]);
  });

  it('kills the command when the signal aborts', async () => {
    const ac = new AbortController();
    let pid = 0;
    const p = client.exec({
      argv: ['sh', '-c', 'echo $$; exec sleep 60'],
      signal: ac.signal,
      onStdout: (c) => {
        pid = Number.parseInt(c.toString(), 10);
        ac.abort();
      },
    });
    await expect(p).rejects.toMatchObject({ name: 'AbortError' });
    expect(pid).toBeGreaterThan(1);
    expect(await waitFor(() => !alive(pid), 2000)).toBe(true);
    // An already aborted signal never starts anything.
    await expect(client.exec({ argv: ['true'], signal: ac.signal })).rejects.toMatchObject({
      name: 'AbortError',
    });
  });

  it('validates requests before sending them', async () => {
    await expect(client.exec({ argv: [] })).rejects.toMatchObject({ code: 'invalid_argument' });
    await expect(client.exec({ argv: ['a\0b'] })).rejects.toMatchObject({
      code: 'invalid_argument',
    });
    await expect(client.exec({ argv: ['true'], env: { 'A=B': 'x' } })).rejects.toMatchObject({
      code: 'invalid_argument',
    });
    await expect(client.exec({ argv: ['true'], timeoutMs: -1 })).rejects.toMatchObject({
      code: 'invalid_argument',
    });
  });
});

describe('connection handling', () => {
  it('retries until the socket appears, and times out when it never does', async () => {
    const sock = path.join(tmp, 'late.sock');
    const pending = AgentClient.connect(sock, { timeoutMs: 5000 });
    await new Promise((r) => setTimeout(r, 200));
    const late = await startAgent('late');
    const c = await pending;
    expect(await c.ping(Buffer.from('x'))).toEqual(Buffer.from('x'));
    c.close();
    await stopAgent(late.proc);

    const started = Date.now();
    await expect(
      AgentClient.connect(path.join(tmp, 'never.sock'), { timeoutMs: 300 }),
    ).rejects.toMatchObject({ code: 'agent_unavailable' });
    expect(Date.now() - started).toBeLessThan(1500);

    const ac = new AbortController();
    const aborted = AgentClient.connect(path.join(tmp, 'never.sock'), {
      timeoutMs: 5000,
      signal: ac.signal,
    });
    setTimeout(() => ac.abort(), 50);
    await expect(aborted).rejects.toMatchObject({ name: 'AbortError' });
  });

  it('hands over to a new client, survives junk, and fails pending requests on close', async () => {
    const a = await startAgent('reconnect');
    const first = await AgentClient.connect(a.sock, { timeoutMs: 5000 });
    const closed = new Promise<RuntimeError>((resolve) => first.once('close', resolve));
    const running = first.exec({ argv: ['sleep', '5'] }).catch((e: unknown) => e);

    // A second connection replaces the first (as after a restore).
    const second = await AgentClient.connect(a.sock, { timeoutMs: 5000 });
    const reason = await closed;
    expect(reason).toBeInstanceOf(RuntimeError);
    expect(reason.code).toBe('agent_unavailable');
    expect(await running).toMatchObject({ code: 'agent_unavailable' });
    expect(first.state).toBe('closed');
    await expect(first.ping()).rejects.toMatchObject({ code: 'agent_unavailable' });
    expect((await second.exec({ argv: ['echo', 'second'] })).stdout.toString()).toBe('second\n');

    // Junk on a raw connection (bad magic, an impossible length, a truncated frame) ...
    const raw = net.createConnection(a.sock);
    await new Promise((r) => raw.once('connect', r));
    const bogus = Buffer.from(encodeFrame(MsgType.Ping, 1));
    bogus.writeUInt32LE(0xfffffff0, 12);
    raw.write(
      Buffer.concat([crypto.randomBytes(4096), Buffer.from('FVM'), bogus, Buffer.from('FV')]),
    );
    raw.write(encodeFrame(MsgType.Exec, 5, Buffer.from([1, 0xff, 0xff])));
    await new Promise((r) => setTimeout(r, 50));
    // ... then a fresh client works, and the agent answers everything.
    const third = await AgentClient.connect(a.sock, { timeoutMs: 5000 });
    raw.destroy();
    expect((await third.exec({ argv: ['echo', 'third'] })).stdout.toString()).toBe('third\n');
    expect(a.proc.exitCode).toBeNull();

    // close(): pending requests reject, the close event fires once, and close() is idempotent.
    const slow = third.exec({ argv: ['sleep', '5'] }).catch((e: unknown) => e);
    let closes = 0;
    third.on('close', () => closes++);
    third.close();
    third.close();
    expect(await slow).toMatchObject({ code: 'agent_unavailable' });
    expect(closes).toBe(1);
    second.close();
    await stopAgent(a.proc);
  });

  it('rejects pending requests when the agent dies, and shutdown exits the agent', async () => {
    const a = await startAgent('dies');
    const c = await AgentClient.connect(a.sock, { timeoutMs: 5000 });
    let started!: () => void;
    const startedP = new Promise<void>((r) => (started = r));
    const p = c
      .exec({
        argv: ['sh', '-c', 'echo $$; exec sleep 5'],
        onStdout: (chunk) => {
          strays.add(Number.parseInt(chunk.toString(), 10)); // orphaned when the agent dies
          started();
        },
      })
      .catch((e: unknown) => e);
    await startedP;
    a.proc.kill('SIGKILL');
    expect(await p).toMatchObject({ code: 'agent_unavailable' });
    agents.delete(a.proc);

    const b = await startAgent('shutdown');
    const c2 = await AgentClient.connect(b.sock, { timeoutMs: 5000 });
    const exited = new Promise<number | null>((resolve) => b.proc.once('exit', resolve));
    await c2.shutdown();
    expect(await exited).toBe(0);
    agents.delete(b.proc);
    await waitFor(() => c2.state === 'closed', 1000);
    expect(c2.state).toBe('closed');
  });
});

describe('IDENTITY in test mode', () => {
  it('writes the files under --root and runs ip for net and route lines', async () => {
    const root = path.join(tmp, 'root');
    fs.mkdirSync(path.join(root, 'etc'), { recursive: true });
    fs.writeFileSync(
      path.join(root, 'etc/hosts'),
      '127.0.0.1 localhost\n::1 localhost ip6-localhost\n127.0.1.1 fastvm\n',
    );
    const ipLog = path.join(tmp, 'ip.log');
    const fakeIp = path.join(tmp, 'fake-ip');
    fs.writeFileSync(
      fakeIp,
      `#!/bin/sh\necho "$*" >> ${ipLog}\ncase "$*" in *198.51.100.9*) echo "RTNETLINK answers: File exists" >&2; exit 2;; esac\n`,
      { mode: 0o755 },
    );
    const a = await startAgent('identity', ['--root', root, '--ip', fakeIp]);
    const c = await AgentClient.connect(a.sock, { timeoutMs: 5000 });

    await c.setIdentity({
      hostname: 'vm-1234',
      machineId: '0123456789ABCDEF0123456789abcdef',
      clockNs: BigInt(Date.now()) * 1_000_000n,
      entropy: crypto.randomBytes(64),
      net: ['eth0 02:00:00:00:00:2a fd00::2a/64 10.0.0.42/24'],
      routes: ['-6 default via fd00::1 dev eth0', 'default via 10.0.0.1 dev eth0'],
    });
    expect(fs.readFileSync(path.join(root, 'etc/hostname'), 'utf8')).toBe('vm-1234\n');
    expect(fs.readFileSync(path.join(root, 'etc/machine-id'), 'utf8')).toBe(
      '0123456789abcdef0123456789abcdef\n',
    );
    expect(fs.readFileSync(path.join(root, 'etc/hosts'), 'utf8')).toBe(
      '127.0.0.1 localhost\n::1 localhost ip6-localhost\n127.0.1.1\tvm-1234\n',
    );
    expect(fs.readFileSync(ipLog, 'utf8').trim().split('\n')).toEqual([
      'link set eth0 down',
      'link set eth0 address 02:00:00:00:00:2a',
      'link set eth0 up',
      'addr flush dev eth0 scope global',
      'addr add fd00::2a/64 dev eth0 nodad',
      'addr add 10.0.0.42/24 dev eth0',
      '-6 route replace default via fd00::1 dev eth0',
      'route replace default via 10.0.0.1 dev eth0',
    ]);

    // The agent validates fields and names the one that failed.
    const bad = await c.setIdentity({ hostname: 'not a hostname' }).catch((e: unknown) => e);
    expect(bad).toBeInstanceOf(AgentError);
    expect((bad as AgentError).errno).toBe(22);
    expect((bad as AgentError).message).toContain('hostname');
    const badNet = await c.setIdentity({ net: ['eth0 nonsense'] }).catch((e: unknown) => e);
    expect((badNet as AgentError).message).toContain('net: bad MAC address');
    const failing = await c
      .setIdentity({ net: ['eth1 02:00:00:00:00:01 198.51.100.9/24'] })
      .catch((e: unknown) => e);
    expect(failing).toBeInstanceOf(AgentError);
    expect((failing as AgentError).message).toContain(
      'net: ip addr add 198.51.100.9/24 dev eth1: RTNETLINK answers: File exists',
    );
    c.close();
    await stopAgent(a.proc);
  });
});
