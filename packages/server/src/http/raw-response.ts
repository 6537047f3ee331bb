/**
 * An API error written straight to an HTTP/1.1 socket, for the few answers given outside Fastify:
 * requests Node's parser refuses, `CONNECT`, and WebSocket handshakes that `ws` refuses. They
 * get the same `{"error", "code"}` body as every other error, and the connection closes.
 * @module
 */
import { STATUS_CODES } from 'node:http';
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
