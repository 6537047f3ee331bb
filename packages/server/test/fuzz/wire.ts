/**
 * The fuzzer's clients: HTTP/1.1 (node:http, keep-alive), h2c (node:http2, one session) and the
 * raw socket. Each answers within a deadline or reports why not; nothing here judges answers.
 */
import http from 'node:http';
import http2 from 'node:http2';
import net from 'node:net';
import type { FuzzRequest } from './generate.js';

/** An answer, or why there was none. */
export interface FuzzResponse {
  status: number;
  headers: Record<string, string>;
  body: Buffer;
  /** Set when no complete answer arrived. */
  error?: string;
  /** The client refused to send the request (invalid for this protocol): not a finding. */
  unsendable?: boolean;
}

const ignore = (): void => {};
/** The requests an HTTP/1.1 connection carried, for findings about it. */
const kHistory = Symbol('fuzz.history');

const failed = (error: string, unsendable = false): FuzzResponse => ({
  status: 0,
  headers: {},
  body: Buffer.alloc(0),
  error,
  ...(unsendable ? { unsendable } : {}),
});

/** Headers that HTTP/2 forbids (a client library refuses them). */
const CONNECTION_HEADERS = new Set([
  'connection',
  'upgrade',
  'keep-alive',
  'proxy-connection',
  'transfer-encoding',
  'host',
]);

/** Sends requests over HTTP/1.1 or h2c to one server. */
export class WireClient {
  readonly #agent = new http.Agent({ keepAlive: true, maxSockets: 8 });
  #session: http2.ClientHttp2Session | undefined;

  constructor(
    readonly url: string,
    readonly deadlineMs: number,
  ) {}

  send(transport: 'h1' | 'h2', req: FuzzRequest): Promise<FuzzResponse> {
    return transport === 'h1' ? this.#h1(req) : this.#h2(req);
  }

  #h1(req: FuzzRequest): Promise<FuzzResponse> {
    const { hostname, port } = new URL(this.url);
    return new Promise((resolve) => {
      // Node's client frames a body itself only for some methods (a DELETE's would follow
      // unframed, and the server rightly reads it as the next request): always say its length.
      const headers =
        req.body === undefined
          ? req.headers
          : { ...req.headers, 'content-length': `${req.body.length}` };
      let out: http.ClientRequest;
      try {
        out = http.request({
          host: hostname,
          port,
          method: req.method,
          path: req.path,
          headers,
          agent: this.#agent,
        });
      } catch (err) {
        resolve(failed(`client refused: ${(err as Error).message}`, true));
        return;
      }
      // A refused upload (413) can still be writing when the server closes: Node's client then
      // reports the reset on the socket after the request let go of it.
      let earlier = '';
      out.on('socket', (socket: net.Socket & { [kHistory]?: string[] }) => {
        if (!socket.listeners('error').includes(ignore)) socket.on('error', ignore);
        const history = (socket[kHistory] ??= []);
        earlier = history.slice(-3).join(' | ');
        history.push(`${req.method} ${req.path.slice(0, 60)} (${req.note.slice(0, 40)})`);
      });
      const timer = setTimeout(() => {
        out.destroy();
        resolve(failed(`no answer within ${this.deadlineMs} ms`));
      }, this.deadlineMs);
      out.on('response', (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          clearTimeout(timer);
          resolve({
            status: res.statusCode ?? 0,
            headers: flat(res.headers),
            body: concat(chunks),
          });
        });
        res.on('error', (err) => {
          clearTimeout(timer);
          resolve(failed(`response cut: ${err.message}`));
        });
      });
      out.on('error', (err) => {
        clearTimeout(timer);
        const before = earlier ? `; earlier on this connection: ${earlier}` : '';
        resolve(failed(`connection error: ${err.message}${before}`));
      });
      out.end(req.body);
    });
  }

  #h2(req: FuzzRequest): Promise<FuzzResponse> {
    const headers: http2.OutgoingHttpHeaders = { ':method': req.method, ':path': req.path };
    for (const [name, value] of Object.entries(req.headers)) {
      if (!CONNECTION_HEADERS.has(name.toLowerCase())) headers[name.toLowerCase()] = value;
    }
    return new Promise((resolve) => {
      let stream: http2.ClientHttp2Stream;
      if (!req.path.startsWith('/')) {
        // HTTP/2 requires an absolute path; nghttp2 resets the stream before the app sees it.
        resolve(failed('path does not start with /', true));
        return;
      }
      try {
        stream = this.#h2Session().request(headers, { endStream: req.body === undefined });
      } catch (err) {
        resolve(failed(`client refused: ${(err as Error).message}`, true));
        return;
      }
      let status = 0;
      let answer: Record<string, string> = {};
      const chunks: Buffer[] = [];
      const timer = setTimeout(() => {
        stream.close(http2.constants.NGHTTP2_CANCEL);
        resolve(failed(`no answer within ${this.deadlineMs} ms`));
      }, this.deadlineMs);
      stream.on('response', (h) => {
        status = Number(h[':status']);
        answer = flat(h);
      });
      stream.on('data', (c: Buffer) => chunks.push(c));
      stream.on('end', () => {
        clearTimeout(timer);
        resolve({ status, headers: answer, body: concat(chunks) });
      });
      stream.on('error', (err) => {
        clearTimeout(timer);
        resolve(failed(`stream error: ${err.message}`));
      });
      if (req.body !== undefined) stream.end(req.body);
    });
  }

  #h2Session(): http2.ClientHttp2Session {
    if (!this.#session || this.#session.closed || this.#session.destroyed) {
      // Node counts a session's queued outgoing data against maxSessionMemory (10 MB by
      // default) and, over it, resets the responses of its other streams itself: a 10 MiB body
      // would make this client, not the server, refuse its neighbours' answers.
      this.#session = http2.connect(this.url, { maxSessionMemory: 256 });
      this.#session.on('error', () => {});
    }
    return this.#session;
  }

  close(): void {
    this.#agent.destroy();
    this.#session?.close();
  }
}

