/**
 * The layer store: where a runtime's VMs, snapshots and layer files live in its data dir, the
 * qcow2 overlays a VM writes to, the background consolidation of snapshot memory (flatten or merge
 * of a delta chain), and the mark-and-sweep GC of layer files. See docs/ARCHITECTURE.md ("Storage layout and reference counting").
 *
 *   <dataDir>/vms/<id>/vm.json            <dataDir>/snapshots/<id>/{snapshot.json, state.bin}
 *   <dataDir>/layers/disk/<uuid>.qcow2    <dataDir>/layers/mem/<uuid>.{mem,delta}
 *   <dataDir>/templates/*.qcow2           (empty overlays, copied for each new one)
 *
 * A layer file lives while a record names it, while it is being made (`newPath` … `settle`) or
 * while a restore reads it (`pin`). All file I/O here is asynchronous: the server's event loop
 * never waits on the disk for a sweep.
 * @module
 */
import { execFile } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { crashPoint } from './crash-points.js';
import { flattenDeltas, mergeDeltas } from './memory.js';
import {
  ID_RE,
  inTurn,
  readJson,
  snapshotDeltas,
  snapshotMemFiles,
  writeJson,
  type MemView,
  type SnapshotRecord,
  type VmRecord,
} from './records.js';

const execFileP = promisify(execFile);

/** When a snapshot's memory is consolidated (`LayerStore.consolidate`). */
export interface MemoryChainLimits {
  /**
   * Deltas holding more than this are flattened with their base into a standalone base file: a
   * restore then maps its pages (shared by every fork) instead of copying them into private
   * memory. Default 32 MiB.
   */
  readonly flattenBytes?: number;
  /** A longer chain is merged into one delta (or flattened, as above). Default 16. */
  readonly maxDeltas?: number;
  /**
   * A snapshot restored this many times (in one runtime's life) is a fork source: its deltas are
   * flattened in the background, so later restores map its pages (shared, nothing to copy)
   * instead of copying the chain into each fork. Default 2; 0: never.
   */
  readonly flattenAfterRestores?: number;
}

export const FLATTEN_BYTES = 32 * 2 ** 20;
export const MAX_CHAIN = 16;

export class LayerStore {
  /** Layer files created but not yet named by a record. */
  readonly #pending = new Set<string>();
  /** Layer files a restore is reading right now (path -> users). */
  readonly #pins = new Map<string, number>();
  /** Background flattens and merges of snapshot memory (`consolidate`), by snapshot id. */
  readonly #flattening = new Map<string, Promise<void>>();
  /** The last queued record update of each snapshot (`updateSnapshot`). */
  readonly #updates = new Map<string, Promise<void>>();
  /** While a sweep runs, files settled meanwhile stay protected until it ends. */
  #sweeping = false;
  readonly #settledDuringSweep: string[] = [];
  #gcRun: Promise<void> | undefined;
  #gcAgain = false;

  readonly flattenBytes: number;
  readonly maxDeltas: number;
  readonly flattenAfterRestores: number;
  /** Restores per snapshot id, for `flattenAfterRestores`. */
  readonly #restores = new Map<string, number>();

  constructor(
    readonly dataDir: string,
    private readonly memdelta: string,
    private readonly log: (msg: string) => void,
    limits: MemoryChainLimits = {},
  ) {
    this.flattenBytes = limits.flattenBytes ?? FLATTEN_BYTES;
    this.maxDeltas = limits.maxDeltas ?? MAX_CHAIN;
    this.flattenAfterRestores = limits.flattenAfterRestores ?? 2;
  }

