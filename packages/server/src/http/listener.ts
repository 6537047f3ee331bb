/**
 * One port, two protocols. A front `net.Server` (cleartext) or `tls.Server` (with a certificate)
 * accepts connections and hands each to an `http.Server` (HTTP/1.1, incl. WebSocket upgrades) or
 * an `http2.Http2Server`, both of which route into the same Fastify handler:
 *   - cleartext: the first bytes decide; the HTTP/2 connection preface `PRI * HTTP/2.0…` means
 *     h2c with prior knowledge, anything else is HTTP/1.1;
 *   - TLS: ALPN decides (`h2`, else HTTP/1.1).
 * The listener also owns connection draining for graceful shutdown.
 * @module
 */
import http from 'node:http';
import http2 from 'node:http2';
import net from 'node:net';
import tls from 'node:tls';
import type { Logger } from 'pino';
import { ApiError } from '../errors.js';
import { writeRawError } from './raw-response.js';

/** The request handler Fastify hands to `serverFactory`. */
export type RequestHandler = (
  req: http.IncomingMessage | http2.Http2ServerRequest,
  res: http.ServerResponse | http2.Http2ServerResponse,
) => void;

const H2_PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1');
/** A connection that sends nothing is dropped after this long. */
const FIRST_BYTES_TIMEOUT_MS = 30_000;
/** Idle HTTP/1.1 keep-alive and HTTP/2 sessions (behind load balancers that keep 60 s). */
const IDLE_TIMEOUT_MS = 72_000;

/**
 * HTTP/2 receive windows: what a client may send on a stream (and on the whole connection)
 * before the server acknowledges it. The protocol default (64 KiB for both) costs a round trip
 * per 64 KiB, so an exec body at its limit (16 MiB) took ~250 round trips: 10 s and more on a
 * 40 ms link, while the other streams of the connection queued for the same window. A stream's
 * data is acknowledged as the app reads it, so one stream still makes the server hold at most
 * 1 MiB that nobody reads. (Node's `maxSessionMemory` counts what a session has queued to send,
 * not what it receives; Fastify writes large answers in chunks, so the default is kept.)
 */
const H2_STREAM_WINDOW = 1024 * 1024;
const H2_CONNECTION_WINDOW = 16 * 1024 * 1024;

/** The protocol servers behind one port. `h1` is what Fastify sees as `app.server`. */
export interface ProtocolServers {
  h1: http.Server;
  h2: http2.Http2Server;
}

/**
 * What sees an HTTP/2 stream before Node's compatibility layer makes it a request for `handler`:
 * it answers on the stream, or calls `next` (the compatibility layer) — never both.
 */
export type StreamFilter = (
  stream: http2.ServerHttp2Stream,
  headers: http2.IncomingHttpHeaders,
  next: () => void,
) => void;

/**
 * Creates the HTTP/1.1 and HTTP/2 servers sharing `handler` (used as Fastify's serverFactory),
 * with `streamFilter` ahead of `handler` for HTTP/2.
 */
export function createProtocolServers(
  handler: RequestHandler,
  streamFilter?: StreamFilter,
): ProtocolServers {
  // A request without Host is refused by the app, in the API's error shape.
  const h1 = http.createServer(
    { keepAliveTimeout: IDLE_TIMEOUT_MS, requireHostHeader: false },
    handler,
  );
  const h2 = http2.createServer({ settings: { initialWindowSize: H2_STREAM_WINDOW } }, handler);
  if (streamFilter) filterStreams(h2, streamFilter);
  h2.on('session', (session) => {
    session.setTimeout(IDLE_TIMEOUT_MS, () => session.close());
    const widen = (): void => {
      if (!session.destroyed) session.setLocalWindowSize(H2_CONNECTION_WINDOW);
    };
    if (session.connecting) session.once('connect', widen);
    else widen();
  });
  return { h1, h2 };
}

/**
 * Puts `filter` in front of the compatibility layer, which Node installs as the server's one
 * `'stream'` listener when it is given a request handler. Should a Node version install it
 * otherwise, the filter is left out (every request then takes the compatibility path).
 */
