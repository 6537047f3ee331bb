/**
 * Answers given outside Fastify. An API error written straight to an HTTP/1.1 socket, for
 * requests Node's parser refuses, `CONNECT`, and WebSocket handshakes that `ws` refuses: the same
 * `{"error", "code"}` body as every other error, and the connection closes. And the JSON answers
 * of the fast paths (`fast-reads.ts`, `fast-exec.ts`) on a response or an HTTP/2 stream.
 * @module
 */
import { STATUS_CODES, type ServerResponse } from 'node:http';
import type http2 from 'node:http2';
import type { Duplex } from 'node:stream';
import type { ApiError } from '../errors.js';

/**
 * Writes `err` as a complete HTTP/1.1 response and closes the socket once it is sent.
 * `omitBody`: the answer to a HEAD request, which has none.
 */
export function writeRawError(
  socket: Duplex,
  err: ApiError,
  headers: Record<string, string> = {},
  opts: { omitBody?: boolean } = {},
): void {
  if (socket.destroyed) return;
  // A client that resets the connection while this is written is no error of ours.
  socket.on('error', () => socket.destroy());
  if (!socket.writable) {
    socket.destroy();
    return;
  }
  const body = JSON.stringify(err.toBody());
  const lines = [
    `HTTP/1.1 ${err.statusCode} ${STATUS_CODES[err.statusCode] ?? 'Error'}`,
    'Content-Type: application/json; charset=utf-8',
    `Content-Length: ${Buffer.byteLength(body)}`,
    'Connection: close',
    ...Object.entries(headers).map(([name, value]) => `${name}: ${value}`),
  ];
  socket.end(`${lines.join('\r\n')}\r\n\r\n${opts.omitBody ? '' : body}`);
  // Whatever the client still sends is read and dropped, so that closing does not reset the
  // connection before the answer arrives; a client that never closes its side is cut off.
  socket.resume();
  setTimeout(() => socket.destroy(), 2000).unref();
}

/** The content type of every JSON answer. */
export const JSON_CONTENT_TYPE = 'application/json; charset=utf-8';

type Headers = Record<string, string | number>;

/**
 * A JSON answer (`body`, serialized) on a Node response, for the fast paths ahead of Fastify
 * (`fast-reads.ts`, `fast-exec.ts`). `headers` may name another content type.
 */
export function endJson(
  res: ServerResponse | http2.Http2ServerResponse,
  status: number,
  headers: Headers,
  body: string | Buffer,
): void {
  res.writeHead(status, {
    'content-type': JSON_CONTENT_TYPE,
    ...headers,
    'content-length': Buffer.byteLength(body),
  });
  res.end(body);
}

/** `endJson` on an HTTP/2 stream answered without the compatibility layer. */
export function respondJson(
  stream: http2.ServerHttp2Stream,
  status: number,
  headers: Headers,
  body: string | Buffer,
): void {
  stream.respond({
    ':status': status,
    'content-type': JSON_CONTENT_TYPE,
    ...headers,
    'content-length': Buffer.byteLength(body),
  });
  stream.end(body);
}

/** A listener for the errors of a stream nobody else listens to (a client's reset). */
export function ignore(): void {}
