/**
 * Builds (`/v1/builds`, `/v1/build-contexts/presign`) and snapshot imports
 * (`/v1/snapshot-imports*`): one record type (`BuildRecord`, `kind`), one runner. A request is
 * validated and quota-checked, recorded `pending` and queued; a worker claims it, unpacks the
 * context, runs the Dockerfile (`executor.ts`, an image import is `FROM <image>`), snapshots the
 * build VM into an ordinary `ready` org snapshot (quota reserved like `POST /v1/snapshots`) and
 * destroys the VM. Events follow §4.7's phases; RUN output goes to a per-build log
 * (`GET …/{id}/logs`). Cancel aborts the run: the VM is destroyed, a step snapshot in flight is
 * dropped, completed cache steps stay. After a restart, builds that were not finished fail with
 * a reason (their VMs were stopped by the runtime's adoption, their pending step snapshots are
 * deleted here).
 * @module
 */
import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { MACHINES, isMachineType, type MachineType } from '@fastvm/runtime';
import {
  BUILD_TERMINAL,
  DomainError,
  InvalidInputError,
  NotFoundError,
  StateConflictError,
  defaultFirewall,
  nowIso,
  type BuildEvent,
  type BuildEventStatus,
  type BuildPhase,
  type BuildRecord,
  type BuildSourceView,
  type BuiltImageConfig,
  type Metadata,
  type SnapshotRecord,
} from '../../domain/index.js';
import type { ServiceContext } from '../context.js';
import type { FileService } from '../files.js';
import type { ImageSource } from '../image-source.js';
import { normalizeName } from '../names.js';
import { describeError } from '../runtime-errors.js';
import { ContextError, extractTar, extractZip, parseDockerignore } from './context.js';
import { DockerfileError } from './dockerfile.js';
import { BuildFailure, runBuild } from './executor.js';

/** Limits and knobs of the build service. */
export interface BuildSettings {
  /** Largest context upload (compressed), bytes. */
  contextMaxBytes: number;
  /** Largest unpacked context, bytes. */
  contextMaxUnpackedBytes: number;
  /** Builds running at once (server-wide); others wait `pending`. */
  concurrency: number;
  /** Step-cache entries kept per org. */
  cacheEntriesPerOrg: number;
  /** Limit of one RUN step. */
  runTimeoutMs: number;
  /** Build log bytes kept per build. */
  logMaxBytes: number;
}

export const DEFAULT_BUILD_SETTINGS: BuildSettings = {
  contextMaxBytes: 512 * 2 ** 20,
  contextMaxUnpackedBytes: 2 * 2 ** 30,
  concurrency: 2,
  cacheEntriesPerOrg: 256,
  runTimeoutMs: 30 * 60_000,
  logMaxBytes: 8 * 2 ** 20,
};

const ERROR_MAX_BYTES = 4096;
const BUILD_ARGS_MAX = 64;
const BUILD_ARGS_MAX_BYTES = 8192;
const DEFAULT_MACHINE: MachineType = 'c1m2';
const DEFAULT_DISK_GIB = 10;

/** `POST /v1/snapshot-imports` body (validated by the route's schema for types). */
export interface ImportInput {
  source: {
    type: 'image' | 'dockerfile';
    image?: string | undefined;
    platform?: string | undefined;
    contextRef?: string | undefined;
    dockerfilePath?: string | undefined;
    target?: string | undefined;
    buildArgs?: Record<string, string> | undefined;
    registryUsername?: string | undefined;
    registryPassword?: string | undefined;
    registryHost?: string | undefined;
  };
  name?: string | undefined;
  machineType?: string | undefined;
  diskGiB?: number | undefined;
}

/** `POST /v1/builds` body. */
export interface BuildInput {
  imageRef?: string | undefined;
  dockerfileContent?: string | undefined;
  contextDownloadUrl?: string | undefined;
  machineType?: string | undefined;
  diskGiB?: number | undefined;
  name?: string | undefined;
}

/** Secrets kept in memory only (never stored, never echoed). */
interface Secrets {
  username?: string;
  password?: string;
  /** Dockerfile builds: the registry the credentials are for. */
  host?: string;
}

interface Active {
  record: BuildRecord;
  secrets: Secrets;
  abort: AbortController;
  vms: Set<string>;
  done?: Promise<void>;
  logBytes: number;
}

