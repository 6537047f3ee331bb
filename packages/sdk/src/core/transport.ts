/**
 * The SDK's transport: one HTTP/2 session per client, with an HTTP/1.1 fallback.
 *
 * - `https://` base URLs: TLS with ALPN offering `h2` and `http/1.1`; the session is HTTP/2 when the
 *   server picks `h2`, otherwise the client switches to HTTP/1.1 over a keep-alive agent.
 * - `http://` base URLs: HTTP/2 with prior knowledge (h2c); when the server rejects the connection
 *   preface (an HTTP/1.1-only server), the client switches to HTTP/1.1.
 *
 * The session is opened lazily (or by `warmup()`), shared by every concurrent request, and reopened
 * lazily after the server closes it or sends GOAWAY. While no request is in flight the session is
 * unref'd, so an idle client does not keep the process alive.
 *
 * @module
 */
import * as http from 'node:http';
import * as http2 from 'node:http2';
import * as https from 'node:https';
import * as net from 'node:net';
import * as tls from 'node:tls';
import { AbortError, ConnectionError, FastVMError, TimeoutError, type Headers } from './errors.js';

/** Negotiated protocol: HTTP/2 over TLS, HTTP/2 cleartext with prior knowledge, or HTTP/1.1. */
export type Protocol = 'h2' | 'h2c' | 'http/1.1';

/** TLS settings for `https://` base URLs (e.g. a private CA for a self-hosted server). */
export interface TLSOptions {
  /** Trusted CA certificates (PEM), replacing Node's default bundle. */
  ca?: string | Buffer | Array<string | Buffer>;
  /** Set to `false` to accept any certificate. Only for testing. */
  rejectUnauthorized?: boolean;
}

/** Connection statistics of a client (see {@link FastVM.stats}). */
export interface ConnectionStats {
  /** The protocol in use, or `null` before the first connection. */
  protocol: Protocol | null;
  /** Connections opened over the client's life: HTTP/2 sessions, or HTTP/1.1 sockets after fallback. */
  sessionsOpened: number;
  /** Connections open right now (at most 1 for HTTP/2). */
  openSessions: number;
  /** Requests sent, retries included. */
  requests: number;
  /** Requests in flight right now. */
  inFlight: number;
}

/** @internal One HTTP exchange, as the client hands it to the transport. */
export interface WireRequest {
  method: 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';
  /** Path below the base URL, starting with `/`. */
  path: string;
  headers: Record<string, string>;
  body?: Buffer | undefined;
  /** Time budget for this attempt, connecting included. */
  timeoutMs: number;
  signal?: AbortSignal | undefined;
}

/** @internal */
export interface WireResponse {
  status: number;
  headers: Headers;
  body: Buffer;
}

/** @internal A response whose body is read as it arrives (see `Transport.stream`). */
export interface StreamResponse {
  status: number;
  headers: Headers;
  /** Body chunks as they arrive. Breaking out of the loop cancels the request. */
  body: AsyncIterable<Buffer>;
  /** Cancels the request (the server sees the stream reset or the connection closed). */
  cancel(): void;
}

const CONNECT_ERROR_CODES = new Set([
  'ECONNREFUSED',
  'ENOTFOUND',
  'EAI_AGAIN',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'EADDRNOTAVAIL',
  'ERR_TLS_CERT_ALTNAME_INVALID',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'CERT_HAS_EXPIRED',
]);

const STREAM_WINDOW = 16 * 1024 * 1024;
const SESSION_WINDOW = 32 * 1024 * 1024;

/** @internal */
export class Transport {
  readonly #url: URL;
  readonly #secure: boolean;
  readonly #host: string;
  readonly #port: number;
  readonly #prefix: string;
  readonly #tls: TLSOptions;
  readonly #connectTimeoutMs: number;

