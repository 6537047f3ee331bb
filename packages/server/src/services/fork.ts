/**
 * Fork N: `count` VMs restored from one snapshot in one call, all running when it returns.
 *
 * - Each fork is exactly the restore `POST /v1/vms {snapshotId}` would make (`VmService.prepare`
 *   checks and builds every row, `VmService.boot` runs it), so the rules live in one place.
 * - **Quota is all or nothing:** the N rows are inserted in one `QuotaService.reserve`
 *   transaction for N times one VM's resources. Over a limit nothing is inserted or started,
 *   and the 429 says the dimension and how many would fit (`fits`, `count`).
 * - The N restores run concurrently. If any fails, every fork of the call is deleted (the ones
 *   that started and the failed ones alike), which releases the quota, and the first failure
 *   is reported. A fork never leaks VMs.
 * - **Several hosts** (`ForkSpread`, `cluster/fork-spread.ts`): where the snapshot can be pulled
 *   to other hosts, the N rows are still reserved in one transaction here, each with the host
 *   that will run it, and each host boots its share (this one directly, the others through the
 *   internal channel); a failure anywhere deletes all N as above.
 * @module
 */
import {
  CorruptDataError,
  DomainError,
  InvalidInputError,
  MAX_FORK_COUNT,
  QuotaExceededError,
  RuntimeFailureError,
  type EnvVars,
  type FirewallWrite,
  type Metadata,
  type QuotaValues,
  type VmRecord,
} from '../domain/index.js';
import type { ServiceContext } from './context.js';
import { MAX_NAME_RUNES, normalizeName } from './names.js';
import { unitsThatFit } from './quota.js';
import { resolveSnapshot } from './resolve.js';
import type { VmService } from './vm-service.js';

/** `POST /v1/snapshots/{id}/fork`. */
export interface ForkRequest {
  count: number;
  /** Names are `<namePrefix>-1` … `<namePrefix>-<count>`; absent: the snapshot's name. */
  namePrefix?: string | null | undefined;
  /** Every fork's policy; absent: the snapshot's. */
  firewall?: FirewallWrite | null | undefined;
  /** Merged over the snapshot's, for every fork. */
  envVars?: EnvVars | undefined;
  metadata?: Metadata | undefined;
}

/** How a fork spreads over the hosts of a cluster (absent: it all runs here). */
export interface ForkSpread {
  /** This host's id. */
  readonly selfId: string;
  /** The host of each of `count` forks, in order; undefined: all here. */
  plan(
    snapshotId: string,
    count: number,
    unit: { memoryMiB: number; vcpu: number },
  ): Promise<readonly string[] | undefined>;
  /** Boots stored `provisioning` rows on another host; resolves with them running. */
  boot(hostId: string, orgId: string, vmIds: readonly string[]): Promise<VmRecord[]>;
  /** Deletes VMs on another host. */
  remove(hostId: string, orgId: string, vmIds: readonly string[]): Promise<void>;
  /** Makes the snapshot present here before a restore (snapshot mobility). */
  ensureLocal(snapshotId: string): Promise<void>;
}

/** See the module comment. */
export class ForkService {
  constructor(
    private readonly ctx: ServiceContext,
    private readonly vms: VmService,
    private readonly spread?: ForkSpread,
  ) {}

  /**
   * Boots forks another host reserved for this one (`ForkSpread.boot` lands here): the rows
   * must be this org's and `provisioning`. Resolves with them running, or throws the first
   * failure (the coordinating host then deletes all of them).
   */
  async bootHere(orgId: string, vmIds: readonly string[]): Promise<VmRecord[]> {
    const rows: VmRecord[] = [];
    for (const id of vmIds) {
      const vm = await this.ctx.store.getVm(orgId, id);
      if (!vm || vm.status !== 'provisioning') {
        throw new InvalidInputError(`VM ${id} is not a provisioning VM of this org`, 'vmIds');
      }
      rows.push(vm);
    }
    const snapshots = new Set(rows.map((vm) => vm.sourceSnapshotId).filter((x) => x !== null));
    for (const id of snapshots) await this.spread?.ensureLocal(id);
    const results = await Promise.allSettled(
      rows.map((vm) => this.ctx.tasks.track(vm.id, this.vms.boot(vm))),
    );
    const failed = results.find((r) => r.status === 'rejected');
    if (failed) throw failed.reason;
    return results.map((r) => (r as PromiseFulfilledResult<VmRecord>).value);
  }

  /** Deletes forks of this host (the cleanup of a failed spread fork). */
  async removeHere(orgId: string, vmIds: readonly string[]): Promise<void> {
    await Promise.allSettled(vmIds.map((id) => this.vms.delete(orgId, id)));
  }

