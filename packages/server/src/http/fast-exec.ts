/**
 * `POST /v1/vms/{id}/exec` answered with its JSON result — the call agents make most — served
 * without the framework's per-request work, as `fast-reads.ts` does for `GET /v1/vms/{id}`.
 *
 * Taken only when the headers say it is the plain case: a key whose answer is cached, the id of
 * a running VM of the caller's org (from the store's read cache, else one lookup), a JSON (or
 * untyped) body, no NDJSON wanted, no `Expect`/`Upgrade`, one host (a cluster forwards execs:
 * `cluster/`), the server not shutting down. Anything else goes on to the app before a byte of
 * the body is read.
 *
 * The body is then read here. One that is not a plain exec — not JSON, refused by the route's
 * schema (`ExecBody`), `detach` — is replayed through the app (`replay`, Fastify's `inject`),
 * which answers exactly as the route does; nothing has run yet. A plain exec runs as the route
 * runs it (`VmService.prepareExecOn` / `runExec`, killed when the client goes away) and is answered
 * with the route's body; its errors get the error handler's answer (`error-mapping.ts`). Each
 * answer is counted in the route's metrics and logged as the framework logs a request. Measured
 * by the bench's `exec_sdk` / `exec_agent` scenarios.
 * @module
 */
import type http from 'node:http';
import type http2 from 'node:http2';
import type { Readable } from 'node:stream';
import type { Logger } from 'pino';
import type { ApiKeyResolver, AuthContext } from '../auth.js';
import { ApiError, retryHint } from '../errors.js';
import { execCommandOf } from '../routes/inputs.js';
import { presentExecResult } from '../routes/present.js';
import { ExecBody } from '../schemas.js';
import type { VmRecord } from '../domain/index.js';
import type { Metrics } from '../services/metrics.js';
import type { VmService } from '../services/vm-service.js';
import type { Store } from '../store/index.js';
import { toHttpError } from './error-mapping.js';
import { endJson, ignore, respondJson } from './raw-response.js';
import { requestIdOf } from './request-id.js';

type Req = http.IncomingMessage | http2.Http2ServerRequest;
type Res = http.ServerResponse | http2.Http2ServerResponse;

const EXEC_POST = /^\/v1\/vms\/([A-Za-z0-9-]{1,64})\/exec$/;
const ROUTE = '/v1/vms/:id/exec';
/** Headers of a replayed answer that belong to its connection, not to the answer. */
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'transfer-encoding', 'date']);

