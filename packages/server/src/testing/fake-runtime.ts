/**
 * FakeRuntime: an in-memory stand-in for `QemuRuntime`, for HTTP-layer tests, SDK tests and
 * demos (`serve --fake-runtime`). It boots nothing. Delays and failures are configurable, and
 * `exec` understands a handful of shell commands (`echo`, `printf`, `cat`, `sleep`, `exit N`,
 * `true`, `false`, `head -c N /dev/zero`, `hostname`, `uname`) joined with `;`, `&&`, `||`, with
 * `>&2` redirects, plus an in-memory file system for the file-transfer commands (`cat > F`,
 * `cat >> F`, `cat F`, `mv`, `rm -f`, `test -e|-d|-f`, `mkdir -p`, `"$1"` positional parameters).
 * `pause`/`resume` flip the VM's state; a paused VM refuses `exec` and `snapshot`. Like the guest agent, `capBytes` limits what is both kept and streamed, a
 * timeout resolves with `timedOut` (exit 137), and aborting the signal rejects. With `stateFile`, VMs and snapshots persist across processes, so a restarted
 * server can re-adopt "surviving" VMs the way it re-adopts QEMU processes.
 * @module
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import { Readable } from 'node:stream';
import type { ReadableStream as WebStream } from 'node:stream/web';
import {
  MACHINES,
  type AdoptResult,
  type ExecRequest,
  type ExecResult,
  type LaunchOptions,
  type ProcessRequest,
  type ProcessSession,
  type PtyRequest,
  type PtySession,
  type RestoreOptions,
  type Runtime,
  type SnapshotDigests,
  type SnapshotFileFetch,
  type SnapshotImportResult,
  type SnapshotInfo,
  type SnapshotManifest,
  type SnapshotManifestFile,
  type VmInfo,
  type VolumeAttachRequest,
} from '@fastvm/runtime';
import { FakeProcess } from './fake-process.js';
import { FakePty } from './fake-pty.js';

/** Error shaped like the runtime's `RuntimeError` (`name` + `code`), which the server maps. */
export class FakeRuntimeError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = 'RuntimeError';
  }
}

/** A failure to inject: an error to throw, or a function choosing one per call. */
export type FakeFailure<A> = Error | ((arg: A) => Error | undefined);

/** Initial delays and persistence of a `FakeRuntime`. */
export interface FakeRuntimeOptions {
  launchDelayMs?: number;
  restoreDelayMs?: number;
  snapshotDelayMs?: number;
  destroyDelayMs?: number;
  /** Persist VMs and snapshots to this JSON file (for multi-process tests and demos). */
  stateFile?: string;
}

interface FakeVm {
  info: VmInfo;
  hostname: string;
  /** Files written by `cat > path` (base64 contents); kept for snapshot/restore fidelity. */
  files: Record<string, string>;
  /** Directories made by `mkdir -p` (besides the parents of files). */
  dirs?: string[];
  /** Attached volumes: their files appear under `mountPath` in `files`. */
  mounts?: FakeMount[];
}

interface FakeMount {
  volumeId: string;
  file: string;
  mountPath: string;
  readOnly: boolean;
}

/**
 * The contents of fake volumes by host file (path → base64), process-wide like the files on a
 * host: what a detach leaves in a volume is what the next attach anywhere finds.
 */
const volumeData = new Map<string, Record<string, string>>();

const GONE = Symbol('vm destroyed');

/** Commands running in each VM: `destroy` ends them as the real runtime does (the agent goes). */
const running = new WeakMap<FakeVm, Set<AbortController>>();

interface PersistedState {
  vms: FakeVm[];
  snapshots: Array<FakeSnapshot>;
}

/** A snapshot as the fake keeps it: the VM's files, hostname and base image go with it. */
type FakeSnapshot = SnapshotInfo & {
  files: Record<string, string>;
  hostname: string;
  baseImage?: string;
};

/** One call the fake received, for assertions. */
export interface FakeCall {
  method: string;
  args: unknown[];
}

/**
 * A fake `Runtime`: no VMs are booted. Public fields (`launchDelayMs`, `failLaunch`, …) can be
 * changed at any time to shape the next calls; `calls` records every call.
 */