  #session: http2.ClientHttp2Session | undefined;
  #connecting: Promise<void> | undefined;
  #protocol: Protocol | null = null;
  #agent: http.Agent | undefined;
  #closed = false;
  #inFlight = 0;
  #requests = 0;
  #sessionsOpened = 0;
  #h1Sockets = new WeakSet<net.Socket>();

  constructor(
    baseUrl: string,
    options: { tls?: TLSOptions | undefined; connectTimeoutMs?: number } = {},
  ) {
    this.#url = new URL(baseUrl);
    if (this.#url.protocol !== 'https:' && this.#url.protocol !== 'http:') {
      throw new FastVMError(
        `unsupported base URL protocol '${this.#url.protocol}' (use https:// or http://)`,
      );
    }
    this.#secure = this.#url.protocol === 'https:';
    this.#host = this.#url.hostname.replace(/^\[(.*)\]$/, '$1');
    this.#port = this.#url.port ? Number(this.#url.port) : this.#secure ? 443 : 80;
    this.#prefix = this.#url.pathname.replace(/\/+$/, '');
    this.#tls = options.tls ?? {};
    this.#connectTimeoutMs = options.connectTimeoutMs ?? 10_000;
  }

  /** Current statistics. */
  get stats(): ConnectionStats {
    const h2open = this.#session && !this.#session.closed && !this.#session.destroyed ? 1 : 0;
    return {
      protocol: this.#protocol,
      sessionsOpened: this.#sessionsOpened,
      openSessions: this.#isHttp1() ? countAgentSockets(this.#agent) : h2open,
      requests: this.#requests,
      inFlight: this.#inFlight,
    };
  }