  /** Creates the directories, and removes snapshot dirs that a crash left without a record. */
  async init(): Promise<void> {
    for (const d of ['vms', 'snapshots', 'layers/disk', 'layers/mem', 'templates', 'bases']) {
      await fs.mkdir(path.join(this.dataDir, d), { recursive: true });
    }
    // What a crash left of imports (mobility.ts): never named by a record.
    await fs.rm(path.join(this.dataDir, 'imports'), { recursive: true, force: true });
    // A snapshot's record is written last: a snapshot dir without one is what a crash left. One
    // whose flatten or merge a crash cut short gets it again.
    for (const id of await fs.readdir(path.join(this.dataDir, 'snapshots'))) {
      if (!(await exists(path.join(this.snapDir(id), 'snapshot.json')))) {
        await fs.rm(this.snapDir(id), { recursive: true, force: true });
        continue;
      }
      const rec = await this.readSnapshot(id);
      if (rec) this.consolidate(rec);
    }
  }

  vmDir(id: string): string {
    return path.join(this.dataDir, 'vms', id);
  }

  snapDir(id: string): string {
    return path.join(this.dataDir, 'snapshots', id);
  }

  async vmIds(): Promise<string[]> {
    return fs.readdir(path.join(this.dataDir, 'vms'));
  }

  readVm(id: string): Promise<VmRecord | undefined> {
    return readJson<VmRecord>(path.join(this.vmDir(id), 'vm.json'));
  }

  writeVm(dir: string, rec: VmRecord): Promise<void> {
    return writeJson(path.join(dir, 'vm.json'), rec);
  }

  async readSnapshot(id: string): Promise<SnapshotRecord | undefined> {
    if (!ID_RE.test(id)) return undefined;
    return readJson<SnapshotRecord>(path.join(this.snapDir(id), 'snapshot.json'));
  }

  /** Writes a new snapshot's record (later changes go through `updateSnapshot`). */
  writeSnapshot(rec: SnapshotRecord): Promise<void> {
    return writeJson(path.join(this.snapDir(rec.id), 'snapshot.json'), rec);
  }

