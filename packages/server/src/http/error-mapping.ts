/**
 * Domain errors → HTTP. Services throw the errors of `domain/errors.ts`; this is the one place
 * that decides their status, wire code and body (the error handler in `app.ts` and the storage
 * handler call it). The wire codes and statuses are the catalog in `errors.ts`.
 * @module
 */
import {
  DomainError,
  HostCapacityError,
  QuotaExceededError,
  type DomainErrorCode,
  type QuotaDimension,
} from '../domain/index.js';
import { ApiError, type ErrorCode } from '../errors.js';

/** The wire code (and so the status) of each domain error. */
const WIRE_CODE: Readonly<Record<DomainErrorCode, ErrorCode>> = {
  invalid_input: 'bad_request',
  not_found: 'not_found',
  ambiguous_name: 'ambiguous_name',
  state_conflict: 'conflict',
  quota_exceeded: 'quota_exceeded',
  host_capacity: 'host_capacity',
  not_supported: 'not_implemented',
  unauthorized: 'unauthorized',
  forbidden: 'forbidden',
  too_large: 'payload_too_large',
  cancelled: 'bad_request',
  runtime_failed: 'vm_unavailable',
  corrupt: 'snapshot_corrupt',
  guest_busy: 'guest_umount_busy',
  failed: 'internal',
};

/** Wire names of quota dimensions in 429 bodies (contract §1.8). */
export const QUOTA_DIMENSION_WIRE: Readonly<Record<QuotaDimension, string>> = {
  vcpu: 'vcpu',
  memoryMiB: 'memory_mib',
  diskGiB: 'disk_gib',
  snapshotCount: 'snapshot_count',
  volumeCount: 'volume_count',
  volumeGiB: 'volume_gib',
  stagingBytes: 'staging_bytes',
  sshKeyCount: 'ssh_key_count',
  execSessions: 'exec_sessions',
  vmServiceCount: 'vm_service_count',
};

/**
 * The API error for `err`: an `ApiError` as it is, a domain error mapped to its wire code with
 * its details; undefined for anything else (an unexpected error: the caller answers 500).
 */
export function toHttpError(err: unknown): ApiError | undefined {
  if (err instanceof ApiError) return err;
  return err instanceof DomainError ? fromDomainError(err) : undefined;
}

/** The API error for a domain error: its wire code (`WIRE_CODE`), message and details. */
export function fromDomainError(err: DomainError): ApiError {
  if (err instanceof QuotaExceededError && err.dimension === 'vmServiceCount') {
    // The contract's own body for the per-VM service cap (§1.8, §4.4): the message is the code.
    return new ApiError(
      'quota_exceeded',
      'vm_service_quota_exceeded',
      { dimension: 'vm_service_count', count: err.limit, detail: err.explanation ?? '' },
      false,
      { cause: err },
    );
  }
  if (err instanceof QuotaExceededError) {
    const wire = QUOTA_DIMENSION_WIRE[err.dimension];
    const { fits, count } = err.details;
    const message =
      err.explanation ??
      `quota exceeded for ${wire}: ${err.usage} in use + ${err.requested} requested > limit ${err.limit}` +
        (typeof fits === 'number' && typeof count === 'number'
          ? `; ${fits} of the ${count} would fit`
          : '');
    return new ApiError(
      'quota_exceeded',
      message,
      { ...err.details, dimension: wire, limit: err.limit, usage: err.usage },
      err.retryable,
      { cause: err },
    );
  }
  if (err.code === 'guest_busy') {
    // The contract's body (§1.8, §4.5): the message is the code; what is busy goes in `detail`.
    return new ApiError(
      'guest_umount_busy',
      'guest_umount_busy',
      { ...err.details, detail: err.message },
      false,
      {
        cause: err,
      },
    );
  }
  if (err instanceof HostCapacityError) {
    return new ApiError('host_capacity', err.message, err.details, true, {
      cause: err,
      retryAfterSec: err.retryAfterSec,
    });
  }
  return new ApiError(WIRE_CODE[err.code], err.message, err.details, err.retryable, {
    cause: err.cause ?? err,
  });
}
