/**
 * Startup reconciliation between the durable records and the runtime, run before the server
 * accepts requests. After a crash (kill -9 at any point) or a clean restart:
 *   - snapshots stuck `creating` → `error` (their quota is released);
 *   - VMs stuck `provisioning` → `error`; the runtime stops what is left of them;
 *   - VMs `running` or paused (`pausing`/`paused`/`resuming`) are handed to `runtime.adopt`:
 *     survivors keep their state (a pause or resume cut short ends where the runtime says the VM
 *     is), lost ones become `stopped` with a reason, and VMs nobody asked for are stopped;
 *   - VMs stuck `deleting` are destroyed and hidden; snapshots stuck `deleting` are dropped;
 *   - `ready` snapshots whose data the runtime no longer has → `error`.
 * Quota usage needs no repair: it is always derived from these rows.
 * @module
 */
import type { Runtime } from '@fastvm/runtime';
import type { SnapshotMobility } from '../cluster/seams.js';
import type { Logger } from 'pino';
import { effectiveFirewall, nowIso, type VmStatus } from '../domain/index.js';
import type { Store } from '../store/index.js';
import type { NetworkManager } from './network.js';

/** What `recover` found and did (ids), also returned by `startServer`. */
export interface RecoveryReport {
  adopted: string[];
  lost: string[];
  orphans: string[];
  interruptedLaunches: string[];
  interruptedSnapshots: string[];
  finishedDeletes: string[];
  missingSnapshots: string[];
}

/** Reconciles records with the runtime at startup; see the module comment. */
export async function recover(
  store: Store,
  runtime: Runtime,
  network: NetworkManager,
  logger: Logger,
  /** Multi-host: this host's copies (a snapshot missing here but held elsewhere is fine). */
  mobility?: Pick<SnapshotMobility, 'holders'> & { readonly selfId: string },
): Promise<RecoveryReport> {
  const report: RecoveryReport = {
    adopted: [],
    lost: [],
    orphans: [],
    interruptedLaunches: [],
    interruptedSnapshots: [],
    finishedDeletes: [],
    missingSnapshots: [],
  };

  for (const snap of await store.listSnapshotsByStatus(['creating'])) {
    await store.transitionSnapshot(
      snap.id,
      { from: 'creating', to: 'error' },
      { error: 'server restarted while the snapshot was being created' },
    );
    await runtime.deleteSnapshot(snap.id).catch(() => {});
    report.interruptedSnapshots.push(snap.id);
  }

  for (const vm of await store.listVmsByStatus(['provisioning'])) {
    await store.transitionVm(
      vm.id,
      { from: 'provisioning', to: 'error' },
      { error: 'server restarted while the VM was being launched' },
    );
    report.interruptedLaunches.push(vm.id);
  }

  // Only running (and paused) VMs are claimed; anything else the runtime finds (half-launched
  // VMs, VMs being deleted) is an orphan and gets stopped by `adopt`.
  const live: readonly VmStatus[] = ['running', 'pausing', 'paused', 'resuming'];
  const running = await store.listVmsByStatus(live);
  const result = await runtime.adopt(running.map((vm) => vm.id));
  report.adopted = [...result.adopted];
  report.lost = [...result.lost];
  report.orphans = [...result.orphans];
  for (const id of result.lost) {
    await store.transitionVm(
      id,
      { from: live, to: 'stopped' },
      { error: 'VM process was gone when the server restarted' },
    );
    await network.release(id).catch(() => {});
  }
  // A pause or resume cut short by the restart: the runtime knows where the VM ended up.
  for (const vm of running) {
    if (vm.status !== 'pausing' && vm.status !== 'resuming') continue;
    const state = runtime.get(vm.id)?.state;
    if (state === 'paused') {
      await store.transitionVm(
        vm.id,
        { from: vm.status, to: 'paused' },
        {
          pausedAt: vm.pausedAt ?? nowIso(),
          expiresAtMs: null,
          ttlRemainingMs: vm.ttl ? (vm.ttlRemainingMs ?? vm.ttl.seconds * 1000) : null,
        },
      );
    } else if (state === 'running') {
      await store.transitionVm(
        vm.id,
        { from: vm.status, to: 'running' },
        {
          pausedAt: null,
          ttlRemainingMs: null,
          expiresAtMs: vm.ttl
            ? (vm.expiresAtMs ?? Date.now() + (vm.ttlRemainingMs ?? vm.ttl.seconds * 1000))
            : null,
        },
      );
    }
  }

  for (const vm of await store.listVmsByStatus(['deleting'])) {
    try {
      await runtime.destroy(vm.id);
      await network.release(vm.id).catch(() => {});
      await store.transitionVm(
        vm.id,
        { from: 'deleting', to: 'deleted' },
        { deletedAt: vm.deletedAt ?? nowIso() },
      );
      report.finishedDeletes.push(vm.id);
    } catch (err) {
      logger.warn({ err, vmId: vm.id }, 'could not finish deleting VM');
    }
  }
  for (const snap of await store.listSnapshotsByStatus(['deleting'])) {
    try {
      await runtime.deleteSnapshot(snap.id);
      await store.transitionSnapshot(snap.id, { from: 'deleting', to: 'deleted' });
    } catch (err) {
      logger.warn({ err, snapshotId: snap.id }, 'could not drop snapshot');
    }
  }

  for (const snap of await store.listSnapshotsByStatus(['ready'])) {
    if (snap.deletedAt !== null) continue;
    if (await runtime.hasSnapshot(snap.id)) {
      // A crash between `ready` and the holder row: listed again, so other hosts find it.
      if (mobility) await store.addSnapshotHolder(snap.id, mobility.selfId);
    } else {
      if (mobility) {
        // Not (or no longer) here: restorable while another host holds a copy.
        await store.removeSnapshotHolder(snap.id, mobility.selfId);
        if ((await mobility.holders(snap.id)).length > 0) continue;
      }
      await store.transitionSnapshot(
        snap.id,
        { from: 'ready', to: 'error' },
        { error: 'snapshot data is missing from the runtime' },
      );
      report.missingSnapshots.push(snap.id);
    }
  }

  const alive = await store.listVmsByStatus(live);
  await network.reconcile(
    alive.map((vm) => ({ id: vm.id, firewall: effectiveFirewall(vm.firewall, vm.services) })),
  );

  logger.info(
    {
      adopted: report.adopted.length,
      lost: report.lost.length,
      orphans: report.orphans.length,
      interruptedLaunches: report.interruptedLaunches.length,
      interruptedSnapshots: report.interruptedSnapshots.length,
      missingSnapshots: report.missingSnapshots.length,
    },
    'recovered state',
  );
  return report;
}