  /**
   * Read-modify-write of a snapshot's record, one at a time per snapshot: `change` gets the
   * record as it is now and returns the new one, or undefined to leave it (it is gone: nothing).
   * A flatten and a digest job both rewrite the record after seconds of work; each must build on
   * what the other wrote meanwhile, not on what it read before.
   */
  updateSnapshot(
    id: string,
    change: (current: SnapshotRecord) => SnapshotRecord | undefined,
  ): Promise<SnapshotRecord | undefined> {
    return inTurn(this.#updates, id, async () => {
      const current = await this.readSnapshot(id);
      const next = current && change(current);
      if (next) await this.writeSnapshot(next);
      return next;
    });
  }

  /** A new layer file path, protected from the sweeper until `settle`. */
  newPath(kind: 'disk' | 'mem', ext: string): string {
    const p = path.join(this.dataDir, 'layers', kind, crypto.randomUUID() + ext);
    this.#pending.add(p);
    return p;
  }

  /** Protects files about to be named by a record (an import renames them in first) until `settle`. */
  hold(...paths: string[]): void {
    for (const p of paths) this.#pending.add(p);
  }

  /** The files are named by a record now (or gone): the sweeper may judge them. */
  settle(...paths: string[]): void {
    if (this.#sweeping) this.#settledDuringSweep.push(...paths);
    else for (const p of paths) this.#pending.delete(p);
  }

  pin(paths: readonly string[], delta: 1 | -1): void {
    for (const p of paths) {
      const n = (this.#pins.get(p) ?? 0) + delta;
      if (n > 0) this.#pins.set(p, n);
      else this.#pins.delete(p);
    }
  }

  /**
   * Create a qcow2 overlay on `backing` (a qcow2 layer). The first overlay on a layer is made by
   * qemu-img and kept as a template; later ones are a copy of it (~1 ms instead of ~15 ms).
   */
  async newOverlay(file: string, backing: string, gib: number): Promise<void> {
    const tmpl = path.join(
      this.dataDir,
      'templates',
      `${path.basename(backing, '.qcow2')}-${crypto.createHash('sha256').update(backing).digest('hex').slice(0, 8)}-${gib}.qcow2`,
    );
    if (!(await exists(tmpl))) {
      const tmp = `${tmpl}.${crypto.randomUUID()}`;
      await qemuImgCreate(tmp, backing, 'qcow2', gib);
      await fs.rename(tmp, tmpl);
    }
    await fs.copyFile(tmpl, file);
  }

  /** The flatten or merge of a snapshot's memory, if one is running. */
  flattening(snapshotId: string): Promise<void> | undefined {
    return this.#flattening.get(snapshotId);
  }

  /** Waits for every running flatten (close, detach). */
  async drainFlattens(): Promise<void> {
    await Promise.allSettled([...this.#flattening.values()]);
  }

  /**
   * Called after a consolidation switched a snapshot's record from the memory files `before` to
   * `after` (same content): the runtime moves VMs whose `memView` is that snapshot's onto it, so
   * the replaced files can go. Awaited before the sweep.
   */
  onConsolidated?: (snapshotId: string, before: string[], after: MemView) => Promise<void>;

  /**
   * Keeps a new snapshot's memory cheap to restore and its chain short, in the background, once
   * its deltas hold more than `flattenBytes` or number more than `maxDeltas`: the chain is merged
   * into one delta (each page once: a page the VM changed at every step is stored once); if
   * that still holds more than half of `flattenBytes`, it is flattened with the base into a
   * standalone base file (restores then map its pages, shared by every fork, instead of copying
   * them into private memory). Otherwise nothing: the snapshot stays a delta over its parent's
   * memory.
   */
  consolidate(snap: SnapshotRecord): void {
    const deltas = snapshotDeltas(snap);
    const bytes = deltas.reduce((n, d) => n + d.bytes, 0);
    if (bytes > this.flattenBytes || deltas.length > this.maxDeltas) this.#consolidate(snap);
  }

  /** Counts a restore of `snap`; flattens it in the background once it is a fork source. */
  restored(snap: SnapshotRecord): void {
    const n = (this.#restores.get(snap.id) ?? 0) + 1;
    this.#restores.set(snap.id, n);
    if (
      this.flattenAfterRestores > 0 &&
      n >= this.flattenAfterRestores &&
      snapshotDeltas(snap).length > 0 &&
      !this.#flattening.has(snap.id)
    ) {
      this.#consolidate(snap, true);
    }
  }

  #consolidate(snap: SnapshotRecord, flatten = false): void {
    const deltas = snapshotDeltas(snap);
    const files = snapshotMemFiles(snap);
    const merged = deltas.length > 1 ? this.newPath('mem', '.delta') : undefined;
    let flat: string | undefined;
    const job = (async () => {
      const t0 = performance.now();
      let one = deltas[0]!;
      if (merged) {
        const m = await mergeDeltas(
          this.memdelta,
          deltas.map((d) => d.path),
          merged,
        );
        one = { path: merged, bytes: m.bytes };
        crashPoint('merge:written');
      }
      const current = await this.readSnapshot(snap.id);
      // Deleted or changed meanwhile: the sweeper removes what was made.
      if (!current || snapshotMemFiles(current).join('\n') !== files.join('\n')) return;
      if (flatten || one.bytes > this.flattenBytes / 2) {
        flat = this.newPath('mem', '.mem');
        await flattenDeltas(this.memdelta, snap.memBase, [one.path], flat);
        crashPoint('flatten:written');
      }
      // Built on the record as it is now (the digest job may have written it meanwhile). Its
      // digests stay: those of the layers kept (device state, disk) still hold, the memory one
      // names the file replaced and is skipped by checks until the runtime hashes the new file
      // (re-hashing the kept layers could bless a corruption made meanwhile).
      const next = await this.updateSnapshot(snap.id, (again) => {
        if (snapshotMemFiles(again).join('\n') !== files.join('\n')) return undefined;
        const { delta: _d, chain: _c, ...kept } = again;
        return flat ? { ...kept, memBase: flat } : { ...kept, delta: one };
      });
      if (!next) return;
      await this.onConsolidated?.(snap.id, files, {
        memBase: next.memBase,
        deltas: snapshotDeltas(next),
      }).catch(() => {});
      const mib = deltas.reduce((n, d) => n + d.bytes, 0) / 2 ** 20;
      this.log(
        `runtime: ${flat ? 'flattened' : 'merged'} ${snap.id} (${deltas.length} deltas, ${mib.toFixed(1)} MiB${merged ? `, ${(one.bytes / 2 ** 20).toFixed(1)} MiB merged` : ''}) in ${(performance.now() - t0).toFixed(0)} ms`,
      );
    })()
      .catch((err: unknown) => this.log(`runtime: flatten of ${snap.id} failed: ${String(err)}`))
      .finally(() => {
        this.settle(...(merged ? [merged] : []), ...(flat ? [flat] : []));
        this.#flattening.delete(snap.id);
        // (Awaited by the job: once it is settled, the files it replaced are gone.)
        return this.gc();
      });
    this.#flattening.set(snap.id, job);
  }

  /**
   * Mark and sweep: a layer file lives while a VM directory or a snapshot record names it (or it
   * is pending or pinned). Deleting a snapshot therefore never breaks a fork or a later snapshot
   * built on it. Calls made while a sweep runs share one more sweep after it.
   */
  gc(): Promise<void> {
    if (this.#gcRun) {
      this.#gcAgain = true;
      return this.#gcRun;
    }
    const run = (async () => {
      do {
        this.#gcAgain = false;
        await this.#sweep().catch((err: unknown) => this.log(`runtime: layer GC: ${String(err)}`));
      } while (this.#gcAgain);
    })().finally(() => (this.#gcRun = undefined));
    this.#gcRun = run;
    return run;
  }

  async #sweep(): Promise<void> {
    this.#sweeping = true;
    try {
      const live = new Set<string>();
      for (const id of await fs.readdir(path.join(this.dataDir, 'vms'))) {
        const rec = await this.readVm(id);
        if (!rec) continue;
        live.add(rec.memBase).add(rec.disk.top);
        rec.disk.chain.forEach((l) => live.add(l));
        // The memory its next snapshot is compared with (and builds on).
        if (rec.memView) {
          live.add(rec.memView.memBase);
          rec.memView.deltas.forEach((d) => live.add(d.path));
        }
        if (rec.nextTop) live.add(rec.nextTop);
      }
      for (const id of await fs.readdir(path.join(this.dataDir, 'snapshots'))) {
        const s = await this.readSnapshot(id);
        if (!s) continue;
        snapshotMemFiles(s).forEach((f) => live.add(f));
        s.disk.forEach((l) => live.add(l));
      }
      // Checked at the time of each deletion: made or pinned since the marking is kept too.
      const keep = (p: string) => live.has(p) || this.#pending.has(p) || this.#pins.has(p);
      // Overlay templates go with the layer they are made for (goldens' layers are never swept).
      const templates = path.join(this.dataDir, 'templates');
      for (const f of await fs.readdir(templates)) {
        const layer = path.join(
          this.dataDir,
          'layers',
          'disk',
          `${f.split('-').slice(0, 5).join('-')}.qcow2`,
        );
        if (!f.startsWith('disk-') && !keep(layer)) {
          await fs.rm(path.join(templates, f), { force: true });
        }
      }
      for (const kind of ['disk', 'mem']) {
        const dir = path.join(this.dataDir, 'layers', kind);
        for (const f of await fs.readdir(dir)) {
          const p = path.join(dir, f);
          if (!keep(p)) await fs.rm(p, { force: true });
        }
      }
    } finally {
      this.#sweeping = false;
      for (const p of this.#settledDuringSweep.splice(0)) this.#pending.delete(p);
    }
  }
}

export async function qemuImgCreate(
  file: string,
  backing: string,
  backingFmt: 'raw' | 'qcow2',
  gib: number,
): Promise<void> {
  await execFileP('qemu-img', [
    'create',
    '-q',
    '-f',
    'qcow2',
    '-u',
    '-F',
    backingFmt,
    '-b',
    backing,
    file,
    `${gib}G`,
  ]);
}

async function exists(p: string): Promise<boolean> {
  try {
    await fs.access(p);
    return true;
  } catch {
    return false;
  }
}
