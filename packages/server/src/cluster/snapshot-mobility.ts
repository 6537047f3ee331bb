/**
 * `ClusterSnapshotMobility`: snapshots that move between hosts (multi-host, PostgreSQL only). See
 * docs/ARCHITECTURE.md ("Snapshot mobility").
 *
 * - `snapshot_holders` (migration 0010) lists the hosts with a complete, verified copy.
 * - `ensureLocal` (before a restore or fork of a snapshot this host lacks) asks a live holder
 *   for the manifest (`GET /internal/v1/snapshots/{id}/manifest`, naming the goldens this host
 *   has) and streams each missing file (`…/files/{name}`) into the runtime's `importSnapshot`,
 *   which checks sizes and SHA-256 as the bytes arrive and places nothing until all match. A
 *   failed holder (unreachable, corrupt) is skipped for the next one. Concurrent calls share one
 *   pull; a copy already here is reused.
 * - `recordLocal` (a snapshot became ready here) records this host as a holder and, with
 *   `replicas` > 0, asks that many other live hosts to pull it in the background
 *   (`POST …/pull`): the snapshot then outlives the loss of the host that took it.
 * - `forget` (the snapshot was deleted) has every other holder delete its copy
 *   (`DELETE /internal/v1/snapshots/{id}`); a holder that cannot be reached keeps its row, so
 *   the copy is not lost track of.
 * @module
 */
import { Readable, Transform } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  decodeZeroRuns,
  type Runtime,
  type SnapshotManifest,
  type SnapshotManifestFile,
} from '@fastvm/runtime';
import type { Logger } from 'pino';
import { DomainError, RuntimeFailureError } from '../domain/index.js';
import { isRuntimeError } from '../services/runtime-errors.js';
import type { Store } from '../store/index.js';
import {
  CLUSTER_TOKEN_HEADER,
  type ClusterPeers,
  type PeerHost,
  type SnapshotMobility,
} from './seams.js';

/** Response header naming the body's encoding of a snapshot file (`zero-runs`). */
export const ENCODING_HEADER = 'x-fastvm-encoding';

export interface SnapshotMobilityOptions {
  readonly store: Store;
  readonly runtime: Runtime;
  readonly peers: ClusterPeers;
  /** The cluster's shared secret (`FASTVM_CLUSTER_SECRET`), sent on every internal request. */
  readonly secret: string;
  /** Other hosts each ready snapshot is copied to (`FASTVM_SNAPSHOT_REPLICAS`, default 0). */
  readonly replicas?: number;
  readonly logger: Logger;
  /** Time limit of a manifest request and of a delete (default 60 s: the manifest may hash). */
  readonly requestTimeoutMs?: number;
  /** A file transfer that delivers no byte for this long is aborted (default 30 s). */
  readonly idleTimeoutMs?: number;
  /** Waits before each new try of a failed replica pull (default 2 s, 10 s, 30 s). */
  readonly replicaRetryDelaysMs?: readonly number[];
}

/** What the last pull moved (benches, logs). */
export interface PullReport {
  readonly snapshotId: string;
  readonly from: string;
  readonly files: number;
  readonly bytes: number;
  /** What crossed the network for them (zero runs travel as their length). */
  readonly wireBytes: number;
  readonly ms: number;
}

export class ClusterSnapshotMobility implements SnapshotMobility {
  readonly #pulls = new Map<string, Promise<void>>();
  /** Snapshots this host is listed as holding (no database write per restore of them). */
  readonly #listed = new Set<string>();
  /** Background work (replication, pulls asked for by peers), awaited by `close`. */
  readonly #background = new Set<Promise<unknown>>();
  readonly #closing = new AbortController();
  /** Pull reports, newest last (the last 32). */
  readonly pulls: PullReport[] = [];

  constructor(private readonly opts: SnapshotMobilityOptions) {
    if (!opts.runtime.exportSnapshot || !opts.runtime.importSnapshot) {
      throw new Error('snapshot mobility needs a runtime that exports and imports snapshots');
    }
  }

  get selfId(): string {
    return this.opts.peers.self.id;
  }

  async holders(snapshotId: string): Promise<readonly string[]> {
    return (await this.opts.store.listSnapshotHolders(snapshotId)).map((h) => h.hostId);
  }

  ensureLocal(snapshotId: string, signal?: AbortSignal): Promise<void> {
    let run = this.#pulls.get(snapshotId);
    if (!run) {
      run = this.#ensure(snapshotId).finally(() => this.#pulls.delete(snapshotId));
      this.#pulls.set(snapshotId, run);
    }
    // A caller that gives up stops waiting; the shared pull goes on for the others.
    if (!signal) return run;
    return Promise.race([
      run,
      new Promise<never>((_, reject) => {
        signal.throwIfAborted();
        signal.addEventListener('abort', () => reject(signal.reason as Error), { once: true });
      }),
    ]);
  }

