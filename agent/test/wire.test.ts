/**
 * The agent at the byte level (`--unix` test mode): malformed input, resynchronisation, sessions
 * and flow control, with hand-made frames rather than the AgentClient.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { RawConn as BaseConn, execPayload } from './raw-conn.js';
import {
  ExecTag,
  MsgType,
  decodeError,
  decodeExit,
  encodeFrame,
  encodeTlv,
  u32,
} from '@fastvm/runtime/agent-protocol';

const agentDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const agentBin = process.env.FASTVM_AGENT_BIN ?? path.join(agentDir, 'build/fastvm-agent');
const EINVAL = 22;
const EEXIST = 17;

let tmp = '';
const agents = new Set<ChildProcess>();

/** The shared raw connection, with a PING round trip. */
class RawConn extends BaseConn {
  async ping(id: number): Promise<void> {
    this.send(MsgType.Ping, id, Buffer.from(`p${id}`));
    const pong = await this.next((f) => f.id === id);
    expect(pong.type).toBe(MsgType.Pong);
    expect(pong.payload.toString()).toBe(`p${id}`);
  }
}

async function expectError(c: RawConn, id: number, code: number, text: RegExp): Promise<void> {
  const f = await c.next((fr) => fr.id === id);
  expect(f.type).toBe(MsgType.Error);
  const e = decodeError(f.payload);
  expect(e.code).toBe(code);
  expect(e.message).toMatch(text);
}

function startAgent(name: string, extra: string[] = []): { proc: ChildProcess; sock: string } {
  const sock = path.join(tmp, `${name}.sock`);
  const proc = spawn(agentBin, ['--unix', sock, ...extra], { stdio: 'ignore' });
  agents.add(proc);
  return { proc, sock };
}

beforeAll(() => {
  if (!process.env.FASTVM_AGENT_BIN)
    execFileSync('make', ['-s', '-C', agentDir], { stdio: 'inherit' });
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'fastvm-agent-wire-'));
});

