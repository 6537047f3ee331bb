/**
 * The runtime's public contract: what the server (or a test) needs from a VM runtime.
 * `QemuRuntime` implements it with real QEMU microVMs; the server's tests also use a
 * `FakeRuntime` (named as such) for HTTP-layer edge cases.
 */

export type MachineType = 'c1m2' | 'c2m4' | 'c4m8' | 'c8m16';

export interface MachineSpec {
  readonly name: MachineType;
  readonly vcpus: number;
  readonly memoryMiB: number;
}

export const MACHINES: Readonly<Record<MachineType, MachineSpec>> = {
  c1m2: { name: 'c1m2', vcpus: 1, memoryMiB: 2048 },
  c2m4: { name: 'c2m4', vcpus: 2, memoryMiB: 4096 },
  c4m8: { name: 'c4m8', vcpus: 4, memoryMiB: 8192 },
  c8m16: { name: 'c8m16', vcpus: 8, memoryMiB: 16384 },
};

/** Default root disk size of a fresh VM, in GiB. */
export const DEFAULT_DISK_GIB = 10;

export function isMachineType(value: unknown): value is MachineType {
  return typeof value === 'string' && Object.hasOwn(MACHINES, value);
}

/** Network identity of one VM (assigned by the server's network manager). */
export interface VmNetwork {
  /** Host tap device the VM's virtio-net is attached to. */
  readonly tap: string;
  readonly mac: string;
  /** e.g. `fd12:3456::42/64` */
  readonly ipv6?: string;
  readonly ipv6Gateway?: string;
  /** e.g. `10.100.0.42/16` */
  readonly ipv4?: string;
  readonly ipv4Gateway?: string;
}

/**
 * A VM's network, or a promise of it (undefined: no uplink). With a promise the runtime starts
 * the VM meanwhile and plugs its tap in when the promise resolves, before the guest gets its
 * identity: host-side network setup then overlaps QEMU's start.
 */
export type NetworkOption = VmNetwork | Promise<VmNetwork | undefined>;

/**
 * A launch's network, claimed by the runtime once it knows where the VM comes from: a warm-pool
 * VM waits with a port of its own plugged in (`PoolNetwork`), reserved under the pool VM's name
 * (`pooledFrom`), and the launched VM gets that very port; otherwise (`undefined`) any port.
 * Called at most once.
 */
export type NetworkClaim = (pooledFrom: string | undefined) => Promise<VmNetwork | undefined>;

/**
 * Ports for warm-pool VMs, from the host's networking: a pool VM is restored with its tap, so a
 * launch from the pool plugs nothing in (`NetworkClaim`). Released when the pool VM is discarded.
 */
export interface PoolNetwork {
  reserve(name: string): Promise<VmNetwork | undefined>;
  release(name: string): Promise<void>;
}

/**
 * A root filesystem other than the platform's guest image (an imported OCI image): an ext4 file
 * with the guest agent and what the guest needs added. Launching from one cold-boots it (or
 * restores its own cached golden); the VM's disk is a copy-on-write layer over the file, which
 * stays read-only and shared.
 */
export interface BaseImage {
  /** Stable id, [a-z0-9-]{1,64} (e.g. `oci-<first 16 hex of the manifest digest>`). */
  readonly id: string;
  /** The ext4 file. */
  readonly rootfsPath: string;
}

export interface LaunchOptions {
  /** Caller-chosen id; names the VM's working directory. [A-Za-z0-9-]{1,64} */
  readonly id: string;
  readonly machine: MachineType;
  readonly diskGiB?: number;
  readonly hostname?: string;
  readonly network?: NetworkOption | NetworkClaim;
  /** Boot this root filesystem instead of the platform's guest image. */
  readonly baseImage?: BaseImage;
}

export interface RestoreOptions {
  readonly id: string;
  readonly snapshotId: string;
  readonly hostname?: string;
  readonly network?: NetworkOption;
}

export interface ExecRequest {
  readonly argv: readonly string[];
  readonly env?: Readonly<Record<string, string>>;
  readonly cwd?: string;
  readonly stdin?: Uint8Array;
  /** Kill the command's process group after this long. 0 or absent: no limit. */
  readonly timeoutMs?: number;
  /** Bytes kept per output stream; the rest is dropped and flagged. 0: unlimited. */
  readonly capBytes?: number;
  /** Aborting kills the command's process group. */
  readonly signal?: AbortSignal;
  readonly onStdout?: (chunk: Buffer) => void;
  readonly onStderr?: (chunk: Buffer) => void;
}

export interface ExecResult {
  readonly exitCode: number;
  readonly stdout: Buffer;
  readonly stderr: Buffer;
  readonly timedOut: boolean;
  readonly stdoutTruncated: boolean;
  readonly stderrTruncated: boolean;
  readonly durationMs: number;
}

