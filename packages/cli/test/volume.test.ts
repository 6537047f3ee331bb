// `fastvm volume …` and `vm launch --volume` as a subprocess against the real API server with
// the FakeRuntime (the mechanism itself is tested on real VMs in the server's volumes-vm test).
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startServer, type ServerHandle } from '@fastvm/server';
import { FakeRuntime } from '@fastvm/server/testing';

const BIN = resolve(import.meta.dirname, '../bin/fastvm.cjs');
const KEY = 'fastvm-cli-volume-key-0123456789';
let server: ServerHandle;
let dataDir: string;
let home: string;

function fastvm(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((done, reject) => {
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
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    child.on('error', reject);
    child.on('close', (code) => done({ code, stdout, stderr }));
  });
}

async function json<T = Record<string, unknown>>(args: string[]): Promise<T> {
  const r = await fastvm([...args, '--json']);
  expect(r.stderr).toBe('');
  expect(r.code).toBe(0);
  return JSON.parse(r.stdout) as T;
}

beforeAll(async () => {
  dataDir = mkdtempSync(join(tmpdir(), 'fastvm-cli-vol-server-'));
  home = mkdtempSync(join(tmpdir(), 'fastvm-cli-vol-home-'));
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
  rmSync(home, { recursive: true, force: true });
});

describe('fastvm volume', () => {
  it('create, ls, launch --volume, attach :ro, detach, resize, rm', async () => {
    const v = await json(['volume', 'create', 'data', '--size', '2']);
    expect(v).toMatchObject({ name: 'data', sizeGiB: 2, accessMode: 'rw', status: 'ready' });
    const table = await fastvm(['volume', 'ls']);
    expect(table.stdout).toMatch(/data\s+2 GiB/);

    const vm = await json<{ id: string; volumes: unknown[] }>([
      'vm',
      'launch',
      '-n',
      'with-vol',
      '--volume',
      'data:/data',
    ]);
    expect(vm.volumes).toEqual([
      { volumeId: v['id'], mountPath: '/data', mountStatus: 'mounted', readOnly: false },
    ]);
    // A second VM may not write; read-only it gets a 409 too while the writer holds it.
    const other = await json<{ id: string }>(['vm', 'launch', '-n', 'reader']);
    const refused = await fastvm(['volume', 'attach', 'reader', 'data:/mnt/d:ro']);
    expect(refused.code).not.toBe(0);
    expect(refused.stderr).toMatch(/409|attached read-write/);
    expect((await fastvm(['volume', 'detach', 'with-vol', 'data'])).code).toBe(0);
    const ro = await json(['volume', 'attach', 'reader', 'data:/mnt/d:ro']);
    expect(ro).toMatchObject({ mountPath: '/mnt/d', readOnly: true, mountStatus: 'mounted' });
    expect((await fastvm(['volume', 'rm', 'data'])).code).not.toBe(0); // attached
    await fastvm(['volume', 'detach', 'reader', 'data']);
    expect(await json(['volume', 'resize', 'data', '3'])).toMatchObject({ sizeGiB: 3 });
    expect((await fastvm(['volume', 'rm', 'data'])).stdout).toContain('Deleted volume data');
    expect(await json(['volume', 'ls'])).toEqual([]);
    const bad = await fastvm(['vm', 'launch', '--volume', 'nopath']);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toContain('VOLUME:/PATH[:ro]');
    await fastvm(['vm', 'rm', vm.id]);
    await fastvm(['vm', 'rm', other.id]);
  }, 60_000);
});
