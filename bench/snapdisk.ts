/**
 * Bench group `snapdisk` (issue 19): real disk added per snapshot, and restores along a chain.
 *
 * - `snapshot_disk_1m`: allocated bytes (`du`) the data dir grows by per snapshot of a c1m2 VM
 *   that changed 1 MiB of memory (a new tmpfs file) and one small disk file since its previous
 *   snapshot, measured after the snapshot's background work (flatten/merge, digests) is done.
 *   `snapshot_disk_1m_first` is the VM's first snapshot (a delta over the golden).
 * - `snapshot_disk_256m`: the same after 256 MiB changed (past the flatten threshold: one
 *   standalone memory file), and `snapshot_disk_1m_after_flatten` the next 1 MiB step over it.
 * - `snapshot_disk_1m_flatten_always`: the baseline in the same run, a runtime that flattens every
 *   snapshot (`flattenBytes: 0`: what every snapshot cost before chains).
 * - `restore_chain_1` / `restore_chain_10`: restore + first `true` of the 1st and the 10th
 *   snapshot of one chain, and `restore_flat` of a flattened snapshot (the baseline's), interleaved;
 *   `restore_chain_10_vs_1`, `restore_chain_10_vs_flat`: ratios of their p50s.
 * @module
 */
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import type { QemuRuntime, QemuRuntimeOptions } from '@fastvm/runtime';
import type { Recorder } from './stats.js';
import { now } from './sys.js';

export interface SnapDiskContext {
  readonly rec: Recorder;
  readonly root: string;
  /** A runtime on `dataDir` (registered for cleanup by the caller). */
  readonly runtime: (dataDir: string, extra?: Partial<QemuRuntimeOptions>) => Promise<QemuRuntime>;
  readonly release: (rt: QemuRuntime) => Promise<void>;
  readonly samples: { chain: number; restores: number; baseline: number };
  readonly log: (s: string) => void;
}

const MiB = 2 ** 20;

function allocated(dir: string): number {
  return Number(execFileSync('du', ['-s', '-B1', dir], { encoding: 'utf8' }).split('\t')[0]);
}

async function sh(rt: QemuRuntime, id: string, script: string): Promise<void> {
  const r = await rt.exec(id, { argv: ['sh', '-c', script], timeoutMs: 600_000 });
  if (r.exitCode !== 0) throw new Error(`${script}: exit ${r.exitCode}: ${r.stderr.toString()}`);
}

/**
 * `mib` MiB of new random data in guest RAM (a tmpfs file) and one small disk file, step `i`
 * (`head`, not python3: a python3 run changes a few MiB of guest memory of its own).
 */
const change = (i: number, mib: number) =>
  `head -c ${mib}M /dev/urandom > /dev/shm/step${i} && echo ${i} > /root/step${i} && sync`;

/** Snapshot, wait for its background work, and return the disk it added (bytes). */
async function snapshotAdds(rt: QemuRuntime, vm: string, snap: string): Promise<number> {
  const before = allocated(rt.dataDir);
  await rt.snapshot(vm, snap);
  await rt.memorySettled(snap);
  await rt.digestsSettled(snap);
  return allocated(rt.dataDir) - before;
}

export async function groupSnapDisk(ctx: SnapDiskContext): Promise<void> {
  const { rec, samples } = ctx;
  // (A snapshot restored twice is flattened by default, as a fork source: off here, so that the
  // chain restores below stay chain restores.)
  const rt = await ctx.runtime(path.join(ctx.root, 'snapdisk-rt'), {
    memoryChain: { flattenAfterRestores: 0 },
  });
  // Baseline, same run: every snapshot flattened (the layout before chains).
  const base = await ctx.runtime(path.join(ctx.root, 'snapdisk-flat-rt'), {
    memoryChain: { flattenBytes: 0 },
  });
  try {
    await base.launch({ id: 'sf', machine: 'c1m2' });
    await sh(base, 'sf', 'true');
    await snapshotAdds(base, 'sf', 'sf-0');
    for (let i = 1; i <= samples.baseline; i++) {
      await sh(base, 'sf', change(i, 1));
      rec.add(
        'snapshot_disk_1m_flatten_always',
        'MiB',
        (await snapshotAdds(base, 'sf', `sf-${i}`)) / MiB,
      );
    }
    await base.destroy('sf');

    await rt.launch({ id: 'sd', machine: 'c1m2' });
    await sh(rt, 'sd', 'true');
    rec.add('snapshot_disk_1m_first', 'MiB', (await snapshotAdds(rt, 'sd', 'sd-0')) / MiB);
    for (let i = 1; i <= samples.chain; i++) {
      await sh(rt, 'sd', change(i, 1));
      rec.add('snapshot_disk_1m', 'MiB', (await snapshotAdds(rt, 'sd', `sd-${i}`)) / MiB);
    }
    // Restores of the 1st and the last (10th) snapshot of the chain, and of a flattened snapshot
    // of the same kind (the baseline's first step), interleaved.
    const last = `sd-${samples.chain}`;
    for (let k = 0; k < samples.restores; k++) {
      for (const [name, r, snap] of [
        ['restore_chain_1', rt, 'sd-1'],
        ['restore_chain_10', rt, last],
        ['restore_flat', base, 'sf-1'],
      ] as const) {
        const id = `sdr-${k}`;
        const t0 = now();
        await r.restore({ id, snapshotId: snap });
        await sh(r, id, 'true');
        rec.add(name, 'ms', now() - t0);
        await r.destroy(id);
      }
    }
    const med = (n: string) => (rec.has(n) ? rec.p50(n) : undefined);
    const r1 = med('restore_chain_1');
    const r10 = med('restore_chain_10');
    const rf = med('restore_flat');
    if (r1 && r10) rec.add('restore_chain_10_vs_1', 'ratio', r10 / r1);
    if (rf && r10) rec.add('restore_chain_10_vs_flat', 'ratio', r10 / rf);

    await sh(rt, 'sd', change(100, 256));
    rec.add('snapshot_disk_256m', 'MiB', (await snapshotAdds(rt, 'sd', 'sd-256')) / MiB);
    await sh(rt, 'sd', change(101, 1));
    rec.add(
      'snapshot_disk_1m_after_flatten',
      'MiB',
      (await snapshotAdds(rt, 'sd', 'sd-257')) / MiB,
    );
    await rt.destroy('sd');
  } finally {
    await ctx.release(rt);
    await ctx.release(base);
  }

  rec.note(
    'snapshot_disk_1m',
    'du growth of the data dir per snapshot of a c1m2 that changed 1 MiB of RAM + a small file (after flatten/merge and digests)',
  );
  rec.note('snapshot_disk_1m_first', 'first snapshot of a launched c1m2: a delta over the golden');
  rec.note(
    'snapshot_disk_256m',
    '256 MiB changed: past the 32 MiB flatten threshold, one standalone memory file',
  );
  rec.note(
    'snapshot_disk_1m_flatten_always',
    'baseline, same run: every snapshot flattened into a full memory file (the layout before chains)',
  );
  rec.note(
    'restore_chain_10',
    `restore + first \`true\` of the ${samples.chain}th snapshot of a chain (vs restore_chain_1: the 1st; restore_flat: a flattened snapshot, interleaved)`,
  );
  ctx.log(
    `  snapdisk: 1 MiB step ${rec.p50('snapshot_disk_1m').toFixed(1)} MiB (flatten always: ${rec.p50('snapshot_disk_1m_flatten_always').toFixed(1)} MiB)`,
  );
}
