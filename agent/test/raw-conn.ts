/**
 * A raw connection to the agent in `--unix` test mode that collects every frame it sends, for
 * tests that speak the protocol with hand-made frames rather than the AgentClient.
 */
import crypto from 'node:crypto';
import net from 'node:net';

import { expect } from 'vitest';

import {
  ExecTag,
  FrameDecoder,
  MsgType,
  decodeHelloAck,
  encodeFrame,
  encodeTlv,
  type Frame,
  type Tlv,
} from '@fastvm/runtime/agent-protocol';

export class RawConn {
  readonly #frames: Frame[] = [];
  readonly #decoder = new FrameDecoder();
  #wake: (() => void) | undefined;
  closed = false;

  /** `timeoutMs`: how long `next` waits by default. */
  constructor(
    readonly socket: net.Socket,
    readonly timeoutMs: number,
  ) {
    socket.on('data', (chunk: Buffer) => {
      this.#frames.push(...this.#decoder.push(chunk));
      this.#wake?.();
    });
    socket.on('close', () => {
      this.closed = true;
      this.#wake?.();
    });
    socket.on('error', () => {});
  }

  /** Connects to `sock`, retrying for up to 5 s while the agent is not listening yet. */
  static async open<T extends RawConn>(
    this: new (socket: net.Socket, timeoutMs: number) => T,
    sock: string,
    timeoutMs = 3000,
  ): Promise<T> {
    const deadline = Date.now() + 5000;
    for (;;) {
      try {
        const socket = await new Promise<net.Socket>((resolve, reject) => {
          const s = net.createConnection(sock);
          s.once('connect', () => resolve(s));
          s.once('error', reject);
        });
        return new this(socket, timeoutMs);
      } catch (err) {
        if (Date.now() > deadline) throw err;
        await new Promise((r) => setTimeout(r, 10));
      }
    }
  }

  send(type: number, id: number, payload?: Uint8Array): void {
    this.socket.write(encodeFrame(type, id, payload));
  }

  write(bytes: Uint8Array): void {
    this.socket.write(bytes);
  }

  /** Waits for (and removes) the first frame matching pred. */
  async next(pred: (f: Frame) => boolean, timeoutMs = this.timeoutMs): Promise<Frame> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const i = this.#frames.findIndex(pred);
      if (i >= 0) return this.#frames.splice(i, 1)[0]!;
      const left = deadline - Date.now();
      if (left <= 0 || this.closed) throw new Error('no matching frame');
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.#wake = () => {
          clearTimeout(t);
          resolve();
        };
      });
    }
  }

  /** Every frame received so far (and forgets them). */
  drain(): Frame[] {
    return this.#frames.splice(0);
  }

  /** Frames of request id received so far (removed). */
  take(id: number): Frame[] {
    const mine = this.#frames.filter((f) => f.id === id);
    this.#frames.splice(0, this.#frames.length, ...this.#frames.filter((f) => f.id !== id));
    return mine;
  }

  /** Sends HELLO and waits for its ACK. */
  async hello(): Promise<void> {
    const nonce = crypto.randomBytes(8);
    this.send(MsgType.Hello, 0, nonce);
    const ack = await this.next(
      (f) => f.type === MsgType.HelloAck && decodeHelloAck(f.payload).nonce.equals(nonce),
    );
    expect(decodeHelloAck(ack.payload).version).toBe(1);
  }

  close(): void {
    this.socket.destroy();
  }
}

/** An EXEC payload: the argv, then any extra TLV fields. */
export function execPayload(argv: string[], extra: Tlv[] = []): Buffer {
  return encodeTlv([...argv.map((a): Tlv => [ExecTag.Argv, a]), ...extra]);
}
