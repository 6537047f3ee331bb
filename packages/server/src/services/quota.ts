/**
 * Quota arithmetic. Limits are the server defaults overlaid with the org's overrides; usage is
 * derived from live rows by the store. Reservations happen inside `Store.withOrgLock`.
 * @module
 */
import { QUOTA_DIMENSION_WIRE, type QuotaValues } from '../domain/index.js';
import { ApiError } from '../errors.js';
import type { QuotaOverrides } from '../store/index.js';

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

/** 429 with the contract's `dimension`; deterministic, so `x-should-retry: false`. */
export function quotaExceededError(
  dimension: keyof QuotaValues,
  limits: QuotaValues,
  usage: QuotaValues,
  request: Partial<QuotaValues>,
): ApiError {
  const wire = QUOTA_DIMENSION_WIRE[dimension];
  return new ApiError(
    'quota_exceeded',
    `quota exceeded for ${wire}: ${usage[dimension]} in use + ${request[dimension] ?? 0} requested > limit ${limits[dimension]}`,
    { dimension: wire, limit: limits[dimension], usage: usage[dimension] },
    false,
  );
}
