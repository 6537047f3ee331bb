// `fastvm snapshot fork` and `fastvm snapshot tree` in process (`main()` with captured streams)
// against the real API server with the FakeRuntime (issue 18).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startServer, type ServerHandle } from '@fastvm/server';
import { FakeRuntime } from '@fastvm/server/testing';
import { main } from '../src/main.js';

const KEY = 'fastvm-cli-fork-key-0123456789';

let server: ServerHandle;
let dataDir: string;
let home: string;

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

async function cli(args: string[]): Promise<Run> {
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
  dataDir = mkdtempSync(join(tmpdir(), 'fastvm-cli-fork-server-'));
  home = mkdtempSync(join(tmpdir(), 'fastvm-cli-fork-home-'));
  server = await startServer({
    port: 0,
    dataDir,
    runtime: new FakeRuntime(),
    bootstrapKey: KEY,
    logLevel: 'silent',
  });
  expect((await cli(['vm', 'launch', '-n', 'dev', '--json'])).code).toBe(0);
  expect((await cli(['snapshot', 'create', 'dev', '-n', 'base', '--json'])).code).toBe(0);
});

afterAll(async () => {
  await server?.close();
  rmSync(dataDir, { recursive: true, force: true });
  rmSync(home, { recursive: true, force: true });
});

describe('snapshot fork', () => {
  it('forks N VMs by snapshot name; --json prints the VMs', async () => {
    const r = await cli(['snapshot', 'fork', 'base', '-n', '3', '--prefix', 'w', '--json']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const vms = JSON.parse(r.stdout) as {
      name: string;
      status: string;
      sourceSnapshotId: string;
    }[];
    expect(vms.map((v) => [v.name, v.status])).toEqual([
      ['w-1', 'running'],
      ['w-2', 'running'],
      ['w-3', 'running'],
    ]);
    expect(new Set(vms.map((v) => v.sourceSnapshotId)).size).toBe(1);
  });

  it('prints a table without --json, and checks its flags', async () => {
    const r = await cli(['snapshot', 'fork', 'base', '--count', '2']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/NAME/);
    expect(r.stdout).toMatch(/base-1/);
    expect(r.stdout).toMatch(/base-2/);
    const missing = await cli(['snapshot', 'fork', 'base']);
    expect(missing.code).not.toBe(0);
    expect(missing.stderr).toMatch(/--count/);
    const big = await cli(['snapshot', 'fork', 'base', '-n', '101']);
    expect(big.code).not.toBe(0);
    expect(big.stderr).toMatch(/at most 100/);
    const zero = await cli(['snapshot', 'fork', 'base', '-n', '0']);
    expect(zero.code).not.toBe(0);
  });

  it('reports a quota refusal', async () => {
    const r = await cli(['snapshot', 'fork', 'base', '-n', '100']);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/quota exceeded for vcpu.*would fit/);
  });
});

describe('snapshot tree', () => {
  it('draws the lineage with box-drawing characters, the snapshot marked', async () => {
    expect((await cli(['snapshot', 'create', 'w-1', '-n', 'child', '--json'])).code).toBe(0);
    expect((await cli(['snapshot', 'restore', 'child', '-n', 'grandchild', '--json'])).code).toBe(
      0,
    );
    const r = await cli(['snapshot', 'tree', 'base']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const lines = r.stdout.trimEnd().split('\n');
    const shape = lines.map((l) => l.replace(/ [0-9a-f]{8}/g, ''));
    expect(shape).toEqual([
      'vm dev running',
      '└── snapshot base ready ◀',
      '    ├── vm w-1 running',
      '    │   └── snapshot child ready',
      '    │       └── vm grandchild running',
      '    ├── vm w-2 running',
      '    ├── vm w-3 running',
      '    ├── vm base-1 running',
      '    └── vm base-2 running',
    ]);
    const child = await cli(['snapshot', 'tree', 'child']);
    expect(child.stdout.split('\n').map((l) => l.replace(/ [0-9a-f]{8}/g, ''))).toEqual([
      'vm dev running',
      '└── snapshot base ready',
      '    └── vm w-1 running',
      '        └── snapshot child ready ◀',
      '            └── vm grandchild running',
      '',
    ]);
  });

  it('without a name draws every lineage once; --json prints the API shape', async () => {
    const all = await cli(['snapshot', 'tree']);
    expect(all.code).toBe(0);
    expect(all.stdout.match(/^vm dev /gm)).toHaveLength(1);
    const json = await cli(['snapshot', 'tree', 'child', '--json']);
    const l = JSON.parse(json.stdout) as { ancestors: { name: string }[]; descendants: unknown[] };
    expect(l.ancestors.map((a) => a.name)).toEqual(['dev', 'base', 'w-1', 'child']);
    expect(l.descendants).toHaveLength(1);
  });

  it('shows deleted links as ids', async () => {
    expect((await cli(['vm', 'rm', 'w-1', '--yes'])).code).toBe(0);
    const r = await cli(['snapshot', 'tree', 'child']);
    expect(r.stdout).toMatch(/└── vm [0-9a-f]{8} \(deleted\)/);
  });
});