function filterStreams(h2: http2.Http2Server, filter: StreamFilter): void {
  const compat = h2.listeners('stream');
  if (compat.length !== 1) return;
  const [toRequest] = compat as ((...args: unknown[]) => void)[];
  h2.removeAllListeners('stream');
  h2.on('stream', function (this: http2.Http2Server, stream, headers, ...rest: unknown[]) {
    filter(stream, headers, () => toRequest!.call(this, stream, headers, ...rest));
  });
}

/** Where and how to listen. */
export interface ListenOptions {
  host: string;
  port: number;
  tls?: { cert: string | Buffer; key: string | Buffer } | undefined;
  logger: Logger;
}

/** A listening port (see `listen`). */
export interface Listener {
  readonly host: string;
  readonly port: number;
  readonly secure: boolean;
  /** Stops accepting, lets in-flight requests finish (up to `graceMs`), then drops the rest. */
  close(graceMs: number): Promise<void>;
  /** Drops every connection now (crash simulation and last resort). */
  destroy(): void;
}

const kActive = Symbol('fastvm.activeRequests');
const kHttp2 = Symbol('fastvm.http2');
const kRefusal = Symbol('fastvm.refusal');
type TrackedSocket = net.Socket & {
  /** HTTP/1.1 requests whose responses are not finished yet. */
  [kActive]?: Set<http.IncomingMessage>;
  [kHttp2]?: boolean;
  /** A parse error to answer once the responses under way on the connection are sent. */
  [kRefusal]?: ApiError;
};

const activeCount = (socket: TrackedSocket): number => socket[kActive]?.size ?? 0;

/** Starts accepting connections for `servers` on `host:port` (0 = ephemeral). */
export async function listen(servers: ProtocolServers, opts: ListenOptions): Promise<Listener> {
  const { h1, h2 } = servers;
  /** Connections as the protocol servers see them (TLS sockets when TLS is on). */
  const sockets = new Set<TrackedSocket>();
  /** Every TCP connection, including ones still in the TLS handshake. */
  const raw = new Set<net.Socket>();
  const sessions = new Set<http2.ServerHttp2Session>();
  let draining = false;

  // HTTP/1.1: count requests per socket so idle keep-alive sockets can be closed when draining.
  h1.on('request', (req: http.IncomingMessage, res: http.ServerResponse) => {
    const socket = req.socket as TrackedSocket;
    (socket[kActive] ??= new Set()).add(req);
    if (draining) res.shouldKeepAlive = false;
    res.once('close', () => {
      socket[kActive]?.delete(req);
      const refusal = socket[kRefusal];
      if (refusal && activeCount(socket) === 0) writeRawError(socket, refusal);
      else if (draining && activeCount(socket) === 0) socket.end();
    });
  });
  // What Node's HTTP/1.1 parser refuses (a malformed request line, header or body framing,
  // headers over the size limit, a request that took too long) is answered in the API's error
  // shape; Node's own answer has no body. Responses to complete requests still under way on the
  // connection (pipelining) are sent first; a request whose body the error cut off will never
  // be answered, so the refusal goes out at once. Nothing after the error is read.
  h1.on(
    'clientError',
    (err: NodeJS.ErrnoException & { rawPacket?: Buffer }, socket: TrackedSocket) => {
      if (err.code === 'ECONNRESET' || !socket.writable) {
        socket.destroy();
        return;
      }
      const refusal = clientErrorFor(err);
      const active = [...(socket[kActive] ?? [])];
      if (active.length > 0 && active.every((req) => req.complete)) {
        socket[kRefusal] ??= refusal;
        return;
      }
      const head = err.rawPacket?.subarray(0, 5).toString('latin1') === 'HEAD ';
      writeRawError(socket, refusal, {}, { omitBody: head });
    },
  );
  // A proxy tunnel request is not for us. Without a listener Node drops the connection without
  // a word; answer like any request for a route that does not exist.
  h1.on('connect', (req: http.IncomingMessage, socket: net.Socket) => {
    writeRawError(socket, new ApiError('not_found', `no route for CONNECT ${req.url ?? ''}`));
  });
  h2.on('session', (session: http2.ServerHttp2Session) => {
    sessions.add(session);
    session.once('close', () => sessions.delete(session));
    if (draining) session.close();
  });

  const track = (set: Set<net.Socket>, socket: net.Socket): void => {
    set.add(socket);
    socket.once('close', () => set.delete(socket));
  };

  let front: net.Server;
  if (opts.tls) {
    front = tls.createServer(
      {
        cert: opts.tls.cert,
        key: opts.tls.key,
        ALPNProtocols: ['h2', 'http/1.1'],
        noDelay: true,
      },
      (socket: tls.TLSSocket & TrackedSocket) => {
        track(sockets, socket);
        socket[kHttp2] = socket.alpnProtocol === 'h2';
        (socket[kHttp2] ? h2 : h1).emit('connection', socket);
      },
    );
    front.on('connection', (socket: net.Socket) => track(raw, socket));
    front.on('tlsClientError', (err) => opts.logger.debug({ err }, 'TLS handshake failed'));
  } else {
    // Nagle off, as node:http's own servers have it: an answer leaves when it is written.
    front = net.createServer({ noDelay: true }, (socket) => {
      track(raw, socket);
      track(sockets, socket);
      sniffProtocol(socket, servers);
    });
  }
  front.on('error', (err) => opts.logger.error({ err }, 'listener error'));

  await new Promise<void>((resolve, reject) => {
    front.once('error', reject);
    front.listen(opts.port, opts.host, () => {
      front.off('error', reject);
      resolve();
    });
  });
  const addr = front.address() as net.AddressInfo;

  const destroyAll = (): void => {
    for (const s of sessions) s.destroy();
    for (const s of sockets) s.destroy();
    for (const s of raw) s.destroy();
  };

  return {
    host: opts.host,
    port: addr.port,
    secure: Boolean(opts.tls),
    async close(graceMs: number): Promise<void> {
      draining = true;
      const closed = new Promise<void>((resolve) => front.close(() => resolve()));
      for (const session of sessions) session.close();
      for (const socket of sockets) {
        // Idle HTTP/1.1 keep-alive sockets (and sockets still being sniffed) go now; busy ones
        // close after their response. HTTP/2 sockets close with their session.
        if (activeCount(socket) === 0 && !socket[kHttp2]) socket.end();
      }
      const deadline = Date.now() + graceMs;
      while (raw.size > 0 && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 20));
      }
      destroyAll();
      await closed;
    },
    destroy(): void {
      draining = true;
      front.close();
      destroyAll();
    },
  };
}

