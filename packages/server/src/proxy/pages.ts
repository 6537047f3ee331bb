/**
 * The proxy's own answers (unknown host, VM not running, backend down, timeouts, refused
 * credentials): small pages a browser or curl user can read, HTML when the client accepts it,
 * plain text otherwise, with the reason in `x-fastvm-proxy-error`.
 * @module
 */
import type http from 'node:http';
import type http2 from 'node:http2';
import type { Duplex } from 'node:stream';

/** An error the proxy answers itself. */
export interface ProxyError {
  status: number;
  /** Stable short code (`unknown_host`, `vm_not_running`, …), sent in `x-fastvm-proxy-error`. */
  code: string;
  /** One sentence saying what went wrong and what to do. */
  message: string;
  /** Extra response headers (`www-authenticate`). */
  headers?: Record<string, string>;
}

const TITLES: Record<number, string> = {
  400: 'Bad request',
  401: 'Unauthorized',
  404: 'Not found',
  502: 'Bad gateway',
  504: 'Gateway timeout',
};

function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/** The body and content type of an error page for a client that sent `accept`. */
export function renderPage(
  err: ProxyError,
  accept: string | undefined,
): {
  type: string;
  body: string;
} {
  const title = `${err.status} ${TITLES[err.status] ?? 'Error'}`;
  if (accept && /text\/html/i.test(accept)) {
    const body =
      `<!doctype html><html><head><meta charset="utf-8"><title>${title}</title></head>` +
      `<body style="font-family:sans-serif;max-width:40em;margin:4em auto">` +
      `<h1>${title}</h1><p>${escapeHtml(err.message)}</p>` +
      `<hr><small>FastVM service proxy</small></body></html>\n`;
    return { type: 'text/html; charset=utf-8', body };
  }
  return { type: 'text/plain; charset=utf-8', body: `${title}: ${err.message}\n` };
}

/** Answers a request with the error page (unless a response is under way: then it is cut). */
export function sendError(
  req: http.IncomingMessage | http2.Http2ServerRequest,
  res: http.ServerResponse | http2.Http2ServerResponse,
  err: ProxyError,
): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const { type, body } = renderPage(err, req.headers.accept);
  const headers: Record<string, string | number> = {
    'content-type': type,
    'content-length': Buffer.byteLength(body),
    'cache-control': 'no-store',
    'x-fastvm-proxy-error': err.code,
    ...err.headers,
  };
  res.writeHead(err.status, headers);
  if (req.method === 'HEAD') res.end();
  else res.end(body);
}

/** Answers on a raw socket (an upgrade request the HTTP server has let go of), then closes it. */
export function writeRawError(socket: Duplex, err: ProxyError, accept?: string): void {
  if (!socket.writable) {
    socket.destroy();
    return;
  }
  const { type, body } = renderPage(err, accept);
  const extra = Object.entries(err.headers ?? {})
    .map(([k, v]) => `${k}: ${v}\r\n`)
    .join('');
  socket.end(
    `HTTP/1.1 ${err.status} ${TITLES[err.status] ?? 'Error'}\r\n` +
      `content-type: ${type}\r\ncontent-length: ${Buffer.byteLength(body)}\r\n` +
      `cache-control: no-store\r\nx-fastvm-proxy-error: ${err.code}\r\n${extra}` +
      `connection: close\r\n\r\n${body}`,
  );
}

/** The proxy error for a failed backend connection or exchange. */
export function backendError(err: NodeJS.ErrnoException, where: string): ProxyError {
  switch (err.code) {
    case 'ECONNREFUSED':
      return {
        status: 502,
        code: 'backend_refused',
        message: `${where} refused the connection: is the server in the VM running and listening on that port (on all addresses, IPv6 included)?`,
      };
    case 'FASTVM_CONNECT_TIMEOUT':
    case 'ETIMEDOUT':
      return {
        status: 504,
        code: 'backend_connect_timeout',
        message: `${where} did not accept the connection in time.`,
      };
    case 'FASTVM_RESPONSE_TIMEOUT':
      return {
        status: 504,
        code: 'backend_timeout',
        message: `${where} did not answer in time.`,
      };
    case 'EHOSTUNREACH':
    case 'ENETUNREACH':
      return {
        status: 502,
        code: 'backend_unreachable',
        message: `${where} is unreachable from the host.`,
      };
    default:
      return {
        status: 502,
        code: 'backend_failed',
        message: `${where} failed: ${err.code ?? err.message}.`,
      };
  }
}
