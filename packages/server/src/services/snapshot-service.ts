/**
 * Snapshots of running VMs. A snapshot records the VM's machine, disk and firewall so restores
 * can inherit them; `snapshotCount` quota is reserved atomically with the row.
 * @module
 */
import { randomUUID } from 'node:crypto';
import {
  InvalidInputError,
  NotFoundError,
  StateConflictError,
  captureServices,
  nowIso,
  type Metadata,
  type SnapshotRecord,
} from '../domain/index.js';
import type { ServiceContext } from './context.js';
import { normalizeName } from './names.js';
import { resolveSnapshot, resolveVm } from './resolve.js';
import { describeError, fromRuntimeError } from './runtime-errors.js';

/** Filters for `SnapshotService.list`. */
export interface SnapshotListFilter {
  metadata?: ReadonlyArray<readonly [string, string]>;
}

/** Snapshot operations, org-scoped. */
export class SnapshotService {
  constructor(private readonly ctx: ServiceContext) {}

  /**
   * Snapshots a running VM and returns once the runtime has written it (status `ready`). On
   * failure the row is left in `error` (not counted against quota) and the error is thrown.
   */
  async create(
    orgId: string,
    input: { vmId: string; name?: string | null | undefined; metadata?: Metadata | undefined },
  ): Promise<SnapshotRecord> {
    const { store, runtime, tasks, quotas, logger } = this.ctx;
    const vm = await resolveVm(store, orgId, input.vmId).catch((err: unknown) => {
      if (err instanceof NotFoundError) throw new NotFoundError('vm', { field: 'vmId' });
      throw err;
    });
    if (vm.status !== 'running') {
      throw new StateConflictError(`VM is ${vm.status}; only running VMs can be snapshotted`, {
        status: vm.status,
      });
    }
    const now = nowIso();
    const snap: SnapshotRecord = {
      id: randomUUID(),
      orgId,
      vmId: vm.id,
      name: normalizeName(input.name, `snapshot-${vm.id.slice(0, 8)}`),
      status: 'creating',
      error: null,
      machine: vm.machine,
      cpu: vm.cpu,
      memoryMiB: vm.memoryMiB,
      diskGiB: vm.diskGiB,
      firewall: vm.firewall,
      metadata: input.metadata ?? {},
      envVars: { ...vm.envVars },
      services: captureServices(vm.services),
      // Attachments, not contents: a restore attaches the volumes as they are then.
      volumes: (vm.volumes ?? [])
        .filter((a) => a.mountStatus !== 'failed')
        .map(({ volumeId, mountPath, readOnly }) => ({ volumeId, mountPath, readOnly })),
      parentSnapshotId: vm.sourceSnapshotId,
      createdAt: now,
      updatedAt: now,
      deletedAt: null,
    };
    await quotas.reserve(orgId, { snapshotCount: 1 }, (tx) => tx.insertSnapshot(snap));

    const work = (async () => {
      const started = Date.now();
      try {
        const info = await runtime.snapshot(vm.id, snap.id);
        const ready = await store.transitionSnapshot(snap.id, { from: 'creating', to: 'ready' });
        // Multi-host: this host holds it (and copies go to others, with replication on).
        await this.ctx.mobility
          ?.recordLocal(snap.id)
          .catch((err: unknown) =>
            logger.warn({ err, snapshotId: snap.id }, 'recording the snapshot holder failed'),
          );
        this.ctx.metrics?.observe('snapshot', started, true);
        logger.info(
          { vmId: vm.id, snapshotId: snap.id, ms: Date.now() - started, pauseMs: info.pauseMs },
          'snapshot ready',
        );
        return ready ?? { ...snap, status: 'ready' as const };
      } catch (err) {
        logger.warn({ err, vmId: vm.id, snapshotId: snap.id }, 'snapshot failed');
        this.ctx.metrics?.observe('snapshot', started, false);
        await store
          .transitionSnapshot(
            snap.id,
            { from: 'creating', to: 'error' },
            { error: describeError(err) },
          )
          .catch(() => {});
        await runtime.deleteSnapshot(snap.id).catch(() => {});
        throw fromRuntimeError(err, 'snapshot', { snapshotId: snap.id });
      }
    })();
    // Tracked under the VM (a VM delete waits for it) and the snapshot (a snapshot delete too).
    tasks.track(vm.id, work);
    return tasks.track(snap.id, work);
  }

  async get(orgId: string, ref: string): Promise<SnapshotRecord> {
    return this.withDigests(await resolveSnapshot(this.ctx.store, orgId, ref));
  }

  async list(orgId: string, filter: SnapshotListFilter = {}): Promise<SnapshotRecord[]> {
    const snaps = await this.ctx.store.listSnapshots(orgId);
    const matching = snaps.filter((s) =>
      (filter.metadata ?? []).every(
        ([k, v]) => Object.hasOwn(s.metadata, k) && s.metadata[k] === v,
      ),
    );
    return Promise.all(matching.map((s) => this.withDigests(s)));
  }

  /**
   * A ready snapshot with its content digests, once the runtime has computed them (they live in
   * the runtime's snapshot record, not in the database). Best effort: without them as it is.
   */
  private async withDigests(snap: SnapshotRecord): Promise<SnapshotRecord> {
    if (snap.status !== 'ready') return snap;
    const digests = await this.ctx.runtime.snapshotDigests(snap.id).catch(() => undefined);
    return digests ? { ...snap, digests } : snap;
  }

  async update(
    orgId: string,
    ref: string,
    patch: { name?: string | undefined; metadata?: Metadata | undefined },
  ): Promise<SnapshotRecord> {
    if (patch.name === undefined && patch.metadata === undefined) {
      throw new InvalidInputError('give at least one of name or metadata', 'name');
    }
    const snap = await this.get(orgId, ref);
    const updated = await this.ctx.store.updateSnapshot(snap.id, {
      ...(patch.name !== undefined
        ? { name: normalizeName(patch.name, `snapshot-${snap.vmId.slice(0, 8)}`) }
        : {}),
      ...(patch.metadata !== undefined ? { metadata: patch.metadata } : {}),
    });
    return updated ? this.withDigests(updated) : snap;
  }

  /**
   * Hides the snapshot at once (releasing its quota), then asks the runtime to drop it. If the
   * runtime call fails the row stays `deleting` and startup retries it.
   */
  async delete(orgId: string, ref: string): Promise<{ id: string }> {
    const { store, runtime, tasks, logger } = this.ctx;
    const snap = await this.get(orgId, ref);
    await tasks.settled(snap.id);
    // Hidden at once; a delete that raced this one already did it.
    const hidden = await store.transitionSnapshot(
      snap.id,
      { to: 'deleting' },
      { deletedAt: nowIso() },
    );
    if (!hidden) return { id: snap.id };
    try {
      await runtime.deleteSnapshot(snap.id);
      // Multi-host: every other host's copy goes too.
      await this.ctx.mobility?.forget(snap.id);
      await store.transitionSnapshot(snap.id, { from: 'deleting', to: 'deleted' });
    } catch (err) {
      logger.warn(
        { err, snapshotId: snap.id },
        'runtime could not delete snapshot; retried at startup',
      );
    }
    return { id: snap.id };
  }
}
