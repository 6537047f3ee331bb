/**
 * The API's error catalog: every error the server sends has a stable `code` from this table and
 * the body `{"error": "<message>", "code": "<code>", ...details}`. Clients and tests rely on the
 * code, never on the message.
 * @module
 */

/** Stable error codes and their HTTP status. */
export const ERROR_CATALOG = {
  /** Malformed JSON or a field that fails validation; the body names the `field`. */
  bad_request: 400,
  /** Missing, unknown or revoked API key. */
  unauthorized: 401,
  /** A presigned storage URL with a wrong signature, expired, or for another VM. */
  forbidden: 403,
  /** Unknown route, or an id/name that does not exist in the caller's org. */
  not_found: 404,
  /** The request conflicts with the object's state (e.g. exec on a VM that is not running). */
  conflict: 409,
  /** A name used as an id matches more than one object in the org; use the id. */
  ambiguous_name: 409,
  /** The client took too long to send its request (HTTP/1.1). */
  request_timeout: 408,
  /** Request body larger than the route allows. */
  payload_too_large: 413,
  /** Request headers larger than the server accepts (HTTP/1.1, 16 KiB). */
  headers_too_large: 431,
  /** An org quota dimension would be exceeded; the body names the `dimension`. */
  quota_exceeded: 429,
  /**
   * A snapshot's stored content no longer matches its digests (a corrupted layer file): the
   * restore or fork was refused instead of booting it. Retrying does not help.
   */
  snapshot_corrupt: 409,
  /** Unexpected server failure. */
  internal: 500,
  /** Part of the FastVM API this server does not implement yet. */
  not_implemented: 501,
  /** The VM or its runtime failed while serving the request (QEMU or guest agent). */
  vm_unavailable: 502,
  /**
   * A volume detach found its mount busy in the guest (a process uses it): it stays attached
   * (contract §4.5: the body's `error` is `guest_umount_busy`).
   */
  guest_umount_busy: 502,
  /** The server is shutting down or not ready. */
  unavailable: 503,
  /**
   * The host has no room for the VM (memory or vCPUs past its admission limit); the body names
   * the `dimension` and `Retry-After` says when to try again.
   */
  host_capacity: 503,
} as const;

/** One of the stable error codes. */
export type ErrorCode = keyof typeof ERROR_CATALOG;

/** Extra fields merged into the error body (`field`, `dimension`, `vmId`, …). */
export type ErrorDetails = Record<string, string | number | boolean | null>;

/**
 * An error that maps one-to-one onto an HTTP error response.
 * `shouldRetry` sets `x-should-retry`; when unset the error handler decides (see `retryHint`).
 */
export class ApiError extends Error {
  readonly statusCode: number;
  /** Sent as `Retry-After` (seconds) when set. */
  readonly retryAfterSec: number | undefined;

  constructor(
    readonly code: ErrorCode,
    message: string,
    readonly details: ErrorDetails = {},
    readonly shouldRetry?: boolean,
    options?: { cause?: unknown; retryAfterSec?: number },
  ) {
    super(message, options);
    this.retryAfterSec = options?.retryAfterSec;
    this.name = 'ApiError';
    this.statusCode = ERROR_CATALOG[code];
  }

  /** The JSON body sent to the client. */
  toBody(): Record<string, unknown> {
    return { error: this.message, code: this.code, ...this.details };
  }
}

/** 400 naming the offending field (dotted path, e.g. `firewall.ingress[0].portStart`). */
export function badRequest(message: string, field?: string): ApiError {
  return new ApiError('bad_request', message, field === undefined ? {} : { field });
}

/** 404 `<what> not found`. */
export function notFound(what: string): ApiError {
  return new ApiError('not_found', `${what} not found`);
}

/** 409 `conflict` (deterministic, so never retried). */
export function conflict(message: string, details: ErrorDetails = {}): ApiError {
  return new ApiError('conflict', message, details);
}

/** 501 `<feature> is not implemented yet`. */
export function notImplemented(feature: string): ApiError {
  return new ApiError('not_implemented', `${feature} is not implemented yet`);
}

/**
 * The `x-should-retry` value for a response, or undefined to leave the client's default.
 * The official Python client retries 409, 429 and every 5xx, even on non-idempotent POSTs, so
 * deterministic conflicts, quota rejections, 501s and 5xx after a POST may have done work must
 * say `false` (contract §1.7).
 */
export function retryHint(status: number, method: string, explicit?: boolean): boolean | undefined {
  if (explicit !== undefined) return explicit;
  if (status === 409 || status === 429 || status === 501) return false;
  if (status >= 500 && status !== 503 && method === 'POST') return false;
  return undefined;
}