export class BuildService {
  readonly settings: BuildSettings;
  readonly #dir: string;
  readonly #active = new Map<string, Active>();
  readonly #queue: string[] = [];
  #running = 0;
  #closed = false;

  constructor(
    private readonly ctx: ServiceContext,
    private readonly files: FileService,
    opts: { dataDir: string; images?: ImageSource; settings?: Partial<BuildSettings> },
  ) {
    this.settings = { ...DEFAULT_BUILD_SETTINGS, ...opts.settings };
    this.#dir = path.join(opts.dataDir, 'builds');
    this.#images = opts.images;
  }

  readonly #images: ImageSource | undefined;

  // ---- contexts ---------------------------------------------------------------------------------

  /** `POST /v1/build-contexts/presign` (tar.gz) and `/v1/snapshot-imports/context-presign` (zip). */
  presignContext(
    orgId: string,
    baseUrl: string,
    sizeBytes?: number,
  ): ReturnType<FileService['presignContext']> {
    if (sizeBytes !== undefined && sizeBytes > this.settings.contextMaxBytes) {
      throw new InvalidInputError(
        `sizeBytes ${sizeBytes} is over this server's build context limit of ${this.settings.contextMaxBytes} bytes`,
        'sizeBytes',
      );
    }
    return this.files.presignContext(orgId, baseUrl, this.settings.contextMaxBytes);
  }

  // ---- create -------------------------------------------------------------------------------------

