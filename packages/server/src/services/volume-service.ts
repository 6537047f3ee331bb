/**
 * Volumes (contract §4.5 attachments, §4.10 `/v1/volumes`): persistent ext4 disks that outlive
 * VMs. A volume is a sparse file `<dataDir>/volumes/<id>.ext4` (made and resized on the host by
 * the runtime's helpers); the runtime hot-attaches it to a running VM as a SCSI disk and the
 * guest mounts it (`@fastvm/runtime` `volumes.ts`).
 *
 * - Quota: `volumeCount` / `volumeGiB` are reserved by the row itself (`QuotaService.reserve`);
 *   a grow reserves its new size as `pendingSizeGiB` first, so concurrent grows cannot overshoot.
 * - Attachments live on the VM row (`vms.volumes`) and change only through
 *   `Store.changeVmVolumes`, under the org's lock: a writable attachment excludes every other
 *   attachment of the volume, read-only ones share. VMs that are stopped or failed hold nothing.
 * - `pending` until the VM runs: attached when it starts (launch, restore) or resumes
 *   (`attachPending`, also from VM events); one attach/detach at a time per VM.
 * - Deleting a VM detaches its volumes first (unmount in the guest, best effort); a volume whose
 *   VM died with it mounted gets its journal replayed on the host (`e2fsck -p`) before another
 *   VM mounts it. A volume with attachments cannot be deleted.
 * @module
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { randomUUID } from 'node:crypto';
import {
  createVolumeFile,
  fsckVolumeFile,
  resizeVolumeFile,
  volumeUsedBytes,
  type Runtime,
} from '@fastvm/runtime';
import type { Logger } from 'pino';
import {
  GuestBusyError,
  InvalidInputError,
  NotFoundError,
  StateConflictError,
  AmbiguousNameError,
  VOLUME_MOUNT_PATH_RE,
  nowIso,
  type SnapshotVolumeRef,
  type VmRecord,
  type VmStatus,
  type VolumeAttachment,
  type VolumeRecord,
} from '../domain/index.js';
import type { Store } from '../store/index.js';
import type { QuotaService } from './quota.js';
import { isRuntimeError, fromRuntimeError } from './runtime-errors.js';
import { normalizeName } from './names.js';
import type { VmEvents } from './vm-events.js';

/** Largest volume (GiB); the contract states no limit. */
export const MAX_VOLUME_GIB = 16 * 1024;

/** VM statuses whose attachments hold their volumes (a stopped or failed VM holds nothing). */
const HOLDING: readonly VmStatus[] = [
  'provisioning',
  'running',
  'pausing',
  'paused',
  'resuming',
  'deleting',
];

/** Why a snapshot's attachment was not re-attached by a restore (contract §3.2, plus ours). */
export type SkipReason =
  | 'deleted'
  | 'deleting'
  | 'cross_org'
  | 'vol_ro_ceiling_after_patch'
  | 'rw_attached_elsewhere'
  | 'mount_path_taken';

/** `attachmentWarnings` of a launch or restore (contract §3.2). */
export interface AttachmentWarnings {
  failedVolumeAttachments?: Array<{ volumeId: string; mountPath: string; statusMessage: string }>;
  skippedSnapshotVolumes?: Array<{ volumeId: string; mountPath: string; reason: SkipReason }>;
}

/** A requested attachment (`POST /v1/vms/{id}/volumes`, `volumes` at launch). */
export interface AttachRequest {
  volumeId: string;
  mountPath: string;
  readOnly?: boolean | undefined;
}

/** A volume with what the API reports beside its row. */
export interface VolumeView {
  volume: VolumeRecord;
  /** Attachments on running VMs. */
  mountedCount: number;
}

export interface VolumeServiceDeps {
  store: Store;
  runtime: Runtime;
  quotas: QuotaService;
  events: VmEvents;
  logger: Logger;
  /** Volume files live in `<dataDir>/volumes/`. */
  dataDir: string;
}

