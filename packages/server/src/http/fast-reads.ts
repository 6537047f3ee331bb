/**
 * `GET /v1/vms/{id}`, the call clients poll, served without the framework's per-request work
 * when nothing about the request is unusual: a key whose answer is cached (`ApiKeyResolver.peek`),
 * an id (not a name) of a live VM of the caller's org, no query, the server not shutting down.
 * Anything else — a refusal, a miss, a name, an error — goes on to the app, which answers by the
 * full path (the same body: `presentVm`, the same `x-request-id`, the same metrics). Measured by
 * the bench's `api_h2_*` scenarios.
 * @module
 */
import type http from 'node:http';
import type http2 from 'node:http2';
import type { ApiKeyResolver } from '../auth.js';
import { firewallShape } from '../routes/firewall-shape.js';
import { presentVm } from '../routes/present.js';
import type { Metrics } from '../services/metrics.js';
import type { Store } from '../store/index.js';
import { requestIdOf } from './request-id.js';

type Req = http.IncomingMessage | http2.Http2ServerRequest;
type Res = http.ServerResponse | http2.Http2ServerResponse;

/** A VM id as the fast path takes it (percent escapes, names and the rest go the full way). */
const VM_GET = /^\/v1\/vms\/([A-Za-z0-9-]{1,64})$/;
const ROUTE = '/v1/vms/:id';

export interface FastReadsOptions {
  readonly keys: ApiKeyResolver;
  readonly store: Store;
  readonly metrics?: Metrics | undefined;
  readonly isShuttingDown?: (() => boolean) | undefined;
  /** Several hosts: this host's id, sent as `x-fastvm-host` like the full path does. */
  readonly servedBy?: string | undefined;
}

/**
 * Returns `serve(req, res, next)`: answers the request itself, or calls `next` (at once, or after
 * a lookup that found nothing to answer with) — never both.
 */
export function fastReads(opts: FastReadsOptions): (req: Req, res: Res, next: () => void) => void {
  const { keys, store, metrics, isShuttingDown, servedBy } = opts;
  return (req, res, next) => {
    const match = req.method === 'GET' ? VM_GET.exec(req.url ?? '') : null;
    const auth = match && !isShuttingDown?.() && hasHost(req) ? keys.peek(req) : undefined;
    if (!match || !auth) return next();
    const t0 = performance.now();
    store.getVm(auth.orgId, match[1]!).then(
      (vm) => {
        if (!vm) return next();
        const body = JSON.stringify(presentVm(vm, firewallShape(req)));
        res.writeHead(200, {
          'x-request-id': requestIdOf(req.headers),
          'content-type': 'application/json; charset=utf-8',
          'content-length': Buffer.byteLength(body),
          ...(servedBy ? { 'x-fastvm-host': servedBy } : {}),
        });
        res.end(body);
        metrics?.request('GET', ROUTE, 200, (performance.now() - t0) / 1000);
      },
      () => next(),
    );
  };
}

/** HTTP/1.1 without Host is refused by the app (see app.ts). */
function hasHost(req: Req): boolean {
  return req.httpVersionMajor !== 1 || req.headers.host !== undefined;
}
