/**
 * VM lifecycle: launch/restore with atomic quota reservation, listing, updates, deletion, exec
 * and firewall policy. Domain inputs in, domain errors (`domain/errors.ts`) out: routes turn
 * requests into these calls (`routes/inputs.ts`) and errors into responses.
 * @module
 */
import { randomUUID } from 'node:crypto';
import type { ExecResult } from '@fastvm/runtime';
import {
  DEFAULT_DISK_GIB,
  ENV_VARS_LIMITS,
  MACHINES,
  applyFirewallWrite,
  defaultFirewall,
  effectiveFirewall,
  isMachineType,
  nowIso,
  CancelledError,
  InvalidInputError,
  NotFoundError,
  StateConflictError,
  type FirewallPolicy,
  type FirewallWrite,
  type MachineType,
  type EnvVars,
  type Metadata,
  type VmRecord,
  type VmTtl,
} from '../domain/index.js';
import type { VmPatch } from '../store/index.js';
import type { ServiceContext } from './context.js';
import { hostnameFor, normalizeName } from './names.js';
import type { VmNetworkAttachment } from './network.js';
import { restoreServices, type ServiceRestore } from './published-services.js';
import { resolveSnapshot, resolveVm } from './resolve.js';
import { describeError, fromRuntimeError } from './runtime-errors.js';
import { checkMountPath, type AttachRequest, type AttachmentWarnings } from './volume-service.js';

/** Outcome of a launch: `ready` → 201 (running), otherwise 202 (still provisioning). */
export interface LaunchOutcome {
  vm: VmRecord;
  ready: boolean;
  /** A restore whose snapshot services could not be registered again (contract §3.2). */
  servicesWarning?: ServiceRestore['warning'];
  /** Volumes that were not attached (contract §3.2 `attachmentWarnings`). */
  attachmentWarnings?: AttachmentWarnings;
}

/** Filters for `VmService.list`. */
export interface VmListFilter {
  statuses?: readonly string[];
  metadata?: ReadonlyArray<readonly [string, string]>;
}

/** A validated exec request bound to a running VM (see `prepareExec`). */
export interface PreparedExec {
  vm: Readonly<VmRecord>;
  argv: readonly string[];
  /** The VM's environment variables (the process's environment over the agent's defaults). */
  env: Readonly<EnvVars>;
  stdin?: Uint8Array;
  timeoutMs: number;
}

/** Cancellation and streaming options of `VmService.runExec`. */
export interface ExecStreams {
  signal?: AbortSignal;
  capBytes?: number;
  onStdout?: (chunk: Buffer) => void;
  onStderr?: (chunk: Buffer) => void;
}

/** A launch (`machineType`) or restore (`snapshotId`) request. */
export interface LaunchRequest {
  /** A machine type name (checked here: `InvalidInputError` for unknown ones). */
  machineType?: string | undefined;
  /** Restore from this snapshot (id or unique name). */
  snapshotId?: string | undefined;
  name?: string | null | undefined;
  /** Root disk size; 0 or absent means the default (and a restore's: the snapshot's). */
  diskGiB?: number | null | undefined;
  /**
   * Absent: `restricted` with no rules (a restore: the snapshot's). A v1 policy on a restore
   * replaces the snapshot's ingress policy and keeps its egress and DNS blocks.
   */
  firewall?: FirewallWrite | null | undefined;
  metadata?: Metadata | undefined;
  /** The VM's environment variables; a restore merges them over the snapshot's. */
  envVars?: EnvVars | undefined;
  ttl?: VmTtl | null | undefined;
  /** Volumes to attach; on a restore replaces the snapshot's list (absent: keep it). */
  volumes?: AttachRequest[] | undefined;
}

/** A command to run in a VM. */
export interface ExecCommand {
  /** Program and arguments; the first element must be a non-empty program. */
  argv: readonly string[];
  stdin?: Uint8Array | undefined;
  /** Absent: the server's default (`defaultExecTimeoutSec`). */
  timeoutSec?: number | null | undefined;
}

