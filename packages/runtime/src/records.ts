/**
 * The runtime's durable records: `vms/<id>/vm.json` and `snapshots/<id>/snapshot.json`, and how
 * they are read and written (atomically: temp file + rename, so a crash leaves the old record or
 * the new one, never half of one). See docs/ARCHITECTURE.md ("Crash safety").
 * @module
 */
import fs from 'node:fs/promises';
import type { DigestRecord } from './digests.js';
import type { Accel } from './qemu.js';
import { type MachineType, RuntimeError, type VmNetwork } from './types.js';

/** Ids of VMs and snapshots name directories: a restricted alphabet, no path tricks. */
export const ID_RE = /^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/;

export function checkId(id: string): void {
  if (!ID_RE.test(id)) {
    throw new RuntimeError('invalid_argument', `invalid id ${JSON.stringify(id)}`);
  }
}

export interface DiskState {
  /** Writable top layer. */
  top: string;
  /** QEMU node name of the top layer. */
  topNode: string;
  /** Read-only layers below the top, nearest first (the last one may be the raw base image). */
  chain: string[];
}

/** A delta file of guest memory (native/memdelta.c) and its data bytes. */
export interface DeltaRef {
  path: string;
  bytes: number;
}

/**
 * Guest memory as a base file with deltas written over it in order (later ones win): what a
 * snapshot's memory is, and what a VM's next snapshot is compared with.
 */
export interface MemView {
  memBase: string;
  deltas: DeltaRef[];
}

/** The deltas a restore of `snap` applies, in order. */
export function snapshotDeltas(snap: SnapshotRecord): DeltaRef[] {
  return [...(snap.chain ?? []), ...(snap.delta ? [snap.delta] : [])];
}

/** Every memory file a restore of `snap` reads. */
export function snapshotMemFiles(snap: SnapshotRecord): string[] {
  return [snap.memBase, ...snapshotDeltas(snap).map((d) => d.path)];
}

/** `vms/<id>/vm.json`: enough to re-adopt or clean up a VM after a restart. */
export interface VmRecord {
  id: string;
  machine: MachineType;
  diskGiB: number;
  accel: Accel;
  pid: number;
  memBase: string;
  disk: DiskState;
  nodeCounter: number;
  snapshotId?: string;
  /**
   * The VM's memory as of its last snapshot (or of its restore): its next snapshot stores only the
   * pages that differ from it. `snapshotId` names the snapshot it came from, whose record may
   * since point at a flattened equivalent. Absent: `memBase` alone (a launch from a golden).
   */
  memView?: MemView & { snapshotId?: string };
  network?: VmNetwork;
  /** `GUEST_NET_VERSION` of the guest's network configuration (absent: per-VM, from before it). */
  guestNet?: number;
  createdAt: string;
  /** QEMU's `-name` when it differs from the id (a VM handed out by the warm pool). */
  qemuName?: string;
  /** Stopped by `pause()` (QMP `stop`); kept so a restarted server adopts it still paused. */
  paused?: boolean;
  /**
   * Intent of a snapshot in progress: the overlay QEMU is being switched to. Written before the
   * switch, so that after a crash adoption knows the file may be QEMU's top layer (it asks QEMU)
   * and the sweeper keeps it until then.
   */
  nextTop?: string;
  /** The VM has the virtio-scsi controller for volumes (absent: from a golden before it). */
  scsi?: boolean;
  /** Volumes attached (or being attached/detached) right now (`volumes.ts`). */
  volumes?: AttachedVolume[];
  /** `BaseImage.id` of the root filesystem it booted (absent: the platform's image). */
  baseImage?: string;
}

/** A volume on one of a VM's SCSI targets. */
export interface AttachedVolume {
  volumeId: string;
  /** The volume's file on the host. */
  file: string;
  readOnly: boolean;
  mountPath: string;
  /** SCSI target (LUN 0) on the VM's controller; names the QEMU node and device `vol<target>`. */
  target: number;
  bytes: number;
  /** `attaching`/`detaching`: a crash may have cut the operation short (redo it). */
  state: 'attaching' | 'mounted' | 'detaching';
}

/** A SCSI disk in a snapshot's device state (the volume's contents are not in the snapshot). */
export interface SnapshotVolume {
  volumeId: string;
  mountPath: string;
  readOnly: boolean;
  target: number;
  bytes: number;
}

/** `snapshots/<id>/snapshot.json` (goldens use the same shape). */
export interface SnapshotRecord {
  id: string;
  vmId: string;
  machine: MachineType;
  diskGiB: number;
  accel: Accel;
  /** `qemu --version` of the QEMU that wrote the state (absent in records before it was kept). */
  qemu?: string;
  imageId: string;
  cmdline: string;
  /** The memory file a restore maps (a golden's, or a flattened one). */
  memBase: string;
  /**
   * The snapshot's own delta: the pages that differ from its parent's memory view (`memBase` with
   * `chain`). Absent once flattened into `memBase`.
   */
  delta?: DeltaRef;
  /** Deltas below `delta`, oldest first, shared with earlier snapshots (absent: none). */
  chain?: DeltaRef[];
  /** Frozen disk layers, nearest first. */
  disk: string[];
  state: string;
  /** The source was stopped when migrated: the restored VM needs `cont`. */
  paused: boolean;
  /** `GUEST_NET_VERSION` of the guest's fixed network configuration (absent: from before it). */
  guestNet?: number;
  /** The machine has the virtio-scsi controller (absent: taken before volumes existed). */
  scsi?: boolean;
  /** Volumes attached when taken; a restore re-creates their devices as placeholders. */
  volumes?: SnapshotVolume[];
  createdAt: string;
  /** Content digests of the layers it owns, added in the background (`digests.ts`). */
  digests?: DigestRecord;
  /**
   * `BaseImage.id` of the root filesystem under its disk chain (absent: the platform's image).
   * The chain's last entry is that file, which no runtime sweeps or prunes.
   */
  baseImage?: string;
}

/** A JSON file, or undefined when it is missing or unreadable. */
export async function readJson<T>(file: string): Promise<T | undefined> {
  try {
    return JSON.parse(await fs.readFile(file, 'utf8')) as T;
  } catch {
    return undefined;
  }
}

/**
 * Runs `fn` after everything queued under `key` in `queues` has settled (whatever its outcome), so
 * the calls for one key run one at a time in call order; the key's entry goes once its queue is
 * empty.
 */
export function inTurn<T>(
  queues: Map<string, Promise<void>>,
  key: string,
  fn: () => Promise<T>,
): Promise<T> {
  const run = (queues.get(key) ?? Promise.resolve()).then(fn);
  const tail = run.then(
    () => {},
    () => {},
  );
  queues.set(key, tail);
  void tail.then(() => {
    if (queues.get(key) === tail) queues.delete(key);
  });
  return run;
}

let tmpCounter = 0;
/** Writes to one file in call order: a later write never lands before an earlier one. */
const writes = new Map<string, Promise<void>>();

/**
 * Writes a JSON file atomically (temp file in the same directory, then rename). The value is
 * serialised at the call, and writes to the same file land in call order.
 */
export function writeJson(file: string, value: unknown): Promise<void> {
  const text = JSON.stringify(value, null, 2);
  const tmp = `${file}.${process.pid}.${++tmpCounter}.tmp`;
  return inTurn(writes, file, async () => {
    await fs.writeFile(tmp, text);
    await fs.rename(tmp, file);
  });
}
