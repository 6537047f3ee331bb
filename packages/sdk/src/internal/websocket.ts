/**
 * A minimal WebSocket client (RFC 6455) over `node:http`/`node:https` upgrades, so the SDK needs
 * no runtime dependency for the console. It speaks what the console needs: text and binary
 * messages (fragmented or not), ping/pong, and the close handshake. No extensions
 * (permessage-deflate is not offered), no subprotocols.
 * @internal
 */
import { createHash, randomBytes } from 'node:crypto';
import http from 'node:http';
import https from 'node:https';
import type { Socket } from 'node:net';
import { AbortError, APIError, ConnectionError, TimeoutError } from '../core/errors.js';
import type { TLSOptions } from '../core/transport.js';

const GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';
/** Wait this long for the server's close frame after sending ours. */
const CLOSE_TIMEOUT_MS = 2000;

const OP = { continuation: 0, text: 1, binary: 2, close: 8, ping: 9, pong: 10 } as const;

export interface WebSocketOptions {
  headers?: Record<string, string>;
  tls?: TLSOptions | undefined;
  /** Handshake deadline. */
  timeoutMs: number;
  signal?: AbortSignal | undefined;
  /** Largest message accepted (default 16 MiB); larger ones close the connection with 1009. */
  maxMessageBytes?: number;
}

export interface WebSocketHandlers {
  message(data: Buffer, binary: boolean): void;
  /** Once, when the connection is gone: the peer's close code (1006 if none) and reason. */
  close(code: number, reason: string): void;
}

/** An open WebSocket connection (client side). */
export class MiniWebSocket {
  #socket: Socket;
  #handlers: WebSocketHandlers | undefined;
  #buf: Buffer = Buffer.alloc(0);
  #fragments: Buffer[] = [];
  #fragmentBytes = 0;
  #fragmentBinary = false;
  #closeSent = false;
  #closed = false;
  #peerCode = 1006;
  #peerReason = '';
  #closeTimer: NodeJS.Timeout | undefined;
  readonly #max: number;
  /** Messages received before handlers were attached. */
  #early: Array<[Buffer, boolean]> = [];