export class FakeRuntime implements Runtime {
  launchDelayMs: number;
  restoreDelayMs: number;
  snapshotDelayMs: number;
  destroyDelayMs: number;
  failLaunch: FakeFailure<LaunchOptions> | undefined;
  failRestore: FakeFailure<RestoreOptions> | undefined;
  failSnapshot: FakeFailure<string> | undefined;
  failExec: FakeFailure<ExecRequest> | undefined;
  failDestroy: FakeFailure<string> | undefined;
  /** Every call, oldest first. */
  readonly calls: FakeCall[] = [];

  private readonly vms = new Map<string, FakeVm>();
  private readonly snapshots = new Map<string, FakeSnapshot>();
  private readonly exitListeners = new Set<(vmId: string, reason: string) => void>();
  private nextPid = 40_000;
  /** Console shells by VM (see `openPty`, `FakePty`). */
  readonly ptys = new Map<string, FakePty[]>();
  private readonly stateFile: string | undefined;

  constructor(opts: FakeRuntimeOptions = {}) {
    this.launchDelayMs = opts.launchDelayMs ?? 0;
    this.restoreDelayMs = opts.restoreDelayMs ?? 0;
    this.snapshotDelayMs = opts.snapshotDelayMs ?? 0;
    this.destroyDelayMs = opts.destroyDelayMs ?? 0;
    this.stateFile = opts.stateFile;
    if (this.stateFile && fs.existsSync(this.stateFile)) {
      const state = JSON.parse(fs.readFileSync(this.stateFile, 'utf8')) as PersistedState;
      for (const vm of state.vms) this.vms.set(vm.info.id, vm);
      for (const s of state.snapshots) this.snapshots.set(s.id, s);
    }
  }

  async launch(opts: LaunchOptions): Promise<VmInfo> {
    this.calls.push({ method: 'launch', args: [opts] });
    await delay(this.launchDelayMs);
    throwIf(this.failLaunch, opts);
    if (!Object.hasOwn(MACHINES, opts.machine)) {
      throw new FakeRuntimeError('invalid_argument', `unknown machine ${opts.machine}`);
    }
    if (opts.baseImage && !/^[a-z0-9-]{1,64}$/.test(opts.baseImage.id)) {
      throw new FakeRuntimeError(
        'invalid_argument',
        `base image id ${opts.baseImage.id} is invalid`,
      );
    }
    this.assertFreeId(opts.id);
    const spec = MACHINES[opts.machine];
    const info: VmInfo = {
      id: opts.id,
      machine: opts.machine,
      vcpus: spec.vcpus,
      memoryMiB: spec.memoryMiB,
      diskGiB: opts.diskGiB ?? 10,
      state: 'running',
      pid: this.nextPid++,
      // Recorded (the fake boots nothing): restores and snapshots carry it like the real runtime.
      ...(opts.baseImage ? { baseImage: opts.baseImage.id } : {}),
    };
    this.vms.set(opts.id, { info, hostname: opts.hostname ?? opts.id, files: {} });
    this.persist();
    return info;
  }

  async restore(opts: RestoreOptions): Promise<VmInfo> {
    this.calls.push({ method: 'restore', args: [opts] });
    await delay(this.restoreDelayMs);
    throwIf(this.failRestore, opts);
    const snap = this.snapshots.get(opts.snapshotId);
    if (!snap) {
      throw new FakeRuntimeError('snapshot_not_found', `snapshot ${opts.snapshotId} not found`);
    }
    this.assertFreeId(opts.id);
    const spec = MACHINES[snap.machine];
    const info: VmInfo = {
      id: opts.id,
      machine: snap.machine,
      vcpus: spec.vcpus,
      memoryMiB: spec.memoryMiB,
      diskGiB: snap.diskGiB,
      state: 'running',
      pid: this.nextPid++,
      snapshotId: snap.id,
      ...(snap.baseImage ? { baseImage: snap.baseImage } : {}),
    };
    this.vms.set(opts.id, {
      info,
      hostname: opts.hostname ?? snap.hostname,
      files: { ...snap.files },
    });
    this.persist();
    return info;
  }

