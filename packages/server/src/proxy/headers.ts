/**
 * Header rewriting between client and backend: hop-by-hop headers (RFC 9110 §7.6.1) and
 * HTTP/2 pseudo-headers stay on their own hop, consumed credentials are dropped, and the
 * backend learns the client's address and the original host and scheme (`X-Forwarded-*`).
 * @module
 */
import type { IncomingHttpHeaders, OutgoingHttpHeaders } from 'node:http';
import { CREDENTIAL_HEADERS } from './access.js';

const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'proxy-authenticate',
  'proxy-authorization',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  'http2-settings',
  'host',
]);

/** Names listed in `Connection` (also hop-by-hop). */
function connectionListed(headers: IncomingHttpHeaders): Set<string> | undefined {
  const c = headers.connection;
  if (!c) return undefined;
  return new Set(
    (Array.isArray(c) ? c.join(',') : c)
      .split(',')
      .map((s) => s.trim().toLowerCase())
      .filter((s) => s !== ''),
  );
}

/** How a request is forwarded. */
export interface ForwardContext {
  /** The client's Host / `:authority`, passed on as the backend's Host. */
  host: string;
  /** `http` or `https`: how the client reached the proxy. */
  proto: string;
  clientAddress: string | undefined;
  /** Drop `Authorization`, `X-API-Key` and `X-FastVM-Token` (a protected service's). */
  stripCredentials: boolean;
  /** Keep `Connection: upgrade` and `Upgrade` (a WebSocket handshake). */
  upgrade?: boolean;
  /** Keep `TE: trailers` (an HTTP/2 backend; gRPC needs it). */
  keepTeTrailers?: boolean;
}

/** The headers to send to the backend (without Host or pseudo-headers). */
export function requestHeaders(
  incoming: IncomingHttpHeaders,
  ctx: ForwardContext,
): OutgoingHttpHeaders {
  const listed = connectionListed(incoming);
  const out: OutgoingHttpHeaders = {};
  for (const [name, value] of Object.entries(incoming)) {
    if (value === undefined || name.startsWith(':')) continue;
    if (HOP_BY_HOP.has(name) || listed?.has(name)) continue;
    if (ctx.stripCredentials && (CREDENTIAL_HEADERS as readonly string[]).includes(name)) continue;
    if (name.startsWith('x-forwarded-')) continue;
    out[name] = value;
  }
  if (ctx.upgrade && incoming.upgrade) {
    out.connection = 'upgrade';
    out.upgrade = incoming.upgrade;
  }
  if (ctx.keepTeTrailers && /\btrailers\b/i.test(String(incoming.te ?? ''))) out.te = 'trailers';
  if (ctx.clientAddress) out['x-forwarded-for'] = ctx.clientAddress;
  out['x-forwarded-host'] = ctx.host;
  out['x-forwarded-proto'] = ctx.proto;
  return out;
}

/** The backend's response headers as the client gets them. */
export function responseHeaders(incoming: IncomingHttpHeaders): OutgoingHttpHeaders {
  const listed = connectionListed(incoming);
  const out: OutgoingHttpHeaders = {};
  for (const [name, value] of Object.entries(incoming)) {
    if (value === undefined || name.startsWith(':')) continue;
    if ((HOP_BY_HOP.has(name) && name !== 'host') || listed?.has(name)) continue;
    out[name] = value;
  }
  return out;
}
