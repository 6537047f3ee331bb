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

/** The protocol servers behind one port. `h1` is what Fastify sees as `app.server`. */
export interface ProtocolServers {
  h1: http.Server;
  h2: http2.Http2Server;
}

/** Creates the HTTP/1.1 and HTTP/2 servers sharing `handler` (used as Fastify's serverFactory). */
export function createProtocolServers(handler: RequestHandler): ProtocolServers {
  const h1 = http.createServer({ keepAliveTimeout: IDLE_TIMEOUT_MS }, handler);
  const h2 = http2.createServer({}, handler);
  h2.on('session', (session) => {
    session.setTimeout(IDLE_TIMEOUT_MS, () => session.close());
  });
  return { h1, h2 };
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
type TrackedSocket = net.Socket & { [kActive]?: number; [kHttp2]?: boolean };

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
    socket[kActive] = (socket[kActive] ?? 0) + 1;
    if (draining) res.shouldKeepAlive = false;
    res.once('close', () => {
      socket[kActive] = (socket[kActive] ?? 1) - 1;
      if (draining && socket[kActive] === 0) socket.end();
    });
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
      { cert: opts.tls.cert, key: opts.tls.key, ALPNProtocols: ['h2', 'http/1.1'] },
      (socket: tls.TLSSocket & TrackedSocket) => {
        track(sockets, socket);
        socket[kHttp2] = socket.alpnProtocol === 'h2';
        (socket[kHttp2] ? h2 : h1).emit('connection', socket);
      },
    );
    front.on('connection', (socket: net.Socket) => track(raw, socket));
    front.on('tlsClientError', (err) => opts.logger.debug({ err }, 'TLS handshake failed'));
  } else {
    front = net.createServer((socket) => {
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
        if (!(socket[kActive] ?? 0) && !socket[kHttp2]) socket.end();
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