export class VolumeService {
  readonly #dir: string;
  /** One attach/detach chain per VM. */
  readonly #chains = new Map<string, Promise<unknown>>();
  /** Volumes whose last writer died with them mounted: their journal is replayed first. */
  readonly #dirty = new Set<string>();

  constructor(private readonly deps: VolumeServiceDeps) {
    this.#dir = path.join(deps.dataDir, 'volumes');
    // A VM that starts running (launch, restore, resume) gets its pending attachments; one that
    // stops unexpectedly lets go of its volumes.
    deps.events.subscribe((vm) => {
      if (vm.status === 'running' && vm.volumes?.some((a) => a.mountStatus === 'pending')) {
        this.attachPending(vm.orgId, vm.id).catch((err: unknown) =>
          deps.logger.warn({ err, vmId: vm.id }, 'attaching pending volumes failed'),
        );
      }
      if ((vm.status === 'stopped' || vm.status === 'error') && vm.volumes?.length) {
        for (const a of vm.volumes) if (!a.readOnly) this.#dirty.add(a.volumeId);
      }
    });
  }

  fileOf(volumeId: string): string {
    return path.join(this.#dir, `${volumeId}.ext4`);
  }

  // ---- /v1/volumes ----------------------------------------------------------------------------

  async create(
    orgId: string,
    input: { name: string; sizeGiB: number; accessMode: 'rw' | 'ro' },
  ): Promise<VolumeView> {
    const { store, quotas, logger } = this.deps;
    checkSize(input.sizeGiB);
    const id = randomUUID();
    const now = nowIso();
    const volume: VolumeRecord = {
      id,
      orgId,
      name: normalizeName(input.name, `vol-${id.slice(0, 8)}`),
      sizeGiB: input.sizeGiB,
      accessMode: input.accessMode,
      status: 'creating',
      pendingSizeGiB: null,
      usedGiB: null,
      createdAt: now,
      updatedAt: now,
      deletedAt: null,
    };
    await quotas.reserve(orgId, { volumeCount: 1, volumeGiB: input.sizeGiB }, (tx) =>
      tx.insertVolume(volume),
    );
    try {
      await fs.mkdir(this.#dir, { recursive: true });
      await createVolumeFile(this.fileOf(id), input.sizeGiB, volume.name);
    } catch (err) {
      await store.updateVolume(id, { status: 'deleted', deletedAt: nowIso() });
      throw fromRuntimeError(err, 'creating the volume');
    }
    const used = await volumeUsedBytes(this.fileOf(id));
    const ready = await store.updateVolume(
      id,
      { status: 'ready', ...(used !== undefined ? { usedGiB: gib(used) } : {}) },
      ['creating'],
    );
    logger.info({ volumeId: id, orgId, sizeGiB: input.sizeGiB }, 'volume created');
    return { volume: ready ?? volume, mountedCount: 0 };
  }

  async list(orgId: string): Promise<VolumeView[]> {
    const [volumes, vms] = await Promise.all([
      this.deps.store.listVolumes(orgId),
      this.deps.store.listVms(orgId),
    ]);
    return volumes
      .filter((v) => v.status !== 'deleted')
      .map((volume) => ({ volume, mountedCount: mountedOn(vms, volume.id).length }));
  }

  async get(orgId: string, ref: string): Promise<VolumeView> {
    const volume = await this.resolve(orgId, ref);
    const vms = await this.deps.store.listVms(orgId);
    return { volume, mountedCount: mountedOn(vms, volume.id).length };
  }

  /** A live volume of the org by id or unique name. */
  async resolve(orgId: string, ref: string, field?: string): Promise<VolumeRecord> {
    const { store } = this.deps;
    const byId = await store.getVolume(orgId, ref);
    if (byId) return byId;
    const matches = await store.findVolumesByName(orgId, ref);
    if (matches.length > 1) throw new AmbiguousNameError('volume', ref, matches.length);
    if (!matches[0]) throw new NotFoundError('volume', field ? { field } : {});
    return matches[0];
  }

  /** `GET /v1/volumes/{id}/attachments`: its attachments on VMs that hold it, with `vmId`. */
  async attachments(
    orgId: string,
    ref: string,
  ): Promise<Array<VolumeAttachment & { vmId: string }>> {
    const volume = await this.resolve(orgId, ref);
    const vms = await this.deps.store.listVms(orgId);
    return vms
      .filter((vm) => HOLDING.includes(vm.status))
      .flatMap((vm) =>
        (vm.volumes ?? [])
          .filter((a) => a.volumeId === volume.id)
          .map((a) => ({ ...a, vmId: vm.id })),
      );
  }

  /**
   * Renames, changes the access mode, or resizes: a grow is reserved against `volumeGiB` first
   * and done online when a running VM has it attached writable; a shrink only when nothing has
   * it attached and the data fits.
   */
  async update(
    orgId: string,
    ref: string,
    patch: {
      name?: string | undefined;
      sizeGiB?: number | undefined;
      accessMode?: 'rw' | 'ro' | undefined;
    },
  ): Promise<VolumeView> {
    const { store, quotas, runtime } = this.deps;
    if (patch.name === undefined && patch.sizeGiB === undefined && patch.accessMode === undefined) {
      throw new InvalidInputError('give at least one of name, sizeGiB or accessMode', 'name');
    }
    let volume = await this.resolve(orgId, ref);
    if (volume.status !== 'ready') {
      throw new StateConflictError(`volume is ${volume.status}, not ready`, {
        status: volume.status,
      });
    }
    const holders = (await store.listVms(orgId)).filter((vm) => HOLDING.includes(vm.status));
    const atts = holders.flatMap((vm) =>
      (vm.volumes ?? []).filter((a) => a.volumeId === volume.id).map((a) => ({ vm, a })),
    );
    if (patch.accessMode === 'ro' && atts.some(({ a }) => !a.readOnly)) {
      throw new StateConflictError(
        'the volume is attached writable: detach it before making it read-only',
        { field: 'accessMode' },
      );
    }
    if (patch.sizeGiB !== undefined && patch.sizeGiB !== volume.sizeGiB) {
      const size = patch.sizeGiB;
      checkSize(size);
      if (size < volume.sizeGiB && atts.length > 0) {
        throw new StateConflictError('detach the volume from every VM before shrinking it', {
          field: 'sizeGiB',
        });
      }
      const writer = atts.find(({ a }) => !a.readOnly);
      if (
        size > volume.sizeGiB &&
        atts.length > 0 &&
        !(writer && writer.vm.status === 'running' && writer.a.mountStatus === 'mounted')
      ) {
        throw new StateConflictError(
          'a volume attached read-only (or to a VM that is not running) cannot be resized: detach it first',
          { field: 'sizeGiB' },
        );
      }
      // The new size is reserved (pendingSizeGiB) before the file grows.
      const grow = size > volume.sizeGiB ? size - volume.sizeGiB : 0;
      const marked = await quotas.reserve(orgId, { volumeGiB: grow }, (tx) =>
        tx.updateVolume(volume.id, { pendingSizeGiB: size }, ['ready']),
      );
      if (!marked) throw new StateConflictError('the volume changed meanwhile; try again');
      try {
        if (writer) await runtime.growVolume(writer.vm.id, volume.id, size);
        else await resizeVolumeFile(this.fileOf(volume.id), size);
      } catch (err) {
        await store.updateVolume(volume.id, { pendingSizeGiB: null });
        if (isRuntimeError(err) && err.code === 'invalid_argument') {
          throw new StateConflictError(err.message, { field: 'sizeGiB' }, { retryable: false });
        }
        throw fromRuntimeError(err, 'resizing the volume');
      }
      const used = writer ? undefined : await volumeUsedBytes(this.fileOf(volume.id));
      volume =
        (await store.updateVolume(volume.id, {
          sizeGiB: size,
          pendingSizeGiB: null,
          ...(used !== undefined ? { usedGiB: gib(used) } : {}),
        })) ?? volume;
    }
    if (patch.name !== undefined || patch.accessMode !== undefined) {
      volume =
        (await store.updateVolume(volume.id, {
          ...(patch.name !== undefined
            ? { name: normalizeName(patch.name, `vol-${volume.id.slice(0, 8)}`) }
            : {}),
          ...(patch.accessMode !== undefined ? { accessMode: patch.accessMode } : {}),
        })) ?? volume;
    }
    return {
      volume,
      mountedCount: atts.filter(
        ({ vm, a }) => vm.status === 'running' && a.mountStatus === 'mounted',
      ).length,
    };
  }

  /** `DELETE /v1/volumes/{id}`: refused while attached; `deleting` until its file is gone. */
  async delete(orgId: string, ref: string): Promise<{ id: string }> {
    const { store, logger } = this.deps;
    const volume = await this.resolve(orgId, ref);
    const holders = (await store.listVms(orgId)).filter(
      (vm) => HOLDING.includes(vm.status) && vm.volumes?.some((a) => a.volumeId === volume.id),
    );
    if (holders.length > 0) {
      throw new StateConflictError(
        `the volume is attached to ${holders.length} VM(s) (${holders.map((v) => v.id).join(', ')}): detach it first`,
        { vmId: holders[0]!.id },
        { retryable: false },
      );
    }
    const marked = await store.updateVolume(volume.id, { status: 'deleting' }, [
      'ready',
      'creating',
    ]);
    if (!marked) return { id: volume.id };
    await this.#removeFile(volume.id);
    logger.info({ volumeId: volume.id, orgId }, 'volume deleted');
    return { id: volume.id };
  }

  async #removeFile(volumeId: string): Promise<void> {
    await fs.rm(this.fileOf(volumeId), { force: true });
    await this.deps.store.updateVolume(volumeId, { status: 'deleted', deletedAt: nowIso() });
  }

  // ---- attachments ------------------------------------------------------------------------------

  /**
   * `POST /v1/vms/{id}/volumes`: claims the volume for the VM and, when it runs, hot-attaches
   * and mounts it (otherwise `pending` until it does). A writable attachment excludes every
   * other; a failed hot attach is undone and reported.
   */
  async attach(orgId: string, vm: VmRecord, req: AttachRequest): Promise<VolumeAttachment> {
    if (!HOLDING.includes(vm.status) || vm.status === 'deleting') {
      throw new StateConflictError(`VM is ${vm.status}`, { status: vm.status });
    }
    checkMountPath(req.mountPath, 'mountPath');
    const volume = await this.resolve(orgId, req.volumeId, 'volumeId');
    if (volume.status !== 'ready') {
      throw new StateConflictError(`volume is ${volume.status}, not ready`, {
        field: 'volumeId',
        reason: 'VOL_NOT_READY',
      });
    }
    const readOnly = req.readOnly ?? volume.accessMode === 'ro';
    if (!readOnly && volume.accessMode === 'ro') {
      throw new StateConflictError(
        'the volume is read-only (accessMode ro): attach it with readOnly',
        {
          field: 'readOnly',
        },
      );
    }
    const claimed = await this.deps.store.changeVmVolumes(orgId, vm.id, (row, others) => {
      const existing = row.volumes?.find((a) => a.volumeId === volume.id);
      if (existing) {
        if (existing.mountPath === req.mountPath && existing.readOnly === readOnly) {
          return { result: existing };
        }
        throw new StateConflictError(
          `the volume is already attached to this VM at ${existing.mountPath}`,
          {
            field: 'volumeId',
          },
        );
      }
      const why = conflictOf(row, others, volume.id, req.mountPath, readOnly);
      if (why) throw new StateConflictError(why.message, { field: why.field });
      const att: VolumeAttachment = {
        volumeId: volume.id,
        mountPath: req.mountPath,
        readOnly,
        mountStatus: 'pending',
      };
      return { volumes: [...(row.volumes ?? []), att], result: att };
    });
    if (!claimed) throw new NotFoundError('vm');
    if (claimed.vm.status !== 'running' || claimed.result.mountStatus !== 'pending') {
      return claimed.result;
    }
    return this.#serially(vm.id, async () => {
      const outcome = await this.#attachOne(claimed.vm, claimed.result);
      if (outcome.error) {
        await this.#setAttachments(orgId, vm.id, (list) =>
          list.filter((a) => a.volumeId !== volume.id),
        );
        throw outcome.error;
      }
      return outcome.att;
    });
  }

  /**
   * `DELETE /v1/vms/{id}/volumes/{volumeId}`: unmounts in the guest and unplugs. A busy mount
   * stays attached (`GuestBusyError`: 502 `guest_umount_busy`).
   */
  async detach(orgId: string, vm: VmRecord, volumeRef: string): Promise<void> {
    const { runtime } = this.deps;
    const att = await this.#findAttachment(orgId, vm, volumeRef);
    await this.#serially(vm.id, async () => {
      const now = (await this.deps.store.getVm(orgId, vm.id)) ?? vm;
      const current = now.volumes?.find((a) => a.volumeId === att.volumeId);
      if (!current) return;
      if (current.mountStatus === 'mounted' || current.mountStatus === 'detaching') {
        if (now.status !== 'running') {
          throw new StateConflictError(
            `VM is ${now.status}: resume it to unmount the volume in the guest`,
            { status: now.status },
          );
        }
        await this.#setStatus(orgId, vm.id, att.volumeId, 'detaching');
        try {
          await runtime.detachVolume(vm.id, att.volumeId);
        } catch (err) {
          await this.#setStatus(orgId, vm.id, att.volumeId, 'mounted');
          if (isRuntimeError(err) && err.code === 'busy') {
            throw new GuestBusyError(err.message, {
              volumeId: att.volumeId,
              mountPath: att.mountPath,
            });
          }
          throw fromRuntimeError(err, 'detaching the volume', { vmId: vm.id });
        }
      }
      await this.#setAttachments(orgId, vm.id, (list) =>
        list.filter((a) => a.volumeId !== att.volumeId),
      );
      if (!current.readOnly) await this.#measure(att.volumeId);
    });
  }

  /** Attaches the VM's `pending` volumes if it runs (after launch, restore, resume). */
  async attachPending(orgId: string, vmId: string): Promise<void> {
    await this.#serially(vmId, async () => {
      const vm = await this.deps.store.getVm(orgId, vmId);
      if (!vm || vm.status !== 'running') return;
      for (const att of vm.volumes ?? []) {
        if (att.mountStatus !== 'pending') continue;
        const outcome = await this.#attachOne(vm, att);
        if (outcome.error) {
          this.deps.logger.warn(
            { err: outcome.error, vmId, volumeId: att.volumeId },
            'volume attach failed',
          );
        }
      }
    });
  }

  /**
   * A launch's or restore's attachments, claimed right after its row is inserted (all `pending`;
   * `VmService.boot` attaches them once the VM runs). The snapshot's list is checked against
   * what happened to its volumes since (`skippedSnapshotVolumes`); requested ones that cannot be
   * claimed are `failedVolumeAttachments`.
   */
  async claimAtLaunch(
    vm: VmRecord,
    requested: readonly AttachRequest[] | undefined,
    captured: readonly SnapshotVolumeRef[] | undefined,
  ): Promise<AttachmentWarnings | undefined> {
    const { store } = this.deps;
    const fromSnapshot = requested === undefined;
    const list = requested ?? captured ?? [];
    if (list.length === 0) return undefined;
    const warnings: AttachmentWarnings = {};
    const skip = (r: AttachRequest, reason: SkipReason) =>
      (warnings.skippedSnapshotVolumes ??= []).push({
        volumeId: r.volumeId,
        mountPath: r.mountPath,
        reason,
      });
    const fail = (r: AttachRequest, statusMessage: string) =>
      (warnings.failedVolumeAttachments ??= []).push({
        volumeId: r.volumeId,
        mountPath: r.mountPath,
        statusMessage,
      });
    const wanted: Array<{ volume: VolumeRecord; req: AttachRequest; readOnly: boolean }> = [];
    for (const r of list) {
      const volume = fromSnapshot
        ? await store.findVolumeAnyOrg(r.volumeId)
        : await this.resolve(vm.orgId, r.volumeId).catch(() => undefined);
      if (!volume || volume.status === 'deleted') {
        if (fromSnapshot) skip(r, 'deleted');
        else fail(r, 'volume not found');
        continue;
      }
      if (volume.orgId !== vm.orgId) {
        skip(r, 'cross_org');
        continue;
      }
      if (volume.status !== 'ready') {
        if (fromSnapshot) skip(r, 'deleting');
        else fail(r, `volume is ${volume.status}`);
        continue;
      }
      const readOnly = r.readOnly ?? volume.accessMode === 'ro';
      if (!readOnly && volume.accessMode === 'ro') {
        if (fromSnapshot) skip(r, 'vol_ro_ceiling_after_patch');
        else fail(r, 'the volume is read-only (accessMode ro)');
        continue;
      }
      wanted.push({ volume, req: r, readOnly });
    }
    await store.changeVmVolumes(vm.orgId, vm.id, (row, others) => {
      const volumes = [...(row.volumes ?? [])];
      for (const { volume, req, readOnly } of wanted) {
        const why = conflictOf({ ...row, volumes }, others, volume.id, req.mountPath, readOnly);
        if (why) {
          if (fromSnapshot)
            skip(req, why.field === 'mountPath' ? 'mount_path_taken' : 'rw_attached_elsewhere');
          else fail(req, why.message);
          continue;
        }
        volumes.push({
          volumeId: volume.id,
          mountPath: req.mountPath,
          readOnly,
          mountStatus: 'pending',
        });
      }
      return { volumes, result: undefined };
    });
    return Object.keys(warnings).length > 0 ? warnings : undefined;
  }

  /** Before a VM is destroyed: its volumes are unmounted in the guest (best effort). */
  async beforeVmDestroy(vm: VmRecord): Promise<void> {
    const mounted = (vm.volumes ?? []).filter(
      (a) => a.mountStatus === 'mounted' || a.mountStatus === 'detaching',
    );
    if (mounted.length === 0) return;
    await this.#serially(vm.id, async () => {
      for (const a of mounted) {
        try {
          await this.deps.runtime.detachVolume(vm.id, a.volumeId);
        } catch (err) {
          // Busy, paused or gone: QEMU's exit flushes what the guest wrote; the journal is replayed
          // on the host before the volume is mounted again.
          if (!a.readOnly) this.#dirty.add(a.volumeId);
          this.deps.logger.info(
            { vmId: vm.id, volumeId: a.volumeId, err: String(err) },
            'volume not unmounted before delete',
          );
        }
      }
    });
  }

  /** After a VM is gone: measure (and if needed repair) the volumes it wrote to. */
  async afterVmDestroy(vm: VmRecord): Promise<void> {
    for (const a of vm.volumes ?? []) {
      if (a.readOnly) continue;
      if (this.#dirty.has(a.volumeId)) await this.#repair(a.volumeId).catch(() => {});
      await this.#measure(a.volumeId);
    }
  }

  /**
   * Start-up: finishes volume creations and deletions a crash cut short, and reconciles the
   * attachments of running VMs with what the runtime has attached (an attach or detach that
   * was cut short is done again; the runtime's operations are idempotent).
   */
  async recover(): Promise<void> {
    const { store, runtime, logger } = this.deps;
    for (const v of await store.listVolumesByStatus(['creating', 'deleting'])) {
      // A creation cut short never answered its caller; its file may be half made.
      await this.#removeFile(v.id);
      logger.warn({ volumeId: v.id, was: v.status }, 'volume left by a crash removed');
    }
    for (const vm of await store.listVmsByStatus(['running', 'paused'])) {
      const list = vm.volumes ?? [];
      if (list.length === 0) continue;
      const live = new Map((runtime.get(vm.id)?.volumes ?? []).map((v) => [v.volumeId, v]));
      for (const a of list) {
        if (a.mountStatus === 'detaching' && vm.status === 'running') {
          await runtime.detachVolume(vm.id, a.volumeId).then(
            () =>
              this.#setAttachments(vm.orgId, vm.id, (l) =>
                l.filter((x) => x.volumeId !== a.volumeId),
              ),
            () => this.#setStatus(vm.orgId, vm.id, a.volumeId, 'mounted'),
          );
        } else if (a.mountStatus === 'mounted' && !live.get(a.volumeId)?.mounted) {
          await this.#setStatus(vm.orgId, vm.id, a.volumeId, 'pending');
        }
      }
      if (vm.status === 'running') await this.attachPending(vm.orgId, vm.id);
    }
  }

  // ---- internals --------------------------------------------------------------------------------

  async #attachOne(
    vm: VmRecord,
    att: VolumeAttachment,
  ): Promise<{ att: VolumeAttachment; error?: Error }> {
    const { runtime } = this.deps;
    const file = this.fileOf(att.volumeId);
    try {
      if (!att.readOnly || this.#dirty.has(att.volumeId)) await this.#repair(att.volumeId);
      await runtime.attachVolume(vm.id, {
        volumeId: att.volumeId,
        file,
        readOnly: att.readOnly,
        mountPath: att.mountPath,
      });
    } catch (err) {
      if (isRuntimeError(err) && err.code === 'not_running') return { att }; // paused meanwhile
      const error =
        isRuntimeError(err) && err.code === 'unsupported'
          ? new StateConflictError(err.message, { field: 'volumeId' }, { retryable: false })
          : fromRuntimeError(err, 'attaching the volume', { vmId: vm.id });
      const failed = { ...att, mountStatus: 'failed' as const, statusMessage: error.message };
      await this.#setAttachments(vm.orgId, vm.id, (l) =>
        l.map((a) => (a.volumeId === att.volumeId ? failed : a)),
      );
      return { att: failed, error };
    }
    const mounted: VolumeAttachment = {
      volumeId: att.volumeId,
      mountPath: att.mountPath,
      readOnly: att.readOnly,
      mountStatus: 'mounted',
    };
    await this.#setAttachments(vm.orgId, vm.id, (l) =>
      l.map((a) => (a.volumeId === att.volumeId ? mounted : a)),
    );
    return { att: mounted };
  }

  /**
   * Replays the journal of a volume whose writer died with it mounted (`e2fsck -p`, a no-op on
   * a clean one; no VM has it now). Also before every writable attach: a crash of this server
   * forgets which volumes were left dirty.
   */
  async #repair(volumeId: string): Promise<void> {
    await fsckVolumeFile(this.fileOf(volumeId), false);
    this.#dirty.delete(volumeId);
  }

  async #measure(volumeId: string): Promise<void> {
    const used = await volumeUsedBytes(this.fileOf(volumeId));
    if (used !== undefined) await this.deps.store.updateVolume(volumeId, { usedGiB: gib(used) });
  }

  async #findAttachment(orgId: string, vm: VmRecord, ref: string): Promise<VolumeAttachment> {
    const direct = vm.volumes?.find((a) => a.volumeId === ref);
    if (direct) return direct;
    const volume = await this.resolve(orgId, ref).catch(() => undefined);
    const byName = volume && vm.volumes?.find((a) => a.volumeId === volume.id);
    if (!byName)
      throw new NotFoundError('volume attachment', {
        message: 'the volume is not attached to this VM',
      });
    return byName;
  }

  async #setStatus(
    orgId: string,
    vmId: string,
    volumeId: string,
    mountStatus: VolumeAttachment['mountStatus'],
  ): Promise<void> {
    await this.#setAttachments(orgId, vmId, (l) =>
      l.map((a) => (a.volumeId === volumeId ? { ...a, mountStatus } : a)),
    );
  }

  async #setAttachments(
    orgId: string,
    vmId: string,
    change: (list: VolumeAttachment[]) => VolumeAttachment[],
  ): Promise<void> {
    const res = await this.deps.store.changeVmVolumes(orgId, vmId, (vm) => ({
      volumes: change([...(vm.volumes ?? [])]),
      result: undefined,
    }));
    if (res) this.deps.events.changed(res.vm);
  }

  #serially<T>(vmId: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.#chains.get(vmId) ?? Promise.resolve();
    const run = prev.then(fn, fn);
    const tail = run.catch(() => {});
    this.#chains.set(vmId, tail);
    void tail.then(() => {
      if (this.#chains.get(vmId) === tail) this.#chains.delete(vmId);
    });
    return run;
  }
}

