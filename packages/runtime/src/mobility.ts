/**
 * Snapshot mobility: exporting a snapshot as a manifest of the files a restore needs (with their
 * SHA-256), serving those files, and importing such a snapshot from another host's runtime. See
 * docs/ARCHITECTURE.md ("Snapshot mobility").
 *
 * - **What moves.** The snapshot's device state, its memory (base file and deltas) and disk
 *   layers, transitively: the layers of the snapshots it stands on, the golden's files unless the
 *   importer has that golden (goldens are keyed by their inputs, so the same id is the same
 *   content), and a root filesystem other than the guest image (a `BaseImage`). The guest image
 *   itself is not moved: both hosts must run the same image, accelerator and QEMU.
 * - **Verified while streaming.** Each file is hashed as it arrives and written into a private
 *   temp dir (all-zero blocks are left as holes: memory files are mostly holes); its size and
 *   SHA-256 must match the manifest or the import fails with `snapshot_corrupt` and leaves
 *   nothing behind. Recorded digests are reused for the manifest; other files are hashed once per
 *   runtime (the digester's cache).
 * - **Paths rewritten.** Records name files by absolute path, and qcow2 layers name their backing
 *   file: both are mapped to this host's data dir and golden dir (`qemu-img rebase -u`).
 * - **Atomic.** Layer files are renamed into `layers/` (held from the sweeper), a golden's dir and
 *   then the snapshot's dir are renamed into place, the snapshot's last: a crash leaves unnamed
 *   layers (swept) and `imports/` (removed at start), never a half snapshot.
 * - **Cached.** Layer files already here (an earlier import of a parent) are not fetched again
 *   (layer names are random UUIDs and layers are immutable).
 * @module
 */
import { execFile } from 'node:child_process';
import { createHash, randomUUID } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import { promisify } from 'node:util';
import type { Confinement } from './confine.js';
import type { DigestRecord, SnapshotDigester } from './digests.js';
import type { LayerStore } from './layers.js';
import type { GuestImage } from './qemu.js';
import {
  ID_RE,
  readJson,
  snapshotMemFiles,
  writeJson,
  type DeltaRef,
  type SnapshotRecord,
} from './records.js';
import {
  RuntimeError,
  type SnapshotFileFetch,
  type SnapshotImportResult,
  type SnapshotManifest,
  type SnapshotManifestFile,
} from './types.js';

const execFileP = promisify(execFile);

export interface MobilityContext {
  readonly layers: LayerStore;
  readonly digests: SnapshotDigester;
  readonly goldenDir: string;
  readonly image: GuestImage;
  readonly accel: string;
  readonly qemu: string;
  readonly log: (msg: string) => void;
  readonly confine?: Confinement | undefined;
}

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$/;
/** `layer.<disk|mem>.<uuid>.<ext>`: a layer file's wire name. */
const LAYER_NAME_RE = /^layer\.(disk|mem)\.[A-Za-z0-9][A-Za-z0-9_-]{0,100}\.(qcow2|delta|mem)$/;
/** The files of a golden's dir that a restore reads. */
const GOLDEN_FILES = ['mem', 'disk.qcow2', 'state.bin'];

/** A file a restore of the snapshot reads, without its digest yet. */
type Entry = Omit<SnapshotManifestFile, 'bytes' | 'sha256'>;

/** The golden a path belongs to (`<goldenDir>/<id>/…`), if any. */
function goldenOf(goldenDir: string, p: string): string | undefined {
  if (!p.startsWith(goldenDir + '/')) return undefined;
  const id = path.relative(goldenDir, p).split('/')[0];
  return id && ID_RE.test(id) ? id : undefined;
}

