/**
 * Lineage: where a snapshot came from and what was made from it. The links are columns: a VM's
 * `sourceSnapshotId` (the snapshot it was restored or forked from) and a snapshot's `vmId` and
 * `parentSnapshotId` (its VM's source). Rows are soft-deleted, so the links outlive deletes; a
 * deleted object still connects the tree and is shown as its id with `deleted: true`.
 *
 * The tree below alternates snapshot → VMs restored from it → snapshots taken of those → …,
 * walked one generation per query pair (indexed by migration 0006), org-scoped throughout.
 * @module
 */
import type { SnapshotRecord, VmRecord } from '../domain/index.js';
import type { Store } from '../store/index.js';
import { resolveSnapshot } from './resolve.js';

/** One snapshot or VM of a lineage (`record` absent: deleted, or its row is gone). */
export interface LineageNode {
  type: 'snapshot' | 'vm';
  id: string;
  deleted: boolean;
  record?: SnapshotRecord | VmRecord;
  children: LineageNode[];
}

/** `GET /v1/snapshots/{id}/lineage`. */
export interface Lineage {
  /** Root first, this snapshot last; VMs between the snapshots they link. */
  ancestors: LineageNode[];
  /** The VMs restored from this snapshot, with everything below them. */
  descendants: LineageNode[];
  /** The walk stopped at `MAX_LINEAGE_NODES`. */
  truncated: boolean;
}

/** Most objects a lineage lists below a snapshot (and above it). */
export const MAX_LINEAGE_NODES = 10_000;

/** Lineage queries, org-scoped. */
export class LineageService {
  constructor(private readonly store: Store) {}

  /** The path above and the tree below a live snapshot of the org (`NotFoundError` otherwise). */
  async get(orgId: string, ref: string): Promise<Lineage> {
    const snap = await resolveSnapshot(this.store, orgId, ref);
    const ancestors = await this.#ancestors(orgId, snap);
    const { nodes, truncated } = await this.#descendants(orgId, snap.id);
    return { ancestors, descendants: nodes, truncated };
  }

  /** Root first. Stops at a fresh launch (no parent) or at a link whose row is gone. */
  async #ancestors(orgId: string, snap: SnapshotRecord): Promise<LineageNode[]> {
    const path: LineageNode[] = [];
    const seen = new Set<string>();
    let current: SnapshotRecord | undefined = snap;
    let id = snap.id;
    while (path.length < MAX_LINEAGE_NODES && !seen.has(id)) {
      seen.add(id);
      if (!current) {
        path.push({ type: 'snapshot', id, deleted: true, children: [] });
        break;
      }
      path.push(snapshotNode(current, []));
      const vm = await this.store.getVmAny(orgId, current.vmId);
      path.push(
        vm ? vmNode(vm, []) : { type: 'vm', id: current.vmId, deleted: true, children: [] },
      );
      const parent = current.parentSnapshotId ?? vm?.sourceSnapshotId ?? null;
      if (!parent) break;
      id = parent;
      [current] = await this.store.getSnapshotsById(orgId, [parent]);
    }
    return path.reverse();
  }

  /** The tree below `rootId`, deleted leaves pruned. */
  async #descendants(
    orgId: string,
    rootId: string,
  ): Promise<{ nodes: LineageNode[]; truncated: boolean }> {
    const vmsBySource = new Map<string, VmRecord[]>();
    const snapsByVm = new Map<string, SnapshotRecord[]>();
    const seen = new Set<string>([rootId]);
    let frontier = [rootId];
    let count = 0;
    let truncated = false;
    while (frontier.length > 0 && !truncated) {
      const vms = (await this.store.listVmsFromSnapshots(orgId, frontier)).filter(
        (v) => !seen.has(v.id),
      );
      for (const vm of vms) {
        seen.add(vm.id);
        push(vmsBySource, vm.sourceSnapshotId ?? '', vm);
      }
      const snaps = (
        await this.store.listSnapshotsOfVms(
          orgId,
          vms.map((v) => v.id),
        )
      ).filter((s) => !seen.has(s.id));
      for (const s of snaps) {
        seen.add(s.id);
        push(snapsByVm, s.vmId, s);
      }
      count += vms.length + snaps.length;
      truncated = count > MAX_LINEAGE_NODES;
      frontier = snaps.map((s) => s.id);
    }
    // Oldest first; one fork's VMs share a timestamp and come in name order (w-2 before w-10).
    for (const list of [...vmsBySource.values(), ...snapsByVm.values()]) list.sort(byAge);
    const below = (snapshotId: string): LineageNode[] =>
      (vmsBySource.get(snapshotId) ?? [])
        .map((vm) =>
          vmNode(
            vm,
            (snapsByVm.get(vm.id) ?? []).map((s) => snapshotNode(s, below(s.id))).filter(kept),
          ),
        )
        .filter(kept);
    return { nodes: below(rootId), truncated };
  }
}

/** A deleted object is shown only while something below it is. */
function kept(node: LineageNode): boolean {
  return !node.deleted || node.children.length > 0;
}

function snapshotNode(s: SnapshotRecord, children: LineageNode[]): LineageNode {
  const deleted = s.deletedAt !== null || s.status === 'deleting' || s.status === 'deleted';
  return { type: 'snapshot', id: s.id, deleted, ...(deleted ? {} : { record: s }), children };
}

function vmNode(vm: VmRecord, children: LineageNode[]): LineageNode {
  const deleted = vm.deletedAt !== null || vm.status === 'deleted';
  return { type: 'vm', id: vm.id, deleted, ...(deleted ? {} : { record: vm }), children };
}

function byAge(a: VmRecord | SnapshotRecord, b: VmRecord | SnapshotRecord): number {
  if (a.createdAt !== b.createdAt) return a.createdAt < b.createdAt ? -1 : 1;
  return a.name.localeCompare(b.name, 'en', { numeric: true });
}

function push<T>(map: Map<string, T[]>, key: string, value: T): void {
  const list = map.get(key);
  if (list) list.push(value);
  else map.set(key, [value]);
}