/** Whether `argv` names a program (`InvalidInputError` on `command` otherwise). */
export function checkArgv(argv: readonly string[]): void {
  if (argv.length === 0 || argv[0] === '') {
    throw new InvalidInputError(
      'the first element of command must be a non-empty program',
      'command',
    );
  }
}

/** VM operations, org-scoped: every method takes the caller's org id first. */
export class VmService {
  constructor(private readonly ctx: ServiceContext) {}

  /**
   * Launches a fresh VM (`machineType`) or restores one (`snapshotId`). Quota is checked and
   * reserved (the VM row itself is the reservation) before the runtime is called. Waits up to
   * `launchWaitMs` for the runtime; after that the launch finishes in the background and the
   * VM is returned `provisioning`. A launch that fails leaves the VM in `error` (not counted
   * against quota) and throws.
   */
  async launch(orgId: string, input: LaunchRequest): Promise<LaunchOutcome> {
    const { settings } = this.ctx;
    const { vm, servicesWarning } = await this.prepare(orgId, input);
    input.volumes?.forEach((v, i) => checkMountPath(v.mountPath, `volumes[${i}].mountPath`));
    if (input.volumes?.length && !this.ctx.volumes) {
      throw new InvalidInputError('this server has no volumes', 'volumes');
    }
    await this.ctx.quotas.reserve(
      orgId,
      { vcpu: vm.cpu, memoryMiB: vm.memoryMiB, diskGiB: vm.diskGiB },
      (tx) => tx.insertVm(vm),
    );
    // Claimed (pending) now; attached by `boot` once the VM runs.
    const captured = vm.sourceSnapshotId
      ? (await this.ctx.store.getSnapshot(orgId, vm.sourceSnapshotId))?.volumes
      : undefined;
    const attachmentWarnings = await this.ctx.volumes?.claimAtLaunch(vm, input.volumes, captured);

    const boot = this.ctx.tasks.track(vm.id, this.boot(vm));
    let timer: NodeJS.Timeout | undefined;
    const waited = await Promise.race([
      boot.then((ready) => ({ ready })),
      new Promise<{ ready: null }>((resolve) => {
        timer = setTimeout(() => resolve({ ready: null }), settings.launchWaitMs);
      }),
    ]).finally(() => clearTimeout(timer));
    const warning = {
      ...(servicesWarning ? { servicesWarning } : {}),
      ...(attachmentWarnings ? { attachmentWarnings } : {}),
    };
    if (waited.ready) return { vm: waited.ready, ready: true, ...warning };
    // Still booting: it continues in the background; failures are recorded on the row.
    boot.catch(() => {});
    return { vm, ready: false, ...warning };
  }

