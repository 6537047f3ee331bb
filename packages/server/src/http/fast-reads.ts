/**
 * `GET /v1/vms/{id}`, the call clients poll, served without the framework's per-request work
 * when nothing about the request is unusual: a key whose answer is cached (`ApiKeyResolver.peek`),
 * an id (not a name) of a live VM of the caller's org, no query, the server not shutting down.
 * Anything else — a refusal, a miss, a name, an error — goes on to the app, which answers by the
 * full path (the same body: `presentVm`, the same `x-request-id`, the same metrics).
 *
 * Over HTTP/2 it answers on the stream itself, before Node builds the compatibility
 * request/response pair Fastify needs (that pair cost as much as everything else here). With the
 * store's read cache (`Store.peekVm`) the answer is synchronous, and its body is serialized once
 * per version of the VM and firewall shape. Measured by the bench's `api_h2load_*` scenarios.
 * @module
 */
import type http from 'node:http';
import type http2 from 'node:http2';
import type { ApiKeyResolver } from '../auth.js';
import { SERVED_BY_HEADER } from '../cluster/forward.js';
import type { FirewallShape, VmRecord } from '../domain/index.js';
import { firewallShape } from '../routes/firewall-shape.js';
import { presentVm } from '../routes/present.js';
import type { Metrics } from '../services/metrics.js';
import type { Store } from '../store/index.js';
import { endJson, ignore, respondJson } from './raw-response.js';
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
  /** Several hosts: this host's id, answered in `x-fastvm-host` (`cluster/forward.ts`). */
  readonly servedBy?: string | undefined;
}

/** The fast path, once per protocol. Each answers the request itself or calls `next` — never both. */
export interface FastReads {
  /** HTTP/1.1 (and HTTP/2 requests that reach the compatibility layer): ahead of the app. */
  request(req: Req, res: Res, next: () => void): void;
  /** HTTP/2: the server's `'stream'` event, ahead of the compatibility layer (`next`). */
  stream(
    stream: http2.ServerHttp2Stream,
    headers: http2.IncomingHttpHeaders,
    next: () => void,
  ): void;
}

/** The answer to one request: its body and request id. */
interface Answer {
  readonly body: string;
  readonly requestId: string;
}

export function fastReads(opts: FastReadsOptions): FastReads {
  const { keys, store, metrics, isShuttingDown, servedBy } = opts;
  const extra: Record<string, string> =
    servedBy === undefined ? {} : { [SERVED_BY_HEADER]: servedBy };
  const record = metrics?.requestRecorder('GET', ROUTE, 200);
  const count = (t0: number) => record?.((performance.now() - t0) / 1000);

  // Bodies of shared records (`Store.peekVm`), by firewall shape: a record is replaced, never
  // changed, when its VM changes, so a body lives exactly as long as its record.
  const bodies = new WeakMap<object, [string?, string?, string?]>();
  const bodyOf = (vm: Readonly<VmRecord>, shape: FirewallShape): string => {
    let cached = bodies.get(vm);
    if (!cached) bodies.set(vm, (cached = []));
    return (cached[shape] ??= JSON.stringify(presentVm(vm, shape)));
  };

  /**
   * The answer to a request with these headers: now (from the store's read cache), later (after
   * a lookup), or `undefined` for "not ours" — also when the lookup finds nothing.
   */
  const answer = (
    method: string | undefined,
    url: string | undefined,
    headers: http.IncomingHttpHeaders,
  ): Answer | Promise<Answer | undefined> | undefined => {
    const match = method === 'GET' ? VM_GET.exec(url ?? '') : null;
    const auth = match && !isShuttingDown?.() ? keys.peek({ headers }) : undefined;
    if (!match || !auth) return undefined;
    const id = match[1]!;
    const shared = store.peekVm?.(auth.orgId, id);
    if (shared === null) return undefined;
    if (shared)
      return { body: bodyOf(shared, firewallShape({ headers })), requestId: requestIdOf(headers) };
    return store.getVm(auth.orgId, id).then(
      (vm) =>
        vm && {
          body: JSON.stringify(presentVm(vm, firewallShape({ headers }))),
          requestId: requestIdOf(headers),
        },
      () => undefined,
    );
  };

  /** Sends `found` with `send`, or calls `next`; counts what it sent. */
  const settle = (
    found: Answer | Promise<Answer | undefined> | undefined,
    send: (a: Answer) => void,
    next: () => void,
  ): void => {
    if (found === undefined) return next();
    const t0 = performance.now();
    if (!(found instanceof Promise)) {
      send(found);
      return count(t0);
    }
    found.then((a) => {
      if (!a) return next();
      send(a);
      count(t0);
    }, next);
  };

  return {
    request(req, res, next) {
      // HTTP/1.1 without Host is refused by the app (see app.ts).
      if (req.httpVersionMajor === 1 && req.headers.host === undefined) return next();
      settle(
        answer(req.method, req.url, req.headers),
        ({ body, requestId }) => endJson(res, 200, { 'x-request-id': requestId, ...extra }, body),
        next,
      );
    },
    stream(stream, headers, next) {
      const found = answer(headers[':method'], headers[':path'], headers);
      // A reset by the client must not become an 'error' nobody listens to.
      if (found !== undefined) stream.on('error', ignore);
      settle(
        found,
        ({ body, requestId }) => {
          if (stream.destroyed || stream.closed) return;
          respondJson(stream, 200, { 'x-request-id': requestId, ...extra }, body);
        },
        next,
      );
    },
  };
}
