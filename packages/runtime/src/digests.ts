/**
 * Content digests of snapshot layers: computed in the background after a snapshot is taken,
 * written into its `snapshot.json`, and checked before a restore, so that a corrupted layer file
 * is refused with `RuntimeError` `snapshot_corrupt` instead of booting garbage.
 *
 * - **What is hashed.** The layers a snapshot owns: its memory (its own delta, or the flattened
 *   base file), its frozen disk layer (`disk[0]`) and its device state; and, as `inherited`, the
 *   other memory files a restore of it reads: the deltas of its chain and a base file that is not
 *   a golden's (they may outlive the snapshots that made them). Those usually come from the cache
 *   below (hashed for the parent already), so they cost no second read. The disk layers below
 *   belong to their own snapshots. Plain SHA-256 of the whole file, holes read as zeros:
 *   `sha256sum <file>` gives the same value.
 * - **Off the hot path.** The snapshot is `ready` first; the job then waits for the background
 *   flatten (the memory file changes once more) and hashes in a child process at nice 10, so
 *   neither the server's event loop nor running VMs wait for it. A 2 GiB memory file takes
 *   ~1.5–3 s of one core (OpenSSL's SHA-NI code; coreutils' `sha256sum` needs ~20 s here).
 * - **Restores stay fast.** A layer file verified once is remembered by path, device, inode,
 *   size, mtime and ctime for the life of the runtime (hashing it again would cost seconds per
 *   restore); the digest job seeds that cache, so the runtime that took a snapshot never hashes
 *   it on restore. After a restart the first restore of each snapshot hashes its layers once
 *   (concurrent restores share that one check), before QEMU starts. Any write to a layer file
 *   changes its mtime and ctime, so it is hashed again. A snapshot without digests yet (restored
 *   within seconds of being taken) is restored unchecked.
 * @module
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import fs from 'node:fs/promises';
import os from 'node:os';
import type { LayerStore } from './layers.js';
import type { SnapshotRecord } from './records.js';
import { RuntimeError, type SnapshotDigests } from './types.js';

/** The layers of a snapshot that carry a digest. */
export type DigestLayer = 'memory' | 'disk' | 'state';

/** One hashed layer file. */
export interface LayerDigest {
  readonly file: string;
  readonly bytes: number;
  /** Lower-case hex SHA-256 of the whole file. */
  readonly sha256: string;
}

/** `snapshot.json`'s `digests`. */
export interface DigestRecord {
  readonly algorithm: 'sha256';
  readonly computedAt: string;
  readonly layers: Readonly<Partial<Record<DigestLayer, LayerDigest>>>;
  /** The memory files below the snapshot's own that a restore reads (`inheritedLayers`). */
  readonly inherited?: readonly LayerDigest[];
}

/** Background hashing runs at this nice value (like pool fills): running VMs come first. */
export const DIGEST_NICE = 10;

/**
 * util-linux `chrt`, which starts background hashing under SCHED_IDLE: hashing a 2 GiB memory
 * layer is seconds of CPU per snapshot, and at nice 10 it still took a share of a core from
 * launches, restores and flattens (quick bench, nice 10 → SCHED_IDLE: restore_2g 511 → 402 ms,
 * launch_ready 35.5 → 16.9 ms, flatten_s64 1710 → 249 ms). Without `chrt`: nice only.
 */
const CHRT = ['/usr/bin/chrt', '/bin/chrt'].find((p) => existsSync(p));

/** The files a snapshot owns, by layer (see the module comment). */
export function ownedLayers(snap: SnapshotRecord): Partial<Record<DigestLayer, string>> {
  const out: Partial<Record<DigestLayer, string>> = {
    memory: snap.delta ? snap.delta.path : snap.memBase,
    state: snap.state,
  };
  if (snap.disk[0]) out.disk = snap.disk[0];
  return out;
}

/**
 * The memory files a restore of `snap` reads that it does not own: the deltas below its own, and
 * its base file unless that is its own (flattened) or a golden's (outside `dataDir`).
 */
export function inheritedLayers(snap: SnapshotRecord, dataDir: string): string[] {
  const out = (snap.chain ?? []).map((d) => d.path);
  if (snap.delta && snap.memBase.startsWith(dataDir + '/')) out.unshift(snap.memBase);
  return out;
}