/** The files of a snapshot, by wire name (the golden's included), and its golden's record. */
async function entriesOf(
  ctx: MobilityContext,
  snap: SnapshotRecord,
): Promise<{ entries: Entry[]; golden?: string; goldenRecord?: SnapshotRecord }> {
  const { dataDir } = ctx.layers;
  const out = new Map<string, Entry>();
  let golden: string | undefined;
  const add = (p: string, state = false) => {
    let e: Entry | undefined;
    const gid = goldenOf(ctx.goldenDir, p);
    if (state) e = { name: 'state.bin', kind: 'state', path: p };
    else if (/^layers\/(disk|mem)\/[^/]+$/.test(path.relative(dataDir, p))) {
      const [, kind, base] = path.relative(dataDir, p).split('/');
      e = { name: `layer.${kind}.${base}`, kind: 'layer', path: p };
    } else if (gid) {
      golden = gid;
      e = { name: `golden.${gid}.${path.basename(p)}`, kind: 'golden', path: p, golden: gid };
    } else if (p === ctx.image.rootfs) return;
    else {
      const tag = createHash('sha256').update(p).digest('hex').slice(0, 12);
      e = { name: `base.${tag}.${path.basename(p)}`, kind: 'base', path: p };
    }
    if (!NAME_RE.test(e.name)) {
      throw new RuntimeError('unsupported', `snapshot ${snap.id}: cannot export ${p} (its name)`);
    }
    if (!out.has(e.name)) out.set(e.name, e);
  };
  add(snap.state, true);
  for (const f of snapshotMemFiles(snap)) add(f);
  for (const f of snap.disk) add(f);
  let goldenRecord: SnapshotRecord | undefined;
  if (golden) {
    goldenRecord = await readJson<SnapshotRecord>(
      path.join(ctx.goldenDir, golden, 'snapshot.json'),
    );
    if (!goldenRecord) {
      throw new RuntimeError('snapshot_not_found', `golden ${golden} of ${snap.id} is missing`);
    }
    // The golden's own files (a snapshot names some of them already).
    for (const f of [goldenRecord.state, ...snapshotMemFiles(goldenRecord), ...goldenRecord.disk]) {
      if (goldenOf(ctx.goldenDir, f)) add(f);
      else if (f !== ctx.image.rootfs) add(f);
    }
  }
  return {
    entries: [...out.values()],
    ...(golden ? { golden } : {}),
    ...(goldenRecord ? { goldenRecord } : {}),
  };
}

/** See `Runtime.exportSnapshot`. */
export async function exportSnapshot(
  ctx: MobilityContext,
  snapshotId: string,
  opts: { haveGoldens?: readonly string[] } = {},
): Promise<SnapshotManifest> {
  // A flatten switches the memory files, and the digest job records digests to reuse: both first.
  await ctx.layers.flattening(snapshotId)?.catch(() => {});
  await ctx.digests.pending(snapshotId);
  const snap = await ctx.layers.readSnapshot(snapshotId);
  if (!snap) throw new RuntimeError('snapshot_not_found', `snapshot ${snapshotId} not found`);
  const { entries, golden, goldenRecord } = await entriesOf(ctx, snap);
  const skipGolden = golden !== undefined && (opts.haveGoldens ?? []).includes(golden);
  const recorded = new Map<string, string>();
  for (const d of [
    ...Object.values(snap.digests?.layers ?? {}),
    ...(snap.digests?.inherited ?? []),
  ]) {
    recorded.set(d.file, d.sha256);
  }
  const files: SnapshotManifestFile[] = [];
  for (const e of entries) {
    if (skipGolden && e.kind === 'golden') continue;
    const st = await fs.stat(e.path).catch(() => undefined);
    if (!st)
      throw new RuntimeError('snapshot_not_found', `snapshot ${snapshotId}: ${e.path} is gone`);
    const sha256 = recorded.get(e.path) ?? (await ctx.digests.digestOf(e.path)).sha256;
    files.push({ ...e, bytes: st.size, sha256 });
  }
  return {
    format: 1,
    snapshotId,
    machine: snap.machine,
    imageId: snap.imageId,
    accel: snap.accel,
    ...(snap.qemu ? { qemu: snap.qemu } : {}),
    ...(golden ? { golden } : {}),
    roots: { dataDir: ctx.layers.dataDir, goldenDir: ctx.goldenDir, rootfs: ctx.image.rootfs },
    record: snap,
    ...(goldenRecord && !skipGolden ? { goldenRecord } : {}),
    files,
    bytes: files.reduce((n, f) => n + f.bytes, 0),
  };
}

