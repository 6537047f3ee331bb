/**
 * The error hierarchy of the FastVM SDK.
 *
 * Every error thrown by the SDK is a {@link FastVMError}, so one `instanceof` check catches them all.
 * Errors that carry an HTTP response are {@link APIError}s (with a subclass per status family);
 * failures without a response are {@link ConnectionError}, {@link TimeoutError} or {@link AbortError};
 * the blocking helpers add {@link VMLaunchError}, {@link VMNotReadyError}, {@link SnapshotError} and
 * {@link SnapshotNotReadyError} for resources that end in a failed state or are not ready in time.
 *
 * @module
 */

/** Root of every error thrown by the SDK. */
export class FastVMError extends Error {
  override name = 'FastVMError';
}

/** Response headers as the SDK exposes them: lower-case names, repeated values joined by `, `. */
export type Headers = Record<string, string>;

/**
 * The server answered with a non-2xx status.
 *
 * `message` is `"<status> <detail>"`, where the detail is the body's `error`, `message` or `detail`
 * string (or the whole body as JSON when none of these is present).
 */
export class APIError extends FastVMError {
  override name = 'APIError';
  /** HTTP status code. */
  readonly status: number;
  /** Machine-readable error code from the body (`code`, or an identifier-like `error`), if any. */
  readonly code: string | undefined;
  /** Parsed JSON body (or the raw text when the body is not JSON, `undefined` when empty). */
  readonly body: unknown;
  /** Response headers (lower-case names). */
  readonly headers: Headers;
  /** The server's request id (`x-request-id` header), if it sent one. */
  readonly requestId: string | undefined;

  /**
   * @param status - HTTP status code.
   * @param body - Parsed response body.
   * @param headers - Response headers.
   * @param message - Overrides the default `"<status> <detail>"` message.
   */
  constructor(status: number, body: unknown, headers: Headers = {}, message?: string) {
    super(message ?? `${status} ${describeBody(body)}`);
    this.status = status;
    this.body = body;
    this.headers = headers;
    this.requestId = headers['x-request-id'];
    this.code = errorCode(body);
  }

  /**
   * Builds the most specific {@link APIError} subclass for a status and body.
   *
   * @param status - HTTP status code (non-2xx).
   * @param body - Parsed response body.
   * @param headers - Response headers.
   */
  static fromResponse(status: number, body: unknown, headers: Headers = {}): APIError {
    switch (status) {
      case 400:
        return new BadRequestError(status, body, headers);
      case 401:
        return new AuthenticationError(status, body, headers);
      case 403:
        return new PermissionDeniedError(status, body, headers);
      case 404:
        return new NotFoundError(status, body, headers);
      case 409:
        return new ConflictError(status, body, headers);
      case 422:
        return new UnprocessableEntityError(status, body, headers);
      case 429:
        return isRecord(body) && typeof body['dimension'] === 'string'
          ? new QuotaExceededError(status, body, headers)
          : new RateLimitError(status, body, headers);
    }
    if (status >= 500) return new InternalServerError(status, body, headers);
    return new APIError(status, body, headers);
  }
}

/** 400: the request was malformed or failed validation. */
export class BadRequestError extends APIError {
  override name = 'BadRequestError';
}

/** 401: the API key is missing or invalid. */
export class AuthenticationError extends APIError {
  override name = 'AuthenticationError';
}

/** 403: the API key may not perform this operation. */
export class PermissionDeniedError extends APIError {
  override name = 'PermissionDeniedError';
}

/** 404: no VM or snapshot with this id (or name) exists in the organisation. */
export class NotFoundError extends APIError {
  override name = 'NotFoundError';
}

/** 409: the resource is in a state that does not allow the operation (e.g. exec on a stopped VM). */
export class ConflictError extends APIError {
  override name = 'ConflictError';
}

/** 422: the request was well-formed but semantically invalid. */
export class UnprocessableEntityError extends APIError {
  override name = 'UnprocessableEntityError';
}

/**
 * 429 with a `dimension` in the body: the organisation's quota for that dimension would be
 * exceeded. Retrying does not help until resources are freed.
 */
export class QuotaExceededError extends APIError {
  override name = 'QuotaExceededError';
  /** The exhausted quota dimension: `vcpu`, `memory_mib`, `disk_gib` or `snapshot_count`. */
  readonly dimension: string;

  /** @inheritdoc */
  constructor(status: number, body: unknown, headers: Headers = {}, message?: string) {
    super(status, body, headers, message);
    this.dimension =
      isRecord(body) && typeof body['dimension'] === 'string' ? body['dimension'] : '';
  }
}

/** 429 without a quota dimension: too many requests; retried automatically for idempotent calls. */
export class RateLimitError extends APIError {
  override name = 'RateLimitError';
}

/** 5xx: the server failed. Retried automatically for idempotent calls. */
export class InternalServerError extends APIError {
  override name = 'InternalServerError';
}

/**
 * The connection to the server failed (refused, reset, TLS failure, protocol error).
 * `requestSent` says whether the request may have reached the server.
 */
export class ConnectionError extends FastVMError {
  override name = 'ConnectionError';
  /** `false` when the failure happened before the request left the client (safe to retry). */
  readonly requestSent: boolean;

  /**
   * @param message - What failed.
   * @param options - `cause` (the underlying error) and `requestSent`.
   */
  constructor(message: string, options: { cause?: unknown; requestSent?: boolean } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.requestSent = options.requestSent ?? true;
  }
}

