/**
 * Pause, resume and TTL refresh (contract §4.2.6–4.2.8), and what a TTL does when it runs out.
 *
 * - **Pause** stops the VM's vCPUs (`Runtime.pause`): memory, processes, disk and network stay,
 *   no host CPU is used. The VM gives its **vCPU quota** back; memory and disk stay counted, since
 *   its QEMU process still holds the guest's RAM (see `VM_STATUSES_USING_MEMORY_AND_DISK`). The
 *   row goes `running` → `pausing` → `paused`; pausing a paused VM returns it unchanged.
 * - **Resume** re-acquires the vCPU quota atomically with the `paused` → `resuming` step (429
 *   `{dimension: "vcpu"}` when the org is over: `QuotaExceededError`), then `Runtime.resume` → `running`. Resuming a
 *   running VM returns it unchanged.
 * - **TTL**: while running, `expiresAtMs` = when it runs out; while paused, `ttlRemainingMs` =
 *   what is left, turned back into an expiry at resume. A pause caused by the TTL itself leaves a
 *   full `seconds` for the next run (otherwise a resumed VM would be paused again at once).
 *   `ttl/refresh` restarts the countdown; without a TTL it is a 409.
 * @module
 */
import { StateConflictError, nowIso, type VmRecord } from '../domain/index.js';
import type { ServiceContext } from './context.js';
import { fromRuntimeError } from './runtime-errors.js';
import type { VmService } from './vm-service.js';

/** Pause/resume/TTL operations, org-scoped like `VmService`. */
export class LifecycleService {
  constructor(
    private readonly ctx: ServiceContext,
    private readonly vms: VmService,
  ) {}

  /** Pauses a running VM (idempotent on paused VMs); resolves with the `paused` VM. */
  async pause(orgId: string, ref: string, opts: { byTtl?: boolean } = {}): Promise<VmRecord> {
    const { store, runtime, tasks, logger } = this.ctx;
    const vm = await this.vms.get(orgId, ref);
    if (vm.status === 'paused' || vm.status === 'pausing') return vm;
    if (vm.status !== 'running') {
      throw new StateConflictError(`VM is ${vm.status}; only a running VM can be paused`, {
        status: vm.status,
      });
    }
    const marked = await store.transitionVm(vm.id, { from: 'running', to: 'pausing' });
    if (!marked) return this.pause(orgId, vm.id, opts); // changed under us: decide again
    this.ctx.events.changed(marked);
    const work = (async () => {
      const started = Date.now();
      try {
        await runtime.pause(vm.id);
      } catch (err) {
        const back = await store.transitionVm(vm.id, { from: 'pausing', to: 'running' });
        if (back) this.ctx.events.changed(back);
        throw fromRuntimeError(err, 'pause', { vmId: vm.id });
      }
      const cur = (await store.getVm(orgId, vm.id)) ?? marked;
      let remaining: number | null = null;
      if (cur.ttl) {
        const full = cur.ttl.seconds * 1000;
        remaining = opts.byTtl
          ? full
          : Math.max(0, Math.min(full, (cur.expiresAtMs ?? started + full) - started));
      }
      const paused = await store.transitionVm(
        vm.id,
        { from: 'pausing', to: 'paused' },
        { pausedAt: nowIso(), expiresAtMs: null, ttlRemainingMs: remaining },
      );
      if (paused) this.ctx.events.changed(paused);
      logger.info({ vmId: vm.id, ms: Date.now() - started, byTtl: !!opts.byTtl }, 'vm paused');
      return paused ?? (await store.getVm(orgId, vm.id)) ?? cur;
    })();
    return tasks.track(vm.id, work);
  }

  /** Resumes a paused VM (idempotent on running VMs); resolves with the `running` VM. */
  async resume(orgId: string, ref: string): Promise<VmRecord> {
    const { store, runtime, tasks, quotas, logger } = this.ctx;
    const vm = await this.vms.get(orgId, ref);
    if (vm.status === 'running' || vm.status === 'resuming') return vm;
    if (vm.status === 'pausing') await tasks.settled(vm.id);
    const current = vm.status === 'pausing' ? await this.vms.get(orgId, vm.id) : vm;
    if (current.status !== 'paused') {
      throw new StateConflictError(`VM is ${current.status}; only a paused VM can be resumed`, {
        status: current.status,
      });
    }
    // Memory and disk stay reserved while paused; only the vCPUs come back.
    const marked = await quotas.reserve(orgId, { vcpu: current.cpu }, (tx) =>
      tx.transitionVm(current.id, { from: 'paused', to: 'resuming' }),
    );
    if (!marked) return this.resume(orgId, current.id);
    this.ctx.events.changed(marked);
    const work = (async () => {
      const started = Date.now();
      try {
        await runtime.resume(current.id);
      } catch (err) {
        const back = await store.transitionVm(current.id, { from: 'resuming', to: 'paused' });
        if (back) this.ctx.events.changed(back);
        throw fromRuntimeError(err, 'resume', { vmId: current.id });
      }
      const cur = (await store.getVm(orgId, current.id)) ?? marked;
      const now = Date.now();
      const running = await store.transitionVm(
        current.id,
        { from: 'resuming', to: 'running' },
        {
          pausedAt: null,
          ttlRemainingMs: null,
          expiresAtMs: cur.ttl ? now + (cur.ttlRemainingMs ?? cur.ttl.seconds * 1000) : null,
        },
      );
      if (running) this.ctx.events.changed(running);
      logger.info({ vmId: current.id, ms: now - started }, 'vm resumed');
      return running ?? (await store.getVm(orgId, current.id)) ?? cur;
    })();
    return tasks.track(current.id, work);
  }

  /** Restarts the TTL countdown (contract §4.2.8); `StateConflictError` when there is no TTL. */
  async refreshTtl(orgId: string, ref: string): Promise<VmRecord> {
    const { store } = this.ctx;
    const vm = await this.vms.get(orgId, ref);
    if (!vm.ttl) {
      throw new StateConflictError(
        'VM has no TTL; set one with PATCH /v1/vms/{id} {"ttl": {...}}',
        {
          status: vm.status,
        },
      );
    }
    const ms = vm.ttl.seconds * 1000;
    let updated: VmRecord | undefined;
    if (vm.status === 'running') {
      updated = await store.updateVm(vm.id, { expiresAtMs: Date.now() + ms }, ['running']);
    } else if (vm.status === 'paused') {
      updated = await store.updateVm(vm.id, { ttlRemainingMs: ms }, ['paused']);
    } else if (vm.status === 'provisioning') {
      return vm; // the countdown starts when it runs
    }
    if (!updated) {
      throw new StateConflictError(`VM is ${vm.status}; its TTL cannot be refreshed now`, {
        status: vm.status,
      });
    }
    this.ctx.events.changed(updated);
    return updated;
  }

  /** The TTL scheduler's callback: pause or delete the VM if its TTL really ran out. */
  async expire(orgId: string, vmId: string): Promise<void> {
    const vm = await this.ctx.store.getVm(orgId, vmId);
    if (!vm || vm.status !== 'running' || !vm.ttl || typeof vm.expiresAtMs !== 'number') return;
    if (vm.expiresAtMs > Date.now()) {
      this.ctx.events.changed(vm); // refreshed meanwhile
      return;
    }
    this.ctx.logger.info({ vmId, action: vm.ttl.action }, 'vm TTL ran out');
    if (vm.ttl.action === 'delete') await this.vms.delete(orgId, vmId);
    else await this.pause(orgId, vmId, { byTtl: true });
  }
}