  async snapshot(vmId: string, snapshotId: string): Promise<SnapshotInfo> {
    this.calls.push({ method: 'snapshot', args: [vmId, snapshotId] });
    const vm = this.requireRunning(vmId);
    if (this.snapshots.has(snapshotId)) {
      throw new FakeRuntimeError('invalid_argument', `snapshot ${snapshotId} already exists`);
    }
    const started = Date.now();
    await delay(this.snapshotDelayMs);
    throwIf(this.failSnapshot, vmId);
    const info: SnapshotInfo = {
      id: snapshotId,
      vmId,
      machine: vm.info.machine,
      diskGiB: vm.info.diskGiB,
      pauseMs: Math.min(5, Date.now() - started),
      totalMs: Date.now() - started,
    };
    const onVolumes = (f: string) => vm.mounts?.some((m) => f.startsWith(`${m.mountPath}/`));
    const files = Object.fromEntries(Object.entries(vm.files).filter(([f]) => !onVolumes(f)));
    if (vm.mounts?.length) {
      Object.assign(info, {
        volumes: vm.mounts.map(({ volumeId, mountPath, readOnly }) => ({
          volumeId,
          mountPath,
          readOnly,
        })),
      });
    }
    this.snapshots.set(snapshotId, {
      ...info,
      files,
      hostname: vm.hostname,
      ...(vm.info.baseImage ? { baseImage: vm.info.baseImage } : {}),
    });
    this.persist();
    return info;
  }

  async exec(vmId: string, req: ExecRequest): Promise<ExecResult> {
    this.calls.push({ method: 'exec', args: [vmId, { ...req, signal: undefined }] });
    const vm = this.requireRunning(vmId);
    throwIf(this.failExec, req);
    const started = Date.now();
    const cap = req.capBytes ?? 0;
    const out = new Capture(cap, req.onStdout);
    const err = new Capture(cap, req.onStderr);
    const stop = new AbortController();
    let timedOut = false;
    const timer =
      req.timeoutMs && req.timeoutMs > 0
        ? setTimeout(() => {
            timedOut = true;
            stop.abort();
          }, req.timeoutMs)
        : undefined;
    const onAbort = (): void => stop.abort();
    req.signal?.addEventListener('abort', onAbort, { once: true });
    if (req.signal?.aborted) stop.abort();
    const inVm = running.get(vm) ?? new Set<AbortController>();
    running.set(vm, inVm.add(stop));
    let exitCode: number;
    try {
      const shell = new MiniShell(
        vm,
        out,
        err,
        Buffer.from(req.stdin ?? new Uint8Array()),
        stop.signal,
      );
      exitCode = await shell.runArgv([...req.argv]);
      if (stop.signal.aborted) exitCode = 137;
    } finally {
      clearTimeout(timer);
      req.signal?.removeEventListener('abort', onAbort);
      inVm.delete(stop);
    }
    if (stop.signal.reason === GONE) {
      throw new FakeRuntimeError('agent_unavailable', `exec failed: VM ${vmId} went away`);
    }
    // Like the agent client: a command killed through its signal rejects with the signal's reason.
    if (req.signal?.aborted) throw req.signal.reason;
    return {
      exitCode,
      stdout: out.buffer(),
      stderr: err.buffer(),
      timedOut,
      stdoutTruncated: out.truncated,
      stderrTruncated: err.truncated,
      durationMs: Date.now() - started,
    };
  }

  async pause(vmId: string): Promise<void> {
    this.calls.push({ method: 'pause', args: [vmId] });
    const vm = this.vms.get(vmId);
    if (!vm) throw new FakeRuntimeError('not_found', `VM ${vmId} is not running`);
    vm.info = { ...vm.info, state: 'paused' };
    this.persist();
  }

  async resume(vmId: string): Promise<void> {
    this.calls.push({ method: 'resume', args: [vmId] });
    const vm = this.vms.get(vmId);
    if (!vm) throw new FakeRuntimeError('not_found', `VM ${vmId} is not running`);
    vm.info = { ...vm.info, state: 'running' };
    this.persist();
  }

  async destroy(vmId: string): Promise<void> {
    this.calls.push({ method: 'destroy', args: [vmId] });
    await delay(this.destroyDelayMs);
    throwIf(this.failDestroy, vmId);
    const vm = this.vms.get(vmId);
    if (vm) for (const c of running.get(vm) ?? []) c.abort(GONE);
    // What the guest wrote to its volumes is on the host's files already.
    for (const m of vm?.mounts ?? []) unmount(vm!, m);
    this.vms.delete(vmId);
    this.dropPtys(vmId);
    this.persist();
  }

  async deleteSnapshot(snapshotId: string): Promise<void> {
    this.calls.push({ method: 'deleteSnapshot', args: [snapshotId] });
    this.snapshots.delete(snapshotId);
    this.persist();
  }