/** See `Runtime.openSnapshotFile`: only names of the snapshot's manifest resolve. */
export async function openSnapshotFile(
  ctx: MobilityContext,
  snapshotId: string,
  name: string,
): Promise<Readable> {
  const snap = await ctx.layers.readSnapshot(snapshotId);
  if (!snap) throw new RuntimeError('snapshot_not_found', `snapshot ${snapshotId} not found`);
  const { entries } = await entriesOf(ctx, snap);
  const e = entries.find((x) => x.name === name);
  if (!e) throw new RuntimeError('not_found', `snapshot ${snapshotId} has no file ${name}`);
  const fh = await fs.open(e.path, 'r').catch((err: NodeJS.ErrnoException) => {
    throw new RuntimeError('not_found', `snapshot ${snapshotId}: ${name}: ${err.code ?? err}`);
  });
  return fh.createReadStream({ highWaterMark: 1 << 20 });
}

function corrupt(snapshotId: string, msg: string): RuntimeError {
  return new RuntimeError('snapshot_corrupt', `import of snapshot ${snapshotId}: ${msg}`);
}

function checkManifest(m: SnapshotManifest): void {
  const bad = (msg: string) =>
    new RuntimeError('invalid_argument', `bad snapshot manifest: ${msg}`);
  if (m?.format !== 1) throw bad('unknown format');
  if (typeof m.snapshotId !== 'string' || !ID_RE.test(m.snapshotId)) throw bad('snapshot id');
  if (!Array.isArray(m.files)) throw bad('files');
  const names = new Set<string>();
  for (const f of m.files) {
    if (typeof f.name !== 'string' || !NAME_RE.test(f.name) || names.has(f.name)) {
      throw bad(`file name ${JSON.stringify(f.name)}`);
    }
    names.add(f.name);
    if (!['state', 'layer', 'golden', 'base'].includes(f.kind)) throw bad(`kind of ${f.name}`);
    if (!Number.isSafeInteger(f.bytes) || f.bytes < 0) throw bad(`size of ${f.name}`);
    if (typeof f.sha256 !== 'string' || !/^[0-9a-f]{64}$/.test(f.sha256)) {
      throw bad(`sha256 of ${f.name}`);
    }
    if (typeof f.path !== 'string' || !path.isAbsolute(f.path)) throw bad(`path of ${f.name}`);
    if (f.kind === 'golden' && (typeof f.golden !== 'string' || !ID_RE.test(f.golden))) {
      throw bad(`golden of ${f.name}`);
    }
    // Names become paths here: only the shapes an export makes.
    const base = path.basename(f.path);
    const ok =
      f.kind === 'state'
        ? f.name === 'state.bin'
        : f.kind === 'layer'
          ? LAYER_NAME_RE.test(f.name)
          : f.kind === 'golden'
            ? GOLDEN_FILES.includes(base)
            : NAME_RE.test(base);
    if (!ok) throw bad(`file ${f.name} (${base})`);
  }
  const rec = m.record as SnapshotRecord | undefined;
  if (!rec || rec.id !== m.snapshotId || !Array.isArray(rec.disk)) throw bad('record');
}

const ZERO = Buffer.alloc(1 << 16);

/**
 * Streams one file into `dest` (new), hashing as it goes; all-zero 64 KiB blocks stay holes.
 * Throws `snapshot_corrupt` on a size or digest mismatch.
 */