/** A raw HTTP/1.1 exchange: what came back and whether the server closed the connection. */
export interface RawExchange {
  status: number;
  headers: Record<string, string>;
  body: string;
  /** Everything received, as latin1. */
  raw: string;
  /** The server closed the connection (within the deadline). */
  closed: boolean;
  /** Nothing arrived and the connection stayed open for the whole deadline. */
  hung: boolean;
}

/**
 * Writes `bytes` to a new connection and reads the first response (a 101 ends with its head).
 * `untilClose`: reads on until the server closes the connection. Either way it gives up after
 * `deadlineMs`.
 */
export function rawExchange(
  url: string,
  bytes: Buffer | string,
  opts: { deadlineMs: number; untilClose?: boolean; endWrite?: boolean },
): Promise<RawExchange> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve) => {
    const socket = net.connect(Number(port), hostname);
    let received = Buffer.alloc(0);
    let done = false;
    const finish = (closed: boolean): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.destroy();
      const raw = received.toString('latin1');
      resolve({ ...parseResponse(raw), raw, closed, hung: !closed && raw === '' });
    };
    const timer = setTimeout(() => finish(false), opts.deadlineMs);
    socket.on('data', (c: Buffer) => {
      received = Buffer.concat([received, c]);
      if (!opts.untilClose && complete(received.toString('latin1'))) finish(false);
    });
    socket.on('close', () => finish(true));
    socket.on('error', () => finish(true));
    socket.write(bytes);
    if (opts.endWrite) socket.end();
  });
}

/** Whether `raw` holds a whole first response: a 101 head, or a head and its Content-Length body. */
function complete(raw: string): boolean {
  const rest = skipInterim(raw);
  const end = rest.indexOf('\r\n\r\n');
  if (end < 0) return false;
  if (/^HTTP\/1\.1 101 /.test(rest)) return true;
  const length = /\r\ncontent-length:\s*(\d+)/i.exec(rest.slice(0, end));
  return length !== null && rest.length - end - 4 >= Number(length[1]);
}

/** `raw` without the interim answers (100 Continue) that come before a response. */
function skipInterim(raw: string): string {
  let rest = raw;
  while (/^HTTP\/1\.1 1(?!01)\d\d /.test(rest) && rest.includes('\r\n\r\n')) {
    rest = rest.slice(rest.indexOf('\r\n\r\n') + 4);
  }
  return rest;
}

/** The first response in `raw` (status 0 when there is none). */
export function parseResponse(raw: string): {
  status: number;
  headers: Record<string, string>;
  body: string;
} {
  const rest = skipInterim(raw);
  const end = rest.indexOf('\r\n\r\n');
  const head = end < 0 ? rest : rest.slice(0, end);
  const [statusLine = '', ...lines] = head.split('\r\n');
  const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(statusLine)?.[1] ?? 0);
  const headers: Record<string, string> = {};
  for (const line of lines) {
    const colon = line.indexOf(':');
    if (colon > 0) headers[line.slice(0, colon).toLowerCase()] = line.slice(colon + 1).trim();
  }
  let body = end < 0 ? '' : rest.slice(end + 4);
  const length = headers['content-length'];
  if (length !== undefined) body = body.slice(0, Number(length));
  return { status, headers, body: Buffer.from(body, 'latin1').toString('utf8') };
}

function flat(
  headers: http.IncomingHttpHeaders | http2.IncomingHttpHeaders,
): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(headers)) {
    if (v !== undefined && !k.startsWith(':')) out[k] = Array.isArray(v) ? v.join(', ') : String(v);
  }
  return out;
}

function concat(chunks: Buffer[]): Buffer {
  return chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks);
}
