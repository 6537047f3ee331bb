/**
 * Snapshot mobility (issue 22) on real QEMU VMs: two runtimes with separate data dirs stand for
 * two hosts. A snapshot taken on A is exported, streamed into B (in-process streams) and restored
 * there with its disk and its memory (a process started before the snapshot still runs); a byte
 * flipped in transit is refused and leaves nothing on B; a snapshot B takes of the restored VM
 * goes back to A, whose copies of the layers it stands on are reused, with its qcow2 backing
 * file pointed at A's data dir. A third runtime with a golden dir of its own gets the golden
 * carried along and restores from it; a snapshot whose disk stands on a root filesystem outside
 * the data dir (a `BaseImage`) carries that file, used in place where the host has it.
 */
import { execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable, Transform } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { SnapshotRecord } from '../src/records.js';
import type { QemuRuntime } from '../src/runtime.js';
import type { SnapshotManifest, SnapshotManifestFile } from '../src/types.js';
import { disposeRuntime, strayFiles, tempDataDir, testRuntime, text, uid } from './helpers.js';

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

  let c: QemuRuntime | undefined;
  const scratch: string[] = [];

  afterAll(async () => {
    await Promise.all([disposeRuntime(a), disposeRuntime(b), disposeRuntime(c)]);
    for (const d of scratch) fs.rmSync(d, { recursive: true, force: true });
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
    await expect(b.importSnapshot(manifest, fetchFrom(a, s1, biggest.name))).rejects.toMatchObject({
      code: 'snapshot_corrupt',
    });
    expect(await b.hasSnapshot(s1)).toBe(false);
    expect(fs.readdirSync(path.join(b.dataDir, 'snapshots'))).toEqual([]);
    expect(fs.readdirSync(path.join(b.dataDir, 'imports'))).toEqual([]);
    expect(strayFiles(b.dataDir)).toEqual([]);
  });

  it('refuses a manifest whose names would leave the data dir', async () => {
    const layer = manifest.files.find((f) => f.kind === 'layer')!;
    for (const evil of [
      { ...layer, name: 'layer.disk..' },
      { ...layer, name: 'layer.disk.x.qcow2/../../y' },
      { ...layer, kind: 'golden' as const, golden: 'golden-x', path: '/a/golden-x/..' },
      { ...layer, kind: 'base' as const, path: '/a/..' },
    ]) {
      const bad = { ...manifest, files: [...manifest.files.filter((f) => f !== layer), evil] };
      await expect(b.importSnapshot(bad, fetchFrom(a, s1))).rejects.toMatchObject({
        code: 'invalid_argument',
      });
    }
    expect(await b.hasSnapshot(s1)).toBe(false);
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

  it('carries the golden to a host that lacks it; the snapshot restores from the carried golden', async () => {
    const goldenDir = fs.mkdtempSync(path.join(os.tmpdir(), 'mob-golden-'));
    scratch.push(goldenDir);
    c = await testRuntime(undefined, { goldenDir, accel: a.accel });
    expect(await c.goldenIds()).toEqual([]);
    const m = await a.exportSnapshot(s1, { haveGoldens: await c.goldenIds() });
    const golden = m.files.filter((f) => f.kind === 'golden');
    expect(golden.map((f) => path.basename(f.path)).sort()).toEqual([
      'disk.qcow2',
      'mem',
      'state.bin',
    ]);
    const res = await c.importSnapshot(m, fetchFrom(a, s1));
    expect(res).toMatchObject({ files: m.files.length, skipped: 0 });
    expect(await c.goldenIds()).toEqual([m.golden]);
    const g = JSON.parse(
      fs.readFileSync(path.join(goldenDir, m.golden!, 'snapshot.json'), 'utf8'),
    ) as SnapshotRecord;
    expect(g.memBase).toBe(path.join(goldenDir, m.golden!, 'mem'));
    expect(record(c, s1).memBase).toBe(g.memBase);
    // The golden's memory stays sparse: holes are not written.
    const st = fs.statSync(g.memBase);
    expect(st.blocks * 512).toBeLessThan(st.size / 4);
    const vm = `${P}-onc`;
    await c.restore({ id: vm, snapshotId: s1 });
    expect(await sh(c, vm, 'cat /root/mob.txt')).toBe('moved-by-mobility');
    expect(await sh(c, vm, `kill -0 ${sleeperPid} && echo alive`)).toBe('alive');
    await c.destroy(vm);
  });

  it('a disk standing on a root filesystem outside the data dir carries it (used in place where present)', async () => {
    // A synthetic snapshot on A: s1's memory and device state, its disk a qcow2 layer over a raw
    // root filesystem file of its own (what a snapshot of a `BaseImage` VM stands on).
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mob-base-'));
    scratch.push(dir);
    const base = path.join(dir, 'rootfs.ext4');
    fs.writeFileSync(base, Buffer.concat([Buffer.alloc(1 << 20, 7), Buffer.alloc(1 << 20)]));
    const sb = `${P}-sb`;
    const layer = path.join(a.dataDir, 'layers', 'disk', `${randomUUID()}.qcow2`);
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', base, layer, '2M']);
    const src = record(a, s1);
    fs.mkdirSync(path.join(a.dataDir, 'snapshots', sb));
    const state = path.join(a.dataDir, 'snapshots', sb, 'state.bin');
    fs.copyFileSync(src.state, state);
    const { digests: _d, ...rest } = src;
    const rec: SnapshotRecord = { ...rest, id: sb, disk: [layer, base], state };
    fs.writeFileSync(path.join(a.dataDir, 'snapshots', sb, 'snapshot.json'), JSON.stringify(rec));

    const m = await a.exportSnapshot(sb, { haveGoldens: await b.goldenIds() });
    const carried = m.files.find((f) => f.kind === 'base');
    expect(carried).toMatchObject({ path: base, bytes: 2 << 20 });
    const bytes = new Map<string, Buffer>();
    for (const f of m.files) {
      const chunks: Buffer[] = [];
      for await (const x of await a.openSnapshotFile(sb, f.name)) chunks.push(x as Buffer);
      bytes.set(f.name, Buffer.concat(chunks));
    }
    const serve = async (f: SnapshotManifestFile) => Readable.from([bytes.get(f.name)!]);
    // C has the file where A has it (same content): used in place.
    const onC = await c!.importSnapshot(m, serve);
    expect(record(c!, sb).disk[1]).toBe(base);
    expect(onC.skipped).toBeGreaterThanOrEqual(1);
    // B does not (moved away): it gets a copy under its data dir, and the layer points at it.
    fs.renameSync(base, `${base}.moved`);
    await b.importSnapshot(m, serve);
    const onB = record(b, sb);
    expect(onB.disk[1]!.startsWith(path.join(b.dataDir, 'bases') + '/')).toBe(true);
    expect(fs.readFileSync(onB.disk[1]!).equals(bytes.get(carried!.name)!)).toBe(true);
    const info = JSON.parse(
      execFileSync('qemu-img', ['info', '-U', '--output=json', onB.disk[0]!], { encoding: 'utf8' }),
    ) as { 'backing-filename': string };
    expect(info['backing-filename']).toBe(onB.disk[1]);
    for (const rt of [a, b, c!]) await rt.deleteSnapshot(sb);
  });

  it('what a crash in the middle of an import leaves is gone after a restart', async () => {
    // As if killed after the layers were renamed in and before the snapshot's dir was.
    const dir = tempDataDir();
    scratch.push(dir);
    const first = await testRuntime(dir);
    await first.detach();
    const half = path.join(dir, 'imports', `${P}-half.1234`);
    fs.mkdirSync(path.join(half, 'snap'), { recursive: true });
    fs.writeFileSync(path.join(half, 'snap', 'state.bin'), 'x');
    const layer = path.join(dir, 'layers', 'disk', `${randomUUID()}.qcow2`);
    fs.writeFileSync(layer, 'layer');
    const again = await testRuntime(dir);
    await again.adopt([]);
    expect(fs.existsSync(path.join(dir, 'imports'))).toBe(false);
    expect(fs.existsSync(layer)).toBe(false);
    expect(await again.hasSnapshot(`${P}-half`)).toBe(false);
    await again.detach();
  });
});