/** The snapshot's owned layers whose current file has no digest yet (all of them at first). */
export function staleLayers(snap: SnapshotRecord): [DigestLayer, string][] {
  return (Object.entries(ownedLayers(snap)) as [DigestLayer, string][]).filter(
    ([layer, file]) => snap.digests?.layers[layer]?.file !== file,
  );
}

/** Computes, records, serves and checks snapshot digests for one runtime (see the module). */
export class SnapshotDigester {
  /** Layer files known to match a digest: stat key → sha256. */
  readonly #verified = new Map<string, string>();
  /** Checks in progress, by stat key (concurrent restores of one snapshot share one). */
  readonly #checking = new Map<string, Promise<string>>();
  /** Digest jobs in progress, by snapshot id. */
  readonly #jobs = new Map<string, Promise<void>>();
  /** Snapshots whose job is to run again when the current one ends (`start`). */
  readonly #again = new Set<string>();
  /** Bumped by `forget`: a read that began before one does not fill `#known`. */
  #epoch = 0;
  /** Wire digests already read, by snapshot id (they never change; `forget` drops one). */
  readonly #known = new Map<string, SnapshotDigests>();
  /** Child processes hashing right now (killed by `close`). */
  readonly #children = new Set<ReturnType<typeof spawn>>();
  #closed = false;

  constructor(
    private readonly layers: LayerStore,
    private readonly log: (msg: string) => void,
  ) {}

