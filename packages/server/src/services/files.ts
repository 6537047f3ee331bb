/**
 * File transfer (contract §4.3, §6): presigned staging objects and `files/fetch`.
 *
 * - **Staging objects** live in `<dataDir>/staging/<vmId>.<key>`. `presign` mints a random key
 *   for a VM and two URLs naming the same object, `<base>/storage/<vmId>.<key>?exp=&max=&sig=`,
 *   where `sig` = HMAC-SHA256 (key in `<dataDir>/storage.key`, created once, mode 0600) over the
 *   object name, the expiry and the size limit. The URL is the credential: no API key. A wrong or
 *   missing signature, an expired URL, or (for `files/fetch`) another VM's object is refused.
 * - **PUT** streams the body into a temp file and renames it into place when complete, so a
 *   failed or aborted upload leaves nothing (and an earlier object stays intact). Bodies over
 *   `max` (the VM's disk size, at most the org's staging cap) are refused with 413, by
 *   `Content-Length` before reading or as soon as a chunked body passes the limit. **GET** streams
 *   the bytes (200, no redirect, no `Content-Encoding`).
 * - **Revocation**: a URL works only while its VM exists. Deleting the VM aborts its uploads in
 *   flight (they answer 404), removes its objects, and every later PUT/GET/HEAD answers 404.
 * - **Per-org cap**: the bytes an org has staged (objects on disk, plus uploads while they stream,
 *   counted chunk by chunk or by `Content-Length` up front) may not pass `stagingBytesPerOrg`:
 *   429 `quota_exceeded` with `dimension: "staging_bytes"`. The count is rebuilt from the
 *   staging directory at start; temp files (uploads a crash cut off) and objects of VMs that no
 *   longer exist are removed then.
 * - **GC**: objects and stray temp files older than `objectTtlMs` (a day) are removed by a timer,
 *   and all of a VM's objects when the VM is deleted.
 * - **files/fetch** writes an object into the guest through the agent, in chunks of just under
 *   1 MiB (the agent's frame limit): `cat > tmp`, `cat >> tmp` …, then `mv -fT tmp path`; any
 *   failure removes the temp file, so the destination is either the old file or the complete new
 *   one. This needs no guest networking, so it works the same with `FASTVM_NETWORK=off` and with
 *   the fake runtime; under TCG it moves ~6–7 MB/s, as fast as a guest `curl` from the host.
 * @module
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { Transform, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import {
  DomainError,
  ForbiddenError,
  InvalidInputError,
  NotFoundError,
  QuotaExceededError,
  StateConflictError,
  TooLargeError,
  type VmRecord,
  type VmStatus,
} from '../domain/index.js';
import type { ServiceContext } from './context.js';
import { fromRuntimeError } from './runtime-errors.js';

/** URL path prefix of the storage endpoints (on the API listener and the guest listener). */
export const STORAGE_PREFIX = '/storage/';
const OBJECT_RE = /^([A-Za-z0-9][A-Za-z0-9_-]{0,63})\.([0-9a-f]{32})$/;
/** Agent exec requests carry at most 1 MiB including argv; leave room for the paths. */
const CHUNK_BYTES = 1024 * 1024 - 16 * 1024;
/** Default of `stagingBytesPerOrg` (`FASTVM_STAGING_BYTES_PER_ORG`): 32 GiB. */
export const DEFAULT_STAGING_BYTES_PER_ORG = 32 * 2 ** 30;
/** Owner part of an org's build-context objects (`bctx-<orgId>.<key>`). */
export const CONTEXT_OWNER_PREFIX = 'bctx-';
export function contextOwner(orgId: string): string {
  return `${CONTEXT_OWNER_PREFIX}${orgId}`;
}
/** VM states whose storage URLs work: every state but being deleted. */
const VM_STATUSES_WITH_STAGING: ReadonlySet<VmStatus> = new Set<
  Exclude<VmStatus, 'deleting' | 'deleted'>
>(['provisioning', 'running', 'pausing', 'paused', 'resuming', 'stopped', 'error']);

/** What `FileService` uses: the store (VMs), the runtime (`files/fetch`) and the settings. */
export type FileServiceDeps = Pick<ServiceContext, 'store' | 'runtime' | 'settings'>;