  async hasSnapshot(snapshotId: string): Promise<boolean> {
    return this.snapshots.has(snapshotId);
  }

  // Snapshot mobility: a snapshot is one file on the wire (`snapshot.json`: its record), with a
  // real SHA-256, so tests of the pull path see real verification.

  async exportSnapshot(snapshotId: string): Promise<SnapshotManifest> {
    const snap = this.snapshots.get(snapshotId);
    if (!snap) throw new FakeRuntimeError('snapshot_not_found', `snapshot ${snapshotId} not found`);
    const body = Buffer.from(JSON.stringify(snap));
    const file: SnapshotManifestFile = {
      name: 'snapshot.json',
      kind: 'state',
      path: `/fake/snapshots/${snapshotId}/snapshot.json`,
      bytes: body.length,
      sha256: createHash('sha256').update(body).digest('hex'),
    };
    return {
      format: 1,
      snapshotId,
      machine: snap.machine,
      imageId: 'fake',
      accel: 'fake',
      roots: { dataDir: '/fake', goldenDir: '/fake/golden', rootfs: '/fake/rootfs' },
      record: { id: snapshotId },
      files: [file],
      bytes: file.bytes,
    };
  }

  async openSnapshotFile(snapshotId: string, name: string): Promise<Readable> {
    const snap = this.snapshots.get(snapshotId);
    if (!snap) throw new FakeRuntimeError('snapshot_not_found', `snapshot ${snapshotId} not found`);
    if (name !== 'snapshot.json') {
      throw new FakeRuntimeError('not_found', `snapshot ${snapshotId} has no file ${name}`);
    }
    return Readable.from([Buffer.from(JSON.stringify(snap))]);
  }

  async importSnapshot(
    manifest: SnapshotManifest,
    fetch: SnapshotFileFetch,
    opts: { signal?: AbortSignal } = {},
  ): Promise<SnapshotImportResult> {
    this.calls.push({ method: 'importSnapshot', args: [manifest.snapshotId] });
    if (this.snapshots.has(manifest.snapshotId)) {
      return { files: 0, bytes: 0, skipped: 0, present: true };
    }
    const file = manifest.files.find((f) => f.name === 'snapshot.json');
    if (manifest.format !== 1 || !file) {
      throw new FakeRuntimeError('invalid_argument', 'bad snapshot manifest');
    }
    const src = await fetch(file);
    const chunks: Buffer[] = [];
    for await (const c of src instanceof Readable ? src : Readable.fromWeb(src as WebStream)) {
      opts.signal?.throwIfAborted();
      chunks.push(Buffer.from(c as Uint8Array));
    }
    const body = Buffer.concat(chunks);
    const sha = createHash('sha256').update(body).digest('hex');
    if (body.length !== file.bytes || sha !== file.sha256) {
      throw new FakeRuntimeError(
        'snapshot_corrupt',
        `import of snapshot ${manifest.snapshotId}: ${file.name} does not match its digest`,
      );
    }
    const snap = JSON.parse(body.toString()) as SnapshotInfo & {
      files: Record<string, string>;
      hostname: string;
    };
    if (snap.id !== manifest.snapshotId) {
      throw new FakeRuntimeError('invalid_argument', 'manifest and snapshot disagree');
    }
    this.snapshots.set(snap.id, snap);
    this.persist();
    return { files: 1, bytes: body.length, skipped: 0, present: false };
  }

  async goldenIds(): Promise<string[]> {
    return [];
  }

  /** Made-up but stable digests (a hash of the id per layer), available as soon as it exists. */
  async snapshotDigests(snapshotId: string): Promise<SnapshotDigests | undefined> {
    if (!this.snapshots.has(snapshotId)) return undefined;
    const of = (layer: string) =>
      `sha256:${createHash('sha256').update(`${snapshotId}/${layer}`).digest('hex')}`;
    return { memory: of('memory'), disk: of('disk'), state: of('state') };
  }

  get(vmId: string): VmInfo | undefined {
    const vm = this.vms.get(vmId);
    if (!vm) return undefined;
    if (!vm.mounts?.length) return vm.info;
    const volumes = vm.mounts.map(({ volumeId, mountPath, readOnly }) => ({
      volumeId,
      mountPath,
      readOnly,
      mounted: true,
    }));
    return { ...vm.info, volumes };
  }

