/**
 * The errors services throw on purpose. They say what went wrong in domain terms and carry the
 * facts a caller needs (`field`, `status`, `vmId`, …); they know nothing about HTTP. The HTTP
 * edge maps each to a status, a stable wire code and a body (`http/error-mapping.ts`); the admin
 * CLI prints them.
 * @module
 */
import type { QuotaValues } from './model.js';

/** Facts attached to an error; the HTTP edge sends them in the error body as they are. */
export type DomainErrorDetails = Record<string, string | number | boolean | null>;

/** Common options of domain errors. */
export interface DomainErrorOptions {
  /** What caused it (kept for logs). */
  cause?: unknown;
  /**
   * False when repeating the same request cannot succeed (clients are told not to retry);
   * undefined leaves the decision to the caller.
   */
  retryable?: boolean;
}

/** Stable codes of domain errors, one per class below. */
export type DomainErrorCode =
  | 'invalid_input'
  | 'not_found'
  | 'ambiguous_name'
  | 'state_conflict'
  | 'quota_exceeded'
  | 'host_capacity'
  | 'not_supported'
  | 'unauthorized'
  | 'forbidden'
  | 'too_large'
  | 'cancelled'
  | 'runtime_failed'
  | 'corrupt'
  | 'guest_busy'
  | 'failed';

/** Base class of every error in this module. */
export abstract class DomainError extends Error {
  abstract readonly code: DomainErrorCode;
  readonly retryable: boolean | undefined;

  constructor(
    message: string,
    readonly details: DomainErrorDetails = {},
    options: DomainErrorOptions = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.retryable = options.retryable;
  }
}

/**
 * Input that breaks a domain rule. A string second argument names the field (dotted path, e.g.
 * `firewall.ingress[0].portStart`): `details.field`.
 */
export class InvalidInputError extends DomainError {
  readonly code = 'invalid_input';
  constructor(
    message: string,
    field: string | DomainErrorDetails = {},
    options?: DomainErrorOptions,
  ) {
    super(message, typeof field === 'string' ? { field } : field, options);
  }
}

/** No such object in the caller's org (objects of other orgs are never found either). */
export class NotFoundError extends DomainError {
  readonly code = 'not_found';
  /** `what` names the object: the message is `<what> not found` unless `message` is given. */
  constructor(what: string, opts: { field?: string; message?: string } & DomainErrorOptions = {}) {
    const { field, message, ...options } = opts;
    super(message ?? `${what} not found`, field === undefined ? {} : { field }, options);
  }
}

/** A name used as a reference matches several live objects; address it by id. */
export class AmbiguousNameError extends DomainError {
  readonly code = 'ambiguous_name';
  constructor(kind: string, ref: string, matches: number) {
    super(
      `${matches} ${kind}s are named ${JSON.stringify(ref)}; address it by id`,
      { matches },
      {
        retryable: false,
      },
    );
  }
}

/** The operation does not fit the object's current state (e.g. exec on a paused VM). */
export class StateConflictError extends DomainError {
  readonly code = 'state_conflict';
}

/**
 * Dimensions an org's usage is limited in: the six quota values, staged file bytes, the
 * number of SSH keys, and the services one VM publishes.
 */
export type QuotaDimension =
  keyof QuotaValues | 'stagingBytes' | 'sshKeyCount' | 'execSessions' | 'vmServiceCount';

/** Granting the request would take the org past a limit. */
export class QuotaExceededError extends DomainError {
  readonly code = 'quota_exceeded';
  constructor(
    readonly dimension: QuotaDimension,
    readonly limit: number,
    readonly usage: number,
    readonly requested: number,
    /** Replaces the standard message (which names the dimension and the numbers). */
    readonly explanation?: string,
    /** More facts for the body (a fork's `count` and how many would `fit`). */
    extra: DomainErrorDetails = {},
  ) {
    super(
      explanation ??
        `quota exceeded for ${dimension}: ${usage} in use + ${requested} requested > limit ${limit}`,
      extra,
      { retryable: false },
    );
  }
}

/**
 * The host has no room for the request (memory the admitted VMs can touch, or vCPUs, past the
 * host's admission limit; `services/host-capacity.ts`). Clears when VMs go away: retry later.
 */
export class HostCapacityError extends DomainError {
  readonly code = 'host_capacity';
  constructor(
    readonly dimension: 'memoryMiB' | 'vcpu',
    readonly limit: number,
    readonly usage: number,
    readonly requested: number,
    /** How long a client should wait before trying again. */
    readonly retryAfterSec: number,
  ) {
    const what = dimension === 'memoryMiB' ? 'memory_mib' : 'vcpu';
    super(
      `host capacity exceeded for ${what}: ${usage} in use + ${requested} requested > host limit ${limit}`,
      { dimension: what, limit, usage, requested },
      { retryable: true },
    );
  }
}

/** Part of the API this server does not implement (yet). */
export class NotSupportedError extends DomainError {
  readonly code = 'not_supported';
  constructor(readonly feature: string) {
    super(`${feature} is not implemented yet`);
  }
}

/** A credential (a console token) that is missing, unknown, expired or used up. */
export class UnauthorizedError extends DomainError {
  readonly code = 'unauthorized';
}

/** A capability (a presigned storage URL) that does not grant this request. */
export class ForbiddenError extends DomainError {
  readonly code = 'forbidden';
}

/** Data larger than the operation allows (an upload past its URL's size limit). */
export class TooLargeError extends DomainError {
  readonly code = 'too_large';
}

/** The caller went away and the operation was stopped (an exec whose client disconnected). */
export class CancelledError extends DomainError {
  readonly code = 'cancelled';
  constructor(message: string, options: DomainErrorOptions = {}) {
    super(message, {}, { retryable: false, ...options });
  }
}

/** The VM or the runtime failed while doing the work (QEMU, the guest agent, the disk…). */
export class RuntimeFailureError extends DomainError {
  readonly code = 'runtime_failed';
}

/**
 * Stored data failed its integrity check (a snapshot layer whose content no longer matches its
 * digest): the operation was refused rather than run on garbage. Retrying does not help.
 */
export class CorruptDataError extends DomainError {
  readonly code = 'corrupt';
}

/**
 * The guest refused to let go of something in use (a volume's mount is busy: a process has a
 * file open or its working directory there). Nothing changed; retry after the guest lets go.
 */
export class GuestBusyError extends DomainError {
  readonly code = 'guest_busy';
}

/** An operation failed for a reason nobody planned for (a bug, the database…). */
export class OperationFailedError extends DomainError {
  readonly code = 'failed';
}
