/**
 * Protocol upgrades (WebSocket handshakes) over HTTP/1.1: the handshake is sent to the backend
 * as it came (less hop-by-hop noise and consumed credentials), and from then on the two
 * connections are spliced byte for byte, the backend's `101` included.
 * @module
 */
import type http from 'node:http';
import net from 'node:net';
import type { Duplex } from 'node:stream';
import type { OutgoingHttpHeaders } from 'node:http';
import { backendError, writeRawError } from './pages.js';
import type { Backend } from './resolver.js';
import { timeoutError } from './timeouts.js';

/** Serialises a request head (header values come from Node's parser: no CR/LF in them). */
function requestHead(
  method: string,
  path: string,
  host: string,
  headers: OutgoingHttpHeaders,
): string {
  let head = `${method} ${path} HTTP/1.1\r\nhost: ${host}\r\n`;
  for (const [name, value] of Object.entries(headers)) {
    if (value === undefined) continue;
    for (const v of Array.isArray(value) ? value : [value]) head += `${name}: ${v}\r\n`;
  }
  return head + '\r\n';
}

/** Connects the client's upgrade request to the backend and splices the two sockets. */
export function forwardUpgrade(
  req: http.IncomingMessage,
  socket: Duplex,
  head: Buffer,
  backend: Backend,
  headers: OutgoingHttpHeaders,
  path: string,
  host: string,
  connectTimeoutMs: number,
): void {
  const where = `Port ${backend.port} of VM ${backend.vmId}`;
  const conn = net.connect({ host: backend.address, port: backend.port, family: 6 });
  let connected = false;
  const timer = setTimeout(
    () => conn.destroy(timeoutError('FASTVM_CONNECT_TIMEOUT')),
    connectTimeoutMs,
  );
  conn.setNoDelay(true);
  conn.once('connect', () => {
    clearTimeout(timer);
    connected = true;
    conn.write(requestHead(req.method ?? 'GET', path, host, headers));
    if (head.length > 0) conn.write(head);
    conn.pipe(socket);
    socket.pipe(conn);
  });
  conn.on('error', (err: NodeJS.ErrnoException) => {
    clearTimeout(timer);
    if (connected) socket.destroy();
    else writeRawError(socket, backendError(err, where), req.headers.accept);
  });
  conn.once('close', () => {
    if (connected) socket.destroy();
  });
  socket.on('error', () => conn.destroy());
  socket.once('close', () => conn.destroy());
}
