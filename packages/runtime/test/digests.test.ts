/**
 * Snapshot content digests with real QEMU VMs (issue 18): computed in the background after the
 * snapshot, equal to `sha256sum` of the owned layer files, cached for restores, and a flipped
 * byte in a layer refuses the restore with `snapshot_corrupt` (leaving no VM behind).
 * The cost of a cold check is printed.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SnapshotDigester, ownedLayers } from '../src/digests.js';
import type { SnapshotRecord } from '../src/records.js';
import type { QemuRuntime } from '../src/runtime.js';
import { disposeRuntime, qemuPids, testRuntime, text, uid } from './helpers.js';

const PREFIX = uid('dg');

describe('snapshot digests (real QEMU VMs)', () => {
  let rt: QemuRuntime;
  const snapRecord = async (id: string) =>
    JSON.parse(
      await fs.readFile(`${rt.dataDir}/snapshots/${id}/snapshot.json`, 'utf8'),
    ) as SnapshotRecord;

  beforeAll(async () => {
    rt = await testRuntime();
  });
  afterAll(async () => {
    await disposeRuntime(rt);
  });

  it('computes digests of the owned layers after the snapshot, equal to sha256sum', async () => {
    const src = `${PREFIX}-src`;
    await rt.launch({ id: src, machine: 'c1m2' });
    await rt.exec(src, { argv: ['sh', '-c', 'echo hello > /root/f; sync'] });
    const snapId = `${PREFIX}-s1`;
    await rt.snapshot(src, snapId);
    // Not on the hot path: the snapshot is ready before its digests exist.
    expect(await rt.snapshotDigests(snapId)).toBeUndefined();
    await rt.digestsSettled(snapId);
    const digests = await rt.snapshotDigests(snapId);
    expect(Object.keys(digests ?? {}).sort()).toEqual(['disk', 'memory', 'state']);
    const rec = await snapRecord(snapId);
    // A small delta over the golden (not flattened): the memory digest is the delta's.
    expect(rec.delta?.path).toBe(ownedLayers(rec).memory);
    const owned = ownedLayers(rec);
    for (const [layer, file] of Object.entries(owned)) {
      const sum = execFileSync('openssl', ['dgst', '-sha256', '-r', file], { encoding: 'utf8' });
      expect(digests?.[layer], layer).toBe(`sha256:${sum.split(' ')[0]}`);
    }
    await rt.destroy(src);
  }, 120_000);

  it('restores verified layers without hashing them again; a flipped byte is refused', async () => {
    const snapId = `${PREFIX}-s1`;
    // Cached: the digest job verified these files, so a restore adds only stat calls.
    const t0 = performance.now();
    await rt.restore({ id: `${PREFIX}-r1`, snapshotId: snapId });
    console.log(`restore with cached verification: ${(performance.now() - t0).toFixed(0)} ms`);
    expect(text(await rt.exec(`${PREFIX}-r1`, { argv: ['cat', '/root/f'] })).out).toBe('hello\n');
    await rt.destroy(`${PREFIX}-r1`);

    // Flip one byte in the middle of the disk layer (the VM's writes before the snapshot).
    const rec = await snapRecord(snapId);
    const disk = rec.disk[0]!;
    const fh = await fs.open(disk, 'r+');
    const { size } = await fh.stat();
    const at = Math.floor(size / 2);
    const byte = Buffer.alloc(1);
    await fh.read(byte, 0, 1, at);
    await fh.write(Buffer.from([byte[0]! ^ 0xff]), 0, 1, at);
    await fh.close();
    const err = await rt.restore({ id: `${PREFIX}-bad`, snapshotId: snapId }).catch((e) => e);
    expect(err).toMatchObject({ name: 'RuntimeError', code: 'snapshot_corrupt' });
    expect(String(err.message)).toMatch(/disk layer is corrupt/);
    expect(rt.get(`${PREFIX}-bad`)).toBeUndefined();
    expect(qemuPids(`${PREFIX}-bad`)).toEqual([]);
    await expect(fs.stat(`${rt.dataDir}/vms/${PREFIX}-bad`)).rejects.toThrow();

    // Flipped back: restores again (hashed once more, then cached).
    const fh2 = await fs.open(disk, 'r+');
    await fh2.write(byte, 0, 1, at);
    await fh2.close();
    await rt.restore({ id: `${PREFIX}-r2`, snapshotId: snapId });
    expect(text(await rt.exec(`${PREFIX}-r2`, { argv: ['cat', '/root/f'] })).out).toBe('hello\n');
    await rt.destroy(`${PREFIX}-r2`);
  }, 120_000);

  it('a corrupted memory file is refused too; measures a cold check', async () => {
    const snapId = `${PREFIX}-s1`;
    // Restored twice above, it is a fork source: its memory is flattened in the background and
    // hashed again. Read the record once that is over (the old delta file goes with it).
    await rt.memorySettled(snapId);
    await rt.digestsSettled(snapId);
    const rec = await snapRecord(snapId);
    const mem = ownedLayers(rec).memory!;
    // A fresh digester has an empty cache: this is the first restore after a restart.
    const logs: string[] = [];
    const cold = new SnapshotDigester(
      { readSnapshot: async () => rec, dataDir: rt.dataDir } as never,
      (m) => logs.push(m),
    );
    const t0 = performance.now();
    await cold.verify(rec);
    const coldMs = performance.now() - t0;
    const t1 = performance.now();
    await cold.verify(rec);
    const warmMs = performance.now() - t1;
    console.log(
      `verify ${snapId}: cold ${coldMs.toFixed(0)} ms (memory delta + layers), cached ${warmMs.toFixed(2)} ms`,
    );
    expect(warmMs).toBeLessThan(coldMs / 10);

    // Flip a byte of guest RAM in the memory file.
    const fh = await fs.open(mem, 'r+');
    const at = Math.floor((await fh.stat()).size / 2);
    const byte = Buffer.alloc(1);
    await fh.read(byte, 0, 1, at);
    await fh.write(Buffer.from([byte[0]! ^ 0x01]), 0, 1, at);
    await fh.close();
    const err = await rt.restore({ id: `${PREFIX}-badmem`, snapshotId: snapId }).catch((e) => e);
    expect(err).toMatchObject({ code: 'snapshot_corrupt' });
    expect(String(err.message)).toMatch(/memory layer is corrupt/);
    expect(rt.get(`${PREFIX}-badmem`)).toBeUndefined();
    await rt.deleteSnapshot(snapId);
  }, 180_000);
});