  /** Opens the connection now (no request). */
  async connect(timeoutMs: number, signal?: AbortSignal): Promise<void> {
    this.#assertOpen();
    if (this.#isHttp1()) return;
    await this.#ensureSession(timeoutMs, signal);
  }

  /** Sends one request and reads the whole response. Rejects with SDK errors only. */
  async request(req: WireRequest): Promise<WireResponse> {
    this.#assertOpen();
    if (req.signal?.aborted) throw abortError(req.signal);
    const started = performance.now();
    for (let attempt = 0; ; attempt++) {
      let session: http2.ClientHttp2Session | undefined;
      if (!this.#isHttp1()) session = await this.#ensureSession(req.timeoutMs, req.signal);
      const remaining = Math.max(1, req.timeoutMs - (performance.now() - started));
      if (!session) return this.#h1Request(req, remaining);
      try {
        return await this.#h2Request(session, req, remaining);
      } catch (err) {
        // A session that died between our check and the request: reconnect once, transparently.
        if (
          err instanceof ConnectionError &&
          !err.requestSent &&
          attempt === 0 &&
          session !== this.#session
        )
          continue;
        throw err;
      }
    }
  }

  /**
   * Sends one request and resolves once the response headers arrive; the body is then read as a
   * stream. `timeoutMs` bounds connecting and waiting for the headers only; reading the body has no
   * time limit (abort `signal` to stop). Rejects with SDK errors only.
   */
  async stream(req: WireRequest): Promise<StreamResponse> {
    this.#assertOpen();
    if (req.signal?.aborted) throw abortError(req.signal);
    const started = performance.now();
    let session: http2.ClientHttp2Session | undefined;
    if (!this.#isHttp1()) session = await this.#ensureSession(req.timeoutMs, req.signal);
    const remaining = Math.max(1, req.timeoutMs - (performance.now() - started));
    return new Promise<StreamResponse>((resolve, reject) => {
      let readable: NodeJS.ReadableStream & { destroy(err?: Error): void };
      let settled = false;
      let ended = false;
      const done = (): void => {
        if (ended) return;
        ended = true;
        req.signal?.removeEventListener('abort', onAbort);
        this.#end(session);
      };
      const fail = (err: Error): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        done();
        reject(err);
      };
      let cancel: () => void = () => undefined;
      const onAbort = (): void => {
        cancel();
        fail(abortError(req.signal!));
      };
      const timer = setTimeout(() => {
        cancel();
        fail(
          new TimeoutError(
            `no response after ${Math.round(remaining)} ms (${req.method} ${req.path})`,
          ),
        );
      }, remaining);
      req.signal?.addEventListener('abort', onAbort, { once: true });
      const respond = (status: number, headers: Headers): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        const signal = req.signal;
        const what = `${req.method} ${req.path}`;
        async function* iterate(): AsyncGenerator<Buffer> {
          let complete = false;
          try {
            for await (const chunk of readable as AsyncIterable<Buffer>) yield chunk;
            complete = true;
          } catch (err) {
            if (signal?.aborted) throw abortError(signal);
            throw new ConnectionError(`the response stream broke (${what}): ${messageOf(err)}`, {
              cause: err,
            });
          } finally {
            if (!complete) cancel();
            done();
          }
        }
        resolve({ status, headers, body: iterate(), cancel });
      };
      this.#begin(session);
      if (session) {
        let stream: http2.ClientHttp2Stream;
        try {
          stream = this.#openStream(session, req);
        } catch (err) {
          fail(err as ConnectionError);
          return;
        }
        readable = stream;
        cancel = () => {
          if (!stream.closed) stream.close(http2.constants.NGHTTP2_CANCEL);
        };
        stream.on('response', (h) => respond(Number(h[':status']), normaliseHeaders(h)));
        stream.on('error', (err) =>
          fail(
            new ConnectionError(
              `HTTP/2 stream failed (${req.method} ${req.path}): ${messageOf(err)}`,
              { cause: err },
            ),
          ),
        );
        stream.on('close', () => {
          if (!settled)
            fail(
              new ConnectionError(
                `HTTP/2 stream closed before the response (${req.method} ${req.path})`,
              ),
            );
        });
        if (req.body !== undefined) stream.end(req.body);
        return;
      }
      const mod = this.#secure ? https : http;
      const headers: Record<string, string> = { ...req.headers };
      if (req.body !== undefined) headers['content-length'] = String(req.body.length);
      const r = mod.request({
        agent: this.#agent,
        host: this.#host,
        port: this.#port,
        method: req.method,
        path: this.#prefix + req.path,
        headers,
        ...(this.#secure && !net.isIP(this.#host) ? { servername: this.#host } : {}),
      });
      cancel = () => r.destroy();
      r.on('socket', (sock: net.Socket) => {
        if (!this.#h1Sockets.has(sock)) {
          this.#h1Sockets.add(sock);
          this.#sessionsOpened++;
        }
      });
      r.on('response', (res) => {
        readable = res;
        respond(res.statusCode ?? 0, normaliseHeaders(res.headers));
      });
      r.on('error', (err) =>
        fail(
          new ConnectionError(
            `HTTP/1.1 request failed (${req.method} ${req.path}): ${messageOf(err)}`,
            { cause: err },
          ),
        ),
      );
      r.end(req.body);
    });
  }

  /** Closes the connection gracefully (in-flight requests finish first). Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#connecting?.catch(() => undefined);
    const session = this.#session;
    this.#session = undefined;
    if (session && !session.destroyed) {
      session.ref(); // an unref'd socket would let the process exit before close() settles
      await new Promise<void>((resolve) => {
        session.close(() => resolve());
        if (session.closed && session.destroyed) resolve();
      });
    }
    this.#agent?.destroy();
  }

  #isHttp1(): boolean {
    return this.#protocol === 'http/1.1';
  }

  #assertOpen(): void {
    if (this.#closed) throw new FastVMError('this FastVM client is closed; create a new one');
  }

  async #ensureSession(
    timeoutMs: number,
    signal?: AbortSignal,
  ): Promise<http2.ClientHttp2Session | undefined> {
    for (let attempt = 0; ; attempt++) {
      if (attempt === 3) {
        throw new ConnectionError(`${this.#url.origin} keeps closing new HTTP/2 sessions`, {
          requestSent: false,
        });
      }
      const s = this.#session;
      if (s && !s.closed && !s.destroyed) return s;
      if (this.#isHttp1()) return undefined;
      if (!this.#connecting) {
        this.#connecting = this.#open().finally(() => {
          this.#connecting = undefined;
        });
        this.#connecting.catch(() => undefined); // observed by the racers below
      }
      await race(
        this.#connecting,
        timeoutMs,
        signal,
        () => `connecting to ${this.#url.origin} timed out`,
      );
      if (this.#isHttp1()) return undefined;
      if (this.#session) return this.#session;
    }
  }

  async #open(): Promise<void> {
    const socket = await this.#dial();
    if (this.#secure && (socket as tls.TLSSocket).alpnProtocol !== 'h2') {
      socket.destroy();
      this.#useHttp1();
      return;
    }
    const session = http2.connect(this.#url.origin, {
      createConnection: () => socket,
      settings: { enablePush: false, initialWindowSize: STREAM_WINDOW },
    });
    try {
      await waitForSettings(session);
    } catch (err) {
      session.destroy();
      if (!this.#secure && isPrefaceRejection(err)) {
        this.#useHttp1();
        return;
      }
      throw new ConnectionError(
        `HTTP/2 handshake with ${this.#url.origin} failed: ${messageOf(err)}`,
        {
          cause: err,
          requestSent: false,
        },
      );
    }
    try {
      session.setLocalWindowSize(SESSION_WINDOW);
    } catch {
      // Not fatal: the default window only limits throughput.
    }
    session.on('error', () => undefined); // surfaced through the affected streams
    const drop = (): void => {
      if (this.#session === session) this.#session = undefined;
    };
    session.on('goaway', drop);
    session.on('close', drop);
    if (this.#inFlight === 0) session.unref();
    this.#session = session;
    this.#sessionsOpened++;
    this.#protocol = this.#secure ? 'h2' : 'h2c';
  }

  #dial(): Promise<net.Socket> {
    return new Promise((resolve, reject) => {
      const socket = this.#secure
        ? tls.connect({
            host: this.#host,
            port: this.#port,
            ALPNProtocols: ['h2', 'http/1.1'],
            ...(net.isIP(this.#host) ? {} : { servername: this.#host }),
            ...(this.#tls.ca !== undefined ? { ca: this.#tls.ca } : {}),
            ...(this.#tls.rejectUnauthorized !== undefined
              ? { rejectUnauthorized: this.#tls.rejectUnauthorized }
              : {}),
          })
        : net.connect({ host: this.#host, port: this.#port });
      const timer = setTimeout(() => {
        socket.destroy();
        reject(
          new ConnectionError(`connecting to ${this.#url.origin} timed out`, {
            requestSent: false,
          }),
        );
      }, this.#connectTimeoutMs);
      const onError = (err: Error): void => {
        clearTimeout(timer);
        reject(
          new ConnectionError(`cannot connect to ${this.#url.origin}: ${messageOf(err)}`, {
            cause: err,
            requestSent: false,
          }),
        );
      };
      socket.once('error', onError);
      socket.once(this.#secure ? 'secureConnect' : 'connect', () => {
        clearTimeout(timer);
        socket.removeListener('error', onError);
        socket.setNoDelay(true);
        resolve(socket);
      });
    });
  }

  #useHttp1(): void {
    this.#protocol = 'http/1.1';
    const agentOptions: https.AgentOptions = { keepAlive: true, ...this.#tls };
    this.#agent = this.#secure ? new https.Agent(agentOptions) : new http.Agent(agentOptions);
  }

  #begin(session?: http2.ClientHttp2Session): void {
    this.#inFlight++;
    if (session && !session.destroyed) session.ref();
    this.#requests++;
  }

  #end(session?: http2.ClientHttp2Session): void {
    if (--this.#inFlight !== 0) return;
    for (const s of [session, this.#session]) if (s && !s.destroyed) s.unref();
  }

  /**
   * Open a stream for `req`; a session that refuses one is dropped (the next call opens a new
   * one) and the failure is a ConnectionError marked as never sent.
   */
  #openStream(session: http2.ClientHttp2Session, req: WireRequest): http2.ClientHttp2Stream {
    try {
      return session.request(
        { ':method': req.method, ':path': this.#prefix + req.path, ...req.headers },
        { endStream: req.body === undefined },
      );
    } catch (err) {
      if (this.#session === session) this.#session = undefined;
      throw new ConnectionError(`HTTP/2 session unusable: ${messageOf(err)}`, {
        cause: err,
        requestSent: false,
      });
    }
  }

  #h2Request(
    session: http2.ClientHttp2Session,
    req: WireRequest,
    timeoutMs: number,
  ): Promise<WireResponse> {
    return new Promise<WireResponse>((resolve, reject) => {
      let stream: http2.ClientHttp2Stream;
      try {
        stream = this.#openStream(session, req);
      } catch (err) {
        reject(err as ConnectionError);
        return;
      }
      this.#begin(session);
      let status = 0;
      let headers: Headers = {};
      const chunks: Buffer[] = [];
      let settled = false;
      const finish = (err: Error | undefined, res?: WireResponse): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        req.signal?.removeEventListener('abort', onAbort);
        this.#end(session);
        if (err) reject(err);
        else resolve(res!);
      };
      const cancel = (): void => {
        if (!stream.closed) stream.close(http2.constants.NGHTTP2_CANCEL);
      };
      const timer = setTimeout(() => {
        cancel();
        finish(
          new TimeoutError(
            `request timed out after ${Math.round(timeoutMs)} ms (${req.method} ${req.path})`,
          ),
        );
      }, timeoutMs);
      const onAbort = (): void => {
        cancel();
        finish(abortError(req.signal!));
      };
      req.signal?.addEventListener('abort', onAbort, { once: true });

      stream.on('response', (h) => {
        status = Number(h[':status']);
        headers = normaliseHeaders(h);
      });
      stream.on('data', (c: Buffer) => chunks.push(c));
      stream.on('end', () => finish(undefined, { status, headers, body: Buffer.concat(chunks) }));
      stream.on('error', (err: NodeJS.ErrnoException) => {
        const refused =
          stream.rstCode === http2.constants.NGHTTP2_REFUSED_STREAM ||
          err.code === 'ERR_HTTP2_GOAWAY_SESSION';
        finish(
          new ConnectionError(
            `HTTP/2 stream failed (${req.method} ${req.path}): ${messageOf(err)}`,
            {
              cause: err,
              requestSent: !refused && !stream.pending,
            },
          ),
        );
      });
      stream.on('close', () => {
        if (settled) return;
        const code = stream.rstCode ?? 0;
        finish(
          new ConnectionError(`HTTP/2 stream closed before the response completed (code ${code})`, {
            requestSent: code !== http2.constants.NGHTTP2_REFUSED_STREAM,
          }),
        );
      });
      if (req.body !== undefined) stream.end(req.body);
    });
  }

  #h1Request(req: WireRequest, timeoutMs: number): Promise<WireResponse> {
    return new Promise<WireResponse>((resolve, reject) => {
      const mod = this.#secure ? https : http;
      const headers: Record<string, string> = { ...req.headers };
      if (req.body !== undefined) headers['content-length'] = String(req.body.length);
      const r = mod.request({
        agent: this.#agent,
        host: this.#host,
        port: this.#port,
        method: req.method,
        path: this.#prefix + req.path,
        headers,
        ...(this.#secure && !net.isIP(this.#host) ? { servername: this.#host } : {}),
      });
      this.#begin();
      let settled = false;
      const finish = (err: Error | undefined, res?: WireResponse): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        req.signal?.removeEventListener('abort', onAbort);
        this.#end();
        if (err) reject(err);
        else resolve(res!);
      };
      const timer = setTimeout(() => {
        r.destroy();
        finish(
          new TimeoutError(
            `request timed out after ${Math.round(timeoutMs)} ms (${req.method} ${req.path})`,
          ),
        );
      }, timeoutMs);
      const onAbort = (): void => {
        r.destroy();
        finish(abortError(req.signal!));
      };
      req.signal?.addEventListener('abort', onAbort, { once: true });
      r.on('socket', (s: net.Socket) => {
        if (!this.#h1Sockets.has(s)) {
          this.#h1Sockets.add(s);
          this.#sessionsOpened++;
        }
      });
      r.on('response', (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () =>
          finish(undefined, {
            status: res.statusCode ?? 0,
            headers: normaliseHeaders(res.headers),
            body: Buffer.concat(chunks),
          }),
        );
        res.on('error', (err) =>
          finish(
            new ConnectionError(`reading the response failed: ${messageOf(err)}`, { cause: err }),
          ),
        );
      });
      r.on('error', (err: NodeJS.ErrnoException) => {
        const notSent =
          CONNECT_ERROR_CODES.has(err.code ?? '') || (r.reusedSocket && err.code === 'ECONNRESET');
        finish(
          new ConnectionError(
            `HTTP/1.1 request failed (${req.method} ${req.path}): ${messageOf(err)}`,
            {
              cause: err,
              requestSent: !notSent,
            },
          ),
        );
      });
      r.end(req.body);
    });
  }
}