  async #ensure(snapshotId: string): Promise<void> {
    const { runtime, peers, logger } = this.opts;
    if (await runtime.hasSnapshot(snapshotId)) {
      // A copy here already (cached, or taken here): make sure it is listed.
      await this.#list(snapshotId);
      return;
    }
    const holders = (await this.holders(snapshotId)).filter((h) => h !== this.selfId);
    const live = new Map((await peers.peers()).map((p) => [p.id, p]));
    const sources = holders.map((h) => live.get(h)).filter((p): p is PeerHost => !!p);
    if (sources.length === 0) {
      throw new RuntimeFailureError(
        holders.length === 0
          ? `snapshot ${snapshotId} has no copy on any host`
          : `snapshot ${snapshotId} is held only by hosts that are down (${holders.join(', ')})`,
        { snapshotId },
        { retryable: true },
      );
    }
    let last: unknown;
    for (const source of sources) {
      try {
        await this.#pullFrom(source, snapshotId);
        await this.#list(snapshotId);
        return;
      } catch (err) {
        last = err;
        logger.warn({ err, snapshotId, from: source.id }, 'snapshot pull failed');
        if (this.#closing.signal.aborted) break;
      }
    }
    // A refusal of the data (corrupt, wrong image) as the runtime said it; a transfer failure
    // as a retryable one.
    if (isRuntimeError(last) || last instanceof DomainError) throw last;
    throw new RuntimeFailureError(
      `snapshot ${snapshotId}: pull failed: ${last instanceof Error ? last.message : String(last)}`,
      { snapshotId },
      { retryable: true, cause: last },
    );
  }