/** Options of `FileService`. */
export interface FileServiceOptions {
  /** Staging objects and the signing key go below this directory. */
  dataDir: string;
  /** Lifetime of presigned URLs (default 3600 s). */
  urlTtlSec?: number;
  /** Objects older than this are garbage-collected (default one day). */
  objectTtlMs?: number;
  /** How often the GC runs (default 10 min). */
  gcIntervalMs?: number;
  /** Most bytes one org may have staged at a time, uploads in flight included (default 32 GiB). */
  stagingBytesPerOrg?: number;
  /**
   * Base URL put into presigned URLs (scheme://host[:port]); when undefined the presign route
   * uses the origin the client called (see `routes/files.ts`).
   */
  publicBaseUrl?: string;
}

/** A verified storage URL. */
export interface StorageGrant {
  object: string;
  vmId: string;
  maxBytes: number;
  expiresAtSec: number;
}

/** What `files/fetch` answers (the contract's ExecResult). */
export interface FetchResult {
  exitCode: number;
  stdout: string;
  stderr: string;
  timedOut: boolean;
  durationMs: number;
  stdoutTruncated: boolean;
  stderrTruncated: boolean;
}

/** The URL's VM was deleted, so the URL was revoked with it. */
function vmGone(): NotFoundError {
  return new NotFoundError('vm', {
    message:
      'the VM this storage URL belongs to was deleted (or never existed); the URL is revoked',
  });
}

/**
 * The client went away in the middle of an upload (connection closed or stream reset). Nobody is
 * left to answer, and it is not a server fault: the storage handler logs it at debug level.
 */
export class UploadAbandoned extends Error {
  constructor(cause?: unknown) {
    super('the client abandoned the upload', { cause });
    this.name = 'UploadAbandoned';
  }
}

/** An upload in flight (see `FileService.store`). */
interface Upload {
  readonly vmId: string;
  readonly object: string;
  readonly tmp: string;
  /** Set when the upload was revoked (its VM was deleted). */
  revoked?: DomainError;
  /** Stops the upload: it fails with `err`. */
  abort(err: DomainError): void;
  /** Resolves when the upload is over and its temp file is gone or renamed. */
  readonly settled: Promise<void>;
}

/** See the module comment. */
export class FileService {
  readonly stagingDir: string;
  readonly urlTtlSec: number;
  readonly objectTtlMs: number;
  /** Fixed base URL for presigned URLs, if configured (or set once the guest listener runs). */
  publicBaseUrl: string | undefined;
  readonly stagingBytesPerOrg: number;
  readonly #secret: Buffer;
  #gcTimer: NodeJS.Timeout | undefined;
  /**
   * The org of every VM whose URLs work: the VMs that existed at start, and those presigned since.
   * A deleted VM leaves it first, synchronously, so no upload can start for it afterwards.
   */
  readonly #vmOrg = new Map<string, string>();
  /** Objects on disk and their sizes. */
  readonly #objects = new Map<string, { orgId: string; bytes: number }>();
  /** Per org: bytes of its objects plus the bytes reserved by its uploads in flight. */
  readonly #staged = new Map<string, number>();
  readonly #uploads = new Set<Upload>();

  private constructor(
    private readonly ctx: FileServiceDeps,
    opts: FileServiceOptions,
    secret: Buffer,
  ) {
    this.stagingDir = path.join(opts.dataDir, 'staging');
    this.urlTtlSec = opts.urlTtlSec ?? 3600;
    this.objectTtlMs = opts.objectTtlMs ?? 24 * 3600 * 1000;
    this.publicBaseUrl = opts.publicBaseUrl?.replace(/\/+$/, '');
    this.stagingBytesPerOrg = opts.stagingBytesPerOrg ?? DEFAULT_STAGING_BYTES_PER_ORG;
    if (!Number.isSafeInteger(this.stagingBytesPerOrg) || this.stagingBytesPerOrg < 1) {
      throw new Error(
        `stagingBytesPerOrg must be a positive integer, got ${opts.stagingBytesPerOrg}`,
      );
    }
    this.#secret = secret;
    const every = opts.gcIntervalMs ?? 10 * 60 * 1000;
    this.#gcTimer = setInterval(() => void this.gc().catch(() => {}), every);
    this.#gcTimer.unref();
  }