  /**
   * Checks a launch or restore request and builds the VM's row (status `provisioning`, a new id)
   * without storing it. `launch` reserves and boots one; a fork (`fork.ts`) reserves many at once.
   */
  async prepare(
    orgId: string,
    input: LaunchRequest,
  ): Promise<{ vm: VmRecord; servicesWarning?: ServiceRestore['warning'] }> {
    const { store, settings } = this.ctx;
    const id = randomUUID();

    let machine: MachineType;
    let diskGiB: number;
    let firewall: FirewallPolicy;
    let envVars: EnvVars = { ...input.envVars };
    let sourceSnapshotId: string | null = null;
    let sourceName = '';
    let restored: ServiceRestore | undefined;
    if (input.snapshotId !== undefined) {
      const snap = await resolveSnapshot(store, orgId, input.snapshotId).catch((err: unknown) => {
        if (err instanceof NotFoundError) {
          throw new NotFoundError('snapshot', { field: 'snapshotId' });
        }
        throw err;
      });
      if (snap.status !== 'ready') {
        throw new StateConflictError(`snapshot is ${snap.status}, not ready`, {
          field: 'snapshotId',
        });
      }
      if (input.machineType !== undefined && input.machineType !== snap.machine) {
        throw new InvalidInputError(
          `a restore keeps the snapshot's machine type (${snap.machine}); omit machineType`,
          'machineType',
        );
      }
      const want = input.diskGiB ?? 0;
      if (want !== 0 && want < snap.diskGiB) {
        throw new InvalidInputError(
          `must be at least the snapshot's disk (${snap.diskGiB} GiB)`,
          'diskGiB',
        );
      }
      if (want > snap.diskGiB) {
        // The runtime restores disks as they were; growing one on restore is not supported yet.
        throw new InvalidInputError(
          `growing the disk on restore is not supported; omit diskGiB or use ${snap.diskGiB}`,
          'diskGiB',
        );
      }
      machine = snap.machine;
      diskGiB = snap.diskGiB;
      firewall = input.firewall
        ? applyFirewallWrite(snap.firewall, input.firewall, 'firewall.')
        : snap.firewall;
      envVars = { ...snap.envVars, ...input.envVars };
      const count = Object.keys(envVars).length;
      if (
        count > ENV_VARS_LIMITS.maxKeys ||
        Buffer.byteLength(JSON.stringify(envVars)) > ENV_VARS_LIMITS.maxJsonBytes
      ) {
        throw new InvalidInputError(
          `merged over the snapshot's, envVars would exceed ${ENV_VARS_LIMITS.maxKeys} variables or ${ENV_VARS_LIMITS.maxJsonBytes} bytes of JSON`,
          'envVars',
        );
      }
      sourceSnapshotId = snap.id;
      sourceName = snap.name;
      // The snapshot's services, registered again for the new VM (new hostnames): all or none.
      restored = restoreServices(snap.services);
    } else {
      if (input.machineType === undefined) {
        throw new InvalidInputError(
          'machineType is required (or snapshotId to restore)',
          'machineType',
        );
      }
      if (!isMachineType(input.machineType)) {
        throw new InvalidInputError(
          `unknown machine type ${JSON.stringify(input.machineType)}; use one of ${Object.keys(MACHINES).join(', ')}`,
          'machineType',
        );
      }
      machine = input.machineType;
      diskGiB = input.diskGiB ? input.diskGiB : DEFAULT_DISK_GIB;
      // The default is also the smallest disk: the guest image's size.
      if (diskGiB < DEFAULT_DISK_GIB || diskGiB > settings.maxDiskGiB) {
        throw new InvalidInputError(
          `must be between ${DEFAULT_DISK_GIB} and ${settings.maxDiskGiB} GiB`,
          'diskGiB',
        );
      }
      firewall = input.firewall
        ? applyFirewallWrite(undefined, input.firewall, 'firewall.')
        : defaultFirewall();
    }

    const spec = MACHINES[machine];
    const now = nowIso();
    const vm: VmRecord = {
      id,
      orgId,
      name: normalizeName(input.name, `vm-${id.slice(0, 8)}`),
      machine,
      cpu: spec.vcpus,
      memoryMiB: spec.memoryMiB,
      diskGiB,
      status: 'provisioning',
      error: null,
      sourceSnapshotId,
      sourceName,
      firewall,
      metadata: input.metadata ?? {},
      envVars,
      publicIpv6: null,
      createdAt: now,
      updatedAt: now,
      deletedAt: null,
      ttl: input.ttl ? { seconds: input.ttl.seconds, action: input.ttl.action } : null,
      expiresAtMs: null,
      ttlRemainingMs: null,
      pausedAt: null,
      services: restored?.services ?? [],
    };
    return { vm, ...(restored?.warning ? { servicesWarning: restored.warning } : {}) };
  }