  /** The volume's files appear under the mount path (from what its last detach left). */
  async attachVolume(vmId: string, req: VolumeAttachRequest): Promise<void> {
    this.calls.push({ method: 'attachVolume', args: [vmId, req] });
    const vm = this.requireRunning(vmId);
    const mounts = (vm.mounts ??= []);
    const same = mounts.find((m) => m.volumeId === req.volumeId);
    if (same) {
      if (same.mountPath === req.mountPath && same.readOnly === req.readOnly) return;
      throw new FakeRuntimeError('invalid_argument', `volume ${req.volumeId} is already attached`);
    }
    if (mounts.some((m) => m.mountPath === req.mountPath)) {
      throw new FakeRuntimeError('invalid_argument', `${req.mountPath} is taken by another volume`);
    }
    if (!fs.existsSync(req.file)) {
      throw new FakeRuntimeError('invalid_argument', `volume file missing: ${req.file}`);
    }
    mounts.push({
      volumeId: req.volumeId,
      file: req.file,
      mountPath: req.mountPath,
      readOnly: req.readOnly,
    });
    (vm.dirs ??= []).push(req.mountPath);
    for (const [rel, data] of Object.entries(volumeData.get(req.file) ?? {})) {
      vm.files[`${req.mountPath}/${rel}`] = data;
    }
    this.persist();
  }

  /** The files under the mount path go back into the volume (unless read-only) and vanish. */
  async detachVolume(vmId: string, volumeId: string): Promise<void> {
    this.calls.push({ method: 'detachVolume', args: [vmId, volumeId] });
    const vm = this.requireRunning(vmId);
    const mount = vm.mounts?.find((m) => m.volumeId === volumeId);
    if (!mount) return;
    unmount(vm, mount);
    this.persist();
  }

  async growVolume(vmId: string, volumeId: string, sizeGiB: number): Promise<void> {
    this.calls.push({ method: 'growVolume', args: [vmId, volumeId, sizeGiB] });
    const vm = this.requireRunning(vmId);
    const mount = vm.mounts?.find((m) => m.volumeId === volumeId);
    if (!mount) throw new FakeRuntimeError('not_found', `volume ${volumeId} is not attached`);
    if (mount.readOnly) {
      throw new FakeRuntimeError('invalid_argument', 'a read-only attachment cannot be grown');
    }
    fs.truncateSync(mount.file, sizeGiB * 2 ** 30);
  }

  /** A `FakePty` shell (prompt, echo, `tty`, `stty size`, `exit N`); see fake-pty.ts. */
  async openPty(vmId: string, req: PtyRequest): Promise<PtySession> {
    this.calls.push({
      method: 'openPty',
      args: [vmId, { argv: [...req.argv], env: req.env, rows: req.rows, cols: req.cols }],
    });
    const vm = this.requireRunning(vmId);
    const pty = new FakePty(req, this.nextPid++, vm.hostname);
    this.ptys.set(vmId, [...(this.ptys.get(vmId) ?? []), pty]);
    return pty;
  }

  /**
   * A `FakeProcess`: input is collected until EOF, then the command runs through `exec` (the
   * mini shell) with it; see fake-process.ts.
   */
  async openProcess(vmId: string, req: ProcessRequest): Promise<ProcessSession> {
    this.calls.push({
      method: 'openProcess',
      args: [vmId, { argv: [...req.argv], env: req.env, cwd: req.cwd }],
    });
    this.requireRunning(vmId);
    return new FakeProcess(this.nextPid++, (stdin, signal) =>
      this.exec(vmId, {
        argv: req.argv,
        ...(req.env ? { env: req.env } : {}),
        stdin,
        signal,
        onStdout: req.onStdout,
        onStderr: req.onStderr,
      }),
    );
  }

  /** Console shells of a VM: their `exited` rejects as if the agent connection were lost. */
  private dropPtys(vmId: string): void {
    for (const pty of this.ptys.get(vmId) ?? []) {
      pty.drop(new FakeRuntimeError('agent_unavailable', `VM ${vmId} went away`));
    }
    this.ptys.delete(vmId);
  }

  async adopt(vmIds: readonly string[]): Promise<AdoptResult> {
    this.calls.push({ method: 'adopt', args: [[...vmIds]] });
    const wanted = new Set(vmIds);
    const adopted = vmIds.filter((id) => this.vms.has(id));
    const lost = vmIds.filter((id) => !this.vms.has(id));
    const orphans = [...this.vms.keys()].filter((id) => !wanted.has(id));
    for (const id of orphans) this.vms.delete(id);
    this.persist();
    return { adopted, lost, orphans };
  }