  /** Creates the staging directory and the signing key (kept across restarts). */
  static async create(ctx: FileServiceDeps, opts: FileServiceOptions): Promise<FileService> {
    await fsp.mkdir(path.join(opts.dataDir, 'staging'), { recursive: true, mode: 0o700 });
    const keyFile = path.join(opts.dataDir, 'storage.key');
    let secret: Buffer;
    try {
      secret = await fsp.readFile(keyFile);
    } catch {
      secret = crypto.randomBytes(32);
      try {
        await fsp.writeFile(keyFile, secret, { mode: 0o600, flag: 'wx' });
      } catch {
        secret = await fsp.readFile(keyFile); // another process won the race
      }
    }
    if (secret.length < 32) throw new Error(`${keyFile} is too short to be a signing key`);
    const service = new FileService(ctx, opts, secret);
    await service.#recover();
    await service.gc().catch(() => {});
    return service;
  }

  close(): void {
    clearInterval(this.#gcTimer);
  }

  /**
   * At start, before any request: learns which VMs exist, removes temp files (uploads a crash or
   * kill cut off) and objects of VMs that no longer exist, and counts each org's staged bytes
   * from what is on disk. Without a store (a signer in tests) it touches nothing.
   */
  async #recover(): Promise<void> {
    const store = this.ctx.store as ServiceContext['store'] | undefined;
    if (!store) return;
    for (const vm of await store.listVmsByStatus([...VM_STATUSES_WITH_STAGING])) {
      this.#vmOrg.set(vm.id, vm.orgId);
    }
    for (const org of await store.listOrgs()) {
      this.#vmOrg.set(contextOwner(org.id), org.id);
    }
    for (const name of await fsp.readdir(this.stagingDir)) {
      const file = path.join(this.stagingDir, name);
      const vmId = OBJECT_RE.exec(name)?.[1];
      const orgId = vmId === undefined ? undefined : this.#vmOrg.get(vmId);
      if (name.startsWith('.tmp-') || (vmId !== undefined && orgId === undefined)) {
        await fsp.rm(file, { force: true });
        continue;
      }
      if (orgId === undefined) continue; // not one of ours: left alone
      const st = await fsp.stat(file).catch(() => undefined);
      if (st?.isFile()) this.#count(name, orgId, st.size);
    }
  }