  /** Restores `count` VMs from the snapshot; resolves with them, all running, in name order. */
  async fork(orgId: string, snapshotRef: string, input: ForkRequest): Promise<VmRecord[]> {
    const { count } = input;
    if (!Number.isSafeInteger(count) || count < 1 || count > MAX_FORK_COUNT) {
      throw new InvalidInputError(`must be an integer from 1 to ${MAX_FORK_COUNT}`, 'count');
    }
    const snap = await resolveSnapshot(this.ctx.store, orgId, snapshotRef);
    const prefix = normalizeName(input.namePrefix, snap.name);
    const rows: VmRecord[] = [];
    for (let i = 1; i <= count; i++) {
      const { vm } = await this.vms.prepare(orgId, {
        snapshotId: snap.id,
        name: forkName(prefix, i),
        firewall: input.firewall,
        envVars: input.envVars,
        metadata: input.metadata,
      });
      rows.push(vm);
    }
    const first = rows[0]!;
    const unit: Partial<QuotaValues> = {
      vcpu: first.cpu,
      memoryMiB: first.memoryMiB,
      diskGiB: first.diskGiB,
    };
    const plan = await this.spread?.plan(snap.id, count, {
      memoryMiB: first.memoryMiB,
      vcpu: first.cpu,
    });
    const hostOf = (i: number): string | undefined => {
      const h = plan?.[i];
      return h && h !== this.spread?.selfId ? h : undefined;
    };
    const here = rows.filter((_, i) => hostOf(i) === undefined).length;
    await this.ctx.quotas
      .reserve(
        orgId,
        times(unit, count),
        async (tx) => {
          for (const [i, vm] of rows.entries()) await tx.insertVm(vm, hostOf(i));
        },
        { vcpu: first.cpu * here, memoryMiB: first.memoryMiB * here },
      )
      .catch(async (err: unknown) => {
        if (!(err instanceof QuotaExceededError)) throw err;
        const { limits, usage } = await this.ctx.quotas.get(orgId);
        throw new QuotaExceededError(
          err.dimension,
          err.limit,
          err.usage,
          err.requested,
          undefined,
          { count, fits: Math.min(count - 1, unitsThatFit(limits, usage, unit)) },
        );
      });

    const t0 = Date.now();
    // This host's share restores from the snapshot here: pulled first where it is elsewhere.
    const pulled = plan && here > 0 ? this.spread!.ensureLocal(snap.id) : Promise.resolve();
    pulled.catch(() => {});
    const groups = new Map<string, string[]>();
    rows.forEach((vm, i) => {
      const h = hostOf(i);
      if (h) groups.set(h, [...(groups.get(h) ?? []), vm.id]);
    });
    const remote = new Map<string, Promise<VmRecord[]>>();
    for (const [h, ids] of groups) {
      const p = this.spread!.boot(h, orgId, ids);
      p.catch(() => {});
      remote.set(h, p);
    }
    const boots = rows.map((vm, i) => {
      const h = hostOf(i);
      if (!h)
        return this.ctx.tasks.track(
          vm.id,
          pulled.then(() => this.vms.boot(vm)),
        );
      return remote.get(h)!.then((list) => {
        const got = list.find((v) => v.id === vm.id);
        if (!got) throw new RuntimeFailureError(`host ${h} did not report VM ${vm.id}`);
        return got;
      });
    });
    const results = await Promise.allSettled(boots);
    const failures = results.flatMap((r, i) =>
      r.status === 'rejected' ? [{ i, err: r.reason as unknown }] : [],
    );
    if (failures.length === 0) {
      this.ctx.logger.info(
        { snapshotId: snap.id, count, ms: Date.now() - t0 },
        'fork: all VMs running',
      );
      return results.map((r, i) => (r.status === 'fulfilled' ? r.value : rows[i]!));
    }
    // All or nothing here too: the forks that started are deleted with the failed ones.
    const cleanup = await Promise.allSettled([
      ...rows.filter((_, i) => !hostOf(i)).map((vm) => this.vms.delete(orgId, vm.id)),
      ...[...groups].map(([h, ids]) => this.spread!.remove(h, orgId, ids)),
    ]);
    const leftovers = cleanup.filter((r) => r.status === 'rejected').length;
    this.ctx.logger.warn(
      { snapshotId: snap.id, count, failed: failures.length, leftovers, err: failures[0]!.err },
      'fork failed; its VMs were deleted',
    );
    throw forkError(failures[0]!.err, failures.length, count, snap.id, leftovers);
  }
}

/** `<prefix>-<i>`, the prefix shortened so that the suffix survives the 64-rune limit. */
export function forkName(prefix: string, i: number): string {
  const suffix = `-${i}`;
  const runes = Array.from(prefix);
  const room = MAX_NAME_RUNES - suffix.length;
  const head = runes.length > room ? runes.slice(0, room).join('').trimEnd() : prefix;
  return `${head}${suffix}`;
}

function times(unit: Partial<QuotaValues>, n: number): Partial<QuotaValues> {
  const out: Partial<QuotaValues> = {};
  for (const [k, v] of Object.entries(unit) as [keyof QuotaValues, number][]) out[k] = v * n;
  return out;
}

/** The error a failed fork reports: the first failure's kind, saying what became of the rest. */
function forkError(
  err: unknown,
  failed: number,
  count: number,
  snapshotId: string,
  leftovers: number,
): DomainError {
  const reason = err instanceof Error ? err.message : String(err);
  const message =
    `fork failed: ${failed} of ${count} VMs did not start (${reason}); ` +
    (leftovers === 0
      ? `all ${count} were deleted`
      : `${leftovers} could not be deleted yet and stay in deleting`);
  const details = { snapshotId, count, failed };
  if (err instanceof CorruptDataError)
    return new CorruptDataError(message, details, { cause: err });
  if (err instanceof DomainError && err.code !== 'runtime_failed' && err.code !== 'failed') {
    return err;
  }
  return new RuntimeFailureError(message, details, { cause: err, retryable: false });
}