  onExit(listener: (vmId: string, reason: string) => void): () => void {
    this.exitListeners.add(listener);
    return () => this.exitListeners.delete(listener);
  }

  async detach(): Promise<void> {
    this.calls.push({ method: 'detach', args: [] });
  }

  async destroyAll(): Promise<void> {
    this.calls.push({ method: 'destroyAll', args: [] });
    this.vms.clear();
    this.persist();
  }

  // ---- test controls ----------------------------------------------------------------------

  /** Simulates QEMU dying: the VM disappears and exit listeners are told. */
  crash(vmId: string, reason = 'killed by signal 9'): void {
    if (!this.vms.delete(vmId)) return;
    this.dropPtys(vmId);
    this.persist();
    for (const l of this.exitListeners) l(vmId, reason);
  }

  /** Simulates a VM lost while no server was watching (no exit event). */
  forget(vmId: string): void {
    this.vms.delete(vmId);
    this.persist();
  }

  /** Simulates snapshot data vanishing from disk. */
  forgetSnapshot(snapshotId: string): void {
    this.snapshots.delete(snapshotId);
    this.persist();
  }

  /** Ids of the VMs the fake currently runs. */
  runningVmIds(): string[] {
    return [...this.vms.keys()];
  }

  snapshotIds(): string[] {
    return [...this.snapshots.keys()];
  }

  // ---- internals ---------------------------------------------------------------------------

  private requireRunning(vmId: string): FakeVm {
    const vm = this.vms.get(vmId);
    if (!vm) throw new FakeRuntimeError('not_found', `VM ${vmId} is not running`);
    if (vm.info.state === 'paused')
      throw new FakeRuntimeError('not_running', `VM ${vmId} is paused`);
    return vm;
  }

  /** Test control: a file's bytes in a fake VM (undefined when absent). */
  readFile(vmId: string, path: string): Buffer | undefined {
    const data = this.vms.get(vmId)?.files[path];
    return data === undefined ? undefined : Buffer.from(data, 'base64');
  }

  /** Test control: paths of the files in a fake VM. */
  listFiles(vmId: string): string[] {
    return Object.keys(this.vms.get(vmId)?.files ?? {});
  }

  private assertFreeId(id: string): void {
    if (this.vms.has(id)) throw new FakeRuntimeError('invalid_argument', `VM ${id} already exists`);
  }

  private persist(): void {
    if (!this.stateFile) return;
    const state: PersistedState = {
      vms: [...this.vms.values()],
      snapshots: [...this.snapshots.values()],
    };
    const tmp = `${this.stateFile}.tmp`;
    fs.writeFileSync(tmp, JSON.stringify(state));
    fs.renameSync(tmp, this.stateFile);
  }
}

/** Moves a mount's files back into its volume (unless read-only) and out of the VM. */
function unmount(vm: FakeVm, mount: FakeMount): void {
  const prefix = `${mount.mountPath}/`;
  const kept: Record<string, string> = {};
  for (const [f, data] of Object.entries(vm.files)) {
    if (!f.startsWith(prefix)) continue;
    kept[f.slice(prefix.length)] = data;
    delete vm.files[f];
  }
  if (!mount.readOnly) volumeData.set(mount.file, kept);
  vm.mounts = (vm.mounts ?? []).filter((m) => m !== mount);
  vm.dirs = (vm.dirs ?? []).filter((d) => d !== mount.mountPath);
}

function throwIf<A>(failure: FakeFailure<A> | undefined, arg: A): void {
  if (!failure) return;
  const err = failure instanceof Error ? failure : failure(arg);
  if (err) throw err;
}

function delay(ms: number, signal?: AbortSignal): Promise<void> {
  if (ms <= 0) return Promise.resolve();
  return new Promise((resolve) => {
    const t = setTimeout(done, ms);
    function done(): void {
      clearTimeout(t);
      signal?.removeEventListener('abort', done);
      resolve();
    }
    signal?.addEventListener('abort', done, { once: true });
  });
}

/** Keeps and forwards to `sink` at most `cap` bytes (0 = unlimited), flagging the rest. */
class Capture {
  private readonly chunks: Buffer[] = [];
  private kept = 0;
  truncated = false;