/** A request, or a blocking call, did not finish within its timeout. */
export class TimeoutError extends FastVMError {
  override name = 'TimeoutError';
}

/** The call was cancelled through its `AbortSignal`. `cause` is the signal's reason. */
export class AbortError extends FastVMError {
  override name = 'AbortError';
}

/** A VM reached a terminal state (`error`, `stopped`, `deleting`) while `launch`/`restore` waited. */
export class VMLaunchError extends FastVMError {
  override name = 'VMLaunchError';
  /** Id of the VM that failed. */
  readonly vmId: string;
  /** The terminal status it reached. */
  readonly status: string;

  /**
   * @param vmId - Id of the VM.
   * @param status - The terminal status.
   */
  constructor(vmId: string, status: string) {
    super(`VM ${vmId} entered status '${status}' while waiting for it to be running`);
    this.vmId = vmId;
    this.status = status;
  }
}

/** `launch`/`restore` gave up waiting for the VM to become `running`. */
export class VMNotReadyError extends TimeoutError {
  override name = 'VMNotReadyError';
  /** Id of the VM. */
  readonly vmId: string;
  /** The last status observed. */
  readonly lastStatus: string;
  /** How long the call waited, in milliseconds. */
  readonly timeoutMs: number;

  /**
   * @param vmId - Id of the VM.
   * @param lastStatus - The last observed status.
   * @param timeoutMs - The wait budget that ran out.
   */
  constructor(vmId: string, lastStatus: string, timeoutMs: number) {
    super(`VM ${vmId} was not running after ${timeoutMs} ms (last status '${lastStatus}')`);
    this.vmId = vmId;
    this.lastStatus = lastStatus;
    this.timeoutMs = timeoutMs;
  }
}

/** A snapshot reached the terminal `error` state while `snapshot()` waited. */
export class SnapshotError extends FastVMError {
  override name = 'SnapshotError';
  /** Id of the snapshot. */
  readonly snapshotId: string;
  /** The terminal status it reached. */
  readonly status: string;

  /**
   * @param snapshotId - Id of the snapshot.
   * @param status - The terminal status.
   */
  constructor(snapshotId: string, status: string) {
    super(`snapshot ${snapshotId} entered status '${status}' while waiting for it to be ready`);
    this.snapshotId = snapshotId;
    this.status = status;
  }
}

/** `snapshot()` gave up waiting for the snapshot to become `ready`. */
export class SnapshotNotReadyError extends TimeoutError {
  override name = 'SnapshotNotReadyError';
  /** Id of the snapshot. */
  readonly snapshotId: string;
  /** The last status observed. */
  readonly lastStatus: string;
  /** How long the call waited, in milliseconds. */
  readonly timeoutMs: number;

  /**
   * @param snapshotId - Id of the snapshot.
   * @param lastStatus - The last observed status.
   * @param timeoutMs - The wait budget that ran out.
   */
  constructor(snapshotId: string, lastStatus: string, timeoutMs: number) {
    super(
      `snapshot ${snapshotId} was not ready after ${timeoutMs} ms (last status '${lastStatus}')`,
    );
    this.snapshotId = snapshotId;
    this.lastStatus = lastStatus;
    this.timeoutMs = timeoutMs;
  }
}

/**
 * An upload or download failed: the local or remote path is missing or unusable, a size limit was
 * hit, or a command in the VM failed. Nothing is left at the destination. `exitCode`/`stderr` come
 * from the failed command in the VM, when there was one.
 */
export class FileTransferError extends FastVMError {
  override name = 'FileTransferError';
  /** Exit code of the failed command in the VM, if any. */
  readonly exitCode: number | undefined;
  /** Its standard error, if any. */
  readonly stderr: string | undefined;
  /** `ENOENT` when the source does not exist. */
  readonly code: string | undefined;

  /**
   * @param message - What failed.
   * @param details - Exit code and stderr of the failed command, an error code, the cause.
   */
  constructor(
    message: string,
    details: { exitCode?: number; stderr?: string; code?: string; cause?: unknown } = {},
  ) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.exitCode = details.exitCode;
    this.stderr = details.stderr;
    this.code = details.code;
  }
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function describeBody(body: unknown): string {
  if (isRecord(body)) {
    for (const key of ['error', 'message', 'detail']) {
      const v = body[key];
      if (typeof v === 'string' && v !== '') return v;
    }
    return JSON.stringify(body);
  }
  if (typeof body === 'string' && body !== '')
    return body.length > 500 ? `${body.slice(0, 500)}…` : body;
  if (body === undefined || body === '') return '(no body)';
  return JSON.stringify(body);
}

function errorCode(body: unknown): string | undefined {
  if (!isRecord(body)) return undefined;
  if (typeof body['code'] === 'string') return body['code'];
  const e = body['error'];
  return typeof e === 'string' &&
    /^[a-z][a-z0-9_.-]*$/i.test(e) &&
    !e.includes(' ') &&
    e.includes('_')
    ? e
    : undefined;
}

/** A build or image import ended `failed` or `cancelled`. */
export class BuildError extends FastVMError {
  override name = 'BuildError';

  /**
   * @param importId - Id of the snapshot import.
   * @param status - `failed` or `cancelled`.
   * @param reason - The server's error text.
   */
  constructor(
    readonly importId: string,
    readonly status: string,
    readonly reason: string,
  ) {
    super(`build ${importId} ${status}: ${reason}`);
  }
}
