/**
 * Maps errors thrown by a `Runtime` onto domain errors. Runtime errors are recognised by shape
 * (`name === 'RuntimeError'` and a string `code`), so fakes can throw look-alikes.
 * @module
 */
import {
  CorruptDataError,
  DomainError,
  InvalidInputError,
  OperationFailedError,
  RuntimeFailureError,
  StateConflictError,
  type DomainErrorDetails,
} from '../domain/index.js';

/** The shape of `RuntimeError` from @fastvm/runtime. */
export interface RuntimeErrorLike extends Error {
  code: string;
}

/** Whether `err` looks like a `RuntimeError`. */
export function isRuntimeError(err: unknown): err is RuntimeErrorLike {
  return (
    err instanceof Error &&
    err.name === 'RuntimeError' &&
    typeof (err as { code?: unknown }).code === 'string'
  );
}

/**
 * Converts anything a runtime call made for `action` threw into a domain error (domain errors
 * pass through): the VM not running → `StateConflictError`, a refused argument →
 * `InvalidInputError`, any other runtime failure → `RuntimeFailureError` (with `runtimeCode`),
 * anything else → `OperationFailedError`.
 */
export function fromRuntimeError(
  err: unknown,
  action: string,
  details: DomainErrorDetails = {},
): DomainError {
  if (err instanceof DomainError) return err;
  if (isRuntimeError(err)) {
    // Host paths (data dir, sockets) are the operator's business, not the API user's.
    const msg = `${action} failed: ${err.message.replace(/(?:\/[\w.@+-]+)+\/([\w.@+-]+)/g, '$1')}`;
    const final = { cause: err, retryable: false };
    switch (err.code) {
      case 'not_found':
      case 'not_running':
        return new StateConflictError(`${action} failed: the VM is not running`, details, final);
      case 'snapshot_not_found':
        return new StateConflictError(msg, details, final);
      case 'invalid_argument':
        return new InvalidInputError(msg, details, final);
      case 'snapshot_corrupt':
        return new CorruptDataError(msg, details, final);
      default:
        return new RuntimeFailureError(msg, { ...details, runtimeCode: err.code }, { cause: err });
    }
  }
  const message = err instanceof Error ? err.message : String(err);
  return new OperationFailedError(`${action} failed: ${message}`, details, { cause: err });
}

/** A short human reason for logs and `statusMessage`. */
export function describeError(err: unknown): string {
  if (err instanceof Error) return err.message;
  return String(err);
}
