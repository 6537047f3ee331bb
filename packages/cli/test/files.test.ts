// `fastvm cp`, streaming `vm exec`, `vm pause|resume|ttl` and `--ttl` against the real API server
// with the FakeRuntime: mostly in process (`main()` with captured streams, fast), and one
// round trip through the `fastvm` binary. Real VMs (50 MiB files, directories):
// packages/server/test/files-vm.test.ts.
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import fs from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startServer, type ServerHandle } from '@fastvm/server';
import { FakeRuntime } from '@fastvm/server/testing';
import { parseRemote } from '../src/commands/cp.js';
import { main } from '../src/main.js';
import { parseTtl } from '../src/commands/vm/ttl.js';
import { formatBytes } from '../src/output.js';

const BIN = resolve(import.meta.dirname, '../bin/fastvm.cjs');
const KEY = 'fastvm-cli-files-key-0123456789';

let server: ServerHandle;
let runtime: FakeRuntime;
let dataDir: string;
let home: string;

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
  /** ms after spawn at which each stdout chunk arrived. */
  chunks: Array<{ at: number; text: string }>;
}

function fastvm(args: string[]): Promise<Run> {
  return new Promise((resolvePromise, reject) => {
    const t0 = performance.now();
    const child = spawn(process.execPath, [BIN, ...args], {
      env: {
        PATH: process.env['PATH'],
        HOME: home,
        XDG_CONFIG_HOME: join(home, '.config'),
        FASTVM_API_KEY: KEY,
        FASTVM_BASE_URL: server.url,
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const run: Run = { code: null, stdout: '', stderr: '', chunks: [] };
    child.stdout.on('data', (c: Buffer) => {
      run.stdout += c.toString();
      run.chunks.push({ at: performance.now() - t0, text: c.toString() });
    });
    child.stderr.on('data', (c: Buffer) => (run.stderr += c.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolvePromise({ ...run, code }));
  });
}

/** Runs the CLI in process; stdout chunks are timestamped like the subprocess runner's. */
async function cli(args: string[]): Promise<Run> {
  const t0 = performance.now();
  const run: Run = { code: null, stdout: '', stderr: '', chunks: [] };
  const text = (c: string | Uint8Array): string =>
    typeof c === 'string' ? c : Buffer.from(c).toString();
  run.code = await main(args, {
    stdout: {
      write: (c: string | Uint8Array) => {
        run.stdout += text(c);
        run.chunks.push({ at: performance.now() - t0, text: text(c) });
        return true;
      },
    },
    stderr: { write: (c: string | Uint8Array) => (run.stderr += text(c)) },
    stdin: {},
    env: {
      HOME: home,
      XDG_CONFIG_HOME: join(home, '.config'),
      FASTVM_API_KEY: KEY,
      FASTVM_BASE_URL: server.url,
    },
  });
  return run;
}

beforeAll(async () => {
  dataDir = mkdtempSync(join(tmpdir(), 'fastvm-cli-files-server-'));
  home = mkdtempSync(join(tmpdir(), 'fastvm-cli-files-home-'));
  runtime = new FakeRuntime();
  server = await startServer({
    port: 0,
    dataDir,
    runtime,
    bootstrapKey: KEY,
    logLevel: 'silent',
  });
  const r = await cli(['vm', 'launch', '-n', 'cp-vm', '--json']);
  expect(r.code).toBe(0);
});

afterAll(async () => {
  await server?.close();
  rmSync(dataDir, { recursive: true, force: true });
  rmSync(home, { recursive: true, force: true });
});

describe('parsing', () => {
  it('vm:path operands and TTL specs', () => {
    expect(parseRemote('dev:/root/a b')).toEqual({ vm: 'dev', path: '/root/a b' });
    expect(parseRemote('dev:out.txt')).toEqual({ vm: 'dev', path: '/root/out.txt' });
    expect(parseRemote('dev:')).toEqual({ vm: 'dev', path: '/root/' });
    expect(parseRemote('./a:b')).toBeUndefined();
    expect(parseRemote('/tmp/x')).toBeUndefined();
    expect(parseTtl('30s:pause')).toEqual({ seconds: 30, action: 'pause' });
    expect(parseTtl('2h:delete')).toEqual({ seconds: 7200, action: 'delete' });
    expect(parseTtl('45')).toEqual({ seconds: 45, action: 'pause' });
    expect(parseTtl('365d')).toEqual({ seconds: 31_536_000, action: 'pause' });
    for (const bad of ['0s', '366d', '1w', '10s:stop', '']) expect(() => parseTtl(bad)).toThrow();
    expect(formatBytes(52428800)).toBe('50.0 MiB');
  });
});

describe('fastvm cp', () => {
  it('copies a file in and out; checksums match; --json reports the transfer', async () => {
    const dir = await fs.mkdtemp(join(tmpdir(), 'fastvm-cli-cp-'));
    try {
      const data = crypto.randomBytes(1_500_000);
      await fs.writeFile(join(dir, 'in.bin'), data);
      const up = await fastvm(['cp', join(dir, 'in.bin'), 'cp-vm:/root/in.bin']);
      expect(up).toMatchObject({ code: 0, stdout: '', stderr: '' });
      const vmId = runtime.runningVmIds()[0]!;
      expect(runtime.readFile(vmId, '/root/in.bin')?.equals(data)).toBe(true);

      const down = await cli(['cp', 'cp-vm:in.bin', join(dir, 'out.bin'), '--json']);
      expect(down.code).toBe(0);
      expect(JSON.parse(down.stdout)).toMatchObject({
        kind: 'file',
        bytes: data.length,
        destination: join(dir, 'out.bin'),
      });
      const sha = (b: Buffer): string => crypto.createHash('sha256').update(b).digest('hex');
      expect(sha(await fs.readFile(join(dir, 'out.bin')))).toBe(sha(data));
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });

  it('refuses two local or two remote operands and reports missing files', async () => {
    expect((await cli(['cp', '/tmp/a', '/tmp/b'])).code).toBe(2);
    expect((await cli(['cp', 'a:/x', 'b:/y'])).code).toBe(2);
    const missing = await cli(['cp', 'cp-vm:/root/nope', '/tmp/nope']);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/no such file or directory/);
    const unknownVm = await cli(['cp', '/etc/hostname', 'no-such-vm:/root/x']);
    expect(unknownVm.code).toBe(1);
    expect(unknownVm.stderr).toMatch(/404/);
  });
});

describe('fastvm vm exec streams', () => {
  it('writes output as it is produced; --no-stream waits for the end', async () => {
    const streamed = await cli(['vm', 'exec', 'cp-vm', 'echo one; sleep 1; echo two; exit 5']);
    expect(streamed.code).toBe(5);
    expect(streamed.stdout).toBe('one\ntwo\n');
    expect(streamed.chunks.length).toBe(2);
    expect(streamed.chunks[1]!.at - streamed.chunks[0]!.at).toBeGreaterThan(800);

    const buffered = await cli([
      'vm',
      'exec',
      '--no-stream',
      'cp-vm',
      'echo one; sleep 1; echo two',
    ]);
    expect(buffered.code).toBe(0);
    expect(buffered.chunks.length).toBe(1);
    expect(buffered.stdout).toBe('one\ntwo\n');
  });
});

describe('fastvm vm pause | resume | ttl, launch --ttl', () => {
  it('pauses, resumes and manages TTLs', async () => {
    const vm = JSON.parse(
      (await cli(['vm', 'launch', '-n', 'ttl-vm', '--ttl', '10m:delete', '--json'])).stdout,
    );
    expect(vm.ttl).toEqual({ seconds: 600, action: 'delete' });
    expect(vm.expiresAtMs).toBeGreaterThan(Date.now());
    const paused = JSON.parse((await cli(['vm', 'pause', 'ttl-vm', '--json'])).stdout);
    expect(paused.status).toBe('paused');
    expect(paused.ttlRemainingMs).toBeGreaterThan(500_000);
    const human = await cli(['vm', 'get', 'ttl-vm']);
    expect(human.stdout).toMatch(/TTL\s+10m 0s, then delete \(\d+m \d+s left when resumed\)/);
    expect(human.stdout).toMatch(/PAUSED/);
    const execPaused = await cli(['vm', 'exec', 'ttl-vm', 'true']);
    expect(execPaused.code).toBe(1);
    expect(execPaused.stderr).toMatch(/409/);
    expect(JSON.parse((await cli(['vm', 'resume', 'ttl-vm', '--json'])).stdout).status).toBe(
      'running',
    );
    expect(
      JSON.parse((await cli(['vm', 'ttl', 'ttl-vm', '30s:pause', '--json'])).stdout).ttl,
    ).toEqual({ seconds: 30, action: 'pause' });
    expect((await cli(['vm', 'ttl', 'ttl-vm', 'refresh'])).code).toBe(0);
    expect(JSON.parse((await cli(['vm', 'ttl', 'ttl-vm', 'off', '--json'])).stdout).ttl).toBe(null);
    const noTtl = await cli(['vm', 'ttl', 'ttl-vm', 'refresh']);
    expect(noTtl.code).toBe(1);
    expect(noTtl.stderr).toMatch(/409.*no TTL/);
    expect((await cli(['vm', 'launch', '--ttl', 'soon'])).stderr).toMatch(/--ttl must be/);
  });
});
