// `fastvm build` and `fastvm image import` in process (`main()` with captured streams) against
// the real API server with the FakeRuntime (issue 15).
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startServer, type ServerHandle } from '@fastvm/server';
import { FakeRuntime } from '@fastvm/server/testing';
import { main } from '../src/main.js';

const KEY = 'fastvm-cli-build-key-0123456789';

let server: ServerHandle;
let dataDir: string;
let home: string;
let ctx: string;

async function cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const run = { code: 0, stdout: '', stderr: '' };
  const text = (c: string | Uint8Array): string =>
    typeof c === 'string' ? c : Buffer.from(c).toString();
  run.code = await main(args, {
    stdout: { write: (c: string | Uint8Array) => ((run.stdout += text(c)), true) },
    stderr: { write: (c: string | Uint8Array) => ((run.stderr += text(c)), true) },
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
  dataDir = mkdtempSync(join(tmpdir(), 'fastvm-cli-build-server-'));
  home = mkdtempSync(join(tmpdir(), 'fastvm-cli-build-home-'));
  ctx = mkdtempSync(join(tmpdir(), 'fastvm-cli-build-ctx-'));
  writeFileSync(join(ctx, 'Build.docker'), 'FROM fastvm/base\nARG WHO=nobody\nRUN echo built-it\n');
  server = await startServer({
    port: 0,
    dataDir,
    runtime: new FakeRuntime(),
    bootstrapKey: KEY,
    logLevel: 'silent',
    // No image source: registry images fail clearly (a registry image end to end is in
    // packages/server/test/images-api-vm.test.ts).
    images: false,
  });
});

afterAll(async () => {
  await server?.close();
  for (const d of [dataDir, home, ctx]) rmSync(d, { recursive: true, force: true });
});

describe('fastvm build / image import', () => {
  it('builds with -f, -t and --build-arg, shows progress and RUN output, prints JSON at the end', async () => {
    const run = await cli([
      'build',
      '-f',
      join(ctx, 'Build.docker'),
      '-t',
      'cli-img',
      '--build-arg',
      'WHO=me',
      ctx,
      '--json',
    ]);
    expect(run.code, run.stderr).toBe(0);
    expect(run.stderr).toContain('built-it');
    expect(run.stderr).toMatch(/==> done completed/);
    const snap = JSON.parse(run.stdout) as { name: string; status: string };
    expect(snap).toMatchObject({ name: 'cli-img', status: 'ready' });
    const bad = await cli(['build', '--build-arg', 'nokey', ctx]);
    expect(bad.code).toBe(2);
    const failed = await cli(['build', '-f', join(ctx, 'missing'), ctx]);
    expect(failed.code).toBe(2);
  });

  it('imports an image', async () => {
    const run = await cli(['image', 'import', 'debian:bookworm', '-n', 'cli-base']);
    expect(run.code, run.stderr).toBe(0);
    expect(run.stdout).toMatch(/cli-base/);
    const reg = await cli(['image', 'import', 'example.com/x:1']);
    expect(reg.code).toBe(1);
    expect(reg.stderr).toMatch(/registry images are not available/);
  });
});
