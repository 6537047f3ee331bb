/**
 * Forwarding to an HTTP/2 cleartext backend (`h2c: true`, e.g. gRPC), from HTTP/1.1 or HTTP/2
 * clients: one prior-knowledge session per backend, shared by all requests to it; bodies are
 * piped both ways and trailers (`grpc-status`) passed on.
 * @module
 */
import http2 from 'node:http2';
import type http from 'node:http';
import type { OutgoingHttpHeaders } from 'node:http';
import { writeResponseHead } from './forward-http1.js';
import { responseHeaders } from './headers.js';
import { backendError, sendError } from './pages.js';
import type { Backend } from './resolver.js';
import { DEFAULT_TIMEOUTS, timeoutError, type ProxyTimeouts } from './timeouts.js';

/** An idle backend session is closed after this. */
const SESSION_IDLE_MS = 60_000;

/** See the module comment. */
export class H2cForwarder {
  readonly #sessions = new Map<string, http2.ClientHttp2Session>();

  constructor(private readonly timeouts: ProxyTimeouts = DEFAULT_TIMEOUTS) {}

  private session(backend: Backend): http2.ClientHttp2Session {
    const key = `[${backend.address}]:${backend.port}`;
    const known = this.#sessions.get(key);
    if (known && !known.closed && !known.destroyed) return known;
    const session = http2.connect(`http://${key}`, {
      settings: { initialWindowSize: 1024 * 1024 },
    });
    const timer = setTimeout(
      () => session.destroy(timeoutError('FASTVM_CONNECT_TIMEOUT')),
      this.timeouts.connectMs,
    );
    session.once('connect', () => clearTimeout(timer));
    const forget = (): void => {
      clearTimeout(timer);
      if (this.#sessions.get(key) === session) this.#sessions.delete(key);
    };
    session.on('error', forget);
    session.once('close', forget);
    session.once('goaway', forget);
    session.setTimeout(SESSION_IDLE_MS, () => session.close());
    this.#sessions.set(key, session);
    return session;
  }

  forward(
    req: http.IncomingMessage | http2.Http2ServerRequest,
    res: http.ServerResponse | http2.Http2ServerResponse,
    backend: Backend,
    headers: OutgoingHttpHeaders,
    path: string,
    authority: string,
    withBody: boolean,
  ): void {
    const where = `Port ${backend.port} of VM ${backend.vmId} (HTTP/2)`;
    let stream: http2.ClientHttp2Stream;
    try {
      stream = this.session(backend).request(
        {
          ...headers,
          ':method': req.method ?? 'GET',
          ':path': path,
          ':scheme': 'http',
          ':authority': authority,
        },
        { endStream: !withBody },
      );
    } catch (err) {
      sendError(req, res, backendError(err as NodeJS.ErrnoException, where));
      return;
    }
    const responseTimer = setTimeout(
      () => stream.destroy(timeoutError('FASTVM_RESPONSE_TIMEOUT')),
      this.timeouts.responseMs,
    );
    let trailers: http2.IncomingHttpHeaders | undefined;
    stream.on('response', (h) => {
      clearTimeout(responseTimer);
      writeResponseHead(res, Number(h[':status'] ?? 502), responseHeaders(h));
      stream.pipe(res as NodeJS.WritableStream, { end: false });
    });
    stream.on('trailers', (t) => (trailers = t));
    stream.once('end', () => {
      if (trailers) res.addTrailers(responseHeaders(trailers));
      res.end();
    });
    stream.on('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(responseTimer);
      sendError(req, res, backendError(err, where));
    });
    res.once('close', () => {
      clearTimeout(responseTimer);
      if (!stream.closed) stream.close(http2.constants.NGHTTP2_CANCEL);
    });
    if (withBody) req.pipe(stream);
  }

  close(): void {
    for (const s of this.#sessions.values()) s.destroy();
    this.#sessions.clear();
  }
}