  constructor(
    private readonly cap: number,
    private readonly sink?: (chunk: Buffer) => void,
  ) {}

  write(data: string | Buffer): void {
    let chunk = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
    if (chunk.length === 0) return;
    // Like the guest agent: only the first `cap` bytes are kept *and* forwarded.
    if (this.cap > 0 && this.kept + chunk.length > this.cap) {
      this.truncated = true;
      chunk = chunk.subarray(0, this.cap - this.kept);
      if (chunk.length === 0) return;
    }
    this.chunks.push(chunk);
    this.kept += chunk.length;
    this.sink?.(chunk);
  }

  buffer(): Buffer {
    return Buffer.concat(this.chunks);
  }
}

/** Just enough shell to exercise exec paths; not a real shell. */
class MiniShell {
  constructor(
    private readonly vm: FakeVm,
    private readonly out: Capture,
    private readonly err: Capture,
    private stdin: Buffer,
    private readonly signal: AbortSignal,
  ) {}

  async runArgv(argv: string[]): Promise<number> {
    const [cmd, ...args] = argv;
    const shell = cmd === 'sh' || cmd === 'bash' || cmd === '/bin/sh' || cmd === '/bin/bash';
    if (shell && args[0] === '-c') {
      // `sh -c SCRIPT NAME ARG1 ARG2…`: $0 = NAME, $1 = ARG1, …
      return this.runScript(args[1] ?? '', args.slice(2));
    }
    return this.runCommand(cmd ?? '', args, this.out);
  }

  private async runScript(script: string, params: string[] = []): Promise<number> {
    let status = 0;
    let skip = false;
    for (const { words: raw, op } of parseScript(script)) {
      if (this.signal.aborted) return 137;
      const words = raw.map((w) =>
        w.replace(/\$(\d)/g, (_m, d: string) => params[Number(d)] ?? ''),
      );
      if (!skip && words.length > 0) {
        let target = this.out;
        const last = words[words.length - 1];
        if (last === '>&2' || last === '1>&2') {
          words.pop();
          target = this.err;
        }
        const redirect = words.findIndex((w) => w === '>' || w === '>>');
        if (redirect > 0 && words[0] === 'cat' && words[redirect + 1] !== undefined) {
          status = this.writeFile(words[redirect + 1]!, words[redirect] === '>>');
        } else {
          const [cmd, ...args] = words;
          if (cmd === 'exit') return Number(args[0] ?? status) & 0xff;
          status = await this.runCommand(cmd ?? '', args, target);
        }
      }
      skip = (op === '&&' && status !== 0) || (op === '||' && status === 0);
    }
    return status;
  }

  private async runCommand(cmd: string, args: string[], out: Capture): Promise<number> {
    switch (cmd) {
      case 'echo': {
        const noNewline = args[0] === '-n';
        const words = noNewline ? args.slice(1) : args;
        out.write(words.join(' ') + (noNewline ? '' : '\n'));
        return 0;
      }
      case 'printf':
        out.write((args[0] ?? '').replace(/\\n/g, '\n').replace(/\\t/g, '\t'));
        return 0;
      case 'cat': {
        const files = args.filter((a) => a !== '--');
        if (files.length === 0) {
          out.write(this.stdin);
          this.stdin = Buffer.alloc(0);
          return 0;
        }
        for (const f of files) {
          const data = this.vm.files[f];
          if (data === undefined) {
            this.err.write(
              `cat: ${f}: ${this.isDir(f) ? 'Is a directory' : 'No such file or directory'}\n`,
            );
            return 1;
          }
          out.write(Buffer.from(data, 'base64'));
        }
        return 0;
      }
      case 'test':
      case '[': {
        const [flag, f = ''] = args;
        if (flag === '-e') return this.vm.files[f] !== undefined || this.isDir(f) ? 0 : 1;
        if (flag === '-d') return this.isDir(f) ? 0 : 1;
        if (flag === '-f') return this.vm.files[f] !== undefined ? 0 : 1;
        return 2;
      }
      case 'mkdir': {
        for (const d of args.filter((a) => !a.startsWith('-'))) {
          (this.vm.dirs ??= []).push(d.replace(/\/+$/, ''));
        }
        return 0;
      }
      case 'mv': {
        const [from, to] = args.filter((a) => !a.startsWith('-'));
        const data = from === undefined ? undefined : this.vm.files[from];
        if (data === undefined || to === undefined) {
          this.err.write(`mv: cannot stat '${from ?? ''}': No such file or directory\n`);
          return 1;
        }
        if (this.isDir(to)) {
          this.err.write(`mv: cannot overwrite directory '${to}'\n`);
          return 1;
        }
        delete this.vm.files[from!];
        this.vm.files[to] = data;
        return 0;
      }
      case 'rm':
        for (const f of args.filter((a) => !a.startsWith('-'))) delete this.vm.files[f];
        return 0;
      case 'sleep':
        await delay(Number(args[0] ?? 0) * 1000, this.signal);
        return this.signal.aborted ? 137 : 0;
      case 'true':
        return 0;
      case 'false':
        return 1;
      case 'hostname':
        out.write(this.vm.hostname + '\n');
        return 0;
      case 'uname':
        out.write('Linux fastvm-fake 6.1.0 x86_64 GNU/Linux\n');
        return 0;
      case 'head':
        if (args[0] === '-c' && (args[2] === '/dev/zero' || args[2] === '/dev/urandom')) {
          let left = Number(args[1] ?? 0);
          while (left > 0) {
            const n = Math.min(left, 1 << 20);
            out.write(Buffer.alloc(n, args[2] === '/dev/zero' ? 0 : 0x61));
            left -= n;
          }
          return 0;
        }
        break;
      case 'exit':
        return Number(args[0] ?? 0) & 0xff;
      default:
        break;
    }
    this.err.write(`sh: 1: ${cmd}: not found\n`);
    return 127;
  }