/** The API error for a request Node's HTTP/1.1 parser refused. */
function clientErrorFor(err: NodeJS.ErrnoException): ApiError {
  if (err.code === 'HPE_HEADER_OVERFLOW') {
    return new ApiError('headers_too_large', 'request headers are too large');
  }
  if (err.code === 'ERR_HTTP_REQUEST_TIMEOUT') {
    return new ApiError('request_timeout', 'the request took too long to arrive');
  }
  return new ApiError('bad_request', `malformed HTTP request (${err.code ?? 'parse error'})`);
}

/**
 * Reads until the bytes either diverge from the HTTP/2 preface (HTTP/1.1) or contain all of it
 * (h2c), then replays them into the chosen server.
 */
function sniffProtocol(socket: TrackedSocket, servers: ProtocolServers): void {
  let seen: Buffer = Buffer.alloc(0);
  const timer = setTimeout(() => socket.destroy(), FIRST_BYTES_TIMEOUT_MS);
  const cleanup = (): void => {
    clearTimeout(timer);
    socket.off('data', onData);
    socket.off('close', cleanup);
  };
  const onData = (chunk: Buffer): void => {
    seen = seen.length === 0 ? chunk : Buffer.concat([seen, chunk]);
    const n = Math.min(seen.length, H2_PREFACE.length);
    const prefixMatches = seen.subarray(0, n).equals(H2_PREFACE.subarray(0, n));
    if (prefixMatches && seen.length < H2_PREFACE.length) return; // need more bytes
    cleanup();
    socket.pause();
    socket.unshift(seen);
    if (prefixMatches) {
      socket[kHttp2] = true;
      // The HTTP/2 session reads the unshifted bytes itself on the next tick; resuming the
      // socket here would emit them to nobody.
      servers.h2.emit('connection', socket);
    } else {
      servers.h1.emit('connection', socket);
      socket.resume();
    }
  };
  socket.on('data', onData);
  socket.once('close', cleanup);
  socket.on('error', () => socket.destroy());
}
