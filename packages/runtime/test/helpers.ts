/** Shared setup for tests that boot real QEMU guests. */
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { defaultCacheDir } from '../src/qemu.js';
import { createQemuRuntime, type QemuRuntime } from '../src/runtime.js';
import type { ExecResult } from '../src/types.js';

/**
 * One runtime data dir for all test files: golden snapshots are cached there across files and
 * runs (they are keyed by image, machine and accelerator). Tests remove every VM and snapshot
 * they create.
 */
export const TEST_DATA_DIR =
  process.env.FASTVM_TEST_DATA_DIR || path.join(defaultCacheDir(), 'test-runtime');

export async function testRuntime(): Promise<QemuRuntime> {
  return createQemuRuntime({
    dataDir: TEST_DATA_DIR,
    log: (m) => process.env.DEBUG && console.log(m),
  });
}

export function uid(prefix = 't'): string {
  return `${prefix}-${crypto.randomBytes(4).toString('hex')}`;
}

export function text(r: ExecResult): { out: string; err: string; code: number } {
  return { out: r.stdout.toString(), err: r.stderr.toString(), code: r.exitCode };
}

/** PIDs of QEMU processes whose `-name` starts with `prefix`. */
export function qemuPids(prefix: string): number[] {
  let out = '';
  try {
    out = execFileSync('pgrep', ['-f', `qemu-system-x86_64 -name ${prefix}`], { encoding: 'utf8' });
  } catch {
    return [];
  }
  return out.split('\n').filter(Boolean).map(Number);
}

/** Layer files not referenced by any snapshot record or VM directory under the data dir. */
export function strayFiles(dataDir: string): string[] {
  const referenced = new Set<string>();
  for (const dir of ['vms', 'snapshots']) {
    for (const id of fs.readdirSync(path.join(dataDir, dir))) {
      for (const f of fs.readdirSync(path.join(dataDir, dir, id))) {
        if (!f.endsWith('.json')) continue;
        const s = fs.readFileSync(path.join(dataDir, dir, id, f), 'utf8');
        for (const m of s.matchAll(/"(\/[^"]+)"/g)) referenced.add(m[1]!);
      }
    }
  }
  const stray: string[] = [];
  for (const kind of ['disk', 'mem']) {
    const dir = path.join(dataDir, 'layers', kind);
    for (const f of fs.readdirSync(dir)) {
      if (!referenced.has(path.join(dir, f))) stray.push(path.join(dir, f));
    }
  }
  return stray;
}