afterAll(async () => {
  await Promise.all(
    [...agents].map(async (p) => {
      if (p.exitCode !== null || p.signalCode !== null) return;
      const exited = new Promise((r) => p.once('exit', r));
      p.kill('SIGTERM');
      await exited;
    }),
  );
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

describe('agent wire protocol', () => {
  let sock = '';
  let proc: ChildProcess;

  beforeAll(() => {
    ({ sock, proc } = startAgent('wire', ['--stall-ms', '200']));
  });

  it('answers HELLO after garbage, and refuses a bad nonce', async () => {
    const c = await RawConn.open(sock);
    c.write(
      Buffer.concat([Buffer.from('garbage\0\xff'), crypto.randomBytes(3000), Buffer.from('FV')]),
    );
    await c.hello();
    c.send(MsgType.Hello, 3, Buffer.from('short'));
    await expectError(c, 3, EINVAL, /nonce/);
    c.close();
  });

  it('answers malformed requests with ERROR and keeps serving', async () => {
    const c = await RawConn.open(sock);
    await c.hello();
    // A TLV whose length runs past the payload.
    c.send(MsgType.Exec, 10, Buffer.from([1, 100, 0, 0, 0, 0x41]));
    await expectError(c, 10, EINVAL, /malformed TLV/);
    c.send(MsgType.Exec, 11, encodeTlv([[ExecTag.Cwd, '/']]));
    await expectError(c, 11, EINVAL, /argv is empty/);
    c.send(MsgType.Exec, 12, execPayload(['']));
    await expectError(c, 12, EINVAL, /argv\[0\] is empty/);
    c.send(MsgType.Exec, 13, execPayload(['true'], [[ExecTag.Env, 'NOEQUALS']]));
    await expectError(c, 13, EINVAL, /KEY=VALUE/);
    c.send(MsgType.Exec, 14, execPayload(['true'], [[ExecTag.TimeoutMs, Buffer.from([1, 2])]]));
    await expectError(c, 14, EINVAL, /timeout_ms must be a u32/);
    c.send(MsgType.Exec, 15, execPayload(['a\0b']));
    await expectError(c, 15, EINVAL, /NUL/);
    c.send(0x7f, 16);
    await expectError(c, 16, EINVAL, /unknown message type 0x7f/);
    c.send(MsgType.Pong, 17);
    await expectError(c, 17, EINVAL, /unknown message type 0x82/);
    c.send(MsgType.Ping, 18, Buffer.alloc(64 * 1024 + 1));
    await expectError(c, 18, EINVAL, /ping/);
    c.send(MsgType.Signal, 19, Buffer.from([9]));
    await expectError(c, 19, EINVAL, /signal/);
    c.send(MsgType.Identity, 20, Buffer.from([1, 9, 0, 0, 0]));
    await expectError(c, 20, EINVAL, /malformed TLV/);
    // Unknown tags are ignored.
    c.send(MsgType.Exec, 21, execPayload(['true'], [[99, 'future field']]));
    expect(
      decodeExit((await c.next((f) => f.id === 21 && f.type === MsgType.Exit)).payload).exitCode,
    ).toBe(0);
    await c.ping(22);
    expect(proc.exitCode).toBeNull();
    c.close();
  });

  it('resynchronises after a bad header and drops a stalled partial frame', async () => {
    const c = await RawConn.open(sock);
    const huge = Buffer.from(encodeFrame(MsgType.Ping, 1));
    huge.writeUInt32LE(0xffffffff, 12);
    c.write(huge);
    await c.ping(30);
    // A frame that never completes (its sender went away) would swallow what follows; after
    // --stall-ms of silence the agent drops it and finds the HELLO inside.
    const partial = encodeFrame(MsgType.Ping, 31, Buffer.alloc(100)).subarray(0, 40);
    const started = Date.now();
    c.write(partial);
    await c.hello();
    expect(Date.now() - started).toBeGreaterThanOrEqual(150);
    await c.ping(32);
    c.close();
  });

  it('refuses a duplicate request id, signals process groups, ignores unknown ids', async () => {
    const c = await RawConn.open(sock);
    await c.hello();
    c.send(MsgType.Exec, 40, execPayload(['sleep', '30']));
    const started = await c.next((f) => f.id === 40);
    expect(started.type).toBe(MsgType.Started);
    expect(started.payload.readUInt32LE(0)).toBeGreaterThan(1);
    c.send(MsgType.Exec, 40, execPayload(['true']));
    await expectError(c, 40, EEXIST, /already running/);
    c.send(MsgType.Signal, 4040, u32(15)); // nobody: no reply
    c.send(MsgType.Signal, 40, u32(15));
    const exit = decodeExit((await c.next((f) => f.id === 40 && f.type === MsgType.Exit)).payload);
    expect(exit).toMatchObject({ exitCode: 143, signal: 15, timedOut: false });
    await c.ping(41);
    expect(c.drain().filter((f) => f.id === 4040)).toEqual([]);
    c.close();
  });

  it('detaches commands of the previous host on HELLO', async () => {
    const c = await RawConn.open(sock);
    await c.hello();
    c.send(MsgType.Exec, 50, execPayload(['sh', '-c', 'sleep 0.3; echo late']));
    await c.next((f) => f.id === 50 && f.type === MsgType.Started);
    await c.hello(); // a new host on the same stream
    // The same id is free again in the new session.
    c.send(MsgType.Exec, 50, execPayload(['echo', 'new']));
    await c.next((f) => f.id === 50 && f.type === MsgType.Started);
    const out = await c.next((f) => f.id === 50 && f.type === MsgType.Stdout);
    expect(out.payload.toString()).toBe('new\n');
    await c.next((f) => f.id === 50 && f.type === MsgType.Exit);
    await new Promise((r) => setTimeout(r, 500));
    await c.ping(51);
    // Nothing from the old command ("late", its EXIT) reached the new host.
    expect(c.drain().filter((f) => f.id === 50)).toEqual([]);
    c.close();
  });

  it('holds output back while the host is not reading, losing nothing', async () => {
    const c = await RawConn.open(sock);
    await c.hello();
    const total = 24 * 1024 * 1024;
    c.socket.pause();
    c.send(MsgType.Exec, 60, execPayload(['head', '-c', String(total), '/dev/zero']));
    await new Promise((r) => setTimeout(r, 500));
    c.socket.resume();
    const exit = await c.next((f) => f.id === 60 && f.type === MsgType.Exit, 10_000);
    expect(decodeExit(exit.payload).exitCode).toBe(0);
    const got = c
      .drain()
      .filter((f) => f.id === 60 && f.type === MsgType.Stdout)
      .reduce((n, f) => n + f.payload.length, 0);
    expect(got).toBe(total);
    c.close();
  });

  it('survives a host that disconnects mid-output', async () => {
    const c = await RawConn.open(sock);
    await c.hello();
    c.send(MsgType.Exec, 70, execPayload(['sh', '-c', 'head -c 50000000 /dev/zero; echo done']));
    await c.next((f) => f.id === 70 && f.type === MsgType.Stdout);
    c.close();
    const d = await RawConn.open(sock);
    await d.hello();
    await d.ping(71);
    d.send(MsgType.Exec, 72, execPayload(['echo', 'ok']));
    expect((await d.next((f) => f.id === 72 && f.type === MsgType.Stdout)).payload.toString()).toBe(
      'ok\n',
    );
    expect(proc.exitCode).toBeNull();
    d.close();
  });
});