async function download(
  snapshotId: string,
  file: SnapshotManifestFile,
  src: Readable | ReadableStream<Uint8Array>,
  dest: string,
  signal: AbortSignal | undefined,
): Promise<void> {
  const stream =
    src instanceof Readable
      ? src
      : Readable.fromWeb(src as import('node:stream/web').ReadableStream);
  const fh = await fs.open(dest, 'wx', 0o600);
  const hash = createHash('sha256');
  let pos = 0;
  try {
    for await (const chunk of stream as AsyncIterable<Buffer>) {
      signal?.throwIfAborted();
      const buf = Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk);
      if (pos + buf.length > file.bytes) {
        throw corrupt(snapshotId, `${file.name} is longer than its ${file.bytes} bytes`);
      }
      hash.update(buf);
      for (let off = 0; off < buf.length; off += ZERO.length) {
        const piece = buf.subarray(off, Math.min(buf.length, off + ZERO.length));
        if (!piece.equals(ZERO.subarray(0, piece.length))) {
          await fh.write(piece, 0, piece.length, pos + off);
        }
      }
      pos += buf.length;
    }
    signal?.throwIfAborted();
    if (pos !== file.bytes) {
      throw corrupt(snapshotId, `${file.name} ended after ${pos} of its ${file.bytes} bytes`);
    }
    const got = hash.digest('hex');
    if (got !== file.sha256) {
      throw corrupt(
        snapshotId,
        `${file.name} does not match its digest (sha256 ${got.slice(0, 12)}…, manifest ${file.sha256.slice(0, 12)}…)`,
      );
    }
    await fh.truncate(file.bytes);
    await fh.datasync();
  } finally {
    stream.destroy();
    await fh.close();
  }
}

async function exists(p: string): Promise<boolean> {
  return fs.access(p).then(
    () => true,
    () => false,
  );
}

async function sha256File(file: string): Promise<string> {
  const h = createHash('sha256');
  const fh = await fs.open(file, 'r');
  try {
    for await (const c of fh.createReadStream({ highWaterMark: 1 << 20 })) h.update(c as Buffer);
  } finally {
    await fh.close();
  }
  return h.digest('hex');
}

/** Points a qcow2 file's backing file at `map(old)` when that differs (header only). */
async function rebaseQcow2(file: string, map: (p: string) => string): Promise<boolean> {
  const { stdout } = await execFileP('qemu-img', ['info', '-U', '--output=json', file]);
  const info = JSON.parse(stdout) as {
    format: string;
    'backing-filename'?: string;
    'backing-filename-format'?: string;
  };
  if (info.format !== 'qcow2' || !info['backing-filename']) return false;
  const next = map(info['backing-filename']);
  if (next === info['backing-filename']) return false;
  await execFileP('qemu-img', [
    'rebase',
    '-u',
    '-f',
    'qcow2',
    '-F',
    info['backing-filename-format'] ?? 'qcow2',
    '-b',
    next,
    file,
  ]);
  return true;
}