  async createImport(orgId: string, input: ImportInput): Promise<BuildRecord> {
    const src = input.source;
    const imageOnly = ['image', 'platform'] as const;
    const dockerfileOnly = [
      'contextRef',
      'dockerfilePath',
      'target',
      'buildArgs',
      'registryHost',
    ] as const;
    if (src.type === 'image') {
      for (const k of dockerfileOnly) {
        // registryHost is ignored for images (contract), not refused.
        if (k !== 'registryHost' && src[k] !== undefined) {
          throw new InvalidInputError(
            `source.${k} is for type "dockerfile", not "image"`,
            `source.${k}`,
          );
        }
      }
      if (!src.image || src.image.trim() === '') {
        throw new InvalidInputError('source.image is required for type "image"', 'source.image');
      }
      if (src.platform !== undefined && src.platform !== 'linux/amd64') {
        throw new InvalidInputError(
          'source.platform: only linux/amd64 is supported',
          'source.platform',
        );
      }
    } else {
      for (const k of imageOnly) {
        if (src[k] !== undefined) {
          throw new InvalidInputError(
            `source.${k} is for type "image", not "dockerfile"`,
            `source.${k}`,
          );
        }
      }
      if (!src.contextRef) {
        throw new InvalidInputError(
          'source.contextRef is required for type "dockerfile"',
          'source.contextRef',
        );
      }
      const p = src.dockerfilePath ?? 'Dockerfile';
      if (p === '' || path.posix.isAbsolute(p) || p.split(/[\\/]/).includes('..')) {
        throw new InvalidInputError(
          'source.dockerfilePath must be a relative path inside the context, without ".."',
          'source.dockerfilePath',
        );
      }
      checkBuildArgs(src.buildArgs);
      const creds = src.registryUsername !== undefined || src.registryPassword !== undefined;
      if (creds && !src.registryHost) {
        throw new InvalidInputError(
          'source.registryHost is required with registry credentials for type "dockerfile"',
          'source.registryHost',
        );
      }
      if (src.registryHost !== undefined && !/^[A-Za-z0-9.-]+(:\d{1,5})?$/.test(src.registryHost)) {
        throw new InvalidInputError(
          'source.registryHost must be a host name with an optional port (no scheme or path)',
          'source.registryHost',
        );
      }
    }
    if ((src.registryUsername === undefined) !== (src.registryPassword === undefined)) {
      throw new InvalidInputError(
        'give both registryUsername and registryPassword, or neither',
        src.registryUsername === undefined ? 'source.registryUsername' : 'source.registryPassword',
      );
    }
    const { machine, diskGiB } = this.#machine(input.machineType, input.diskGiB);
    await this.#checkQuota(orgId, machine, diskGiB);
    const id = randomUUID();
    const view: BuildSourceView = {
      type: src.type,
      ...(src.type === 'image'
        ? { image: src.image!.trim(), platform: src.platform ?? 'linux/amd64' }
        : {}),
      ...(src.type === 'dockerfile'
        ? {
            dockerfilePath: src.dockerfilePath ?? 'Dockerfile',
            ...(src.target !== undefined ? { target: src.target } : {}),
            ...(src.buildArgs !== undefined ? { buildArgs: { ...src.buildArgs } } : {}),
            ...(src.registryHost !== undefined ? { registryHost: src.registryHost } : {}),
          }
        : {}),
      ...(src.registryUsername !== undefined ? { registryUsername: src.registryUsername } : {}),
    };
    const record = this.#newRecord(id, orgId, 'import', machine, diskGiB, view, input.name);
    if (src.type === 'dockerfile') {
      await this.#takeContext(record, src.contextRef!, 'zip', true);
    }
    return this.#submit(record, {
      ...(src.registryUsername !== undefined ? { username: src.registryUsername } : {}),
      ...(src.registryPassword !== undefined ? { password: src.registryPassword } : {}),
      ...(src.type === 'dockerfile' && src.registryHost !== undefined
        ? { host: src.registryHost }
        : {}),
    });
  }

  async createBuild(orgId: string, input: BuildInput): Promise<BuildRecord> {
    const imageRef = input.imageRef?.trim();
    if (!imageRef && input.dockerfileContent === undefined) {
      throw new InvalidInputError(
        'give imageRef or dockerfileContent (or both)',
        'dockerfileContent',
      );
    }
    if (input.dockerfileContent !== undefined && input.dockerfileContent.trim() === '') {
      throw new InvalidInputError('dockerfileContent is empty', 'dockerfileContent');
    }
    let object: string | undefined;
    if (input.contextDownloadUrl !== undefined) {
      let grant;
      try {
        grant = this.files.verify(
          new URL(input.contextDownloadUrl).pathname + new URL(input.contextDownloadUrl).search,
        );
      } catch (err) {
        throw new InvalidInputError(
          `contextDownloadUrl must be a URL from POST /v1/build-contexts/presign on this server (${
            err instanceof Error ? err.message : String(err)
          })`,
          'contextDownloadUrl',
        );
      }
      object = grant.object;
    }
    const { machine, diskGiB } = this.#machine(input.machineType, input.diskGiB);
    await this.#checkQuota(orgId, machine, diskGiB);
    const id = randomUUID();
    const dockerfile = input.dockerfileContent;
    const view: BuildSourceView =
      dockerfile !== undefined
        ? { type: 'dockerfile', dockerfilePath: 'Dockerfile' }
        : { type: 'image', image: imageRef!, platform: 'linux/amd64' };
    const record = this.#newRecord(id, orgId, 'build', machine, diskGiB, view, input.name ?? id);
    record.imageRef =
      imageRef ?? /^\s*FROM\s+(?:--\S+\s+)*(\S+)/im.exec(dockerfile ?? '')?.[1] ?? '';
    if (dockerfile !== undefined) record.dockerfileContent = dockerfile;
    if (object !== undefined) {
      try {
        await this.#takeContext(record, object, 'tar', false);
      } catch (err) {
        if (err instanceof NotFoundError) {
          throw new InvalidInputError(
            'contextDownloadUrl does not name an uploaded build context of this org',
            'contextDownloadUrl',
          );
        }
        throw err;
      }
    }
    return this.#submit(record, {});
  }

  #machine(
    machineType: string | undefined,
    diskGiB: number | undefined,
  ): { machine: MachineType; diskGiB: number } {
    const machine = machineType ?? DEFAULT_MACHINE;
    if (!isMachineType(machine)) {
      throw new InvalidInputError(
        `unknown machine type ${JSON.stringify(machineType)}; use one of ${Object.keys(MACHINES).join(', ')}`,
        'machineType',
      );
    }
    const disk = diskGiB ?? DEFAULT_DISK_GIB;
    if (!Number.isSafeInteger(disk) || disk < 1 || disk > this.ctx.settings.maxDiskGiB) {
      throw new InvalidInputError(
        `diskGiB must be an integer from 1 to ${this.ctx.settings.maxDiskGiB}`,
        'diskGiB',
      );
    }
    return { machine, diskGiB: disk };
  }

  /** The build VM counts like a VM and the result like a snapshot: both must fit now. */
  async #checkQuota(orgId: string, machine: MachineType, diskGiB: number): Promise<void> {
    const spec = MACHINES[machine];
    await this.ctx.quotas.reserve(
      orgId,
      { vcpu: spec.vcpus, memoryMiB: spec.memoryMiB, diskGiB, snapshotCount: 1 },
      async () => {},
    );
  }

  #newRecord(
    id: string,
    orgId: string,
    kind: 'build' | 'import',
    machine: MachineType,
    diskGiB: number,
    source: BuildSourceView,
    name: string | undefined,
  ): BuildRecord {
    const now = nowIso();
    const spec = MACHINES[machine];
    return {
      id,
      orgId,
      kind,
      status: 'pending',
      name: normalizeName(name, `import-${id.slice(0, 8)}`),
      machine,
      cpu: spec.vcpus,
      memoryMiB: spec.memoryMiB,
      diskGiB,
      source,
      events: [],
      createdAt: now,
      updatedAt: now,
    };
  }

  async #takeContext(
    record: BuildRecord,
    object: string,
    format: 'tar' | 'zip',
    consume: boolean,
  ): Promise<void> {
    const dir = path.join(this.#dir, record.id);
    await fsp.mkdir(dir, { recursive: true, mode: 0o700 });
    const file = path.join(dir, format === 'zip' ? 'context.zip' : 'context.tar.gz');
    try {
      const size = await this.files.takeContext(record.orgId, object, file, consume);
      record.contextFile = file;
      record.contextFormat = format;
      record.source.contextSizeBytes = size;
    } catch (err) {
      await fsp.rm(dir, { recursive: true, force: true });
      if (err instanceof NotFoundError && format === 'zip') {
        throw new InvalidInputError(
          'source.contextRef is unknown, not uploaded yet, or already used',
          'source.contextRef',
        );
      }
      throw err;
    }
  }

  async #submit(record: BuildRecord, secrets: Secrets): Promise<BuildRecord> {
    if (this.#closed) throw new StateConflictError('the server is shutting down');
    await this.ctx.store.insertBuild(record);
    const active: Active = {
      record,
      secrets,
      abort: new AbortController(),
      vms: new Set(),
      logBytes: 0,
    };
    this.#active.set(record.id, active);
    this.#queue.push(record.id);
    this.#pump();
    return { ...record };
  }

  #pump(): void {
    while (!this.#closed && this.#running < this.settings.concurrency && this.#queue.length > 0) {
      const id = this.#queue.shift()!;
      const active = this.#active.get(id);
      if (!active || active.record.status !== 'pending') continue;
      this.#running++;
      active.done = this.#run(active)
        .catch((err: unknown) => this.ctx.logger.error({ err, buildId: id }, 'build runner failed'))
        .finally(() => {
          this.#running--;
          this.#active.delete(id);
          this.#pump();
        });
      this.ctx.tasks.track(id, active.done);
    }
  }

  // ---- read / cancel / delete ---------------------------------------------------------------------

  async get(orgId: string, id: string, kind: 'build' | 'import'): Promise<BuildRecord> {
    const live = this.#active.get(id)?.record;
    if (live && live.orgId === orgId && live.kind === kind) return { ...live };
    const rec = await this.ctx.store.getBuild(orgId, id);
    if (!rec || rec.kind !== kind)
      throw new NotFoundError(kind === 'build' ? 'build' : 'snapshot import');
    return rec;
  }

  async list(orgId: string, kind: 'build' | 'import'): Promise<BuildRecord[]> {
    const rows = await this.ctx.store.listBuilds(orgId, kind);
    return rows.map((r) => {
      const live = this.#active.get(r.id)?.record;
      return live ? { ...live } : r;
    });
  }

  /** Cancels a pending or running build; a finished one is returned as it is. */
  async cancel(orgId: string, id: string, kind: 'build' | 'import'): Promise<BuildRecord> {
    const rec = await this.get(orgId, id, kind);
    if (BUILD_TERMINAL.includes(rec.status)) return rec;
    const active = this.#active.get(id);
    if (!active) return rec;
    if (active.record.status === 'pending') {
      // Not started: nothing to stop.
      this.#event(active, 'preparing', 'cancelled', 'cancelled before it started');
      await this.#finish(active, 'cancelled', 'the import was cancelled');
      this.#active.delete(id);
      await this.#cleanupFiles(active.record);
      return { ...active.record };
    }
    active.abort.abort();
    await active.done;
    return this.get(orgId, id, kind);
  }

  /** Deletes a finished import and its snapshot; 409 while it runs. */
  async delete(orgId: string, id: string, kind: 'build' | 'import'): Promise<{ id: string }> {
    const rec = await this.get(orgId, id, kind);
    if (!BUILD_TERMINAL.includes(rec.status)) {
      throw new StateConflictError(`the import is ${rec.status}; cancel it first`, {
        status: rec.status,
      });
    }
    if (rec.snapshotId) {
      const snap = await this.ctx.store.getSnapshot(orgId, rec.snapshotId);
      if (snap) await this.snapshots.delete(orgId, snap.id);
    }
    await this.ctx.store.deleteBuild(rec.id);
    await fsp.rm(path.join(this.#dir, rec.id), { recursive: true, force: true });
    return { id: rec.id };
  }

  /** Set by `startServer`: deletes snapshots the way `DELETE /v1/snapshots/{id}` does. */
  snapshots!: { delete(orgId: string, id: string): Promise<{ id: string }> };

  /** The build log from `offset` (bytes), and whether the build is over. */
  async logs(
    orgId: string,
    id: string,
    kind: 'build' | 'import',
    offset: number,
  ): Promise<{ data: string; offset: number; nextOffset: number; done: boolean }> {
    const rec = await this.get(orgId, id, kind);
    const file = path.join(this.#dir, rec.id, 'build.log');
    let data = Buffer.alloc(0);
    try {
      const fh = await fsp.open(file, 'r');
      try {
        const st = await fh.stat();
        const start = Math.min(offset, st.size);
        const len = Math.min(st.size - start, 1024 * 1024);
        data = Buffer.alloc(len);
        await fh.read(data, 0, len, start);
      } finally {
        await fh.close();
      }
    } catch {
      /* no log yet */
    }
    // Cut at the last complete UTF-8 character.
    let end = data.length;
    while (end > 0 && end > data.length - 4 && (data[end - 1]! & 0xc0) === 0x80) end--;
    if (end > 0 && data[end - 1]! >= 0xc0) end--;
    if (end < data.length - 4 || data.length === 0) end = data.length;
    const chunk = data.subarray(0, end);
    return {
      data: chunk.toString('utf8'),
      offset,
      nextOffset: offset + chunk.length,
      done: BUILD_TERMINAL.includes(rec.status),
    };
  }

  // ---- the run ----------------------------------------------------------------------------------

  #event(active: Active, phase: BuildPhase, status: BuildEventStatus, message?: string): void {
    const ev: BuildEvent = { phase, status, timestampMs: Date.now() };
    if (message !== undefined) ev.message = clip(message, 1024);
    active.record.events.push(ev);
    active.record.updatedAt = nowIso();
  }

  async #save(active: Active): Promise<void> {
    active.record.updatedAt = nowIso();
    await this.ctx.store.saveBuild(active.record);
  }

  #log(active: Active, text: string): void {
    if (active.logBytes >= this.settings.logMaxBytes) return;
    let t = text;
    const room = this.settings.logMaxBytes - active.logBytes;
    if (Buffer.byteLength(t) > room) t = `${t.slice(0, room)}\n[build log truncated]\n`;
    active.logBytes += Buffer.byteLength(t);
    try {
      fs.appendFileSync(path.join(this.#dir, active.record.id, 'build.log'), t);
    } catch {
      /* the directory is gone (deleted) */
    }
  }

  async #finish(
    active: Active,
    status: 'succeeded' | 'failed' | 'cancelled',
    error?: string,
  ): Promise<void> {
    const r = active.record;
    r.status = status;
    delete r.progress;
    if (error !== undefined) r.error = clip(error, ERROR_MAX_BYTES);
    r.finishedAt = nowIso();
    await this.#save(active);
  }

  async #run(active: Active): Promise<void> {
    const r = active.record;
    const { runtime, logger } = this.ctx;
    const signal = active.abort.signal;
    let phase: BuildPhase = 'preparing';
    const begin = (p: BuildPhase, message?: string): void => {
      phase = p;
      this.#event(active, p, 'started', message);
    };
    await fsp.mkdir(path.join(this.#dir, r.id), { recursive: true, mode: 0o700 });
    r.status = 'claimed';
    r.startedAt = nowIso();
    begin('preparing');
    await this.#save(active);
    let ctxDir: string | undefined;
    let vmId: string | undefined;
    try {
      await this.#checkQuota(r.orgId, r.machine, r.diskGiB);
      r.status = 'running';
      this.#event(active, 'preparing', 'completed');
      let dockerfile: string;
      let ignore = (_p: string): boolean => false;
      if (r.source.type === 'dockerfile') {
        begin('fetch_context');
        r.progress = 'unpacking the build context';
        await this.#save(active);
        if (r.contextFile) {
          ctxDir = path.join(this.#dir, r.id, 'context');
          await fsp.mkdir(ctxDir, { recursive: true });
          const bytes =
            r.contextFormat === 'zip'
              ? await extractZip(r.contextFile, ctxDir, this.settings.contextMaxUnpackedBytes)
              : await extractTar(r.contextFile, ctxDir, this.settings.contextMaxUnpackedBytes);
          this.#event(active, 'fetch_context', 'completed', `${bytes} bytes unpacked`);
        } else {
          this.#event(active, 'fetch_context', 'skipped', 'no context');
        }
        if (r.dockerfileContent !== undefined) {
          dockerfile = r.dockerfileContent;
        } else {
          const p = r.source.dockerfilePath ?? 'Dockerfile';
          const file = ctxDir ? path.join(ctxDir, p) : '';
          const real = ctxDir ? await fsp.realpath(file).catch(() => '') : '';
          if (!real || !real.startsWith((await fsp.realpath(ctxDir!)) + path.sep)) {
            throw new BuildFailure(`${p} was not found in the build context`);
          }
          dockerfile = await fsp.readFile(real, 'utf8');
        }
        if (ctxDir) {
          const ignoreFile = path.join(ctxDir, '.dockerignore');
          const text = await fsp.readFile(ignoreFile, 'utf8').catch(() => undefined);
          if (text !== undefined) ignore = parseDockerignore(text);
        }
      } else {
        dockerfile = `FROM ${r.source.image}\n`;
      }

      let pulled = false;
      // An image import pulls before it builds (§4.7's phase order: pull, then build); in a
      // Dockerfile build each FROM pulls inside `build`.
      const imageImport = r.source.type === 'image';
      let building = false;
      const beginBuild = (): void => {
        if (building) return;
        building = true;
        begin('build');
      };
      if (imageImport) phase = 'pull';
      else beginBuild();
      await this.#save(active);
      const result = await runBuild(
        {
          runtime,
          network: this.ctx.network,
          store: this.ctx.store,
          logger,
          ...(this.#images ? { images: this.#images } : {}),
          cacheEntriesPerOrg: this.settings.cacheEntriesPerOrg,
          runTimeoutMs: this.settings.runTimeoutMs,
        },
        {
          buildId: r.id,
          orgId: r.orgId,
          dockerfile,
          ...(ctxDir ? { contextDir: ctxDir } : {}),
          ignore,
          buildArgs: r.source.buildArgs ?? {},
          ...(r.source.target !== undefined ? { target: r.source.target } : {}),
          machine: r.machine,
          diskGiB: r.diskGiB,
          registry: active.secrets,
          ...(r.source.platform !== undefined ? { platform: r.source.platform } : {}),
          signal,
          log: (t) => this.#log(active, t),
          progress: (t) => {
            r.progress = clip(t, 512);
          },
          pull: (status, message) => {
            if (status === 'skipped') {
              if (!pulled) this.#event(active, 'pull', 'skipped', message);
            } else if (!(imageImport && status === 'failed')) {
              // (an image import's failed pull is the failure event itself, below)
              this.#event(active, 'pull', status, message);
            }
            pulled = true;
            if (imageImport && (status === 'completed' || status === 'skipped')) beginBuild();
          },
          trackSnapshot: async (id, pending) => {
            const list = new Set(r.pendingSnapshots ?? []);
            if (pending) list.add(id);
            else list.delete(id);
            r.pendingSnapshots = [...list];
            await this.#save(active);
          },
          trackVm: (id, running) => {
            if (running) active.vms.add(id);
            else active.vms.delete(id);
          },
        },
      );
      vmId = result.vmId;
      r.steps = result.steps;
      r.config = result.config;
      this.#event(
        active,
        'build',
        'completed',
        `${result.steps.total} steps, ${result.steps.cached} cached, ${result.steps.ran} ran`,
      );
      this.#log(active, `build done: ${result.steps.total} steps, ${result.steps.cached} cached\n`);

      begin('saving');
      r.progress = 'saving the snapshot';
      await this.#save(active);
      const saving = Date.now();
      const snap = await this.#saveSnapshot(r, vmId, result.config);
      r.snapshotId = snap.id;
      this.#event(
        active,
        'saving',
        'completed',
        `snapshot ${snap.id} in ${Date.now() - saving} ms`,
      );
      this.#event(active, 'done', 'completed');
      await this.#finish(active, 'succeeded');
      logger.info({ buildId: r.id, snapshotId: snap.id, steps: r.steps }, 'build succeeded');
    } catch (err) {
      const cancelled = signal.aborted;
      const message = cancelled
        ? `the ${r.kind === 'build' ? 'build' : 'import'} was cancelled`
        : r.source.type === 'image' && err instanceof DockerfileError
          ? // An image import has no Dockerfile to point at: the reason is about the image.
            err.detail.replace(/^FROM /, '')
          : userMessage(err);
      if (
        !cancelled &&
        !(
          err instanceof DockerfileError ||
          err instanceof BuildFailure ||
          err instanceof ContextError
        )
      ) {
        logger.warn({ err, buildId: r.id }, 'build failed');
      }
      this.#event(active, phase, cancelled ? 'cancelled' : 'failed', message);
      this.#log(active, `${cancelled ? 'cancelled' : 'error'}: ${message}\n`);
      await this.#finish(active, cancelled ? 'cancelled' : 'failed', message).catch(() => {});
    } finally {
      for (const vm of active.vms) {
        await runtime.destroy(vm).catch(() => {});
        await this.ctx.network.release(vm).catch(() => {});
      }
      active.vms.clear();
      // A step snapshot cut off before it reached the cache.
      for (const id of r.pendingSnapshots ?? []) await runtime.deleteSnapshot(id).catch(() => {});
      if (r.pendingSnapshots?.length) {
        r.pendingSnapshots = [];
        await this.ctx.store.saveBuild(r).catch(() => {});
      }
      await this.#cleanupFiles(r);
    }
  }

  /** Takes the org snapshot of the finished build VM (quota reserved with the row). */
  async #saveSnapshot(
    r: BuildRecord,
    vmId: string,
    config: BuiltImageConfig,
  ): Promise<SnapshotRecord> {
    const { store, runtime, quotas } = this.ctx;
    const now = nowIso();
    const snap: SnapshotRecord = {
      id: randomUUID(),
      orgId: r.orgId,
      vmId,
      name: r.name,
      status: 'creating',
      error: null,
      machine: r.machine,
      cpu: r.cpu,
      memoryMiB: r.memoryMiB,
      diskGiB: r.diskGiB,
      firewall: defaultFirewall(),
      metadata: imageMetadata(r, config),
      envVars: { ...config.env },
      services: [],
      volumes: [],
      parentSnapshotId: null,
      createdAt: now,
      updatedAt: now,
      deletedAt: null,
    };
    await quotas.reserve(r.orgId, { snapshotCount: 1 }, (tx) => tx.insertSnapshot(snap));
    try {
      await runtime.snapshot(vmId, snap.id);
    } catch (err) {
      await store
        .transitionSnapshot(
          snap.id,
          { from: 'creating', to: 'error' },
          { error: describeError(err) },
        )
        .catch(() => {});
      await runtime.deleteSnapshot(snap.id).catch(() => {});
      throw err;
    }
    const ready = await store.transitionSnapshot(snap.id, { from: 'creating', to: 'ready' });
    return ready ?? { ...snap, status: 'ready' };
  }

  async #cleanupFiles(r: BuildRecord): Promise<void> {
    const dir = path.join(this.#dir, r.id);
    for (const name of ['context', 'context.zip', 'context.tar.gz']) {
      await fsp.rm(path.join(dir, name), { recursive: true, force: true }).catch(() => {});
    }
  }

  // ---- restart and shutdown ---------------------------------------------------------------------

  /**
   * At start (after the runtime adopted the org VMs, which stopped the build VMs of the last
   * run): unfinished builds fail with a reason, their pending step snapshots are deleted.
   */
  async recover(): Promise<string[]> {
    const failed: string[] = [];
    for (const r of await this.ctx.store.listBuildsByStatus(['pending', 'claimed', 'running'])) {
      for (const id of r.pendingSnapshots ?? []) {
        if (!(await this.ctx.store.isBuildCacheSnapshot(id))) {
          await this.ctx.runtime.deleteSnapshot(id).catch(() => {});
        }
      }
      r.pendingSnapshots = [];
      const phase = r.events.at(-1)?.phase ?? 'preparing';
      const reason =
        'the server restarted while this ran; submit it again (completed steps are cached)';
      r.events.push({ phase, status: 'failed', timestampMs: Date.now(), message: reason });
      r.status = 'failed';
      r.error = reason;
      delete r.progress;
      r.finishedAt = nowIso();
      r.updatedAt = r.finishedAt;
      await this.ctx.store.saveBuild(r);
      await this.#cleanupFiles(r);
      failed.push(r.id);
    }
    return failed;
  }

  /** Stops every build (server shutdown): each fails with a reason and its VMs are destroyed. */
  async close(): Promise<void> {
    this.#closed = true;
    const all = [...this.#active.values()];
    for (const a of all) {
      if (a.record.status === 'pending') {
        this.#event(a, 'preparing', 'failed', 'the server shut down');
        await this.#finish(
          a,
          'failed',
          'the server shut down before this started; submit it again',
        ).catch(() => {});
      } else {
        a.abort.abort();
      }
    }
    await Promise.all(all.map((a) => a.done));
  }
}

