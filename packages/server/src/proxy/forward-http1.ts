/**
 * Forwarding to an HTTP/1.1 backend over a keep-alive agent: request and response bodies are
 * piped chunk by chunk in both directions (nothing is buffered, so uploads, downloads and SSE
 * streams flow as they are written), trailers are passed on, and a request without a body
 * that hits a keep-alive socket the backend had just closed is retried once on a new one.
 * @module
 */
import http from 'node:http';
import type http2 from 'node:http2';
import type { OutgoingHttpHeaders } from 'node:http';
import { responseHeaders } from './headers.js';
import { backendError, sendError } from './pages.js';
import type { Backend } from './resolver.js';
import { DEFAULT_TIMEOUTS, timeoutError, type ProxyTimeouts } from './timeouts.js';

type ClientRequest = http.IncomingMessage | http2.Http2ServerRequest;
type ClientResponse = http.ServerResponse | http2.Http2ServerResponse;

/** Sends streaming responses' headers at once (an SSE stream's first event may be far off). */
export function writeResponseHead(
  res: ClientResponse,
  status: number,
  headers: OutgoingHttpHeaders,
): void {
  res.writeHead(status, headers);
  if (headers['content-length'] === undefined) (res as http.ServerResponse).flushHeaders?.();
}

/**
 * Copies `from` into `to` chunk by chunk with backpressure, leaving the end to the caller: what
 * `pipe` does, with fewer listeners per request (this is the proxy's hot path).
 */
export function relay(from: NodeJS.ReadableStream, to: ClientResponse): void {
  from.on('data', (chunk: Buffer) => {
    if (!(to as http.ServerResponse).write(chunk)) {
      from.pause();
      to.once('drain', () => from.resume());
    }
  });
}

/** See the module comment. */
export class Http1Forwarder {
  constructor(private readonly timeouts: ProxyTimeouts = DEFAULT_TIMEOUTS) {}

  readonly agent = new http.Agent({
    keepAlive: true,
    keepAliveMsecs: 1000,
    maxFreeSockets: 256,
    scheduling: 'lifo',
  });

  forward(
    req: ClientRequest,
    res: ClientResponse,
    backend: Backend,
    headers: OutgoingHttpHeaders,
    path: string,
    withBody: boolean,
  ): void {
    const where = `Port ${backend.port} of VM ${backend.vmId}`;
    const attempt = (retry: boolean): void => {
      const out = http.request({
        agent: this.agent,
        host: backend.address,
        family: 6,
        port: backend.port,
        method: req.method,
        path,
        headers,
        setHost: false,
      });
      const responseTimer = setTimeout(
        () => out.destroy(timeoutError('FASTVM_RESPONSE_TIMEOUT')),
        this.timeouts.responseMs,
      );
      out.on('socket', (socket) => {
        socket.setNoDelay(true);
        if (!socket.connecting) return;
        const timer = setTimeout(
          () => out.destroy(timeoutError('FASTVM_CONNECT_TIMEOUT')),
          this.timeouts.connectMs,
        );
        socket.once('connect', () => clearTimeout(timer));
        socket.once('close', () => clearTimeout(timer));
      });
      out.on('response', (r) => {
        clearTimeout(responseTimer);
        if (res.destroyed) {
          r.destroy();
          return;
        }
        writeResponseHead(res, r.statusCode ?? 502, responseHeaders(r.headers));
        relay(r, res);
        r.once('end', () => {
          if (Object.keys(r.trailers).length > 0) res.addTrailers(responseHeaders(r.trailers));
          res.end();
        });
        r.once('error', () => res.destroy());
        r.once('aborted', () => res.destroy());
      });
      out.on('error', (err: NodeJS.ErrnoException) => {
        clearTimeout(responseTimer);
        // A keep-alive socket the backend closed just as we reused it: try a fresh one.
        if (retry && out.reusedSocket && err.code === 'ECONNRESET' && !res.headersSent) {
          attempt(false);
          return;
        }
        sendError(req, res, backendError(err, where));
      });
      res.once('close', () => {
        clearTimeout(responseTimer);
        if (!res.writableFinished) out.destroy();
      });
      if (withBody) req.pipe(out);
      else out.end();
    };
    attempt(!withBody);
  }

  close(): void {
    this.agent.destroy();
  }
}
