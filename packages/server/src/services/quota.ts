/**
 * Quotas: limits, usage and **the quota reservation**. Limits are the server defaults overlaid
 * with the org's overrides; usage is derived from live rows by the store, never kept as a
 * counter. `QuotaService.reserve` is the one place a request is checked against them: under
 * the org's lock (`Store.withOrgLock`), in the same transaction that writes the row that holds
 * the resources, so the row _is_ the reservation and concurrent requests cannot overshoot.
 * Launch and restore (insert the VM row), snapshot (insert the snapshot row) and resume (move
 * the VM `paused` → `resuming`, taking its vCPUs back) all go through it.
 * @module
 */
import { InvalidInputError, QuotaExceededError, type QuotaValues } from '../domain/index.js';
import type { OrgTx, QuotaOverrides, Store } from '../store/index.js';
import type { HostCapacity } from './host-capacity.js';

/** An org's quota as reported by `GET /v1/org/quotas` and `quotas get`. */
export interface OrgQuota {
  /** Effective limits (defaults with the overrides applied). */
  limits: QuotaValues;
  usage: QuotaValues;
  /** The org's own overrides (absent or null: the server default applies). */
  overrides: QuotaOverrides;
}

/** See the module comment. */
export class QuotaService {
  constructor(
    private readonly store: Store,
    /** Limits of orgs without overrides. */
    readonly defaults: QuotaValues,
    /** Host admission for requests that take vCPUs or memory (none: quotas only). */
    readonly host?: HostCapacity,
  ) {}

  /**
   * The quota reservation: checks that `request` fits the org's limits and runs `write` (which
   * inserts or moves the row that holds the resources) in the same transaction, under the org's
   * lock. Throws `QuotaExceededError` naming the first dimension that would be exceeded, before
   * `write` runs. A request for vCPUs or memory is first admitted against the host
   * (`HostCapacity.admit`, which holds the host's admission turn until the transaction has
   * committed): `HostCapacityError` when the host has no room.
   */
  reserve<T>(
    orgId: string,
    request: Partial<QuotaValues>,
    write: (tx: OrgTx) => Promise<T>,
    /** What of `request` lands on this host (a fork spread over hosts); default all of it. */
    onThisHost: { vcpu?: number; memoryMiB?: number } = request,
  ): Promise<T> {
    const reserve = (): Promise<T> =>
      this.store.withOrgLock(orgId, async (tx) => {
        const limits = effectiveLimits(this.defaults, await tx.getQuotaOverrides());
        const usage = await tx.getUsage();
        const over = exceededDimension(limits, usage, request);
        if (over) throw quotaExceededError(over, limits, usage, request);
        return write(tx);
      });
    const { vcpu = 0, memoryMiB = 0 } = onThisHost;
    if (!this.host || (vcpu <= 0 && memoryMiB <= 0)) return reserve();
    return this.host.admit({ vcpu, memoryMiB }, reserve);
  }

  /** The org's limits, usage and overrides. */
  async get(orgId: string): Promise<OrgQuota> {
    const [overrides, usage] = await Promise.all([
      this.store.getQuotaOverrides(orgId),
      this.store.getUsage(orgId),
    ]);
    return { limits: effectiveLimits(this.defaults, overrides), usage, overrides };
  }

  /**
   * Sets the org's overrides: a number replaces the default of its dimension, `null` restores
   * it, an absent dimension is left as it is. Limits are non-negative integers.
   */
  async setLimits(orgId: string, overrides: QuotaOverrides): Promise<OrgQuota> {
    for (const d of DIMENSIONS) {
      const v = overrides[d];
      if (v !== undefined && v !== null && (!Number.isSafeInteger(v) || v < 0)) {
        throw new InvalidInputError(`must be a non-negative integer, got ${v}`, d);
      }
    }
    await this.store.setQuotaOverrides(orgId, overrides);
    return this.get(orgId);
  }
}

const DIMENSIONS = [
  'vcpu',
  'memoryMiB',
  'diskGiB',
  'snapshotCount',
  'volumeCount',
  'volumeGiB',
] as const satisfies readonly (keyof QuotaValues)[];

/** Server defaults with the org's non-null overrides applied. */
export function effectiveLimits(defaults: QuotaValues, overrides: QuotaOverrides): QuotaValues {
  const out = { ...defaults };
  for (const d of DIMENSIONS) {
    const v = overrides[d];
    if (v !== undefined && v !== null) out[d] = v;
  }
  return out;
}

/** The first dimension that `request` would push over its limit, if any. */
export function exceededDimension(
  limits: QuotaValues,
  usage: QuotaValues,
  request: Partial<QuotaValues>,
): keyof QuotaValues | undefined {
  for (const d of DIMENSIONS) {
    const want = request[d] ?? 0;
    if (want > 0 && usage[d] + want > limits[d]) return d;
  }
  return undefined;
}

/**
 * How many more of `unit` (one VM's vCPUs, memory and disk, say) fit between `usage` and
 * `limits` in every dimension `unit` uses.
 */
export function unitsThatFit(
  limits: QuotaValues,
  usage: QuotaValues,
  unit: Partial<QuotaValues>,
): number {
  let fit = Number.MAX_SAFE_INTEGER;
  for (const d of DIMENSIONS) {
    const per = unit[d] ?? 0;
    if (per > 0) fit = Math.min(fit, Math.max(0, Math.floor((limits[d] - usage[d]) / per)));
  }
  return fit;
}

/** The error for `request` going over `dimension`. */
export function quotaExceededError(
  dimension: keyof QuotaValues,
  limits: QuotaValues,
  usage: QuotaValues,
  request: Partial<QuotaValues>,
): QuotaExceededError {
  return new QuotaExceededError(
    dimension,
    limits[dimension],
    usage[dimension],
    request[dimension] ?? 0,
  );
}
