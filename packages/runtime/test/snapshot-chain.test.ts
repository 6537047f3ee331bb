/**
 * Snapshot memory as chains of deltas (issue 19), on one real QEMU VM: a snapshot stores only the
 * pages that differ from the VM's previous snapshot, so a small change costs a little disk;
 * restores of every level of a chain give back exactly that level's memory and disk; the sweeper
 * keeps every delta a snapshot or a VM still needs (its parents deleted or not); long chains are
 * merged and fork sources flattened without changing what a restore sees; the digests cover the
 * inherited deltas a restore reads.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { SnapshotRecord } from '../src/records.js';
import type { QemuRuntime } from '../src/runtime.js';
import { disposeRuntime, strayFiles, testRuntime, text, uid } from './helpers.js';

const P = uid('ch');
const MiB = 2 ** 20;

describe('snapshot memory chains (real QEMU VM)', () => {
  let rt: QemuRuntime;
  const src = `${P}-src`;
  /** md5 of the guest's memory-resident files and its disk file, per snapshot. */
  const expected = new Map<string, string>();

  const sh = async (vm: string, script: string) => {
    const r = text(await rt.exec(vm, { argv: ['sh', '-c', script], timeoutMs: 60_000 }));
    expect(r.code, r.err).toBe(0);
    return r.out;
  };
  /** What a snapshot must give back: files in tmpfs (guest RAM) and on the disk. */
  const state = (vm: string) =>
    sh(vm, 'cd /dev/shm && ls && cat /dev/shm/* | md5sum && cat /root/d* | md5sum');
  const record = (id: string) =>
    JSON.parse(
      fs.readFileSync(path.join(rt.dataDir, 'snapshots', id, 'snapshot.json'), 'utf8'),
    ) as SnapshotRecord;
  /** Allocated bytes under the data dir (what `du` counts). */
  const used = () =>
    Number(execFileSync('du', ['-s', '-B1', rt.dataDir], { encoding: 'utf8' }).split('\t')[0]);

  /** One step: 1 MiB of new data in guest RAM (tmpfs) and a small disk write, then a snapshot. */
  async function step(i: number, digests = true): Promise<{ snap: string; added: number }> {
    await sh(src, `head -c ${MiB} /dev/urandom > /dev/shm/m${i}; echo ${i} > /root/d${i}; sync`);
    const snap = `${P}-s${i}`;
    expected.set(snap, await state(src));
    const before = used();
    await rt.snapshot(src, snap);
    // (A flattened snapshot's digest job hashes a 2 GiB sparse file at idle priority: not waited.)
    if (digests) await rt.digestsSettled(snap);
    return { snap, added: used() - before };
  }

  beforeAll(async () => {
    // Merges past 4 deltas, so a short test reaches one; flattens a snapshot restored 3 times.
    rt = await testRuntime(undefined, {
      memoryChain: { maxDeltas: 4, flattenBytes: 24 * MiB, flattenAfterRestores: 3 },
    });
    await rt.launch({ id: src, machine: 'c1m2' });
    await sh(src, 'true');
  });
  afterAll(async () => {
    await disposeRuntime(rt);
  });

  it('a snapshot after a 1 MiB change adds a few MiB, as a delta over the previous one', async () => {
    for (let i = 1; i <= 4; i++) {
      const { snap, added } = await step(i);
      const rec = record(snap);
      console.log(`snapshot ${i}: +${(added / MiB).toFixed(2)} MiB on disk`);
      // The 1 MiB written, the kernel's own changes, the disk layer and the device state. (The
      // first one also holds what the VM changed since its launch: over the golden.)
      console.log(`  delta ${(rec.delta!.bytes / MiB).toFixed(2)} MiB`);
      expect(added).toBeLessThan((i === 1 ? 8 : 5) * MiB);
      expect(rec.delta!.bytes).toBeGreaterThanOrEqual(MiB);
      expect(rec.delta!.bytes).toBeLessThan((i === 1 ? 7 : 4) * MiB);
      expect(rec.chain ?? []).toHaveLength(i - 1); // over the golden, then over each other
      if (i > 1) {
        const prev = record(`${P}-s${i - 1}`);
        expect(rec.chain).toEqual([...(prev.chain ?? []), prev.delta]);
      }
      // The inherited deltas are covered by the digests (from the cache: no second read).
      expect(rec.digests?.inherited?.map((d) => d.file)).toEqual(
        i > 1 ? rec.chain!.map((d) => d.path) : undefined,
      );
    }
  }, 120_000);

  it('restores every level of the chain with exactly its memory and disk', async () => {
    for (const i of [1, 4, 2]) {
      const snap = `${P}-s${i}`;
      const id = `${P}-r${i}`;
      const t0 = performance.now();
      await rt.restore({ id, snapshotId: snap });
      const ms = performance.now() - t0;
      console.log(`restore of level ${i}: ${ms.toFixed(0)} ms`);
      expect(await state(id)).toBe(expected.get(snap));
      await rt.destroy(id);
    }
  }, 120_000);

  let forkWant = '';
  it('a fork of a chain snapshot builds its own snapshots on that chain', async () => {
    const fork = `${P}-f`;
    await rt.restore({ id: fork, snapshotId: `${P}-s2` });
    await sh(fork, `head -c ${MiB} /dev/urandom > /dev/shm/fork; echo f > /root/dfork; sync`);
    forkWant = await state(fork);
    await rt.snapshot(fork, `${P}-fs`);
    const rec = record(`${P}-fs`);
    const parent = record(`${P}-s2`);
    expect(rec.chain).toEqual([...(parent.chain ?? []), parent.delta]);
    expect(rec.delta!.bytes).toBeLessThan(4 * MiB);
    await rt.destroy(fork);
  }, 120_000);

  it('merges a chain past its limit, flattens a fork source, restoring the same memory', async () => {
    // The 5th delta passes maxDeltas (4): merged into one, in the background.
    const { snap } = await step(5);
    await rt.memorySettled(snap);
    const merged = record(snap);
    expect(merged.chain).toBeUndefined();
    expect(merged.delta!.bytes).toBeGreaterThanOrEqual(5 * MiB);
    expect(merged.delta!.bytes).toBeLessThan(24 * MiB);
    // Its digests cover the merged file now.
    expect(merged.digests?.layers.memory?.file).toBe(merged.delta!.path);
    // Restored again and again, it is a fork source: flattened after its 3rd restore.
    for (let k = 0; k < 3; k++) {
      await rt.restore({ id: `${P}-k${k}`, snapshotId: snap });
      expect(await state(`${P}-k${k}`)).toBe(expected.get(snap));
      await rt.destroy(`${P}-k${k}`);
    }
    await rt.memorySettled(snap);
    const flat = record(snap);
    expect(flat.delta).toBeUndefined();
    expect(flat.memBase.startsWith(rt.dataDir)).toBe(true);
    await rt.restore({ id: `${P}-fl`, snapshotId: snap });
    expect(await state(`${P}-fl`)).toBe(expected.get(snap));
    await rt.destroy(`${P}-fl`);
    // The source's next snapshot is a small delta over the flat file.
    const after = await step(6, false);
    expect(record(after.snap).memBase).toBe(flat.memBase);
    expect(record(after.snap).chain).toBeUndefined();
    expect(record(after.snap).delta!.bytes).toBeLessThan(4 * MiB);
    expect(after.added).toBeLessThan(5 * MiB);
  }, 180_000);

  it('refuses a restore whose inherited delta is corrupt', async () => {
    const rec = record(`${P}-s4`);
    // s4 inherits the deltas of s1..s3; flip one byte in s3's.
    const file = record(`${P}-s3`).delta!.path;
    expect(rec.digests?.inherited?.map((d) => d.file)).toContain(file);
    const fd = fs.openSync(file, 'r+');
    const b = Buffer.alloc(1);
    fs.readSync(fd, b, 0, 1, 8192);
    fs.writeSync(fd, Buffer.from([b[0]! ^ 0xff]), 0, 1, 8192);
    fs.closeSync(fd);
    const err = await rt.restore({ id: `${P}-bad`, snapshotId: `${P}-s4` }).catch((e) => e);
    expect(err).toMatchObject({ name: 'RuntimeError', code: 'snapshot_corrupt' });
    expect(String((err as Error).message)).toMatch(/inherited memory layer is corrupt/);
    expect(rt.get(`${P}-bad`)).toBeUndefined();
  }, 60_000);

  it('the sweeper keeps exactly what the remaining snapshots need', async () => {
    // Every snapshot of the source deleted, the source gone: the fork's snapshot still needs
    // the two lower deltas of its chain (made by s1 and s2), and nothing else.
    const fs1 = record(`${P}-fs`);
    for (const s of fs.readdirSync(path.join(rt.dataDir, 'snapshots'))) {
      if (s !== `${P}-fs`) await rt.deleteSnapshot(s);
    }
    await rt.destroy(src);
    const mem = (f: string) => path.join(rt.dataDir, 'layers', 'mem', f);
    expect(
      fs
        .readdirSync(path.join(rt.dataDir, 'layers', 'mem'))
        .map(mem)
        .sort(),
    ).toEqual([...fs1.chain!.map((d) => d.path), fs1.delta!.path].sort());
    await rt.restore({ id: `${P}-fr`, snapshotId: `${P}-fs` });
    expect(await state(`${P}-fr`)).toBe(forkWant);
    await rt.destroy(`${P}-fr`);
    await rt.deleteSnapshot(`${P}-fs`);
    expect(fs.readdirSync(path.join(rt.dataDir, 'layers', 'mem'))).toEqual([]);
    expect(strayFiles(rt.dataDir)).toEqual([]);
  }, 120_000);
});