  /**
   * Runs the runtime side of a launch of a stored `provisioning` row and records the outcome on
   * the row (`running`; or `error`, and throws). Callers track it under the VM's id.
   */
  async boot(vm: VmRecord): Promise<VmRecord> {
    const { runtime, network, store, logger } = this.ctx;
    const log = logger.child({ vmId: vm.id });
    const operation = vm.sourceSnapshotId ? 'restore' : 'launch';
    const t0 = Date.now();
    // The host side of networking (tap, nftables) is set up while QEMU starts: the runtime plugs
    // the tap in when it is ready, before the guest gets its identity and runs. A launch lets the
    // runtime claim it: a warm-pool VM waits with a port plugged in, which the VM takes along.
    // The effective policy: a restore's services are registered before it boots.
    const firewall = effectiveFirewall(vm.firewall, vm.services);
    let attaching: Promise<VmNetworkAttachment> | undefined;
    const attach = (pooledFrom?: string) =>
      (attaching ??= network.attach(vm.id, firewall, pooledFrom));
    const nic = (pooledFrom?: string) => {
      const n = attach(pooledFrom).then((a) => a.network);
      n.catch(() => {}); // a failure surfaces from `await attach()` below (or the runtime)
      return n;
    };
    try {
      const common = { id: vm.id, hostname: hostnameFor(vm.name, vm.id) };
      const started = Date.now();
      if (vm.sourceSnapshotId) {
        const restoreNic = nic();
        // Multi-host: the snapshot's files come from a host that holds them first.
        await this.ctx.mobility?.ensureLocal(vm.sourceSnapshotId);
        await runtime.restore({ ...common, network: restoreNic, snapshotId: vm.sourceSnapshotId });
      } else {
        await runtime.launch({ ...common, network: nic, machine: vm.machine, diskGiB: vm.diskGiB });
      }
      const net = await attach();
      // A TTL counts running time: it starts now (and a PATCH made meanwhile is kept).
      const current = await store.getVm(vm.orgId, vm.id);
      const ttl = current ? current.ttl : vm.ttl;
      let updated = await store.transitionVm(
        vm.id,
        { from: 'provisioning', to: 'running' },
        {
          publicIpv6: net.publicIpv6,
          expiresAtMs: ttl ? Date.now() + ttl.seconds * 1000 : null,
        },
      );
      if (updated) this.ctx.events.changed(updated);
      // Its volumes (pending since the launch was accepted) are attached before it is reported.
      if (updated?.volumes?.length && this.ctx.volumes) {
        await this.ctx.volumes.attachPending(vm.orgId, vm.id);
        updated = (await store.getVm(vm.orgId, vm.id)) ?? updated;
      }
      log.info({ ms: Date.now() - started, restoredFrom: vm.sourceSnapshotId }, 'vm running');
      this.ctx.metrics?.observe(operation, t0, true);
      // A delete that raced the boot owns the row now; it destroys the VM after this settles.
      return updated ?? (await store.getVm(vm.orgId, vm.id)) ?? vm;
    } catch (err) {
      log.warn({ err }, 'vm launch failed');
      this.ctx.metrics?.observe(operation, t0, false);
      const failed = await store
        .transitionVm(vm.id, { from: 'provisioning', to: 'error' }, { error: describeError(err) })
        .catch((e: unknown) => log.error({ err: e }, 'recording launch failure failed'));
      if (failed) this.ctx.events.changed(failed);
      await runtime.destroy(vm.id).catch(() => {});
      await attaching?.catch(() => {}); // release what it allocated, not race it
      await network.release(vm.id).catch(() => {});
      throw fromRuntimeError(err, 'launch', { vmId: vm.id });
    }
  }

  get(orgId: string, ref: string): Promise<VmRecord> {
    return resolveVm(this.ctx.store, orgId, ref);
  }

  /** Live VMs of the org, filtered by status (any of) and metadata equality (all of). */
  async list(orgId: string, filter: VmListFilter = {}): Promise<VmRecord[]> {
    const vms = await this.ctx.store.listVms(orgId);
    return vms.filter(
      (vm) =>
        (!filter.statuses || filter.statuses.includes(vm.status)) &&
        (filter.metadata ?? []).every(
          ([k, v]) => Object.hasOwn(vm.metadata, k) && vm.metadata[k] === v,
        ),
    );
  }