  private constructor(socket: Socket, head: Buffer, maxMessageBytes: number) {
    this.#socket = socket;
    this.#max = maxMessageBytes;
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => this.#onData(chunk));
    socket.on('close', () => this.#finish());
    socket.on('error', () => socket.destroy());
    if (head.length > 0) this.#onData(head);
  }

  /**
   * Opens `url` (`ws://` or `wss://`). Rejects with an {@link APIError} subclass when the server
   * answers with an HTTP error instead of upgrading, {@link ConnectionError} when it cannot be
   * reached, {@link TimeoutError} or {@link AbortError}.
   */
  static connect(url: string, opts: WebSocketOptions): Promise<MiniWebSocket> {
    const u = new URL(url);
    const secure = u.protocol === 'wss:' || u.protocol === 'https:';
    const key = randomBytes(16).toString('base64');
    const expectAccept = createHash('sha1')
      .update(key + GUID)
      .digest('base64');
    return new Promise((resolve, reject) => {
      let settled = false;
      const fail = (err: Error): void => {
        if (settled) return;
        settled = true;
        cleanup();
        req.destroy();
        reject(err);
      };
      const onAbort = (): void => fail(new AbortError('console connection aborted'));
      const timer = setTimeout(
        () => fail(new TimeoutError(`console connection timed out after ${opts.timeoutMs} ms`)),
        Math.max(1, opts.timeoutMs),
      );
      const cleanup = (): void => {
        clearTimeout(timer);
        opts.signal?.removeEventListener('abort', onAbort);
      };
      const requestOptions: https.RequestOptions = {
        method: 'GET',
        // A connection of its own: never a pooled keep-alive socket, before or after.
        agent: false,
        hostname: u.hostname.replace(/^\[|\]$/g, ''),
        port: u.port || (secure ? 443 : 80),
        path: `${u.pathname}${u.search}`,
        headers: {
          ...opts.headers,
          connection: 'Upgrade',
          upgrade: 'websocket',
          'sec-websocket-version': '13',
          'sec-websocket-key': key,
        },
        ...(secure && opts.tls?.ca !== undefined ? { ca: opts.tls.ca } : {}),
        ...(secure && opts.tls?.rejectUnauthorized !== undefined
          ? { rejectUnauthorized: opts.tls.rejectUnauthorized }
          : {}),
      };
      const req = (secure ? https : http).request(requestOptions);
      req.on('upgrade', (res: http.IncomingMessage, socket: Socket, head: Buffer) => {
        if (settled) {
          socket.destroy();
          return;
        }
        const accept = res.headers['sec-websocket-accept'];
        if (
          res.statusCode !== 101 ||
          String(res.headers.upgrade).toLowerCase() !== 'websocket' ||
          accept !== expectAccept
        ) {
          socket.destroy();
          fail(
            new ConnectionError('console: the server answered with an invalid WebSocket handshake'),
          );
          return;
        }
        settled = true;
        cleanup();
        resolve(new MiniWebSocket(socket, head, opts.maxMessageBytes ?? 16 * 1024 * 1024));
      });
      req.on('response', (res: http.IncomingMessage) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let body: unknown = text;
          try {
            body = text ? (JSON.parse(text) as unknown) : undefined;
          } catch {
            // not JSON: keep the text
          }
          const headers: Record<string, string> = {};
          for (const [k, v] of Object.entries(res.headers)) {
            if (v !== undefined) headers[k] = Array.isArray(v) ? v.join(', ') : v;
          }
          fail(APIError.fromResponse(res.statusCode ?? 0, body, headers));
        });
      });
      req.on('error', (err) =>
        fail(
          new ConnectionError(`console: cannot connect to ${u.host}: ${err.message}`, {
            cause: err,
          }),
        ),
      );
      if (opts.signal?.aborted) {
        onAbort();
        return;
      }
      opts.signal?.addEventListener('abort', onAbort, { once: true });
      req.end();
    });
  }

  /** Attaches the handlers; messages that arrived before are delivered now. */
  attach(handlers: WebSocketHandlers): void {
    this.#handlers = handlers;
    for (const [data, binary] of this.#early.splice(0)) handlers.message(data, binary);
    if (this.#closed) handlers.close(this.#peerCode, this.#peerReason);
  }

  get open(): boolean {
    return !this.#closed && !this.#closeSent;
  }

  sendText(text: string): void {
    this.#send(OP.text, Buffer.from(text, 'utf8'));
  }

  sendBinary(data: Uint8Array): void {
    this.#send(OP.binary, data);
  }

  /** Starts the close handshake (the socket is dropped if the server does not answer). */
  close(code = 1000, reason = ''): void {
    if (this.#closeSent || this.#closed) return;
    const r = Buffer.from(reason, 'utf8').subarray(0, 123);
    const payload = Buffer.alloc(2 + r.length);
    payload.writeUInt16BE(code, 0);
    r.copy(payload, 2);
    this.#send(OP.close, payload);
    this.#closeSent = true;
    this.#closeTimer = setTimeout(() => this.#socket.destroy(), CLOSE_TIMEOUT_MS);
    this.#closeTimer.unref();
  }

  /** Drops the connection without a close handshake. */
  terminate(): void {
    this.#socket.destroy();
  }

  /** Stops reading from the socket (TCP backpressure) until `resume`. */
  pause(): void {
    this.#socket.pause();
  }

  resume(): void {
    this.#socket.resume();
  }

  #send(opcode: number, payload: Uint8Array): void {
    if (this.#closeSent || this.#closed) return;
    const len = payload.length;
    const lenBytes = len < 126 ? 0 : len < 65536 ? 2 : 8;
    const frame = Buffer.allocUnsafe(2 + lenBytes + 4 + len);
    frame[0] = 0x80 | opcode; // FIN
    if (lenBytes === 0) {
      frame[1] = 0x80 | len;
    } else if (lenBytes === 2) {
      frame[1] = 0x80 | 126;
      frame.writeUInt16BE(len, 2);
    } else {
      frame[1] = 0x80 | 127;
      frame.writeBigUInt64BE(BigInt(len), 2);
    }
    const maskAt = 2 + lenBytes;
    const mask = randomBytes(4);
    mask.copy(frame, maskAt);
    const dataAt = maskAt + 4;
    for (let i = 0; i < len; i++) frame[dataAt + i] = payload[i]! ^ mask[i & 3]!;
    this.#socket.write(frame);
  }

  #onData(chunk: Buffer): void {
    this.#buf = this.#buf.length === 0 ? chunk : Buffer.concat([this.#buf, chunk]);
    while (!this.#closed) {
      const b = this.#buf;
      if (b.length < 2) return;
      const fin = (b[0]! & 0x80) !== 0;
      const opcode = b[0]! & 0x0f;
      const masked = (b[1]! & 0x80) !== 0;
      let len = b[1]! & 0x7f;
      let at = 2;
      if (len === 126) {
        if (b.length < 4) return;
        len = b.readUInt16BE(2);
        at = 4;
      } else if (len === 127) {
        if (b.length < 10) return;
        const big = b.readBigUInt64BE(2);
        if (big > BigInt(this.#max)) return this.#protocolError(1009, 'message too big');
        len = Number(big);
        at = 10;
      }
      if ((b[0]! & 0x70) !== 0 || masked) {
        return this.#protocolError(1002, 'bad frame (reserved bits or masked server frame)');
      }
      if (b.length < at + len) return;
      const payload = b.subarray(at, at + len);
      this.#buf = b.subarray(at + len);
      this.#frame(fin, opcode, payload);
    }
  }

  #frame(fin: boolean, opcode: number, payload: Buffer): void {
    switch (opcode) {
      case OP.close:
        if (payload.length >= 2) {
          this.#peerCode = payload.readUInt16BE(0);
          this.#peerReason = payload.subarray(2).toString('utf8');
        } else {
          this.#peerCode = 1005;
        }
        if (!this.#closeSent) {
          // Echo the close, then let the server close the TCP connection.
          const echo = Buffer.alloc(2);
          echo.writeUInt16BE(this.#peerCode === 1005 ? 1000 : this.#peerCode, 0);
          this.#send(OP.close, echo);
          this.#closeSent = true;
        }
        this.#socket.end();
        this.#closeTimer ??= setTimeout(() => this.#socket.destroy(), CLOSE_TIMEOUT_MS);
        this.#closeTimer.unref();
        return;
      case OP.ping:
        this.#send(OP.pong, payload);
        return;
      case OP.pong:
        return;
      case OP.text:
      case OP.binary:
        if (this.#fragments.length > 0) return this.#protocolError(1002, 'interleaved message');
        this.#fragmentBinary = opcode === OP.binary;
      // falls through
      case OP.continuation: {
        if (opcode === OP.continuation && this.#fragments.length === 0) {
          return this.#protocolError(1002, 'continuation without a message');
        }
        this.#fragmentBytes += payload.length;
        if (this.#fragmentBytes > this.#max) return this.#protocolError(1009, 'message too big');
        this.#fragments.push(Buffer.from(payload));
        if (!fin) return;
        const data =
          this.#fragments.length === 1 ? this.#fragments[0]! : Buffer.concat(this.#fragments);
        this.#fragments = [];
        this.#fragmentBytes = 0;
        if (this.#handlers) this.#handlers.message(data, this.#fragmentBinary);
        else this.#early.push([data, this.#fragmentBinary]);
        return;
      }
      default:
        this.#protocolError(1002, `unknown opcode ${opcode}`);
    }
  }

  #protocolError(code: number, reason: string): void {
    this.close(code, reason);
    this.#peerCode = code;
    this.#peerReason = reason;
    this.#socket.destroy();
  }

  #finish(): void {
    if (this.#closed) return;
    this.#closed = true;
    clearTimeout(this.#closeTimer);
    this.#handlers?.close(this.#peerCode, this.#peerReason);
  }
}