/** Why `vm` may not attach `volumeId` at `mountPath` (given the org's other VMs), if it may not. */
function conflictOf(
  vm: VmRecord,
  others: readonly VmRecord[],
  volumeId: string,
  mountPath: string,
  readOnly: boolean,
): { message: string; field: string } | undefined {
  if (vm.volumes?.some((a) => a.mountPath === mountPath && a.mountStatus !== 'failed')) {
    return { message: `${mountPath} is taken by another volume of this VM`, field: 'mountPath' };
  }
  for (const other of others) {
    if (!HOLDING.includes(other.status)) continue;
    const held = other.volumes?.find((a) => a.volumeId === volumeId && a.mountStatus !== 'failed');
    if (!held) continue;
    if (!held.readOnly) {
      return { message: `the volume is attached read-write to VM ${other.id}`, field: 'volumeId' };
    }
    if (!readOnly) {
      return {
        message: `the volume is attached read-only to VM ${other.id}; a read-write attachment must be the only one`,
        field: 'volumeId',
      };
    }
  }
  return undefined;
}

/** Attachments of `volumeId` mounted on running VMs. */
function mountedOn(vms: readonly VmRecord[], volumeId: string): VmRecord[] {
  return vms.filter(
    (vm) =>
      vm.status === 'running' &&
      vm.volumes?.some((a) => a.volumeId === volumeId && a.mountStatus === 'mounted'),
  );
}

function checkSize(sizeGiB: number): void {
  if (!Number.isSafeInteger(sizeGiB) || sizeGiB < 1 || sizeGiB > MAX_VOLUME_GIB) {
    throw new InvalidInputError(`must be an integer between 1 and ${MAX_VOLUME_GIB}`, 'sizeGiB');
  }
}

/** `InvalidInputError` unless `p` is `/mnt/…` or `/data/…` (plain names, no `..`). */
export function checkMountPath(p: string, field: string): void {
  if (
    !VOLUME_MOUNT_PATH_RE.test(p) ||
    p.split('/').some((s) => s === '..' || s === '.') ||
    p.length > 256
  ) {
    throw new InvalidInputError(
      'must be /mnt, /data or a path under them (letters, digits, ".", "_", "-"; no "..")',
      field,
    );
  }
}

/** Bytes → GiB with two decimals. */
function gib(bytes: number): number {
  return Math.round((bytes / 2 ** 30) * 100) / 100;
}
