/**
 * Pruning the guest cache (`~/.cache/fastvm`): guest builds (`kernel/`, `image/`, `agent/`,
 * `native/`, `rootfs-base/`, each `<hash of its inputs>/`) and goldens (`golden/golden-*`) that
 * nothing uses any more. An entry is kept when any of these holds:
 *
 * - `guest.json` names it (the current build);
 * - a record in one of the given data dirs names a file in it (a VM's memory, disk chain or memory
 *   view; a snapshot's memory chain or disk chain): a snapshot may still depend on an older
 *   golden, and through it on an older image and kernel;
 * - a live process on the host has a file in it open or mapped (any runtime's QEMU, whatever its
 *   data dir: `/proc/PID/fd` and `/proc/PID/maps`);
 * - it is a golden of the current image, or the image and kernel of a kept golden;
 * - it was built or (goldens) last loaded by a runtime less than `olderThanMs` ago. This covers
 *   runtimes on the same host whose data dirs were not given (another server, tests, benches):
 *   their goldens are touched whenever they load them;
 * - (`rootfs-base/`) it is the newest one: the input of the next image build.
 *
 * Entries being built (`.build-*`, `*.tmp`) are never touched. An entry is renamed to
 * `.prune-*` before it is removed, so nothing sees half of one; a crash leaves that name, which
 * the next prune removes.
 * @module
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { readJson, type SnapshotRecord, type VmRecord } from './records.js';
import type { GuestImage } from './qemu.js';

export interface PruneOptions {
  /** The guest cache (`FASTVM_CACHE_DIR`, default `~/.cache/fastvm`). */
  readonly cacheDir: string;
  /** Where goldens live (default `<cacheDir>/golden`). */
  readonly goldenDir?: string;
  /** Runtime data dirs whose VM and snapshot records count as references. */
  readonly dataDirs: readonly string[];
  /** Unreferenced entries newer than this are kept (default 7 days). */
  readonly olderThanMs?: number;
  /** Report only; remove nothing. */
  readonly dryRun?: boolean;
}

export interface PruneEntry {
  readonly path: string;
  readonly bytes: number;
}

export interface PruneResult {
  readonly removed: PruneEntry[];
  /** Kept entries and why. */
  readonly kept: { path: string; reason: string }[];
  /** Bytes freed (or, with `dryRun`, that would be). */
  readonly bytes: number;
}

export const PRUNE_AFTER_MS = 7 * 24 * 3600 * 1000;

const BUILD_KINDS = ['kernel', 'image', 'agent', 'native', 'rootfs-base'] as const;

