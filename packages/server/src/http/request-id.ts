/**
 * Request ids: a client's own `x-request-id` (when it is a sane token) or a new UUID. Every
 * response carries it in `x-request-id`, every error body as `requestId`, and every log line of
 * the request as `reqId`, so a user's error report leads to the server's log lines.
 * @module
 */
import { randomUUID } from 'node:crypto';
import type { IncomingHttpHeaders } from 'node:http';

const REQUEST_ID_RE = /^[A-Za-z0-9._:-]{1,128}$/;

export function requestIdOf(headers: IncomingHttpHeaders): string {
  const given = headers['x-request-id'];
  return typeof given === 'string' && REQUEST_ID_RE.test(given) ? given : randomUUID();
}