  /**
   * Renames, replaces metadata and/or sets the TTL. A TTL object restarts the countdown (from
   * now while running; as the time left at the next resume while paused); `null` removes it.
   */
  async update(
    orgId: string,
    ref: string,
    patch: { name?: string; metadata?: Metadata; ttl?: VmTtl | null },
  ): Promise<VmRecord> {
    if (patch.name === undefined && patch.metadata === undefined && patch.ttl === undefined) {
      throw new InvalidInputError('give at least one of name, metadata or ttl', 'name');
    }
    const vm = await this.get(orgId, ref);
    const change: VmPatch = {
      ...(patch.name !== undefined
        ? { name: normalizeName(patch.name, `vm-${vm.id.slice(0, 8)}`) }
        : {}),
      ...(patch.metadata !== undefined ? { metadata: patch.metadata } : {}),
    };
    if (patch.ttl === null) {
      Object.assign(change, { ttl: null, expiresAtMs: null, ttlRemainingMs: null });
    } else if (patch.ttl !== undefined) {
      const ms = patch.ttl.seconds * 1000;
      change.ttl = { seconds: patch.ttl.seconds, action: patch.ttl.action };
      if (vm.status === 'running') change.expiresAtMs = Date.now() + ms;
      else if (vm.status === 'paused') change.ttlRemainingMs = ms;
    }
    const updated = await this.ctx.store.updateVm(vm.id, change);
    if (updated && patch.ttl !== undefined) this.ctx.events.changed(updated);
    return updated ?? vm;
  }

  /**
   * Deletes a VM: marks it `deleting`, waits for its in-flight launch/snapshot, destroys it in the
   * runtime, then hides the row (which releases its quota). Idempotent while the row exists.
   */
  async delete(orgId: string, ref: string): Promise<{ id: string }> {
    const { store, runtime, network, tasks, logger } = this.ctx;
    const vm = await this.get(orgId, ref);
    // From any status but `deleted` (a delete that raced this one finished it: nothing to do).
    const marked = await store.transitionVm(vm.id, { to: 'deleting' });
    if (!marked) return { id: vm.id };
    this.ctx.events.changed(marked);
    await tasks.settled(vm.id);
    // Its volumes are unmounted in the guest first (never deleted: they outlive the VM).
    await this.ctx.volumes?.beforeVmDestroy(marked).catch((err: unknown) => {
      logger.warn({ err, vmId: vm.id }, 'volume detach before delete failed');
    });
    try {
      await runtime.destroy(vm.id);
    } catch (err) {
      // The row stays `deleting` (still counted against quota); DELETE again or restart retries.
      throw fromRuntimeError(err, 'delete', { vmId: vm.id });
    }
    await network.release(vm.id).catch((err: unknown) => {
      logger.warn({ err, vmId: vm.id }, 'network release failed');
    });
    await this.ctx.staging?.dropVm(vm.id).catch(() => {});
    await this.ctx.volumes?.afterVmDestroy(marked).catch((err: unknown) => {
      logger.warn({ err, vmId: vm.id }, 'volume check after delete failed');
    });
    const deleted = await store.transitionVm(
      vm.id,
      { from: 'deleting', to: 'deleted' },
      { deletedAt: nowIso() },
    );
    if (deleted) this.ctx.events.changed(deleted);
    logger.info({ vmId: vm.id }, 'vm deleted');
    return { id: vm.id };
  }

  /** Validates an exec request against a running VM (before any response bytes are sent). */
  async prepareExec(orgId: string, ref: string, command: ExecCommand): Promise<PreparedExec> {
    checkArgv(command.argv);
    return this.prepareExecOn(await this.get(orgId, ref), command);
  }

