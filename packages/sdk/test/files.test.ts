// stream(), upload(), download(), pause/resume and TTL against the real API server with the
// FakeRuntime (its in-memory file system). Real VMs, directories and 50 MiB files:
// packages/server/test/files-vm.test.ts.
import crypto from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  ConflictError,
  FastVM,
  FileTransferError,
  NotFoundError,
  type ExecEvent,
  type TransferProgress,
  type VM,
} from '../src/index.js';
import { startTestServer, type TestServer } from './helpers/server.js';

let server: TestServer;
let client: FastVM;
let vm: VM;
let tmp: string;

beforeAll(async () => {
  server = await startTestServer({ launchWaitMs: 50 });
  client = new FastVM({ apiKey: server.key, baseUrl: server.url });
  vm = await client.launch({ name: 'sdk-files' });
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'fastvm-sdk-files-'));
});

afterAll(async () => {
  await client?.close();
  await server?.stop();
  await fs.rm(tmp, { recursive: true, force: true });
});

describe('stream()', () => {
  it('yields output while the command runs, then one exit event', async () => {
    const seen: Array<{ ev: ExecEvent; at: number }> = [];
    const t0 = performance.now();
    for await (const ev of client.stream(vm, 'echo first; sleep 0.4; echo second >&2; exit 3')) {
      seen.push({ ev, at: performance.now() - t0 });
    }
    expect(seen.map((s) => s.ev.type)).toEqual(['stdout', 'stderr', 'exit']);
    const [first, second, exit] = seen;
    expect((first!.ev as { data: Buffer }).data.toString()).toBe('first\n');
    expect((second!.ev as { data: Buffer }).data.toString()).toBe('second\n');
    expect(exit!.ev).toMatchObject({ type: 'exit', exitCode: 3, timedOut: false });
    // The first line arrived while the command was still sleeping.
    expect(second!.at - first!.at).toBeGreaterThan(300);
  });

  it('reports timeouts and refusals; breaking out cancels the command', async () => {
    const events: ExecEvent[] = [];
    for await (const ev of client.stream(vm, ['sleep', '5'], { timeoutSec: 1 })) events.push(ev);
    expect(events.at(-1)).toMatchObject({ type: 'exit', timedOut: true });

    await expect(async () => {
      for await (const _ of client.stream('no-such-vm', 'true')) void _;
    }).rejects.toBeInstanceOf(NotFoundError);

    const t0 = performance.now();
    for await (const ev of client.stream(vm, 'echo go; sleep 30')) {
      if (ev.type === 'stdout') break;
    }
    expect(performance.now() - t0).toBeLessThan(5000);
    // The client is still usable afterwards.
    expect((await client.run(vm, 'echo ok')).stdout).toBe('ok\n');
  });

  it('sends stdin', async () => {
    const out: Buffer[] = [];
    for await (const ev of client.stream(vm, ['cat'], { stdin: 'piped ✓' })) {
      if (ev.type === 'stdout') out.push(ev.data);
    }
    expect(Buffer.concat(out).toString()).toBe('piped ✓');
  });
});

