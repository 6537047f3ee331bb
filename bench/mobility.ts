/**
 * Snapshot mobility (issue 22): `npm run bench -- --only mobility`. A c1m2 VM of the bench's
 * runtime (A) with 16 MiB of fresh data in guest RAM and a disk write is snapshotted once; then,
 * alternating in the same run:
 *
 * - `restore_local`: restore of the snapshot on A until the first command answers (A holds it).
 * - `restore_remote`: the same on a second runtime (B, its own data dir, the same golden cache)
 *   that lacks the snapshot: export on A, pull every missing file into B (streamed in-process,
 *   each verified by SHA-256 as it arrives), restore, first command. `restore_remote_pull` is the
 *   pull alone, `pull_mib` what it moved, `pull_mibps` its rate, `restore_remote_vs_local` the
 *   ratio per pair. B drops the snapshot (and its layers) between samples, so every sample pulls.
 *   The bytes go through the internal file route's wire encoding (zero runs as lengths),
 *   in-process: `pull_wire_mib` is what would cross the network; add its transfer time over the
 *   link between hosts.
 * @module
 */
import path from 'node:path';
import { Transform } from 'node:stream';
import {
  createQemuRuntime,
  decodeZeroRuns,
  encodeZeroRuns,
  type QemuRuntime,
} from '@fastvm/runtime';
import type { Recorder } from './stats.js';
import { now } from './sys.js';

export async function groupMobility(opts: {
  rt: QemuRuntime;
  rec: Recorder;
  root: string;
  samples: number;
  log: (msg: string) => void;
  runtimeLog: (msg: string) => void;
}): Promise<void> {
  const { rt, rec, root, samples } = opts;
  const b = await createQemuRuntime({
    dataDir: path.join(root, 'mobility-b'),
    goldenDir: rt.goldenDir,
    log: opts.runtimeLog,
  });
  const src = 'bench-mob-src';
  const snap = 'bench-mob-snap';
  const sh = async (r: QemuRuntime, id: string, script: string) => {
    const res = await r.exec(id, { argv: ['sh', '-c', script], timeoutMs: 300_000 });
    if (res.exitCode !== 0) throw new Error(`${script}: ${res.stderr.toString()}`);
    return res.stdout.toString();
  };
  try {
    await rt.launch({ id: src, machine: 'c1m2' });
    await sh(rt, src, 'head -c 16M /dev/urandom > /dev/shm/mob; echo mob > /root/mob; sync');
    await rt.snapshot(src, snap);
    await rt.memorySettled(snap);
    await rt.digestsSettled(snap);
    await rt.destroy(src);
    for (let i = 0; i < samples + 1; i++) {
      const t0 = now();
      await rt.restore({ id: `bench-mob-l${i}`, snapshotId: snap });
      await sh(rt, `bench-mob-l${i}`, 'true');
      const local = now() - t0;
      await rt.destroy(`bench-mob-l${i}`);

      const t1 = now();
      const manifest = await rt.exportSnapshot(snap, { haveGoldens: await b.goldenIds() });
      // Through the wire encoding the internal file route uses (zero runs as lengths).
      let wire = 0;
      const pulled = await b.importSnapshot(manifest, async (f) => {
        const raw = await rt.openSnapshotFile(snap, f.name);
        const counted = raw.pipe(encodeZeroRuns()).pipe(
          new Transform({
            transform(chunk: Buffer, _enc, cb) {
              wire += chunk.length;
              cb(null, chunk);
            },
          }),
        );
        return counted.pipe(decodeZeroRuns());
      });
      const pull = now() - t1;
      await b.restore({ id: `bench-mob-r${i}`, snapshotId: snap });
      const out = await sh(b, `bench-mob-r${i}`, 'cat /root/mob');
      const remote = now() - t1;
      if (out.trim() !== 'mob') throw new Error(`restore on B gave ${JSON.stringify(out)}`);
      await b.destroy(`bench-mob-r${i}`);
      await b.deleteSnapshot(snap);
      if (i === 0) continue; // warm-up: page cache, first restore of the snapshot on each
      const mib = pulled.bytes / 2 ** 20;
      rec.add('restore_local', 'ms', local);
      rec.add('restore_remote', 'ms', remote);
      rec.add('restore_remote_pull', 'ms', pull);
      rec.add('pull_mib', 'MiB', mib);
      rec.add('pull_mibps', 'MiB/s', mib / (pull / 1000));
      rec.add('pull_wire_mib', 'MiB', wire / 2 ** 20);
      rec.add('restore_remote_vs_local', 'ratio', remote / local);
    }
    rec.note(
      'restore_local',
      'c1m2 snapshot (16 MiB fresh RAM) restored where it was taken, to first command',
    );
    rec.note(
      'restore_remote',
      'same snapshot on a second runtime that must pull it first: export, streamed import (SHA-256 checked), restore, first command',
    );
    rec.note('restore_remote_pull', 'export + import alone (in-process streams, no network)');
    rec.note(
      'pull_mib',
      'file bytes the pull moved (the golden stays: same golden cache; after 2 restores the snapshot is a fork source, flattened: its 2 GiB memory file moves)',
    );
    rec.note('pull_wire_mib', 'what crossed the (in-process) wire: zero runs travel as lengths');
  } finally {
    await b.destroyAll();
  }
}
