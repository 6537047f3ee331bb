/**
 * Guest cache pruning (issue 19) on a temporary cache dir laid out like `~/.cache/fastvm` (never
 * the shared one): unused, old builds and goldens go; what `guest.json` names, what a snapshot or
 * VM record of a data dir uses (an older golden, and the image and kernel it was built on), what a
 * live process has open, and what was used recently stay. No VM is needed: references are files.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pruneCache } from '../src/prune.js';

const DAY = 24 * 3600 * 1000;

describe('pruneCache', () => {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'fastvm-prune-'));
  const cache = path.join(root, 'cache');
  const dataDir = path.join(root, 'data');
  const at = (...p: string[]) => path.join(cache, ...p);
  let holder: ChildProcess | undefined;

  /** An entry dir with one file, built `ageDays` ago. */
  const entry = (rel: string, file: string, ageDays: number, content = 'x') => {
    fs.mkdirSync(at(rel), { recursive: true });
    fs.writeFileSync(at(rel, file), content);
    const t = new Date(Date.now() - ageDays * DAY);
    fs.utimesSync(at(rel), t, t);
  };
  const golden = (name: string, imageId: string, ageDays: number, baseImage?: string) => {
    fs.mkdirSync(at('golden', name), { recursive: true });
    fs.writeFileSync(at('golden', name, 'mem'), 'm');
    fs.writeFileSync(
      at('golden', name, 'snapshot.json'),
      JSON.stringify({ id: name, imageId, ...(baseImage ? { baseImage } : {}) }),
    );
    const t = new Date(Date.now() - ageDays * DAY);
    fs.utimesSync(at('golden', name), t, t);
  };

  beforeAll(async () => {
    // The current build (guest.json) and older ones.
    entry('kernel/k1', 'vmlinux', 30);
    entry('image/i1', 'rootfs.ext4', 30);
    entry('agent/a1', 'fastvm-agent', 30);
    entry('native/n1', 'fastvm-memdelta', 30);
    entry('rootfs-base/b1', 'rootfs.tar', 30);
    entry('kernel/k0', 'vmlinux', 30);
    entry('image/i0', 'rootfs.ext4', 30);
    entry('kernel/k9', 'vmlinux', 30);
    entry('image/i9', 'rootfs.ext4', 30);
    entry('image/i5', 'rootfs.ext4', 30);
    entry('agent/a0', 'fastvm-agent', 30);
    entry('native/n0', 'fastvm-memdelta', 30);
    entry('native/n2', 'fastvm-memdelta', 1); // built yesterday: within the grace period
    entry('rootfs-base/b0', 'rootfs.tar', 40);
    fs.writeFileSync(
      at('guest.json'),
      JSON.stringify({
        imageId: 'k1-i1',
        kernel: at('kernel/k1/vmlinux'),
        rootfs: at('image/i1/rootfs.ext4'),
        agent: at('agent/a1/fastvm-agent'),
        memshim: at('native/n1/fastvm-memshim.so'),
        memdelta: at('native/n1/fastvm-memdelta'),
      }),
    );
    golden('golden-c1m2-current', 'k1-i1', 30); // of the current image
    golden('golden-c1m2-old', 'k0-i0', 30); // an older image, still used by a snapshot
    golden('golden-c1m2-live', 'k5-i5', 30); // a process (some other runtime's QEMU) has it open
    golden('golden-c1m2-gone', 'k9-i9', 30); // nothing uses it
    golden('golden-c2m4-recent', 'k9-i9', 2); // loaded by a runtime two days ago
    // Goldens of imported images on the current image: kept only while used (or recent).
    golden('golden-c1m2-base-unused', 'k1-i1', 30, 'oci-00000000000000aa');
    golden('golden-c1m2-base-used', 'k1-i1', 30, 'oci-00000000000000bb');
    // A data dir whose snapshot (a chain on the older golden) and VM name cache files.
    fs.mkdirSync(path.join(dataDir, 'snapshots', 's1'), { recursive: true });
    fs.writeFileSync(
      path.join(dataDir, 'snapshots', 's1', 'snapshot.json'),
      JSON.stringify({
        id: 's1',
        memBase: at('golden/golden-c1m2-old/mem'),
        disk: [path.join(dataDir, 'layers/disk/x.qcow2'), at('golden/golden-c1m2-old/disk.qcow2')],
      }),
    );
    fs.mkdirSync(path.join(dataDir, 'vms', 'v1'), { recursive: true });
    fs.writeFileSync(
      path.join(dataDir, 'vms', 'v1', 'vm.json'),
      JSON.stringify({
        id: 'v1',
        memBase: at('golden/golden-c1m2-base-used/mem'),
        disk: { top: path.join(dataDir, 'layers/disk/y.qcow2'), chain: [] },
        baseImage: 'oci-00000000000000bb',
      }),
    );
    // A live process holding a file of a golden open (fd 3).
    const fd = fs.openSync(at('golden/golden-c1m2-live/mem'), 'r');
    holder = spawn('sleep', ['120'], { stdio: ['ignore', 'ignore', 'ignore', fd] });
    fs.closeSync(fd);
    await new Promise((r) => setTimeout(r, 200));
  });

  afterAll(() => {
    holder?.kill('SIGKILL');
    fs.rmSync(root, { recursive: true, force: true });
  });

  // (k9/i9 stay: a recently used golden was built on them.)
  const unused = [
    'agent/a0',
    'golden/golden-c1m2-base-unused',
    'golden/golden-c1m2-gone',
    'native/n0',
    'rootfs-base/b0',
  ];

  it('a dry run lists what is unused and removes nothing', async () => {
    const res = await pruneCache({ cacheDir: cache, dataDirs: [dataDir], dryRun: true });
    expect(res.removed.map((e) => path.relative(cache, e.path)).sort()).toEqual(unused);
    expect(res.bytes).toBeGreaterThan(0);
    for (const u of unused) expect(fs.existsSync(at(u)), u).toBe(true);
  });

  it('removes only what nothing uses, keeping what snapshots and live processes depend on', async () => {
    const res = await pruneCache({ cacheDir: cache, dataDirs: [dataDir] });
    expect(res.removed.map((e) => path.relative(cache, e.path)).sort()).toEqual(unused);
    for (const u of unused) expect(fs.existsSync(at(u)), u).toBe(false);
    const why = Object.fromEntries(res.kept.map((k) => [path.relative(cache, k.path), k.reason]));
    expect(why).toMatchObject({
      'kernel/k1': 'named by guest.json',
      'image/i1': 'named by guest.json',
      'native/n1': 'named by guest.json',
      'golden/golden-c1m2-current': 'golden of the current image',
      'golden/golden-c1m2-old': `used by ${dataDir}`,
      'golden/golden-c1m2-base-used': `used by ${dataDir}`,
      // The older golden a snapshot uses keeps the image and kernel it was built on.
      'image/i0': 'built on by golden-c1m2-old',
      'kernel/k0': 'built on by golden-c1m2-old',
      'golden/golden-c1m2-live': `open in pid ${holder!.pid}`,
      'image/i5': 'built on by golden-c1m2-live',
      'golden/golden-c2m4-recent': 'recently used',
      'image/i9': 'built on by golden-c2m4-recent',
      'native/n2': 'recently used',
      'rootfs-base/b1': 'newest root filesystem build',
    });
    // Nothing half-removed is left behind.
    for (const kind of ['golden', 'image', 'kernel', 'native', 'agent', 'rootfs-base']) {
      expect(fs.readdirSync(at(kind)).filter((n) => n.startsWith('.'))).toEqual([]);
    }
  });

  it('with a zero grace period, recently used but unreferenced entries go too', async () => {
    holder?.kill('SIGKILL');
    await new Promise((r) => setTimeout(r, 200));
    const res = await pruneCache({ cacheDir: cache, dataDirs: [dataDir], olderThanMs: 0 });
    expect(res.removed.map((e) => path.relative(cache, e.path)).sort()).toEqual([
      'golden/golden-c1m2-live',
      'golden/golden-c2m4-recent',
      'image/i5',
      'image/i9',
      'kernel/k9',
      'native/n2',
    ]);
    expect(fs.existsSync(at('golden/golden-c1m2-old'))).toBe(true);
  });
});