/** An interactive command on a new pseudo-terminal in the guest (see `Runtime.openPty`). */
export interface PtyRequest {
  readonly argv: readonly string[];
  readonly env?: Readonly<Record<string, string>>;
  readonly cwd?: string;
  /** Initial window size (1–65535 each). */
  readonly rows: number;
  readonly cols: number;
  /** Terminal output (the command's stdout and stderr, as the terminal renders them). */
  readonly onData: (chunk: Buffer) => void;
  /** Input or a resize was refused (e.g. over 1 MiB of input queued); the session goes on. */
  readonly onError?: (err: Error) => void;
}

/** How a pty session's main process ended. */
export interface PtyExit {
  /** Exit status, or 128 + signal if it was killed. */
  readonly exitCode: number;
  /** Signal that killed it, 0 if none. */
  readonly signal: number;
  readonly durationMs: number;
}

/** A running pty session. Calls after the exit are ignored. */
export interface PtySession {
  readonly pid: number;
  /** Resolves when the main process exits; rejects if the VM or its agent goes away first. */
  readonly exited: Promise<PtyExit>;
  /** Terminal input (keystrokes); strings are sent as UTF-8. */
  write(data: Uint8Array | string): void;
  /** New window size; the guest kernel sends SIGWINCH to the foreground job. */
  resize(rows: number, cols: number): void;
  /** Stops reading output until `resumeOutput` (backpressure; the guest's writers block). */
  pauseOutput(): void;
  resumeOutput(): void;
  /**
   * Hangs the terminal up (SIGHUP to its session, as when a terminal window closes) and kills
   * the process group if the main process has not exited `graceMs` (default 2000) later.
   */
  close(graceMs?: number): void;
}

/**
 * A command without a terminal whose stdin stays open (see `Runtime.openProcess`): stdout and
 * stderr arrive separately, input is written as it comes and ended with `end()` (EOF).
 */
export interface ProcessRequest {
  readonly argv: readonly string[];
  readonly env?: Readonly<Record<string, string>>;
  readonly cwd?: string;
  readonly onStdout: (chunk: Buffer) => void;
  readonly onStderr: (chunk: Buffer) => void;
  /** Input was refused; the command goes on. */
  readonly onError?: (err: Error) => void;
  /** `write` returned false earlier and the input queued on the host has drained: write more. */
  readonly onInputDrain?: () => void;
}

/** A running command started by `Runtime.openProcess`. Calls after the exit are ignored. */
export interface ProcessSession {
  readonly pid: number;
  /** Resolves when the command exits; rejects if the VM or its agent goes away first. */
  readonly exited: Promise<PtyExit>;
  /**
   * Input to the command's stdin (strings as UTF-8), delivered in order however slowly the
   * command reads. Returns false while much input waits on the host: wait for `onInputDrain`.
   */
  write(data: Uint8Array | string): boolean;
  /** Closes the command's stdin (EOF) once the input written before is delivered. */
  end(): void;
  /** Sends a signal (default SIGKILL) to the command's process group. */
  kill(signal?: number): void;
  /** Stops reading output until `resumeOutput` (backpressure; the guest's writers block). */
  pauseOutput(): void;
  resumeOutput(): void;
  /** Ends stdin and kills the process group if it has not exited `graceMs` (default 2000) later. */
  close(graceMs?: number): void;
}

export type VmState = 'running' | 'paused' | 'stopped';

/** A volume to hot-attach (see `Runtime.attachVolume`). */
export interface VolumeAttachRequest {
  /** Caller's id of the volume; a VM has each volume at most once. */
  readonly volumeId: string;
  /** The volume's file on the host: raw, with an ext4 filesystem (`createVolumeFile`). */
  readonly file: string;
  /** Opened read-only by QEMU (the guest's disk is write-protected) and mounted `ro`. */
  readonly readOnly: boolean;
  /** Absolute path in the guest, e.g. `/data/x`; created if missing. */
  readonly mountPath: string;
}

/** A volume attached to a VM, as `VmInfo.volumes` lists it. */
export interface VmVolume {
  readonly volumeId: string;
  readonly mountPath: string;
  readonly readOnly: boolean;
  /** False while an attach or detach is in progress (or was cut short by a crash). */
  readonly mounted: boolean;
}

export interface VmInfo {
  readonly id: string;
  readonly machine: MachineType;
  readonly vcpus: number;
  readonly memoryMiB: number;
  readonly diskGiB: number;
  readonly state: VmState;
  readonly pid: number;
  /** Snapshot this VM was restored from, if any. */
  readonly snapshotId?: string;
  /** Attached volumes. */
  readonly volumes?: readonly VmVolume[];
  /** `BaseImage.id` of the root filesystem it runs (absent: the platform's image). */
  readonly baseImage?: string;
}