/** See `Runtime.importSnapshot`. */
export async function importSnapshot(
  ctx: MobilityContext,
  manifest: SnapshotManifest,
  fetch: SnapshotFileFetch,
  opts: { signal?: AbortSignal | undefined } = {},
): Promise<SnapshotImportResult> {
  checkManifest(manifest);
  const { layers, goldenDir, image } = ctx;
  const id = manifest.snapshotId;
  const none = { files: 0, bytes: 0, skipped: 0 };
  if (await layers.readSnapshot(id)) return { ...none, present: true };
  if (manifest.imageId !== image.imageId) {
    throw new RuntimeError(
      'invalid_argument',
      `snapshot ${id} needs guest image ${manifest.imageId}; this host runs ${image.imageId}`,
    );
  }
  if (manifest.accel !== ctx.accel || (manifest.qemu && manifest.qemu !== ctx.qemu)) {
    throw new RuntimeError(
      'invalid_argument',
      `snapshot ${id} was taken under ${manifest.accel} by ${manifest.qemu ?? 'an unknown QEMU'}; this host runs ${ctx.accel}, ${ctx.qemu}`,
    );
  }
  const t0 = performance.now();
  const gid = manifest.golden;
  const haveGolden =
    gid !== undefined && (await exists(path.join(goldenDir, gid, 'snapshot.json')));
  const goldenFiles = manifest.files.filter((f) => f.kind === 'golden');
  if (gid && !haveGolden && (goldenFiles.length === 0 || !manifest.goldenRecord)) {
    throw new RuntimeError(
      'invalid_argument',
      `snapshot ${id} stands on golden ${gid}, which this host lacks and the manifest leaves out`,
    );
  }
  const tmp = path.join(layers.dataDir, 'imports', `${id}.${randomUUID().slice(0, 8)}`);
  const goldenTmp =
    gid && !haveGolden
      ? path.join(goldenDir, `.build-import-${gid}-${randomUUID().slice(0, 8)}`)
      : undefined;
  await fs.mkdir(path.join(tmp, 'files'), { recursive: true, mode: 0o700 });
  await fs.mkdir(path.join(tmp, 'snap'), { recursive: true });
  if (goldenTmp) await fs.mkdir(goldenTmp, { recursive: true });
  /** Source path → final path on this host. */
  const finalOf = new Map<string, string>();
  /** Files to fetch: where they land first and where they go. */
  const fetches: { file: SnapshotManifestFile; tmp: string; final: string }[] = [];
  let skipped = 0;
  const placed: string[] = [];
  const held: string[] = [];
  try {
    for (const f of manifest.files) {
      let final: string;
      let at: string;
      if (f.kind === 'state') {
        final = path.join(layers.snapDir(id), 'state.bin');
        at = path.join(tmp, 'snap', 'state.bin');
      } else if (f.kind === 'layer') {
        const [, kind, ...rest] = f.name.split('.');
        if (kind !== 'disk' && kind !== 'mem') throw new RuntimeError('invalid_argument', f.name);
        final = path.join(layers.dataDir, 'layers', kind, rest.join('.'));
        at = path.join(tmp, 'files', f.name);
        // Layers are immutable and uniquely named: one here already is this one.
        if (await exists(final)) {
          finalOf.set(f.path, final);
          layers.hold(final);
          held.push(final);
          skipped += 1;
          continue;
        }
      } else if (f.kind === 'golden') {
        final = path.join(goldenDir, f.golden!, path.basename(f.path));
        if (haveGolden || f.golden !== gid) {
          finalOf.set(f.path, final);
          skipped += 1;
          continue;
        }
        at = path.join(goldenTmp!, path.basename(f.path));
      } else {
        // A base root filesystem: used where it is when this host has the same file there.
        if ((await exists(f.path)) && (await ctx.digests.digestOf(f.path)).sha256 === f.sha256) {
          finalOf.set(f.path, f.path);
          skipped += 1;
          continue;
        }
        final = path.join(
          layers.dataDir,
          'bases',
          `${f.sha256.slice(0, 32)}-${path.basename(f.path)}`,
        );
        if (await exists(final)) {
          finalOf.set(f.path, final);
          skipped += 1;
          continue;
        }
        at = path.join(tmp, 'files', f.name);
      }
      finalOf.set(f.path, final);
      fetches.push({ file: f, tmp: at, final });
    }
    const map = (p: string): string => {
      const known = finalOf.get(p);
      if (known) return known;
      if (p === manifest.roots.rootfs) return image.rootfs;
      if (p.startsWith(manifest.roots.goldenDir + '/')) {
        return path.join(goldenDir, path.relative(manifest.roots.goldenDir, p));
      }
      if (p.startsWith(manifest.roots.dataDir + '/')) {
        return path.join(layers.dataDir, path.relative(manifest.roots.dataDir, p));
      }
      throw new RuntimeError('invalid_argument', `snapshot ${id}: no file for ${p}`);
    };
    let bytes = 0;
    for (const x of fetches) {
      opts.signal?.throwIfAborted();
      const src = await fetch(x.file);
      await download(id, x.file, src, x.tmp, opts.signal);
      bytes += x.file.bytes;
    }
    // Paths for this host: qcow2 backing files, then the records.
    const sha = new Map<string, string>();
    for (const x of fetches) {
      sha.set(x.final, x.file.sha256);
      if (x.file.path.endsWith('.qcow2') && (await rebaseQcow2(x.tmp, map))) {
        sha.set(x.final, await sha256File(x.tmp));
      }
      await fs.chmod(x.tmp, 0o644);
    }
    const rec = rewriteRecord(manifest.record as SnapshotRecord, map, sha);
    await writeJson(path.join(tmp, 'snap', 'snapshot.json'), rec);
    if (goldenTmp) {
      const grec = rewriteRecord(manifest.goldenRecord as SnapshotRecord, map, sha);
      await writeJson(path.join(goldenTmp, 'snapshot.json'), grec);
    }
    opts.signal?.throwIfAborted();
    // Into place: layers and bases (held from the sweeper), the golden's dir, the snapshot's dir.
    for (const x of fetches) {
      if (x.file.kind !== 'layer' && x.file.kind !== 'base') continue;
      await fs.mkdir(path.dirname(x.final), { recursive: true, mode: 0o711 });
      layers.hold(x.final);
      held.push(x.final);
      if (await exists(x.final)) continue; // (a concurrent import placed it)
      await fs.rename(x.tmp, x.final);
      placed.push(x.final);
    }
    if (goldenTmp) {
      try {
        await fs.rename(goldenTmp, path.join(goldenDir, gid!));
      } catch {
        // Another runtime placed the same golden first: use that one.
        await fs.rm(goldenTmp, { recursive: true, force: true });
      }
    }
    // Everything the record names is here now (the device state moves with its dir).
    for (const f of [...snapshotMemFiles(rec), ...rec.disk]) {
      if (!(await exists(f))) {
        throw new RuntimeError(
          'invalid_argument',
          `snapshot ${id}: ${f} is missing after the pull`,
        );
      }
    }
    try {
      await fs.rename(path.join(tmp, 'snap'), layers.snapDir(id));
    } catch (err) {
      if (!(await layers.readSnapshot(id))) throw err;
      // A concurrent import finished first: its files are used, ours are swept.
    }
    for (const [file, digest] of sha) await ctx.digests.seed(file, digest).catch(() => {});
    ctx.log(
      `runtime: imported ${id}: ${fetches.length} files, ${(bytes / 2 ** 20).toFixed(1)} MiB (${skipped} here already) in ${(performance.now() - t0).toFixed(0)} ms`,
    );
    placed.length = 0;
    return { files: fetches.length, bytes, skipped, present: false };
  } catch (err) {
    for (const p of placed) await fs.rm(p, { force: true });
    throw err;
  } finally {
    await fs.rm(tmp, { recursive: true, force: true });
    if (goldenTmp) await fs.rm(goldenTmp, { recursive: true, force: true });
    layers.settle(...held);
    if (held.length) void layers.gc();
  }
}

/** A snapshot record with every path mapped to this host (digests of rewritten files updated). */
function rewriteRecord(
  src: SnapshotRecord,
  map: (p: string) => string,
  sha: ReadonlyMap<string, string>,
): SnapshotRecord {
  const delta = (d: DeltaRef): DeltaRef => ({ ...d, path: map(d.path) });
  const rec: SnapshotRecord = {
    ...src,
    memBase: map(src.memBase),
    ...(src.delta ? { delta: delta(src.delta) } : {}),
    ...(src.chain ? { chain: src.chain.map(delta) } : {}),
    disk: src.disk.map(map),
    state: map(src.state),
  };
  if (src.digests) {
    const fix = <T extends { file: string; sha256: string }>(d: T): T => {
      const file = map(d.file);
      return { ...d, file, sha256: sha.get(file) ?? d.sha256 };
    };
    const digests: DigestRecord = {
      ...src.digests,
      layers: Object.fromEntries(Object.entries(src.digests.layers).map(([k, d]) => [k, fix(d!)])),
      ...(src.digests.inherited ? { inherited: src.digests.inherited.map(fix) } : {}),
    };
    rec.digests = digests;
  }
  return rec;
}