/** A request as the app is asked to replay it. */
export interface ReplayRequest {
  url: string;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

/** The app's answer to a replayed request. */
export interface ReplayResponse {
  status: number;
  headers: Record<string, string | string[] | number | undefined>;
  body: Buffer;
}

export interface FastExecOptions {
  readonly keys: ApiKeyResolver;
  readonly store: Store;
  readonly vms: VmService;
  readonly logger: Logger;
  /** The route's body limit. */
  readonly bodyLimit: number;
  /** Runs a request through the app (set once the app exists). */
  readonly replay: (req: ReplayRequest) => Promise<ReplayResponse>;
  readonly metrics?: Metrics | undefined;
  readonly isShuttingDown?: (() => boolean) | undefined;
}

/** The fast path, once per protocol; each answers itself or calls `next` — never both. */
export interface FastExec {
  request(req: Req, res: Res, next: () => void): void;
  stream(
    stream: http2.ServerHttp2Stream,
    headers: http2.IncomingHttpHeaders,
    next: () => void,
  ): void;
}

/** How an answer is written on one protocol. */
interface Sink {
  /** Whether the client is still there to answer. */
  open(): boolean;
  send(status: number, headers: Record<string, string | number>, body: string | Buffer): void;
  /** Called once when the client goes away before the answer was sent. */
  onGone(fn: () => void): void;
}

/** A request the fast path took: who asks, about which VM, with which id. */
interface Claim {
  readonly auth: AuthContext;
  /** The VM as it was read when the request was claimed (running then). */
  readonly vm: Readonly<VmRecord>;
  readonly url: string;
  readonly requestId: string;
  readonly headers: http.IncomingHttpHeaders;
  readonly t0: number;
}

export function fastExec(opts: FastExecOptions): FastExec {
  const { keys, store, vms, logger, metrics, isShuttingDown, bodyLimit, replay } = opts;

  /**
   * The claim on a request with these headers: now (the VM is in the store's read cache), after
   * a lookup (it is not: the first exec after a launch), or undefined ("not ours": the app
   * answers). Nothing of the body is read before it is decided.
   */
  const claim = (
    method: string | undefined,
    url: string | undefined,
    headers: http.IncomingHttpHeaders,
  ): Claim | Promise<Claim | undefined> | undefined => {
    const match = method === 'POST' ? EXEC_POST.exec(url ?? '') : null;
    if (!match || isShuttingDown?.()) return undefined;
    const type = headers['content-type'];
    if (type !== undefined && !/^application\/json\s*(;|$)/i.test(type)) return undefined;
    if (/application\/x-ndjson/i.test(headers.accept ?? '')) return undefined;
    if (headers.expect !== undefined || headers.upgrade !== undefined) return undefined;
    const auth = keys.peek({ headers });
    if (!auth) return undefined;
    const vmId = match[1]!;
    const make = (vm: Readonly<VmRecord> | null | undefined): Claim | undefined =>
      vm?.status === 'running'
        ? { auth, vm, url: url!, requestId: requestIdOf(headers), headers, t0: performance.now() }
        : undefined;
    const shared = store.peekVm?.(auth.orgId, vmId);
    if (shared !== undefined) return make(shared);
    return store.getVm(auth.orgId, vmId).then(make, () => undefined);
  };

  /** Takes the request when `claimed` says so, else hands it to `next`. */
  const take = (
    claimed: Claim | Promise<Claim | undefined> | undefined,
    serve: (c: Claim) => void,
    next: () => void,
  ): void => {
    if (claimed === undefined) return next();
    if (!(claimed instanceof Promise)) return serve(claimed);
    claimed.then((c) => (c ? serve(c) : next()), next);
  };

  const done = (c: Claim, status: number): void => {
    const ms = performance.now() - c.t0;
    metrics?.request('POST', ROUTE, status, ms / 1000);
    logger.info(
      { reqId: c.requestId, req: { method: 'POST', url: c.url }, res: { statusCode: status } },
      'request completed',
    );
  };

  const sendError = (c: Claim, sink: Sink, err: unknown): void => {
    let api = toHttpError(err);
    if (!api) {
      logger.error({ err, reqId: c.requestId }, 'unhandled error');
      api = new ApiError('internal', 'internal server error');
    } else if (api.statusCode >= 500) {
      logger.warn({ err: api.cause ?? api, code: api.code, reqId: c.requestId }, api.message);
    }
    if (!sink.open()) return;
    const headers: Record<string, string | number> = { 'x-request-id': c.requestId };
    const retry = retryHint(api.statusCode, 'POST', api.shouldRetry);
    if (retry !== undefined) headers['x-should-retry'] = String(retry);
    if (api.retryAfterSec !== undefined) headers['retry-after'] = String(api.retryAfterSec);
    sink.send(api.statusCode, headers, JSON.stringify({ ...api.toBody(), requestId: c.requestId }));
    done(c, api.statusCode);
  };

  /** Replays the request through the app and forwards its answer (counted there). */
  const replayed = (c: Claim, sink: Sink, body: Buffer): void => {
    replay({ url: c.url, headers: { ...c.headers, 'x-request-id': c.requestId }, body }).then(
      (res) => {
        if (!sink.open()) return;
        const headers: Record<string, string | number> = {};
        for (const [k, v] of Object.entries(res.headers)) {
          if (v !== undefined && !HOP_BY_HOP.has(k))
            headers[k] = Array.isArray(v) ? v.join(', ') : v;
        }
        sink.send(res.status, headers, res.body);
      },
      (err: unknown) => sendError(c, sink, err),
    );
  };

  /** Runs the exec the body asks for, or replays the request when it is not a plain one. */
  const serve = (c: Claim, sink: Sink, body: Buffer): void => {
    const text = body.toString('utf8');
    let parsed: ReturnType<typeof ExecBody.safeParse>;
    try {
      parsed = text.includes('__proto__')
        ? ExecBody.safeParse(undefined)
        : ExecBody.safeParse(JSON.parse(text));
    } catch {
      return replayed(c, sink, body);
    }
    if (!parsed.success || parsed.data.detach) return replayed(c, sink, body);
    let command: ReturnType<typeof execCommandOf>;
    try {
      command = execCommandOf(parsed.data);
    } catch {
      return replayed(c, sink, body);
    }
    const abort = new AbortController();
    let running = true;
    sink.onGone(() => {
      if (running) abort.abort(new Error('client disconnected'));
    });
    Promise.resolve()
      .then(() => vms.runExec(vms.prepareExecOn(c.vm, command), { signal: abort.signal }))
      .finally(() => (running = false))
      .then(
        (res) => {
          if (!sink.open()) return;
          const out = JSON.stringify(presentExecResult(res));
          sink.send(200, { 'x-request-id': c.requestId }, out);
          done(c, 200);
        },
        (err: unknown) => sendError(c, sink, err),
      );
  };

  /** Reads the body (up to the limit: past it, 413) and serves it. */
  const read = (c: Claim, body: Readable, sink: Sink): void => {
    const chunks: Buffer[] = [];
    let size = 0;
    const onData = (chunk: Buffer): void => {
      size += chunk.length;
      if (size <= bodyLimit) return void chunks.push(chunk);
      body.off('data', onData);
      body.off('end', onEnd);
      sendError(c, sink, new ApiError('payload_too_large', 'request body is too large'));
      body.resume(); // the rest is read and dropped
    };
    const onEnd = (): void => serve(c, sink, Buffer.concat(chunks, size));
    body.on('data', onData);
    body.once('end', onEnd);
  };

  return {
    request(req, res, next) {
      if (req.httpVersionMajor === 1 && req.headers.host === undefined) return next();
      take(
        claim(req.method, req.url, req.headers),
        (c) =>
          read(c, req, {
            open: () => !res.headersSent && !res.destroyed,
            send: (status, headers, body) => endJson(res, status, headers, body),
            onGone: (fn) => res.once('close', fn),
          }),
        next,
      );
    },
    stream(stream, headers, next) {
      const claimed = claim(headers[':method'], headers[':path'], headers);
      // A reset by the client must not become an 'error' nobody listens to.
      if (claimed !== undefined) stream.on('error', ignore);
      take(
        claimed,
        (c) =>
          read(c, stream, {
            open: () => !stream.destroyed && !stream.closed && !stream.headersSent,
            send: (status, headers, body) => respondJson(stream, status, headers, body),
            onGone: (fn) => stream.once('close', fn),
          }),
        next,
      );
    },
  };
}