function waitForSettings(session: http2.ClientHttp2Session): Promise<void> {
  return new Promise((resolve, reject) => {
    const cleanup = (): void => {
      session.off('remoteSettings', onSettings);
      session.off('error', onError);
      session.off('close', onClose);
    };
    const onSettings = (): void => {
      cleanup();
      resolve();
    };
    const onError = (err: Error): void => {
      cleanup();
      reject(err);
    };
    const onClose = (): void => {
      cleanup();
      reject(
        Object.assign(new Error('connection closed before the server sent its HTTP/2 SETTINGS'), {
          code: 'EARLY_CLOSE',
        }),
      );
    };
    session.once('remoteSettings', onSettings);
    session.once('error', onError);
    session.once('close', onClose);
  });
}

/** An HTTP/1.1-only server answers the h2c preface with an HTTP/1.1 error and closes. */
function isPrefaceRejection(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  return code === 'ERR_HTTP2_ERROR' || code === 'EARLY_CLOSE' || code === 'ERR_HTTP2_SESSION_ERROR';
}

function race<T>(
  p: Promise<T>,
  timeoutMs: number,
  signal: AbortSignal | undefined,
  what: () => string,
): Promise<T> {
  if (signal?.aborted) return Promise.reject(abortError(signal));
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => {
      cleanup();
      reject(new TimeoutError(what()));
    }, timeoutMs);
    const onAbort = (): void => {
      cleanup();
      reject(abortError(signal!));
    };
    const cleanup = (): void => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
    };
    signal?.addEventListener('abort', onAbort, { once: true });
    p.then(
      (v) => {
        cleanup();
        resolve(v);
      },
      (e: unknown) => {
        cleanup();
        reject(e);
      },
    );
  });
}

/** @internal */
export function abortError(signal: AbortSignal): AbortError {
  return new AbortError('the request was aborted', { cause: signal.reason });
}

function normaliseHeaders(h: http.IncomingHttpHeaders | http2.IncomingHttpHeaders): Headers {
  const out: Headers = {};
  for (const [k, v] of Object.entries(h)) {
    if (k.startsWith(':') || v === undefined) continue;
    out[k.toLowerCase()] = Array.isArray(v) ? v.join(', ') : String(v);
  }
  return out;
}

function countAgentSockets(agent: http.Agent | undefined): number {
  if (!agent) return 0;
  let n = 0;
  for (const list of Object.values(agent.sockets)) n += list?.length ?? 0;
  for (const list of Object.values(agent.freeSockets)) n += list?.length ?? 0;
  return n;
}

function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