export async function pruneCache(opts: PruneOptions): Promise<PruneResult> {
  const cacheDir = await real(opts.cacheDir);
  const goldenDir = await real(opts.goldenDir ?? path.join(opts.cacheDir, 'golden'));
  const olderThan = opts.olderThanMs ?? PRUNE_AFTER_MS;
  const now = Date.now();

  // Every entry, by its real path. (A removal a crash cut short left a `.prune-*` dir: finished.)
  const entries: { path: string; kind: string; mtimeMs: number }[] = [];
  for (const dir of [
    ...(await Promise.all(BUILD_KINDS.map((k) => real(path.join(opts.cacheDir, k))))),
    goldenDir,
  ]) {
    for (const name of await list(dir)) {
      if (name.startsWith('.prune-') && !opts.dryRun) {
        await fs.rm(path.join(dir, name), { recursive: true, force: true });
      }
    }
  }
  for (const kind of BUILD_KINDS) {
    const dir = await real(path.join(opts.cacheDir, kind));
    for (const name of await list(dir)) {
      if (name.startsWith('.') || name.endsWith('.tmp')) continue;
      const p = path.join(dir, name);
      const st = await fs.stat(p).catch(() => undefined);
      if (st?.isDirectory()) entries.push({ path: p, kind, mtimeMs: st.mtimeMs });
    }
  }
  for (const name of await list(goldenDir)) {
    if (!name.startsWith('golden-')) continue;
    const p = path.join(goldenDir, name);
    const st = await fs.stat(p).catch(() => undefined);
    if (st?.isDirectory()) entries.push({ path: p, kind: 'golden', mtimeMs: st.mtimeMs });
  }

  const reasons = new Map<string, string>();
  const keep = (file: string, reason: string) => {
    for (const e of entries) {
      if ((file === e.path || file.startsWith(e.path + '/')) && !reasons.has(e.path)) {
        reasons.set(e.path, reason);
      }
    }
  };
  const manifest = await readJson<GuestImage>(path.join(opts.cacheDir, 'guest.json'));
  if (manifest) {
    for (const f of [
      manifest.kernel,
      manifest.rootfs,
      manifest.agent,
      manifest.memshim,
      manifest.memdelta,
    ]) {
      keep(await real(f), 'named by guest.json');
    }
  }
  for (const dataDir of opts.dataDirs) {
    for (const file of await recordedFiles(dataDir)) keep(await real(file), `used by ${dataDir}`);
  }
  for (const [file, pid] of await openFiles(cacheDir, goldenDir)) keep(file, `open in pid ${pid}`);

  // Goldens of the current image stay; a kept golden keeps the image and kernel it was built on.
  // Goldens of imported images (`baseImage`) stay only while used or recently loaded, like the
  // rest: there may be one per image ever launched, and a launch rebuilds a missing one.
  const imageOf = new Map<string, string>();
  for (const e of entries.filter((x) => x.kind === 'golden')) {
    const rec = await readJson<SnapshotRecord>(path.join(e.path, 'snapshot.json'));
    if (rec) imageOf.set(e.path, rec.imageId);
    if (manifest && rec?.imageId === manifest.imageId && !rec.baseImage) {
      keep(e.path, 'golden of the current image');
    }
  }
  for (const e of entries) {
    if (!reasons.has(e.path) && now - e.mtimeMs < olderThan) keep(e.path, 'recently used');
  }
  const newestBase = entries
    .filter((e) => e.kind === 'rootfs-base')
    .sort((a, b) => b.mtimeMs - a.mtimeMs)[0];
  if (newestBase) keep(newestBase.path, 'newest root filesystem build');
  for (const [golden, imageId] of imageOf) {
    if (!reasons.has(golden)) continue;
    const [kernelHash, imageHash] = imageId.split('-');
    for (const e of entries) {
      const name = path.basename(e.path);
      if (
        (e.kind === 'kernel' && name === kernelHash) ||
        (e.kind === 'image' && name === imageHash)
      ) {
        keep(e.path, `built on by ${path.basename(golden)}`);
      }
    }
  }

  const removed: PruneEntry[] = [];
  const kept: { path: string; reason: string }[] = [];
  for (const e of entries) {
    const reason = reasons.get(e.path);
    if (reason) {
      kept.push({ path: e.path, reason });
      continue;
    }
    const bytes = await allocated(e.path);
    if (!opts.dryRun) {
      // Renamed first, so that nothing ever sees half of an entry.
      const gone = path.join(
        path.dirname(e.path),
        `.prune-${path.basename(e.path)}-${process.pid}`,
      );
      await fs.rename(e.path, gone);
      await fs.rm(gone, { recursive: true, force: true });
    }
    removed.push({ path: e.path, bytes });
  }
  return { removed, kept, bytes: removed.reduce((n, e) => n + e.bytes, 0) };
}

/** Files named by the VM and snapshot records of a runtime data dir. */
async function recordedFiles(dataDir: string): Promise<string[]> {
  const out: string[] = [];
  for (const id of await list(path.join(dataDir, 'vms'))) {
    const rec = await readJson<VmRecord>(path.join(dataDir, 'vms', id, 'vm.json'));
    if (!rec) continue;
    out.push(rec.memBase, rec.disk.top, ...rec.disk.chain);
    if (rec.memView) out.push(rec.memView.memBase, ...rec.memView.deltas.map((d) => d.path));
  }
  for (const id of await list(path.join(dataDir, 'snapshots'))) {
    const rec = await readJson<SnapshotRecord>(
      path.join(dataDir, 'snapshots', id, 'snapshot.json'),
    );
    if (!rec) continue;
    out.push(rec.memBase, ...rec.disk);
  }
  return out;
}

/** Files under the cache that live processes have open or mapped, with a pid holding each. */
async function openFiles(...roots: string[]): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  const under = (f: string) => roots.some((r) => f.startsWith(r + '/'));
  for (const entry of await list('/proc')) {
    const pid = Number(entry);
    if (!Number.isInteger(pid) || pid <= 0) continue;
    for (const fd of await list(`/proc/${pid}/fd`)) {
      const target = await fs.readlink(`/proc/${pid}/fd/${fd}`).catch(() => '');
      if (under(target)) out.set(target, pid);
    }
    const maps = await fs.readFile(`/proc/${pid}/maps`, 'utf8').catch(() => '');
    for (const line of maps.split('\n')) {
      const i = line.indexOf('/');
      if (i >= 0 && under(line.slice(i))) out.set(line.slice(i).replace(/ \(deleted\)$/, ''), pid);
    }
  }
  return out;
}

/** Allocated bytes of a directory tree (what `du` counts). */
async function allocated(p: string): Promise<number> {
  const st = await fs.lstat(p).catch(() => undefined);
  if (!st) return 0;
  let n = st.blocks * 512;
  if (st.isDirectory()) for (const name of await list(p)) n += await allocated(path.join(p, name));
  return n;
}

async function list(dir: string): Promise<string[]> {
  return fs.readdir(dir).catch(() => []);
}

/** The real path (symlinks resolved) of a file that may be gone: then the path itself. */
async function real(p: string): Promise<string> {
  return fs.realpath(p).catch(() => path.resolve(p));
}