describe('upload() and download()', () => {
  it('round-trips a multi-chunk file with progress, into a directory destination too', async () => {
    const data = crypto.randomBytes(2.5 * 1024 * 1024 + 17);
    const local = path.join(tmp, 'data.bin');
    await fs.writeFile(local, data);
    const progress: TransferProgress[] = [];
    const up = await client.upload(vm, local, '/root/data.bin', {
      onProgress: (p) => progress.push(p),
    });
    expect(up).toMatchObject({ kind: 'file', bytes: data.length, destination: '/root/data.bin' });
    expect(server.runtime.readFile(vm.id, '/root/data.bin')?.equals(data)).toBe(true);
    expect(progress.at(-1)).toEqual({ bytes: data.length, total: data.length });
    expect(progress.length).toBeGreaterThanOrEqual(4);
    expect(progress.map((p) => p.bytes)).toEqual(
      [...progress.map((p) => p.bytes)].sort((a, b) => a - b),
    );
    expect(server.runtime.listFiles(vm.id).filter((f) => f.endsWith('.part'))).toEqual([]);

    const into = await client.upload(vm, local, '/root/');
    expect(into.destination).toBe('/root/data.bin');

    const down = path.join(tmp, 'nested', 'dir', 'copy.bin');
    const dprog: TransferProgress[] = [];
    const got = await client.download(vm, '/root/data.bin', down, {
      onProgress: (p) => dprog.push(p),
    });
    expect(got).toMatchObject({ kind: 'file', bytes: data.length, destination: down });
    expect((await fs.readFile(down)).equals(data)).toBe(true);
    expect(dprog.at(-1)?.bytes).toBe(data.length);

    // Into an existing local directory: keeps the remote name.
    const inDir = await client.download(vm, '/root/data.bin', tmp);
    expect(inDir.destination).toBe(path.join(tmp, 'data.bin'));

    const empty = path.join(tmp, 'empty');
    await fs.writeFile(empty, '');
    await client.upload(vm, empty, '/root/empty');
    expect(server.runtime.readFile(vm.id, '/root/empty')?.length).toBe(0);
    await client.download(vm, '/root/empty', path.join(tmp, 'empty-back'));
    expect((await fs.readFile(path.join(tmp, 'empty-back'))).length).toBe(0);
  });

  it('fails cleanly: missing paths, bad paths, failing commands leave nothing behind', async () => {
    await expect(client.upload(vm, path.join(tmp, 'nope'), '/root/x')).rejects.toMatchObject({
      name: 'FileTransferError',
      code: 'ENOENT',
    });
    await expect(client.upload(vm, path.join(tmp, 'data.bin'), 'relative')).rejects.toBeInstanceOf(
      FileTransferError,
    );
    const failed = await client
      .upload(vm, path.join(tmp, 'data.bin'), '/no/such/dir/file')
      .catch((e: unknown) => e);
    expect(failed).toBeInstanceOf(FileTransferError);
    expect((failed as FileTransferError).exitCode).not.toBe(0);
    expect(server.runtime.listFiles(vm.id).filter((f) => f.startsWith('/no/'))).toEqual([]);

    const missing = await client
      .download(vm, '/root/missing', path.join(tmp, 'm'))
      .catch((e: unknown) => e);
    expect(missing).toMatchObject({ name: 'FileTransferError', code: 'ENOENT' });

    // The fake guest has no tar: a directory download fails, and no partial directory remains.
    const before = await fs.readdir(tmp);
    await expect(client.download(vm, '/root', path.join(tmp, 'rootdir'))).rejects.toBeInstanceOf(
      FileTransferError,
    );
    expect(await fs.readdir(tmp)).toEqual(before);
  });
});

describe('pause, resume and TTL', () => {
  it('pauses, resumes, sets and refreshes TTLs', async () => {
    const v = await client.launch({ name: 'sdk-ttl', ttl: { seconds: 600, action: 'pause' } });
    expect(v.ttl).toEqual({ seconds: 600, action: 'pause' });
    expect(v.expiresAt).toBeGreaterThan(Date.now() + 590_000);
    const paused = await client.pause(v);
    expect(paused.status).toBe('paused');
    expect(paused.pausedAt).not.toBeNull();
    expect(paused.ttlRemainingMs).toBeGreaterThan(590_000);
    expect(paused.expiresAt).toBeNull();
    expect((await client.pause(v)).status).toBe('paused');
    expect((await client.refreshTtl(v)).ttlRemainingMs).toBe(600_000);
    const resumed = await client.resume(v);
    expect(resumed).toMatchObject({ status: 'running', pausedAt: null, ttlRemainingMs: null });
    const changed = await client.setTtl(v, { seconds: 30, action: 'delete' });
    expect(changed.ttl).toEqual({ seconds: 30, action: 'delete' });
    const removed = await client.setTtl(v, null);
    expect(removed.ttl).toBeNull();
    await expect(client.refreshTtl(v)).rejects.toBeInstanceOf(ConflictError);
    await client.remove(v);
  });
});