export interface SnapshotInfo {
  readonly id: string;
  readonly vmId: string;
  readonly machine: MachineType;
  readonly diskGiB: number;
  /** Time the VM was paused, in ms. */
  readonly pauseMs: number;
  readonly totalMs: number;
  /** Volumes attached when it was taken (their devices, not their contents). */
  readonly volumes?: readonly Omit<VmVolume, 'mounted'>[];
}

/** See `Runtime.snapshotDigests`: layer name → `"sha256:<hex>"`. */
export type SnapshotDigests = Readonly<Record<string, string>>;

/** One file of an exported snapshot (`Runtime.exportSnapshot`). */
export interface SnapshotManifestFile {
  /** Name on the wire, `[A-Za-z0-9._-]`, unique in the manifest (`openSnapshotFile`). */
  readonly name: string;
  /**
   * `state`: the device state; `layer`: a memory or disk layer of the data dir (the snapshot's own
   * or one it stands on); `golden`: a file of the golden it stands on; `base`: a root filesystem
   * other than the guest image (a `BaseImage`).
   */
  readonly kind: 'state' | 'layer' | 'golden' | 'base';
  /** Where the file is on the exporting host (the importer maps it to its own paths). */
  readonly path: string;
  readonly bytes: number;
  /** Lower-case hex SHA-256 of the whole file. */
  readonly sha256: string;
  /** A golden's file: the golden's id (content-keyed; a host that has it skips the file). */
  readonly golden?: string;
}

/** Everything a host needs to restore a snapshot taken elsewhere (`Runtime.exportSnapshot`). */
export interface SnapshotManifest {
  readonly format: 1;
  readonly snapshotId: string;
  readonly machine: MachineType;
  readonly imageId: string;
  readonly accel: string;
  readonly qemu?: string;
  /** The golden the snapshot stands on (its files are listed unless the asker said it has it). */
  readonly golden?: string;
  /** Paths on the exporting host that are not files of the manifest. */
  readonly roots: { readonly dataDir: string; readonly goldenDir: string; readonly rootfs: string };
  /** The runtime's own records (opaque to callers): the snapshot's, and the golden's if listed. */
  readonly record: unknown;
  readonly goldenRecord?: unknown;
  readonly files: readonly SnapshotManifestFile[];
  /** Sum of the files' bytes. */
  readonly bytes: number;
}

/** What `importSnapshot` did. */
export interface SnapshotImportResult {
  /** Files downloaded (and verified), and their bytes. */
  readonly files: number;
  readonly bytes: number;
  /** Files this host had already (layers shared with an earlier import, a golden). */
  readonly skipped: number;
  /** The snapshot was here already: nothing was fetched. */
  readonly present: boolean;
}

/** Where `importSnapshot` gets a file's bytes: a Node stream or a web stream. */
export type SnapshotFileFetch = (
  file: SnapshotManifestFile,
) => Promise<import('node:stream').Readable | ReadableStream<Uint8Array>>;

/**
 * Moving snapshots between hosts (multi-host): optional on a `Runtime`; both the QEMU runtime and
 * the FakeRuntime have it.
 */
export interface SnapshotMobilitySupport {
  /**
   * Every file needed to restore the snapshot elsewhere, transitively (state, memory and disk
   * layers, the golden unless `haveGoldens` names it, a base root filesystem), each with its size
   * and SHA-256 (recorded digests reused). @throws RuntimeError `snapshot_not_found`.
   */
  exportSnapshot(
    snapshotId: string,
    opts?: { haveGoldens?: readonly string[] },
  ): Promise<SnapshotManifest>;
  /** A file of `exportSnapshot`'s manifest, by name. @throws `snapshot_not_found` / `not_found`. */
  openSnapshotFile(snapshotId: string, name: string): Promise<import('node:stream').Readable>;
  /**
   * Brings an exported snapshot onto this host: fetches the files it lacks into a private temp
   * dir, checks each one's size and SHA-256 as it streams (`snapshot_corrupt` otherwise), rewrites
   * paths for this host, and renames into place, the snapshot's record last: a failure or a crash
   * leaves nothing that `hasSnapshot` reports. A no-op when the snapshot is here already.
   */
  importSnapshot(
    manifest: SnapshotManifest,
    fetch: SnapshotFileFetch,
    opts?: { signal?: AbortSignal },
  ): Promise<SnapshotImportResult>;
  /** Ids of the goldens this host holds (for `exportSnapshot`'s `haveGoldens`). */
  goldenIds(): Promise<string[]>;
}

export interface AdoptResult {
  /** VMs whose QEMU survived and are under supervision again. */
  readonly adopted: string[];
  /** VMs whose QEMU is gone; their resources have been released. */
  readonly lost: string[];
  /** VMs found on the host that nobody asked for; they were stopped and removed. */
  readonly orphans: string[];
}

