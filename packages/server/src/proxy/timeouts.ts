/**
 * The proxy's time limits towards backends (a late answer becomes a 504 page).
 * @module
 */

/** A backend must accept the TCP connection within this. */
export const CONNECT_TIMEOUT_MS = 10_000;

/**
 * A backend must send its response headers within this after the request started. Once they
 * are sent there is no limit: SSE streams, WebSockets and long downloads run as long as both
 * ends want.
 */
export const RESPONSE_TIMEOUT_MS = 120_000;

/** The limits in force (`startServer`'s `proxy` option may shorten them, e.g. in tests). */
export interface ProxyTimeouts {
  connectMs: number;
  responseMs: number;
}

export const DEFAULT_TIMEOUTS: Readonly<ProxyTimeouts> = {
  connectMs: CONNECT_TIMEOUT_MS,
  responseMs: RESPONSE_TIMEOUT_MS,
};

/** An error with one of the codes `pages.ts#backendError` turns into a 504. */
export function timeoutError(code: 'FASTVM_CONNECT_TIMEOUT' | 'FASTVM_RESPONSE_TIMEOUT'): Error {
  const err = new Error(code) as NodeJS.ErrnoException;
  err.code = code;
  return err;
}

/** Whether an HTTP/1.1 request says a body follows (otherwise the backend request ends at once). */
export function hasBody(headers: Record<string, unknown>): boolean {
  if (headers['transfer-encoding'] !== undefined) return true;
  const length = headers['content-length'];
  return length !== undefined && length !== '0';
}
