/**
 * Maps errors thrown by a `Runtime` onto API errors. Runtime errors are recognised by shape
 * (`name === 'RuntimeError'` and a string `code`), so the server needs no value import from the
 * runtime package and fakes can throw look-alikes.
 * @module
 */
import { ApiError, type ErrorDetails } from '../errors.js';

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

/** Converts anything a runtime call threw into an `ApiError` (ApiErrors pass through). */
export function toApiError(err: unknown, action: string, details: ErrorDetails = {}): ApiError {
  if (err instanceof ApiError) return err;
  if (isRuntimeError(err)) {
    // Host paths (data dir, sockets) are the operator's business, not the API user's.
    const msg = `${action} failed: ${err.message.replace(/(?:\/[\w.@+-]+)+\/([\w.@+-]+)/g, '$1')}`;
    switch (err.code) {
      case 'not_found':
      case 'not_running':
        return new ApiError('conflict', `${action} failed: the VM is not running`, details, false, {
          cause: err,
        });
      case 'snapshot_not_found':
        return new ApiError('conflict', msg, details, false, { cause: err });
      case 'invalid_argument':
        return new ApiError('bad_request', msg, details, false, { cause: err });
      default:
        return new ApiError(
          'vm_unavailable',
          msg,
          { ...details, runtimeCode: err.code },
          undefined,
          {
            cause: err,
          },
        );
    }
  }
  const message = err instanceof Error ? err.message : String(err);
  return new ApiError('internal', `${action} failed: ${message}`, details, undefined, {
    cause: err,
  });
}

/** A short human reason for logs and `statusMessage`. */
export function describeError(err: unknown): string {
  if (err instanceof Error) return err.message;
  return String(err);
}