export interface Runtime extends Partial<SnapshotMobilitySupport> {
  /** Start a fresh VM (restored from the machine type's golden snapshot). */
  launch(opts: LaunchOptions): Promise<VmInfo>;
  /**
   * Where warm-pool VMs get ports (the host's networking, once it is up); undefined: they wait
   * without one and a launch plugs its tap in. Optional: a runtime without a pool ignores it.
   */
  setPoolNetwork?(pool: PoolNetwork | undefined): void;
  /** Start a new VM from a snapshot; any number may run concurrently. */
  restore(opts: RestoreOptions): Promise<VmInfo>;
  /** Snapshot a running VM; it keeps running afterwards. */
  snapshot(vmId: string, snapshotId: string): Promise<SnapshotInfo>;
  exec(vmId: string, req: ExecRequest): Promise<ExecResult>;
  /**
   * Stop the VM's vCPUs (memory, processes and devices are kept; no host CPU is used). `exec`
   * and `snapshot` fail with `not_running` until `resume`. Idempotent; survives `adopt`.
   */
  pause(vmId: string): Promise<void>;
  /** Continue a paused VM (and re-sync its clock). Idempotent. */
  resume(vmId: string): Promise<void>;
  /** Stop the VM and free everything it holds. Idempotent. */
  destroy(vmId: string): Promise<void>;
  /**
   * Drop the user's reference to a snapshot. Its storage is freed once no VM or later snapshot
   * depends on it. Idempotent.
   */
  deleteSnapshot(snapshotId: string): Promise<void>;
  /** Whether a snapshot's files exist (used to reconcile after restarts). */
  hasSnapshot(snapshotId: string): Promise<boolean>;
  /**
   * Content digests of the layers a snapshot owns (`{memory, disk, state}`, each
   * `"sha256:<hex>"`), computed in the background after the snapshot is taken; undefined until
   * then, or for an unknown snapshot. `restore` checks them and refuses a snapshot whose layers
   * no longer match (`RuntimeError` `snapshot_corrupt`).
   */
  snapshotDigests(snapshotId: string): Promise<SnapshotDigests | undefined>;
  get(vmId: string): VmInfo | undefined;
  /**
   * Start an interactive command (e.g. a login shell) on a new pseudo-terminal in a running VM.
   * Resolves once it runs. @throws RuntimeError `not_found` / `not_running`.
   */
  openPty(vmId: string, req: PtyRequest): Promise<PtySession>;
  /**
   * Start a command without a terminal in a running VM, with its stdin open for input and its
   * stdout and stderr apart (the SSH gateway's exec). Resolves once it runs.
   * @throws RuntimeError `not_found` / `not_running`.
   */
  openProcess(vmId: string, req: ProcessRequest): Promise<ProcessSession>;
  /**
   * After a restart: re-attach to the VMs in `vmIds` whose QEMU still runs, report the others as
   * lost, and stop any other VM found on the host.
   */
  adopt(vmIds: readonly string[]): Promise<AdoptResult>;
  /**
   * Hot-attach a volume to a running VM and mount it in the guest. Idempotent (finishes an
   * attach that a crash cut short). @throws RuntimeError `not_found` / `not_running` (paused: the
   * caller attaches on resume), `unsupported` (a VM without the SCSI controller),
   * `invalid_argument` (mount path taken, bad file), `guest_failed`.
   */
  attachVolume(vmId: string, req: VolumeAttachRequest): Promise<void>;
  /**
   * Unmount a volume in the guest and unplug it; a no-op for a volume that is not attached.
   * @throws RuntimeError `busy` when the guest's mount is in use (it stays attached).
   */
  detachVolume(vmId: string, volumeId: string): Promise<void>;
  /** Grow an attached read-write volume (its file and the mounted filesystem) to `sizeGiB`. */
  growVolume(vmId: string, volumeId: string, sizeGiB: number): Promise<void>;
  /** Subscribe to unexpected VM exits (QEMU died). */
  onExit(listener: (vmId: string, reason: string) => void): () => void;
  /** Detach from all VMs without stopping them (server restart keeps VMs alive). */
  detach(): Promise<void>;
  /** Stop every VM (clean server shutdown when VMs should not survive). */
  destroyAll(): Promise<void>;
}

/** Thrown for errors that are the caller's fault or a known state conflict. */
export class RuntimeError extends Error {
  constructor(
    readonly code:
      | 'not_found'
      | 'not_running'
      | 'snapshot_not_found'
      | 'snapshot_corrupt'
      | 'invalid_argument'
      | 'agent_unavailable'
      | 'qemu_failed'
      | 'image_missing'
      | 'unsupported'
      | 'busy'
      | 'guest_failed',
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'RuntimeError';
  }
}