  /** Bytes the org has staged now (objects plus uploads in flight). */
  #stagedBytes(orgId: string): number {
    return this.#staged.get(orgId) ?? 0;
  }

  #addStaged(orgId: string, delta: number): void {
    const next = (this.#staged.get(orgId) ?? 0) + delta;
    if (next > 0) this.#staged.set(orgId, next);
    else this.#staged.delete(orgId);
  }

  /** Records that `object` now holds `bytes` (replacing what it held). */
  #count(object: string, orgId: string, bytes: number): void {
    this.#forget(object);
    this.#objects.set(object, { orgId, bytes });
    this.#addStaged(orgId, bytes);
  }

  /** Records that `object` is gone from disk. */
  #forget(object: string): void {
    const old = this.#objects.get(object);
    if (!old) return;
    this.#objects.delete(object);
    this.#addStaged(old.orgId, -old.bytes);
  }

  /** Reserves `bytes` of the org's staging budget, or throws `QuotaExceededError`. */
  #reserve(orgId: string, bytes: number): void {
    const used = this.#stagedBytes(orgId);
    if (used + bytes > this.stagingBytesPerOrg) {
      throw new QuotaExceededError(
        'stagingBytes',
        this.stagingBytesPerOrg,
        used,
        bytes,
        `this org's staged files would pass their limit of ${this.stagingBytesPerOrg} bytes ` +
          `(${used} in use, this upload needs ${bytes} more); files are freed when their VM is ` +
          `deleted or after ${Math.round(this.objectTtlMs / 3_600_000)} h`,
      );
    }
    this.#addStaged(orgId, bytes);
  }

  /**
   * Checks that the URL's VM still exists (its URLs are revoked with it): `NotFoundError`
   * otherwise. A VM
   * found deleted here that was not dropped yet (deleted some other way) is dropped now.
   */
  async authorize(grant: StorageGrant): Promise<void> {
    const orgId = this.#vmOrg.get(grant.vmId);
    if (orgId === undefined) throw vmGone();
    if (grant.vmId.startsWith(CONTEXT_OWNER_PREFIX)) return; // an org's build contexts
    const vm = await this.ctx.store.getVm(orgId, grant.vmId);
    if (!vm || !VM_STATUSES_WITH_STAGING.has(vm.status)) {
      await this.dropVm(grant.vmId);
      throw vmGone();
    }
  }

  // ---- presign ---------------------------------------------------------------------------------

  /** Mints upload/download URLs for a new staging object of `vm` (contract §3.5). */
  presign(
    vm: VmRecord,
    baseUrl: string,
  ): { uploadUrl: string; downloadUrl: string; expiresInSec: number; maxUploadBytes: number } {
    if (!VM_STATUSES_WITH_STAGING.has(vm.status)) {
      throw new StateConflictError(`VM is ${vm.status}`, { status: vm.status });
    }
    this.#vmOrg.set(vm.id, vm.orgId);
    const object = `${vm.id}.${crypto.randomBytes(16).toString('hex')}`;
    // An object larger than the org may stage could never be stored.
    const maxUploadBytes = Math.min(vm.diskGiB * 2 ** 30, this.stagingBytesPerOrg);
    const url = this.sign(object, Math.floor(Date.now() / 1000) + this.urlTtlSec, maxUploadBytes);
    const full = `${(this.publicBaseUrl ?? baseUrl).replace(/\/+$/, '')}${url}`;
    return {
      uploadUrl: full,
      downloadUrl: full,
      expiresInSec: this.urlTtlSec,
      maxUploadBytes,
    };
  }

  /**
   * Mints URLs for a new build-context object of the org (`build-contexts/presign`,
   * `snapshot-imports/context-presign`): owner `bctx-<orgId>`, at most `maxBytes`.
   */
  presignContext(
    orgId: string,
    baseUrl: string,
    maxBytes: number,
  ): {
    uploadUrl: string;
    downloadUrl: string;
    expiresInSec: number;
    maxUploadBytes: number;
    object: string;
  } {
    const owner = contextOwner(orgId);
    this.#vmOrg.set(owner, orgId);
    const object = `${owner}.${crypto.randomBytes(16).toString('hex')}`;
    const maxUploadBytes = Math.min(maxBytes, this.stagingBytesPerOrg);
    const url = this.sign(object, Math.floor(Date.now() / 1000) + this.urlTtlSec, maxUploadBytes);
    // The client uploads (not a VM): the API's own origin, which serves /storage/ too.
    const full = `${baseUrl.replace(/\/+$/, '')}${url}`;
    return {
      uploadUrl: full,
      downloadUrl: full,
      expiresInSec: this.urlTtlSec,
      maxUploadBytes,
      object,
    };
  }

  /**
   * The org's uploaded context `object`, hard-linked (or, with `consume`, moved) to `dest`;
   * returns its size. `NotFoundError` when it is not the org's, was never uploaded or was used
   * up.
   */
  async takeContext(
    orgId: string,
    object: string,
    dest: string,
    consume: boolean,
  ): Promise<number> {
    const m = OBJECT_RE.exec(object);
    if (!m || m[1] !== contextOwner(orgId)) throw new NotFoundError('build context');
    const file = path.join(this.stagingDir, object);
    const st = await fsp.stat(file).catch(() => undefined);
    if (!st?.isFile()) {
      throw new NotFoundError('build context', {
        message: 'the build context was not uploaded (or was already used, or expired)',
      });
    }
    if (consume) {
      await fsp.rename(file, dest).catch(async (err: NodeJS.ErrnoException) => {
        if (err.code !== 'EXDEV') throw err;
        await fsp.copyFile(file, dest);
        await fsp.rm(file, { force: true });
      });
      this.#forget(object);
    } else {
      await fsp.link(file, dest).catch(() => fsp.copyFile(file, dest));
    }
    return st.size;
  }

  /** `/storage/<object>?exp=…&max=…&sig=…` (exported for tests that forge or expire URLs). */
  sign(object: string, expiresAtSec: number, maxBytes: number): string {
    const sig = this.#mac(object, expiresAtSec, maxBytes);
    return `${STORAGE_PREFIX}${object}?exp=${expiresAtSec}&max=${maxBytes}&sig=${sig}`;
  }

  #mac(object: string, exp: number, max: number): string {
    return crypto
      .createHmac('sha256', this.#secret)
      .update(`fastvm-storage-v1\n${object}\n${exp}\n${max}`)
      .digest('base64url');
  }

  /**
   * Checks a storage request target (`/storage/<object>?…`, any base); throws `ForbiddenError`
   * for a bad or missing signature or an expired URL, `InvalidInputError` for something that is
   * not a storage URL at all.
   */
  verify(target: string): StorageGrant {
    const q = target.indexOf('?');
    const pathname = q < 0 ? target : target.slice(0, q);
    const at = pathname.lastIndexOf(STORAGE_PREFIX);
    let object = '';
    try {
      object = at < 0 ? '' : decodeURIComponent(pathname.slice(at + STORAGE_PREFIX.length));
    } catch {
      /* malformed escape: not one of ours */
    }
    const m = OBJECT_RE.exec(object);
    if (!m) {
      throw new InvalidInputError('not a storage URL of this server (expected /storage/<object>)');
    }
    const params = new URLSearchParams(q < 0 ? '' : target.slice(q + 1));
    const exp = Number(params.get('exp'));
    const max = Number(params.get('max'));
    const sig = params.get('sig') ?? '';
    if (!sig || !Number.isSafeInteger(exp) || !Number.isSafeInteger(max) || max < 0) {
      throw new ForbiddenError('storage URL is not signed (exp, max and sig are required)');
    }
    const want = Buffer.from(this.#mac(object, exp, max));
    const got = Buffer.from(sig);
    if (want.length !== got.length || !crypto.timingSafeEqual(want, got)) {
      throw new ForbiddenError(
        'storage URL signature does not match (use the URL files/presign returned)',
      );
    }
    if (exp * 1000 < Date.now()) {
      throw new ForbiddenError(
        `storage URL expired at ${new Date(exp * 1000).toISOString()}; presign a new one`,
      );
    }
    return { object, vmId: m[1]!, maxBytes: max, expiresAtSec: exp };
  }

  /** The object's file, for GET. Undefined when nothing was uploaded. */
  async stat(grant: StorageGrant): Promise<{ file: string; size: number } | undefined> {
    const file = path.join(this.stagingDir, grant.object);
    try {
      const st = await fsp.stat(file);
      return st.isFile() ? { file, size: st.size } : undefined;
    } catch {
      return undefined;
    }
  }

  /**
   * Streams an upload into the object (temp file + rename). Throws `TooLargeError` when the body
   * passes `grant.maxBytes`, `QuotaExceededError` when the org's staged bytes would pass
   * `stagingBytesPerOrg`, `NotFoundError` when the VM is (or gets) deleted, `UploadAbandoned`
   * when the client goes away. Any failure removes
   * the temp file and keeps the previous object. The request is never destroyed here, so the
   * caller can still answer a refusal.
   */
  async store(grant: StorageGrant, body: Readable, declaredLength?: number): Promise<number> {
    if (declaredLength !== undefined && declaredLength > grant.maxBytes) {
      throw tooLarge(declaredLength, grant.maxBytes);
    }
    const orgId = this.#vmOrg.get(grant.vmId);
    if (orgId === undefined) throw vmGone();
    const final = path.join(this.stagingDir, grant.object);
    const tmp = path.join(
      this.stagingDir,
      `.tmp-${grant.object}-${crypto.randomBytes(6).toString('hex')}`,
    );
    let settle!: () => void;
    const upload: Upload = {
      vmId: grant.vmId,
      object: grant.object,
      tmp,
      abort: () => {},
      settled: new Promise<void>((resolve) => (settle = resolve)),
    };
    // Registered in the same tick as the check above, so `dropVm` either sees it or it sees
    // the VM gone.
    this.#uploads.add(upload);
    let reserved = 0;
    try {
      if (declaredLength !== undefined) {
        this.#reserve(orgId, declaredLength);
        reserved = declaredLength;
      }
      const bytes = await this.#receive(upload, body, tmp, grant.maxBytes, (n) => {
        if (declaredLength !== undefined) return;
        this.#reserve(orgId, n);
        reserved += n;
      });
      if (declaredLength !== undefined && bytes !== declaredLength) {
        throw new InvalidInputError(`body ended after ${bytes} of ${declaredLength} bytes`);
      }
      if (upload.revoked) throw upload.revoked;
      await fsp.rename(tmp, final);
      this.#count(grant.object, orgId, bytes);
      return bytes;
    } catch (err) {
      await fsp.rm(tmp, { force: true });
      throw err;
    } finally {
      this.#addStaged(orgId, -reserved);
      this.#uploads.delete(upload);
      settle();
    }
  }

  /**
   * Copies `body` into `tmp`, calling `onChunk` (which may throw to refuse it) for every chunk.
   * On a refusal or `upload.abort` the body is unpiped and paused, not destroyed.
   */
  async #receive(
    upload: Upload,
    body: Readable,
    tmp: string,
    maxBytes: number,
    onChunk: (bytes: number) => void,
  ): Promise<number> {
    let bytes = 0;
    const limit = new Transform({
      transform(chunk: Buffer, _enc, done) {
        bytes += chunk.length;
        if (bytes > maxBytes) return done(tooLarge(bytes, maxBytes));
        try {
          onChunk(chunk.length);
        } catch (err) {
          return done(err as Error);
        }
        done(null, chunk);
      },
    });
    const sink = pipeline(limit, fs.createWriteStream(tmp, { mode: 0o600 }));
    const stop = (err: Error): void => {
      body.unpipe(limit);
      body.pause();
      limit.destroy(err);
    };
    upload.abort = (err) => {
      upload.revoked ??= err;
      stop(err);
    };
    const onError = (err: Error): void => stop(new UploadAbandoned(err));
    const onClose = (): void => {
      if (!body.readableEnded) stop(new UploadAbandoned());
    };
    body.on('error', onError);
    body.on('aborted', onClose);
    body.on('close', onClose);
    try {
      if (body.destroyed && !body.readableEnded) throw new UploadAbandoned();
      body.pipe(limit);
      await sink;
      return bytes;
    } finally {
      body.off('error', onError);
      body.off('aborted', onClose);
      body.off('close', onClose);
    }
  }

  // ---- fetch into the guest ---------------------------------------------------------------------

  /**
   * `files/fetch`: writes the object named by `url` (one of this VM's presigned URLs) to `dest`
   * in the guest. Guest-side failures (no such directory, disk full…) come back as a non-zero
   * `exitCode` with the guest's stderr, like exec.
   */
  async fetch(
    vm: VmRecord,
    input: { url: string; path: string; timeoutSec?: number | null | undefined },
    signal?: AbortSignal,
  ): Promise<FetchResult> {
    const dest = input.path;
    if (!dest.startsWith('/') || dest.endsWith('/') || dest.includes('\0')) {
      throw new InvalidInputError('must be an absolute file path (not ending in /)', 'path');
    }
    let target: string;
    try {
      const u = new URL(input.url);
      if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new Error('scheme');
      target = u.pathname + u.search;
    } catch {
      throw new InvalidInputError('must be a downloadUrl returned by files/presign', 'url');
    }
    let grant: StorageGrant;
    try {
      grant = this.verify(target);
    } catch (err) {
      if (err instanceof InvalidInputError) {
        throw new InvalidInputError('is not a URL minted by this server (files/presign)', 'url');
      }
      throw err;
    }
    if (grant.vmId !== vm.id) throw new ForbiddenError('this storage URL belongs to another VM');
    if (vm.status !== 'running') {
      throw new StateConflictError(`VM is ${vm.status}, not running`, { status: vm.status });
    }
    const obj = await this.stat(grant);
    if (!obj) {
      throw new StateConflictError('nothing has been uploaded to this URL yet (PUT it first)');
    }

    const { runtime, settings } = this.ctx;
    const started = performance.now();
    const timeoutMs = (input.timeoutSec || settings.defaultExecTimeoutSec) * 1000;
    const deadline = started + timeoutMs;
    const tmp = `${dest}.fastvm-${crypto.randomBytes(4).toString('hex')}.part`;
    const stdout: Buffer[] = [];
    const stderr: Buffer[] = [];
    const result = (exitCode: number, timedOut = false): FetchResult => ({
      exitCode,
      stdout: Buffer.concat(stdout).toString('utf8'),
      stderr: Buffer.concat(stderr).toString('utf8'),
      timedOut,
      durationMs: Math.round(performance.now() - started),
      stdoutTruncated: false,
      stderrTruncated: false,
    });
    const cleanup = (): Promise<unknown> =>
      runtime
        .exec(vm.id, { argv: ['rm', '-f', '--', tmp], timeoutMs: 30_000 })
        .catch(() => undefined);

    const fh = await fsp.open(obj.file, 'r');
    try {
      let offset = 0;
      for (let first = true; first || offset < obj.size; first = false) {
        const n = Math.min(CHUNK_BYTES, obj.size - offset);
        const chunk = Buffer.alloc(n);
        if (n > 0) {
          const { bytesRead } = await fh.read(chunk, 0, n, offset);
          if (bytesRead !== n) throw new Error('staging object shrank while being read');
        }
        offset += n;
        const last = offset >= obj.size;
        const script =
          (first ? 'cat > "$1"' : 'cat >> "$1"') + (last ? ' && mv -fT -- "$1" "$2"' : '');
        const left = deadline - performance.now();
        if (left <= 0) {
          await cleanup();
          return result(124, true);
        }
        let r;
        try {
          r = await runtime.exec(vm.id, {
            argv: ['sh', '-c', script, 'fastvm-fetch', tmp, dest],
            stdin: chunk,
            timeoutMs: Math.ceil(left),
            ...(signal ? { signal } : {}),
          });
        } catch (err) {
          await cleanup();
          throw fromRuntimeError(err, 'fetch', { vmId: vm.id });
        }
        stdout.push(r.stdout);
        stderr.push(r.stderr);
        if (r.timedOut || r.exitCode !== 0) {
          await cleanup();
          return result(r.exitCode, r.timedOut);
        }
      }
      return result(0);
    } finally {
      await fh.close();
    }
  }

  // ---- garbage collection ----------------------------------------------------------------------

  /**
   * Removes objects (and stray temp files) older than `objectTtlMs`, and objects of VMs that no
   * longer exist. Uploads in flight are left alone.
   */
  async gc(now = Date.now()): Promise<number> {
    let removed = 0;
    const busy = new Set<string>();
    for (const u of this.#uploads) busy.add(u.tmp).add(path.join(this.stagingDir, u.object));
    for (const name of await fsp.readdir(this.stagingDir).catch(() => [] as string[])) {
      const file = path.join(this.stagingDir, name);
      if (busy.has(file)) continue;
      const vmId = OBJECT_RE.exec(name)?.[1];
      try {
        const orphan = this.ctx.store && vmId !== undefined && !this.#vmOrg.has(vmId);
        const st = await fsp.stat(file);
        if (orphan || now - st.mtimeMs > this.objectTtlMs) {
          await fsp.rm(file, { force: true });
          this.#forget(name);
          removed++;
        }
      } catch {
        /* raced with a rename or another GC */
      }
    }
    return removed;
  }

  /**
   * Revokes a VM's URLs (it was deleted): no upload starts for it any more, the ones in flight
   * are stopped (they answer 404), and its objects are removed.
   */
  async dropVm(vmId: string): Promise<void> {
    this.#vmOrg.delete(vmId);
    const uploads = [...this.#uploads].filter((u) => u.vmId === vmId);
    for (const u of uploads) u.abort(vmGone());
    await Promise.all(uploads.map((u) => u.settled));
    for (const name of await fsp.readdir(this.stagingDir).catch(() => [] as string[])) {
      const object = name.startsWith('.tmp-') ? name.slice(5) : name;
      if (object.startsWith(`${vmId}.`)) {
        await fsp.rm(path.join(this.stagingDir, name), { force: true }).catch(() => {});
        this.#forget(name);
      }
    }
  }
}

function tooLarge(bytes: number, max: number): TooLargeError {
  return new TooLargeError(
    `upload is larger than this URL allows (${bytes} > maxUploadBytes ${max}, the VM's disk size)`,
    { maxUploadBytes: max },
  );
}