  /**
   * Starts the digest job of a snapshot (just taken, or its memory just consolidated). While one
   * runs it is run once more after it: that one may have read the record before the change.
   */
  start(snapshotId: string): void {
    if (this.#closed) return;
    if (this.#jobs.has(snapshotId)) {
      this.#again.add(snapshotId);
      return;
    }
    const job = this.#compute(snapshotId)
      .catch((err: unknown) => {
        if (!this.#closed) this.log(`runtime: digests of ${snapshotId} failed: ${String(err)}`);
      })
      .finally(() => {
        this.#jobs.delete(snapshotId);
        if (this.#again.delete(snapshotId)) this.start(snapshotId);
      });
    this.#jobs.set(snapshotId, job);
  }

  /** Starts jobs, one at a time, for the data dir's snapshots that have no digests (start-up). */
  resume(snapshotIds: readonly string[]): void {
    void (async () => {
      for (const id of snapshotIds) {
        if (this.#closed) return;
        const snap = await this.layers.readSnapshot(id);
        if (!snap || staleLayers(snap).length === 0) continue;
        this.start(id);
        await this.#jobs.get(id);
      }
    })();
  }

  /** Settles when the snapshot has no digest job running (tests, benches and exports wait). */
  async pending(snapshotId: string): Promise<void> {
    // A job's end may start the next one (`start`): wait for that too.
    for (let job = this.#jobs.get(snapshotId); job; job = this.#jobs.get(snapshotId)) await job;
  }

  /** The wire form of a snapshot's digests, once computed. */
  async get(snapshotId: string): Promise<SnapshotDigests | undefined> {
    const known = this.#known.get(snapshotId);
    if (known) return known;
    const epoch = this.#epoch;
    const snap = await this.layers.readSnapshot(snapshotId);
    // None while a layer's current file has no digest yet (just taken, or just flattened).
    if (!snap?.digests || staleLayers(snap).length > 0) return undefined;
    const out: Record<string, string> = {};
    for (const [layer, d] of Object.entries(snap.digests.layers)) out[layer] = `sha256:${d.sha256}`;
    if (this.#epoch === epoch) this.#known.set(snapshotId, out);
    return out;
  }

  /** A deleted snapshot's digests are no longer served. */
  forget(snapshotId: string): void {
    this.#known.delete(snapshotId);
    this.#epoch++;
  }

  /**
   * Checks the snapshot's owned layers against its digests before a restore; throws
   * `snapshot_corrupt` naming the first layer that does not match (or is gone). Layers whose
   * file the record no longer uses (a digest taken before a flatten) are skipped.
   */
  async verify(snap: SnapshotRecord): Promise<void> {
    const digests = snap.digests;
    if (!digests) return;
    const owned = ownedLayers(snap);
    const inherited = new Set(inheritedLayers(snap, this.layers.dataDir));
    const checks: [string, LayerDigest][] = [
      ...Object.entries(digests.layers).filter(
        ([layer, want]) => owned[layer as DigestLayer] === want.file,
      ),
      ...(digests.inherited ?? [])
        .filter((d) => inherited.has(d.file))
        .map((d): [string, LayerDigest] => ['inherited memory', d]),
    ];
    await Promise.all(
      checks.map(async ([layer, want]) => {
        let got: string;
        try {
          got = await this.#check(want.file, want.sha256);
        } catch (err) {
          throw new RuntimeError(
            'snapshot_corrupt',
            `snapshot ${snap.id}: its ${layer} layer cannot be read (${(err as NodeJS.ErrnoException).code ?? String(err)}); refusing to restore it`,
            { cause: err },
          );
        }
        if (got !== want.sha256) {
          throw new RuntimeError(
            'snapshot_corrupt',
            `snapshot ${snap.id}: its ${layer} layer is corrupt (sha256 ${got.slice(0, 12)}…, recorded ${want.sha256.slice(0, 12)}…); refusing to restore it`,
          );
        }
      }),
    );
  }

  /**
   * A file's SHA-256 and size: from the cache when this runtime hashed or verified the file as
   * it is, else hashed now (and remembered). For exports of layers without a recorded digest.
   */
  async digestOf(file: string): Promise<{ sha256: string; bytes: number }> {
    const st = await fs.stat(file);
    const key = statKey(file, st);
    const known = this.#verified.get(key);
    if (known) return { sha256: known, bytes: st.size };
    const [d] = await this.#hash([file], 0);
    if (statKey(file, await fs.stat(file)) === key) this.#verified.set(key, d!.sha256);
    return d!;
  }

  /** Remembers a file as verified against `sha256` (an import checked it as it streamed). */
  async seed(file: string, sha256: string): Promise<void> {
    this.#verified.set(statKey(file, await fs.stat(file)), sha256);
  }

  /** Kills hashing children and stops starting new jobs. */
  close(): void {
    this.#closed = true;
    for (const child of this.#children) child.kill('SIGKILL');
  }

  /** The file's hash, from the cache when its stat key was verified against `expect`. */
  async #check(file: string, expect: string): Promise<string> {
    const key = statKey(file, await fs.stat(file));
    if (this.#verified.get(key) === expect) return expect;
    let run = this.#checking.get(key);
    if (!run) {
      const t0 = performance.now();
      run = this.#hash([file], 0).then(async ([d]) => {
        const after = statKey(file, await fs.stat(file));
        if (d!.sha256 === expect && after === key) this.#verified.set(key, d!.sha256);
        this.log(
          `runtime: verified ${file} (${d!.bytes >> 20} MiB) in ${(performance.now() - t0).toFixed(0)} ms`,
        );
        return d!.sha256;
      });
      run.catch(() => {});
      this.#checking.set(key, run);
      void run.finally(() => this.#checking.delete(key)).catch(() => {});
    }
    return run;
  }

  async #compute(snapshotId: string): Promise<void> {
    await this.layers.flattening(snapshotId)?.catch(() => {});
    const snap = await this.layers.readSnapshot(snapshotId);
    if (!snap) return;
    // Only layers without a digest of their current file are hashed (after a flatten or merge:
    // the memory); the others keep the digest taken when the snapshot was made.
    const owned = staleLayers(snap);
    if (owned.length === 0) return;
    const t0 = performance.now();
    const before = await Promise.all(owned.map(async ([, f]) => statKey(f, await fs.stat(f))));
    const hashed = await this.#hash(
      owned.map(([, f]) => f),
      DIGEST_NICE,
    );
    const current0 = ownedLayers(snap);
    const layers: Partial<Record<DigestLayer, LayerDigest>> = Object.fromEntries(
      Object.entries(snap.digests?.layers ?? {}).filter(
        ([layer, d]) => current0[layer as DigestLayer] === d.file,
      ),
    );
    for (const [i, [layer, file]] of owned.entries()) {
      const after = statKey(file, await fs.stat(file));
      if (after !== before[i]) throw new Error(`${file} changed while it was hashed`);
      layers[layer] = { file, ...hashed[i]! };
      this.#verified.set(after, hashed[i]!.sha256);
    }
    const inherited = await this.#inherited(inheritedLayers(snap, this.layers.dataDir));
    const record: DigestRecord = {
      algorithm: 'sha256',
      computedAt: new Date().toISOString(),
      layers,
      ...(inherited.length ? { inherited } : {}),
    };
    const files = (r: SnapshotRecord) =>
      JSON.stringify([ownedLayers(r), inheritedLayers(r, this.layers.dataDir)]);
    // Written over the record as it is now; a flatten or a delete meanwhile wins (the flatten
    // starts this job again for its new file).
    const written = await this.layers.updateSnapshot(snapshotId, (current) =>
      current.digests?.computedAt === snap.digests?.computedAt && files(current) === files(snap)
        ? { ...current, digests: record }
        : undefined,
    );
    if (!written) return;
    const bytes = Object.values(layers).reduce((n, d) => n + d.bytes, 0);
    this.log(
      `runtime: digests of ${snapshotId}: ${bytes >> 20} MiB in ${(performance.now() - t0).toFixed(0)} ms`,
    );
  }

  /**
   * Digests of inherited memory files: from the cache when this runtime hashed or verified the
   * file as it is (the parent's own delta or flattened base, usually), else hashed now.
   */
  async #inherited(files: readonly string[]): Promise<LayerDigest[]> {
    const keys = await Promise.all(files.map(async (f) => statKey(f, await fs.stat(f))));
    const missing = files.filter((_, i) => !this.#verified.has(keys[i]!));
    const hashed = missing.length ? await this.#hash(missing, DIGEST_NICE) : [];
    const out: LayerDigest[] = [];
    for (const [i, file] of files.entries()) {
      const cached = this.#verified.get(keys[i]!);
      if (cached) {
        out.push({ file, bytes: (await fs.stat(file)).size, sha256: cached });
        continue;
      }
      const h = hashed[missing.indexOf(file)]!;
      if (statKey(file, await fs.stat(file)) !== keys[i]) {
        throw new Error(`${file} changed while it was hashed`);
      }
      this.#verified.set(keys[i]!, h.sha256);
      out.push({ file, ...h });
    }
    return out;
  }

  /**
   * SHA-256 of each file, streamed in 1 MiB reads by a child Node process (OpenSSL's hashing,
   * off this process's event loop), at `nice`.
   */
  #hash(files: readonly string[], nice: number): Promise<{ sha256: string; bytes: number }[]> {
    return new Promise((resolve, reject) => {
      if (this.#closed) {
        reject(new Error('the runtime is closing'));
        return;
      }
      const argv = [process.execPath, '-e', HASHER, '--', ...files];
      const idle = nice > 0 && CHRT !== undefined;
      const child = spawn(idle ? CHRT : argv[0]!, idle ? ['--idle', '0', ...argv] : argv.slice(1), {
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      this.#children.add(child);
      if (nice && child.pid) {
        try {
          os.setPriority(child.pid, nice);
        } catch {
          /* best effort */
        }
      }
      let out = '';
      let err = '';
      child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
      child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
      child.on('error', reject);
      child.on('close', (code, signal) => {
        this.#children.delete(child);
        if (code !== 0) {
          reject(new Error(`hashing failed (${signal ?? code}): ${err.trim().split('\n').pop()}`));
          return;
        }
        const lines = out.trim().split('\n');
        resolve(
          lines.map((l) => {
            const [sha256 = '', bytes = '0'] = l.split(' ');
            return { sha256, bytes: Number(bytes) };
          }),
        );
      });
    });
  }
}

/** Identity of a file's content as far as the kernel can tell without reading it. */
function statKey(file: string, st: import('node:fs').Stats): string {
  return `${file}\0${st.dev}:${st.ino}:${st.size}:${st.mtimeMs}:${st.ctimeMs}`;
}

/** The child's program: one `<hex> <bytes>` line per file argument. */
const HASHER = `
const fs = require('node:fs'), crypto = require('node:crypto');
const buf = Buffer.allocUnsafe(1 << 20);
for (const file of process.argv.slice(1)) {
  const h = crypto.createHash('sha256');
  const fd = fs.openSync(file, 'r');
  let n, total = 0;
  while ((n = fs.readSync(fd, buf, 0, buf.length, null)) > 0) {
    h.update(n === buf.length ? buf : buf.subarray(0, n));
    total += n;
  }
  fs.closeSync(fd);
  process.stdout.write(h.digest('hex') + ' ' + total + '\\n');
}
`;
