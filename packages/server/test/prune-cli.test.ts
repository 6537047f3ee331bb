/**
 * `fastvm-server prune` (issue 19) on a temporary guest cache (FASTVM_CACHE_DIR; never the shared
 * one): a golden a snapshot of the server's runtime still uses stays, an unused old one goes;
 * `--dry-run` removes nothing; a bad `--older-than` is a usage error.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from '../src/cli.js';

async function cli(...args: string[]): Promise<{ code: number; out: string }> {
  const lines: string[] = [];
  const io = { out: (l: string) => lines.push(l), err: (l: string) => lines.push(l) };
  const code = await runCli(args, io);
  return { code, out: lines.join('\n') };
}

describe('fastvm-server prune', () => {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'fastvm-prune-cli-'));
  const cache = path.join(root, 'cache');
  const dataDir = path.join(root, 'data');
  const before = process.env.FASTVM_CACHE_DIR;
  const golden = (name: string) => {
    const dir = path.join(cache, 'golden', name);
    fs.mkdirSync(dir, { recursive: true });
    fs.writeFileSync(path.join(dir, 'mem'), 'm');
    fs.writeFileSync(path.join(dir, 'snapshot.json'), JSON.stringify({ imageId: 'k0-i0' }));
    const old = new Date(Date.now() - 30 * 24 * 3600 * 1000);
    fs.utimesSync(dir, old, old);
    return dir;
  };

  beforeAll(() => {
    process.env.FASTVM_CACHE_DIR = cache;
    golden('golden-c1m2-used');
    golden('golden-c1m2-unused');
    const snap = path.join(dataDir, 'runtime', 'snapshots', 's1');
    fs.mkdirSync(snap, { recursive: true });
    fs.writeFileSync(
      path.join(snap, 'snapshot.json'),
      JSON.stringify({ memBase: path.join(cache, 'golden', 'golden-c1m2-used', 'mem'), disk: [] }),
    );
  });
  afterAll(() => {
    if (before === undefined) delete process.env.FASTVM_CACHE_DIR;
    else process.env.FASTVM_CACHE_DIR = before;
    fs.rmSync(root, { recursive: true, force: true });
  });

  it('lists, then removes, only what nothing uses', async () => {
    const dry = await cli('prune', '--dry-run', '--data-dir', dataDir);
    expect(dry.code).toBe(0);
    expect(dry.out).toContain(`would remove ${path.join(cache, 'golden', 'golden-c1m2-unused')}`);
    expect(dry.out).not.toContain('golden-c1m2-used');
    expect(fs.existsSync(path.join(cache, 'golden', 'golden-c1m2-unused'))).toBe(true);

    const real = await cli('prune', '--data-dir', dataDir);
    expect(real.code).toBe(0);
    expect(real.out).toMatch(/1 unused entries, \d+ MiB freed; 1 kept/);
    expect(fs.existsSync(path.join(cache, 'golden', 'golden-c1m2-unused'))).toBe(false);
    expect(fs.existsSync(path.join(cache, 'golden', 'golden-c1m2-used'))).toBe(true);
  });

  it('refuses a bad --older-than', async () => {
    const r = await cli('prune', '--older-than', 'soon', '--data-dir', dataDir);
    expect(r.code).toBe(2);
    expect(r.out).toContain('--older-than');
  });
});
