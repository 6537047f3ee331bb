/** Shared setup for tests that boot real QEMU guests. */
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { defaultCacheDir } from '../src/qemu.js';
import { createQemuRuntime, type QemuRuntime, type QemuRuntimeOptions } from '../src/runtime.js';
import type { ExecResult } from '../src/types.js';

/**
 * A runtime on a fresh temporary data dir. Golden snapshots come from the shared golden cache
 * (`~/.cache/fastvm/golden`), so only the first test file of a new image pays for a cold boot.
 * When the test process exits, any VM still running is killed and the data dir removed, so a
 * failing test leaves nothing behind.
 */
export async function testRuntime(
  dataDir = tempDataDir(),
  extra: Partial<Omit<QemuRuntimeOptions, 'dataDir'>> = {},
): Promise<QemuRuntime> {
  const rt = await createQemuRuntime({
    dataDir,
    log: (m) => process.env.DEBUG && console.log(m),
    ...extra,
  });
  process.once('exit', () => {
    killVmsIn(dataDir);
    fs.rmSync(dataDir, { recursive: true, force: true });
  });
  return rt;
}

/** SIGKILL every QEMU recorded in a data dir (synchronous, for exit handlers). */
function killVmsIn(dataDir: string): void {
  let ids: string[] = [];
  try {
    ids = fs.readdirSync(path.join(dataDir, 'vms'));
  } catch {
    return;
  }
  for (const id of ids) {
    try {
      const rec = JSON.parse(fs.readFileSync(path.join(dataDir, 'vms', id, 'vm.json'), 'utf8')) as {
        pid: number;
      };
      if (rec.pid > 0) process.kill(rec.pid, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
}

export function tempDataDir(): string {
  fs.mkdirSync(path.join(defaultCacheDir(), 'test'), { recursive: true });
  return fs.mkdtempSync(path.join(defaultCacheDir(), 'test', 'rt-'));
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
    out = execFileSync('pgrep', ['-f', `qemu-system-x86_64(-microvm)? -name ${prefix}`], {
      encoding: 'utf8',
    });
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

/**
 * Stop every VM of a test runtime and remove its data dir — also VMs the runtime no longer tracks
 * because a server detached it (a graceful server close keeps VMs running, by design).
 */
export async function disposeRuntime(rt: QemuRuntime | undefined): Promise<void> {
  if (!rt) return;
  await rt.destroyAll();
  const sweeper = await createQemuRuntime({ dataDir: rt.dataDir });
  await sweeper.adopt([]);
  await sweeper.destroyAll();
  fs.rmSync(rt.dataDir, { recursive: true, force: true });
}