  /** `prepareExec` for a VM record the caller has just read (it must be running). */
  prepareExecOn(vm: Readonly<VmRecord>, command: ExecCommand): PreparedExec {
    checkArgv(command.argv);
    if (vm.status !== 'running') {
      throw new StateConflictError(`VM is ${vm.status}, not running`, { status: vm.status });
    }
    const timeoutSec = command.timeoutSec ?? this.ctx.settings.defaultExecTimeoutSec;
    return {
      vm,
      argv: command.argv,
      env: { ...vm.envVars },
      ...(command.stdin ? { stdin: command.stdin } : {}),
      timeoutMs: timeoutSec * 1000,
    };
  }

  /** Runs a prepared exec; `signal` aborts (kills) the command. */
  async runExec(prepared: PreparedExec, streams: ExecStreams = {}): Promise<ExecResult> {
    const t0 = Date.now();
    try {
      const result = await this.ctx.runtime.exec(prepared.vm.id, {
        argv: prepared.argv,
        ...(Object.keys(prepared.env).length > 0 ? { env: prepared.env } : {}),
        timeoutMs: prepared.timeoutMs,
        capBytes: streams.capBytes ?? this.ctx.settings.execCapBytes,
        ...(prepared.stdin ? { stdin: prepared.stdin } : {}),
        ...(streams.signal ? { signal: streams.signal } : {}),
        ...(streams.onStdout ? { onStdout: streams.onStdout } : {}),
        ...(streams.onStderr ? { onStderr: streams.onStderr } : {}),
      });
      this.ctx.metrics?.observe('exec', t0, true);
      return result;
    } catch (err) {
      this.ctx.metrics?.observe('exec', t0, false);
      if (streams.signal?.aborted) {
        // Nobody is listening any more; keep it out of the 5xx logs.
        throw new CancelledError('exec aborted: the client disconnected', { cause: err });
      }
      // The VM went away under the command (deleted, paused, or its QEMU died): say that, not
      // how the agent connection broke.
      const now = await this.ctx.store
        .getVm(prepared.vm.orgId, prepared.vm.id)
        .catch(() => undefined);
      if (!now || now.status === 'deleting' || now.status === 'deleted') {
        throw new NotFoundError('vm', {
          message: 'vm not found: it was deleted while the command was running',
          retryable: false,
          cause: err,
        });
      }
      if (now.status !== 'running') {
        throw new StateConflictError(`exec failed: the VM is ${now.status}`, {
          status: now.status,
        });
      }
      throw fromRuntimeError(err, 'exec', { vmId: prepared.vm.id });
    }
  }

  /** PUT (`replace`) or PATCH the VM's firewall policy, then tells the network manager. */
  async setFirewall(orgId: string, ref: string, change: FirewallWrite): Promise<VmRecord> {
    const vm = await this.get(orgId, ref);
    const policy = applyFirewallWrite(vm.firewall, change);
    const updated = (await this.ctx.store.updateVm(vm.id, { firewall: policy })) ?? vm;
    // Paused VMs keep their tap and rules, so a change applies to them too.
    if (['running', 'provisioning', 'pausing', 'paused', 'resuming'].includes(updated.status)) {
      await this.ctx.network.onFirewallChange(vm.id, effectiveFirewall(policy, updated.services));
    }
    return updated;
  }

  /** Runtime reported that a VM's QEMU exited on its own: record it as stopped. */
  async onRuntimeExit(vmId: string, reason: string): Promise<void> {
    const { store, network, logger } = this.ctx;
    // From every status that has a QEMU process (running, pausing, paused, resuming).
    const updated = await store.transitionVm(
      vmId,
      { to: 'stopped' },
      { error: `VM exited unexpectedly: ${reason}`, expiresAtMs: null },
    );
    if (updated) {
      this.ctx.events.changed(updated);
      logger.warn({ vmId, reason }, 'vm exited unexpectedly');
      await network.release(vmId).catch(() => {});
    }
  }
}