  private isDir(p: string): boolean {
    return isDirOf(this.vm, p);
  }

  /** `cat > file` / `cat >> file`: stdin into the fake file system. */
  private writeFile(file: string, append: boolean): number {
    const parent = file.slice(0, file.lastIndexOf('/'));
    if (!file.startsWith('/') || !this.isDir(parent) || this.isDir(file)) {
      this.err.write(
        `sh: 1: cannot create ${file}: ${this.isDir(file) ? 'Is a directory' : 'Directory nonexistent'}\n`,
      );
      return 2;
    }
    if (this.vm.mounts?.some((m) => m.readOnly && file.startsWith(`${m.mountPath}/`))) {
      this.err.write(`sh: 1: cannot create ${file}: Read-only file system\n`);
      return 2;
    }
    const before =
      append && this.vm.files[file] ? Buffer.from(this.vm.files[file], 'base64') : Buffer.alloc(0);
    this.vm.files[file] = Buffer.concat([before, this.stdin]).toString('base64');
    this.stdin = Buffer.alloc(0);
    return 0;
  }
}

/** Whether `dir` is a directory of the fake file system (`/`, made by mkdir, or a file's parent). */
function isDirOf(vm: FakeVm, dir: string): boolean {
  const d = dir.replace(/\/+$/, '');
  if (d === '' || ['/tmp', '/root', '/var/tmp', '/home'].includes(d)) return true;
  if (vm.dirs?.some((x) => x === d || x.startsWith(d + '/'))) return true;
  return Object.keys(vm.files).some((f) => f.startsWith(d + '/'));
}

/** Splits a script into commands at `;`, `&&`, `||` and newlines, honouring quotes. */
function parseScript(script: string): Array<{ words: string[]; op: string }> {
  const commands: Array<{ words: string[]; op: string }> = [];
  let words: string[] = [];
  let word = '';
  let inWord = false;
  let quote: '"' | "'" | null = null;
  const endWord = (): void => {
    if (inWord) words.push(word);
    word = '';
    inWord = false;
  };
  const endCommand = (op: string): void => {
    endWord();
    commands.push({ words, op });
    words = [];
  };
  for (let i = 0; i < script.length; i++) {
    const c = script[i] as string;
    if (quote) {
      if (c === quote) quote = null;
      else word += c;
      continue;
    }
    if (c === '"' || c === "'") {
      quote = c;
      inWord = true;
    } else if (c === ';' || c === '\n') {
      endCommand(';');
    } else if ((c === '&' || c === '|') && script[i + 1] === c) {
      endCommand(c + c);
      i++;
    } else if (c === ' ' || c === '\t') {
      endWord();
    } else {
      word += c;
      inWord = true;
    }
  }
  endCommand(';');
  return commands;
}
