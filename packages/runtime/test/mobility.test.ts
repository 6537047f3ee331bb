/**
 * Snapshot mobility (issue 22) on real QEMU VMs: two runtimes with separate data dirs stand for
 * two hosts. A snapshot taken on A is exported, streamed into B (in-process streams) and restored
 * there with its disk and its memory (a process started before the snapshot still runs); a byte
 * flipped in transit is refused and leaves nothing on B; a snapshot B takes of the restored VM
 * goes back to A, whose copies of the layers it stands on are reused, with its qcow2 backing
 * file pointed at A's data dir.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { Transform, type Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { SnapshotRecord } from '../src/records.js';
import type { QemuRuntime } from '../src/runtime.js';
import type { SnapshotManifest, SnapshotManifestFile } from '../src/types.js';
import { disposeRuntime, strayFiles, testRuntime, text, uid } from './helpers.js';

const P = uid('mob');

/** Flips one byte at `at` of the stream. */
function flipAt(at: number): Transform {
  let pos = 0;
  return new Transform({
    transform(chunk: Buffer, _enc, cb) {
      if (at >= pos && at < pos + chunk.length) {
        chunk = Buffer.from(chunk);
        chunk[at - pos]! ^= 0x01;
      }
      pos += chunk.length;
      cb(null, chunk);
    },
  });
}

describe('snapshot mobility between two runtimes (real QEMU VMs)', () => {
  let a: QemuRuntime;
  let b: QemuRuntime;
  const src = `${P}-src`;
  const s1 = `${P}-s1`;
  let sleeperPid = '';

  const sh = async (rt: QemuRuntime, vm: string, script: string) => {
    const r = text(await rt.exec(vm, { argv: ['sh', '-c', script], timeoutMs: 60_000 }));
    expect(r.code, r.err).toBe(0);
    return r.out.trim();
  };
  const fetchFrom =
    (rt: QemuRuntime, id: string, corruptName?: string) =>
    async (f: SnapshotManifestFile): Promise<Readable> => {
      const s = await rt.openSnapshotFile(id, f.name);
      return f.name === corruptName ? s.pipe(flipAt(Math.floor(f.bytes / 2))) : s;
    };
  const record = (rt: QemuRuntime, id: string) =>
    JSON.parse(
      fs.readFileSync(path.join(rt.dataDir, 'snapshots', id, 'snapshot.json'), 'utf8'),
    ) as SnapshotRecord;

  beforeAll(async () => {
    [a, b] = await Promise.all([testRuntime(), testRuntime()]);
    await a.launch({ id: src, machine: 'c1m2' });
    await sh(a, src, 'echo moved-by-mobility > /root/mob.txt; sync');
    // A process whose life is in guest memory only.
    sleeperPid = await sh(a, src, 'setsid sleep 100000 </dev/null >/dev/null 2>&1 & echo $!');
    await a.snapshot(src, s1);
    await a.digestsSettled(s1);
  });

  afterAll(async () => {
    await Promise.all([disposeRuntime(a), disposeRuntime(b)]);
  });

  let manifest: SnapshotManifest;

  it('exports a manifest of every file with sizes and digests (the golden left out when B has it)', async () => {
    const full = await a.exportSnapshot(s1);
    expect(full.golden).toMatch(/^golden-c1m2-/);
    expect(full.files.some((f) => f.kind === 'golden')).toBe(true);
    manifest = await a.exportSnapshot(s1, { haveGoldens: await b.goldenIds() });
    expect(manifest.files.some((f) => f.kind === 'golden')).toBe(false);
    expect(manifest.files.map((f) => f.kind).sort()).toEqual(['layer', 'layer', 'state']);
    // Digests are the recorded ones, and `sha256sum` agrees with them.
    const rec = record(a, s1);
    for (const f of manifest.files) {
      expect(f.bytes).toBe(fs.statSync(f.path).size);
      expect(execFileSync('sha256sum', [f.path], { encoding: 'utf8' }).split(' ')[0]).toBe(
        f.sha256,
      );
    }
    expect(manifest.files.find((f) => f.kind === 'state')!.sha256).toBe(
      rec.digests!.layers.state!.sha256,
    );
    // Only names of the manifest resolve.
    await expect(a.openSnapshotFile(s1, '../../etc/passwd')).rejects.toMatchObject({
      code: 'not_found',
    });
  });

  it('refuses a byte flipped in transit and leaves nothing on B', async () => {
    const biggest = [...manifest.files].sort((x, y) => y.bytes - x.bytes)[0]!;
    await expect(
      b.importSnapshot(manifest, fetchFrom(a, s1, biggest.name)),
    ).rejects.toMatchObject({ code: 'snapshot_corrupt' });
    expect(await b.hasSnapshot(s1)).toBe(false);
    expect(fs.readdirSync(path.join(b.dataDir, 'snapshots'))).toEqual([]);
    expect(fs.readdirSync(path.join(b.dataDir, 'imports'))).toEqual([]);
    expect(strayFiles(b.dataDir)).toEqual([]);
  });

  it('imports into B and restores there: disk and memory as on A', async () => {
    const res = await b.importSnapshot(manifest, fetchFrom(a, s1));
    expect(res).toMatchObject({ present: false, files: 3, skipped: 0 });
    expect(res.bytes).toBe(manifest.bytes);
    expect(await b.hasSnapshot(s1)).toBe(true);
    // Paths are B's.
    const rec = record(b, s1);
    for (const f of [rec.state, rec.disk[0]!, rec.delta?.path ?? rec.memBase]) {
      expect(f.startsWith(b.dataDir + '/')).toBe(true);
    }
    const vm = `${P}-onb`;
    await b.restore({ id: vm, snapshotId: s1 });
    expect(await sh(b, vm, 'cat /root/mob.txt')).toBe('moved-by-mobility');
    expect(await sh(b, vm, `kill -0 ${sleeperPid} && cat /proc/${sleeperPid}/comm`)).toBe('sleep');
    // A second import is a no-op.
    expect(await b.importSnapshot(manifest, fetchFrom(a, s1))).toMatchObject({ present: true });
  });

  it('a snapshot taken on B goes back to A, reusing the layers A has, backing files rewritten', async () => {
    const vm = `${P}-onb`;
    await sh(b, vm, 'echo second > /root/two.txt; sync');
    const s2 = `${P}-s2`;
    await b.snapshot(vm, s2);
    await b.digestsSettled(s2);
    const m2 = await b.exportSnapshot(s2, { haveGoldens: await a.goldenIds() });
    const res = await a.importSnapshot(m2, fetchFrom(b, s2));
    // s1's disk layer and memory are A's own files already.
    expect(res.skipped).toBeGreaterThanOrEqual(1);
    const rec = record(a, s2);
    const info = JSON.parse(
      execFileSync('qemu-img', ['info', '-U', '--output=json', rec.disk[0]!], { encoding: 'utf8' }),
    ) as { 'backing-filename': string };
    expect(info['backing-filename']).toBe(rec.disk[1]);
    expect(rec.disk[1]!.startsWith(a.dataDir + '/')).toBe(true);
    const back = `${P}-back`;
    await a.restore({ id: back, snapshotId: s2 });
    expect(await sh(a, back, 'cat /root/mob.txt /root/two.txt')).toBe('moved-by-mobility\nsecond');
    expect(await sh(a, back, `kill -0 ${sleeperPid} && echo alive`)).toBe('alive');
  });
});
