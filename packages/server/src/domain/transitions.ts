/**
 * The status transition tables of VMs and snapshots: the one place that says which status
 * changes are legal. The store enforces them (`Store.transitionVm` / `Store.transitionSnapshot`
 * refuse a move that is not listed here, and apply a listed one only while the row is in its
 * source state, atomically), and no other store method can change a status.
 *
 * ```
 * VM        (new row) provisioning ─► running ─► pausing ─► paused ─► resuming ─► running
 *                     provisioning ─► error
 *                     pausing ─► running      (the runtime refused the pause)
 *                     resuming ─► paused      (the runtime refused the resume)
 *           running, pausing, paused, resuming ─► stopped    (QEMU exited, or was lost at a restart)
 *           running, pausing, paused, resuming ─► error      (its host stopped heartbeating)
 *           every status but deleted ─► deleting ─► deleted  (deleting ─► deleting: a retried delete)
 * snapshot  (new row) creating ─► ready | error;  ready ─► error  (its data is gone at a restart)
 *           creating, ready, error ─► deleting ─► deleted
 * ```
 *
 * Who moves what (all through the store):
 * - `services/vm-service.ts`: launch/restore (`provisioning` → `running` | `error`), delete
 *   (→ `deleting` → `deleted`), an unexpected QEMU exit (→ `stopped`);
 * - `services/lifecycle.ts`: pause (`running` → `pausing` → `paused`, back to `running` if the
 *   runtime refuses) and resume (`paused` → `resuming` → `running`, back to `paused`);
 * - `services/snapshot-service.ts`: `creating` → `ready` | `error`, delete;
 * - `services/recovery.ts`: what a restart finds half done (interrupted launches and snapshots →
 *   `error`, a pause or resume cut short → where the runtime says the VM is, lost VMs →
 *   `stopped`, deletes finished, snapshots whose data is gone → `error`);
 * - `cluster/host-registry.ts`: the VMs of a host that stopped heartbeating (→ `error`).
 * @module
 */
import type { SnapshotStatus, VmStatus } from './model.js';

/** Status of every new VM row (the row is the quota reservation; see `services/quota.ts`). */
export const VM_INITIAL_STATUS = 'provisioning' satisfies VmStatus;

/** Status of every new snapshot row. */
export const SNAPSHOT_INITIAL_STATUS = 'creating' satisfies SnapshotStatus;

/** For each VM status, the statuses it may move to. */
export const VM_TRANSITIONS: Readonly<Record<VmStatus, readonly VmStatus[]>> = {
  provisioning: ['running', 'error', 'deleting'],
  running: ['pausing', 'stopped', 'error', 'deleting'],
  pausing: ['paused', 'running', 'stopped', 'error', 'deleting'],
  paused: ['resuming', 'stopped', 'error', 'deleting'],
  resuming: ['running', 'paused', 'stopped', 'error', 'deleting'],
  stopped: ['deleting'],
  error: ['deleting'],
  // A delete that failed half-way is retried from `deleting` (DELETE again, or at start).
  deleting: ['deleting', 'deleted'],
  deleted: [],
};

/** For each snapshot status, the statuses it may move to. */
export const SNAPSHOT_TRANSITIONS: Readonly<Record<SnapshotStatus, readonly SnapshotStatus[]>> = {
  creating: ['ready', 'error', 'deleting'],
  ready: ['error', 'deleting'],
  error: ['deleting'],
  deleting: ['deleted'],
  deleted: [],
};

/**
 * A requested status change: to `to`, from any of `from`. Without `from`, from every status the
 * table allows into `to` (e.g. `{ to: 'deleting' }` is "delete, whatever state it is in").
 */
export interface Move<S extends string> {
  from?: S | readonly S[];
  to: S;
}

/** A move the transition table does not allow: a bug in the caller, never a user error. */
export class IllegalTransitionError extends Error {
  constructor(
    readonly kind: 'vm' | 'snapshot',
    readonly from: readonly string[],
    readonly to: string,
  ) {
    super(
      from.length === 0
        ? `no ${kind} status may move to ${to}`
        : `illegal ${kind} status change ${from.join('|')} → ${to}`,
    );
    this.name = 'IllegalTransitionError';
  }
}

/**
 * The source statuses of `move`, checked against `table`: every listed source must allow `to`.
 * Throws `IllegalTransitionError` otherwise.
 */
export function sourcesOf<S extends string>(
  kind: 'vm' | 'snapshot',
  table: Readonly<Record<S, readonly S[]>>,
  move: Move<S>,
): S[] {
  const all = Object.keys(table) as S[];
  if (move.from === undefined) {
    const sources = all.filter((s) => table[s].includes(move.to));
    if (sources.length === 0) throw new IllegalTransitionError(kind, [], move.to);
    return sources;
  }
  const from: S[] = typeof move.from === 'string' ? [move.from] : [...move.from];
  const illegal = from.filter((s) => !table[s]?.includes(move.to));
  if (from.length === 0 || illegal.length > 0) {
    throw new IllegalTransitionError(kind, illegal.length > 0 ? illegal : from, move.to);
  }
  return from;
}

/** Whether a VM may move from `from` to `to`. */
export function canMoveVm(from: VmStatus, to: VmStatus): boolean {
  return VM_TRANSITIONS[from].includes(to);
}

/** Whether a snapshot may move from `from` to `to`. */
export function canMoveSnapshot(from: SnapshotStatus, to: SnapshotStatus): boolean {
  return SNAPSHOT_TRANSITIONS[from].includes(to);
}