function checkBuildArgs(args: Record<string, string> | undefined): void {
  if (args === undefined) return;
  const keys = Object.keys(args);
  if (keys.length > BUILD_ARGS_MAX) {
    throw new InvalidInputError(
      `source.buildArgs: at most ${BUILD_ARGS_MAX} entries`,
      'source.buildArgs',
    );
  }
  let bytes = 0;
  for (const k of keys) {
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(k)) {
      throw new InvalidInputError(
        `source.buildArgs: invalid name ${JSON.stringify(k)}`,
        'source.buildArgs',
      );
    }
    bytes += Buffer.byteLength(k) + Buffer.byteLength(args[k] ?? '');
  }
  if (bytes > BUILD_ARGS_MAX_BYTES) {
    throw new InvalidInputError(
      `source.buildArgs: at most ${BUILD_ARGS_MAX_BYTES} bytes in total`,
      'source.buildArgs',
    );
  }
}

/** The image config on the snapshot's metadata (what restore keeps as labels). */
function imageMetadata(r: BuildRecord, c: BuiltImageConfig): Metadata {
  const m: Metadata = { 'fastvm.build': r.id };
  const put = (k: string, v: unknown): void => {
    if (v === undefined) return;
    const s = typeof v === 'string' ? v : JSON.stringify(v);
    if (Buffer.byteLength(s) <= 4096) m[k] = s;
  };
  put('image.cmd', c.cmd);
  put('image.entrypoint', c.entrypoint);
  put('image.workdir', c.workdir);
  put('image.user', c.user);
  put('image.exposedPorts', c.exposedPorts);
  put('image.labels', c.labels);
  if (r.source.image) put('image.ref', r.source.image);
  return m;
}

/** A failure's user-safe text. */
function userMessage(err: unknown): string {
  if (
    err instanceof DockerfileError ||
    err instanceof BuildFailure ||
    err instanceof ContextError
  ) {
    return err.message;
  }
  if (err instanceof DomainError) return err.message;
  const code = (err as { code?: unknown }).code;
  if (typeof code === 'string' && (err as Error).name === 'RuntimeError') {
    return `the build VM failed (${code}): ${(err as Error).message}`;
  }
  return `internal error: ${describeError(err)}`;
}

function clip(s: string, maxBytes: number): string {
  if (Buffer.byteLength(s) <= maxBytes) return s;
  let out = s.slice(0, maxBytes);
  while (Buffer.byteLength(out) > maxBytes - 3) out = out.slice(0, -1);
  return `${out}…`;
}