  async #pullFrom(source: PeerHost, snapshotId: string): Promise<void> {
    const { runtime, logger } = this.opts;
    const t0 = performance.now();
    const have = (await runtime.goldenIds?.()) ?? [];
    const base = `${source.internalUrl}/internal/v1/snapshots/${encodeURIComponent(snapshotId)}`;
    const res = await this.#request(`${base}/manifest?haveGoldens=${have.join(',')}`, 'GET');
    if (!res.ok) throw await responseError(res, `manifest of ${snapshotId} from ${source.id}`);
    const manifest = (await res.json()) as SnapshotManifest;
    // One controller per pull: a stalled transfer (or closing) aborts it.
    const pull = new AbortController();
    let wire = 0;
    const stop = () => pull.abort(new Error('the server is closing'));
    this.#closing.signal.addEventListener('abort', stop, { once: true });
    try {
      const result = await runtime.importSnapshot!(
        manifest,
        (file) =>
          this.#fetchFile(
            `${base}/files/${encodeURIComponent(file.name)}?encoding=zero-runs`,
            file,
            pull,
            (n) => (wire += n),
          ),
        { signal: pull.signal },
      );
      const report: PullReport = {
        snapshotId,
        from: source.id,
        files: result.files,
        bytes: result.bytes,
        wireBytes: wire,
        ms: performance.now() - t0,
      };
      this.pulls.push(report);
      if (this.pulls.length > 32) this.pulls.shift();
      logger.info({ ...report, skipped: result.skipped }, 'snapshot pulled');
    } finally {
      this.#closing.signal.removeEventListener('abort', stop);
    }
  }

  /** One file's body as a stream; no byte for `idleTimeoutMs` aborts the pull. */
  async #fetchFile(
    url: string,
    file: SnapshotManifestFile,
    pull: AbortController,
    count: (bytes: number) => void,
  ): Promise<Readable> {
    const idleMs = this.opts.idleTimeoutMs ?? 30_000;
    const res = await fetch(url, {
      headers: { [CLUSTER_TOKEN_HEADER]: this.opts.secret },
      signal: AbortSignal.any([pull.signal, AbortSignal.timeout(idleMs)]),
    });
    if (!res.ok || !res.body) throw await responseError(res, `file ${file.name}`);
    let timer: NodeJS.Timeout | undefined;
    const arm = () => {
      clearTimeout(timer);
      timer = setTimeout(
        () => pull.abort(new Error(`no data for ${file.name} in ${idleMs} ms`)),
        idleMs,
      ).unref();
    };
    arm();
    const body = Readable.fromWeb(res.body as import('node:stream/web').ReadableStream);
    const watch = new Transform({
      transform(chunk: Buffer, _enc, cb) {
        arm();
        count(chunk.length);
        cb(null, chunk);
      },
      flush(cb) {
        clearTimeout(timer);
        cb();
      },
    });
    watch.on('close', () => clearTimeout(timer));
    body.on('error', (err) => watch.destroy(err));
    const out = body.pipe(watch);
    if (res.headers.get(ENCODING_HEADER) !== 'zero-runs') return out;
    const decoded = decodeZeroRuns();
    out.on('error', (err) => decoded.destroy(err));
    return out.pipe(decoded);
  }

  #request(url: string, method: string, body?: unknown): Promise<Response> {
    return fetch(url, {
      method,
      headers: {
        [CLUSTER_TOKEN_HEADER]: this.opts.secret,
        ...(body !== undefined ? { 'content-type': 'application/json' } : {}),
      },
      ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
      signal: AbortSignal.any([
        this.#closing.signal,
        AbortSignal.timeout(this.opts.requestTimeoutMs ?? 60_000),
      ]),
    });
  }

  async #list(snapshotId: string): Promise<void> {
    if (this.#listed.has(snapshotId)) return;
    await this.opts.store.addSnapshotHolder(snapshotId, this.selfId);
    this.#listed.add(snapshotId);
  }

  async recordLocal(snapshotId: string): Promise<void> {
    await this.#list(snapshotId);
    if ((this.opts.replicas ?? 0) > 0) this.#track(this.replicate(snapshotId));
  }

  /**
   * Asks `replicas` live hosts that lack the snapshot to pull it (they answer at once and pull
   * in the background). Resolves with the hosts asked.
   */
  async replicate(snapshotId: string): Promise<string[]> {
    const want = this.opts.replicas ?? 0;
    const held = new Set(await this.holders(snapshotId));
    const candidates = shuffle((await this.opts.peers.peers()).filter((p) => !held.has(p.id)));
    const copies = [...held].filter((h) => h !== this.selfId).length;
    const asked: string[] = [];
    for (const peer of candidates) {
      if (copies + asked.length >= want) break;
      try {
        const res = await this.#request(
          `${peer.internalUrl}/internal/v1/snapshots/${encodeURIComponent(snapshotId)}/pull`,
          'POST',
          {},
        );
        if (!res.ok) throw await responseError(res, `replication request to ${peer.id}`);
        asked.push(peer.id);
      } catch (err) {
        this.opts.logger.warn({ err, snapshotId, to: peer.id }, 'replication request failed');
      }
    }
    return asked;
  }

  /**
   * A peer asked this host to pull a snapshot (replication): in the background, tried again
   * after a retryable failure (a holder busy past the request timeout, e.g. still digesting a
   * fresh snapshot on a loaded host) up to `replicaRetryDelaysMs.length` times.
   */
  pullInBackground(snapshotId: string): void {
    this.#track(this.#replicaPull(snapshotId));
  }

  async #replicaPull(snapshotId: string): Promise<void> {
    const delays = this.opts.replicaRetryDelaysMs ?? [2_000, 10_000, 30_000];
    for (let attempt = 0; ; attempt++) {
      try {
        await this.ensureLocal(snapshotId);
        return;
      } catch (err) {
        const again =
          (err as { retryable?: boolean }).retryable === true &&
          attempt < delays.length &&
          !this.#closing.signal.aborted;
        this.opts.logger.warn(
          { err, snapshotId, attempt: attempt + 1 },
          again ? 'replica pull failed; trying again' : 'replica pull failed',
        );
        if (!again) return;
        const slept = await sleep(delays[attempt], undefined, {
          signal: this.#closing.signal,
        }).then(
          () => true,
          () => false,
        );
        if (!slept) return;
      }
    }
  }

  async forget(snapshotId: string): Promise<void> {
    const { store, peers, logger } = this.opts;
    this.#listed.delete(snapshotId);
    await store.removeSnapshotHolder(snapshotId, this.selfId);
    for (const hostId of await this.holders(snapshotId)) {
      const peer = await peers.peer(hostId);
      try {
        if (!peer) throw new Error(`host ${hostId} is unknown`);
        const res = await this.#request(
          `${peer.internalUrl}/internal/v1/snapshots/${encodeURIComponent(snapshotId)}`,
          'DELETE',
        );
        if (!res.ok) throw await responseError(res, `delete on ${hostId}`);
        await store.removeSnapshotHolder(snapshotId, hostId);
      } catch (err) {
        logger.warn({ err, snapshotId, hostId }, 'a copy of a deleted snapshot was not removed');
      }
    }
  }

  /** This host drops its copy (a peer's `forget`). */
  async dropLocal(snapshotId: string): Promise<void> {
    await this.#pulls.get(snapshotId)?.catch(() => {});
    this.#listed.delete(snapshotId);
    await this.opts.runtime.deleteSnapshot(snapshotId);
    await this.opts.store.removeSnapshotHolder(snapshotId, this.selfId);
  }

  /** Waits for background work (replication, requested pulls), aborting transfers. */
  async close(): Promise<void> {
    this.#closing.abort(new Error('the server is closing'));
    await Promise.allSettled([...this.#background]);
  }

  /** Waits for background work without aborting it (tests). */
  async settled(): Promise<void> {
    while (this.#background.size > 0) await Promise.allSettled([...this.#background]);
  }

  #track(p: Promise<unknown>): void {
    const t = p.catch(() => {}).finally(() => this.#background.delete(t));
    this.#background.add(t);
  }
}

async function responseError(res: Response, what: string): Promise<Error> {
  const text = await res.text().catch(() => '');
  let detail = text.slice(0, 300);
  try {
    const body = JSON.parse(text) as { error?: string; code?: string };
    if (body.error) detail = `${body.code ?? ''} ${body.error}`.trim();
  } catch {
    /* not JSON */
  }
  return new Error(`${what}: HTTP ${res.status} ${detail}`);
}

function shuffle<T>(xs: T[]): T[] {
  for (let i = xs.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    [xs[i], xs[j]] = [xs[j]!, xs[i]!];
  }
  return xs;
}
