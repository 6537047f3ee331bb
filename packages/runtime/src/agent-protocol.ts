/**
 * Wire format of the guest agent protocol (spec/agent-protocol.md): frames, TLV payloads and the
 * fixed-layout replies. Pure functions and a streaming decoder; no I/O.
 */

/** The bytes `F V M 1`, read as a little-endian u32. */
export const FRAME_MAGIC = 0x314d5646;
export const HEADER_SIZE = 16;
/** Largest payload of any frame. */
export const MAX_PAYLOAD = 1024 * 1024;
/** Largest STDOUT/STDERR chunk and largest PING payload. */
export const MAX_CHUNK = 64 * 1024;
export const PROTOCOL_VERSION = 1;
export const NONCE_SIZE = 8;
export const EXIT_PAYLOAD_SIZE = 12;

/** Message types, host → agent requests (< 0x80) and agent → host replies. */
export const MsgType = {
  Hello: 0x01,
  Ping: 0x02,
  Exec: 0x10,
  Signal: 0x11,
  /** Input for a running request (empty payload: EOF; for a pty, hang up). */
  Stdin: 0x12,
  /** New window size of a request's pty: rows (u16), cols (u16). */
  Resize: 0x13,
  /** Stop (0) or resume (1) reading a request's output. */
  Flow: 0x14,
  Identity: 0x20,
  Shutdown: 0x21,
  HelloAck: 0x81,
  Pong: 0x82,
  Started: 0x90,
  Stdout: 0x91,
  Stderr: 0x92,
  Exit: 0x93,
  Ok: 0xa0,
  Error: 0xaf,
} as const;
export type MsgType = (typeof MsgType)[keyof typeof MsgType];

/** EXEC payload tags. */
export const ExecTag = {
  Argv: 1,
  Env: 2,
  Cwd: 3,
  Stdin: 4,
  TimeoutMs: 5,
  Cap: 6,
  /** Run on a new pty: rows (u16), cols (u16); 0 = 24 × 80. */
  Pty: 7,
  /** Keep stdin open for STDIN frames (value ignored). */
  StdinOpen: 8,
} as const;

/** IDENTITY payload tags. */
export const IdentityTag = {
  Hostname: 1,
  MachineId: 2,
  ClockNs: 3,
  Entropy: 4,
  Net: 5,
  Route: 6,
} as const;

export interface Frame {
  readonly type: number;
  readonly flags: number;
  readonly id: number;
  readonly payload: Buffer;
}

/** One TLV record: tag (u8), then the value. */
export type Tlv = readonly [tag: number, value: Uint8Array | string];

/** Encodes one frame. Throws RangeError if the payload is over MAX_PAYLOAD. */
export function encodeFrame(
  type: number,
  id: number,
  payload: Uint8Array = Buffer.alloc(0),
): Buffer {
  if (payload.length > MAX_PAYLOAD) {
    throw new RangeError(`frame payload of ${payload.length} bytes exceeds ${MAX_PAYLOAD}`);
  }
  const frame = Buffer.allocUnsafe(HEADER_SIZE + payload.length);
  frame.writeUInt32LE(FRAME_MAGIC, 0);
  frame.writeUInt8(type, 4);
  frame.writeUInt8(0, 5);
  frame.writeUInt16LE(0, 6);
  frame.writeUInt32LE(id >>> 0, 8);
  frame.writeUInt32LE(payload.length, 12);
  frame.set(payload, HEADER_SIZE);
  return frame;
}

/** Encodes TLV records in order (strings as UTF-8). */
export function encodeTlv(records: readonly Tlv[]): Buffer {
  const values = records.map(([, v]) => (typeof v === 'string' ? Buffer.from(v, 'utf8') : v));
  const total = values.reduce((n, v) => n + 5 + v.length, 0);
  const out = Buffer.allocUnsafe(total);
  let off = 0;
  records.forEach(([tag], i) => {
    const v = values[i]!;
    out.writeUInt8(tag, off);
    out.writeUInt32LE(v.length, off + 1);
    out.set(v, off + 5);
    off += 5 + v.length;
  });
  return out;
}

/** Decodes TLV records. Throws on a truncated record. */
export function decodeTlv(payload: Buffer): Array<{ tag: number; value: Buffer }> {
  const out: Array<{ tag: number; value: Buffer }> = [];
  let off = 0;
  while (off < payload.length) {
    if (payload.length - off < 5) throw new Error('truncated TLV header');
    const tag = payload.readUInt8(off);
    const len = payload.readUInt32LE(off + 1);
    if (len > payload.length - off - 5) throw new Error('truncated TLV value');
    out.push({ tag, value: payload.subarray(off + 5, off + 5 + len) });
    off += 5 + len;
  }
  return out;
}

export function u32(n: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeUInt32LE(n >>> 0, 0);
  return b;
}

/** rows (u16), cols (u16): the payload of RESIZE and the value of the EXEC `pty` field. */
export function winsize(rows: number, cols: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeUInt16LE(rows, 0);
  b.writeUInt16LE(cols, 2);
  return b;
}

export function u64(n: bigint): Buffer {
  const b = Buffer.allocUnsafe(8);
  b.writeBigUInt64LE(n, 0);
  return b;
}

export interface ExitInfo {
  readonly exitCode: number;
  readonly timedOut: boolean;
  readonly stdoutTruncated: boolean;
  readonly stderrTruncated: boolean;
  /** Signal that killed the command, 0 if none. */
  readonly signal: number;
  readonly durationMs: number;
}

export function decodeExit(payload: Buffer): ExitInfo {
  if (payload.length < EXIT_PAYLOAD_SIZE) {
    throw new Error(`EXIT payload of ${payload.length} bytes, want ${EXIT_PAYLOAD_SIZE}`);
  }
  return {
    exitCode: payload.readInt32LE(0),
    timedOut: payload[4] !== 0,
    stdoutTruncated: payload[5] !== 0,
    stderrTruncated: payload[6] !== 0,
    signal: payload.readUInt8(7),
    durationMs: payload.readUInt32LE(8),
  };
}

export function encodeExit(e: ExitInfo): Buffer {
  const b = Buffer.alloc(EXIT_PAYLOAD_SIZE);
  b.writeInt32LE(e.exitCode, 0);
  b[4] = e.timedOut ? 1 : 0;
  b[5] = e.stdoutTruncated ? 1 : 0;
  b[6] = e.stderrTruncated ? 1 : 0;
  b[7] = e.signal;
  b.writeUInt32LE(e.durationMs, 8);
  return b;
}

/** ERROR payload: an errno-style code and a message. */
export function decodeError(payload: Buffer): { code: number; message: string } {
  if (payload.length < 4) return { code: 0, message: 'malformed ERROR reply' };
  return { code: payload.readUInt32LE(0), message: payload.subarray(4).toString('utf8') };
}

export interface HelloAck {
  readonly nonce: Buffer;
  readonly version: number;
  readonly agentVersion: string;
}

export function decodeHelloAck(payload: Buffer): HelloAck {
  if (payload.length < NONCE_SIZE + 4) throw new Error('HELLO_ACK payload too short');
  return {
    nonce: payload.subarray(0, NONCE_SIZE),
    version: payload.readUInt32LE(NONCE_SIZE),
    agentVersion: payload.subarray(NONCE_SIZE + 4).toString('utf8'),
  };
}

const MAGIC_BYTES = Buffer.from([0x46, 0x56, 0x4d, 0x31]);

/**
 * Offset of the first position in `buf` that may start a frame: a full magic, or a proper prefix
 * of it at the very end. `buf.length` if there is none.
 */
function magicScan(buf: Buffer): number {
  const hit = buf.indexOf(MAGIC_BYTES);
  if (hit >= 0) return hit;
  for (let i = Math.max(0, buf.length - 3); i < buf.length; i++) {
    const tail = buf.subarray(i);
    if (MAGIC_BYTES.subarray(0, tail.length).equals(tail)) return i;
  }
  return buf.length;
}

/**
 * Streaming frame decoder. Bytes that cannot start a frame (bad magic, oversized length) are
 * skipped until the next magic, as the spec requires.
 */
export class FrameDecoder {
  #chunks: Buffer[] = [];
  #length = 0;
  #discarded = 0;

  /** Bytes skipped so far while resynchronising. */
  get discarded(): number {
    return this.#discarded;
  }

  /** Bytes buffered towards the next frame. */
  get buffered(): number {
    return this.#length;
  }

  /** Feeds bytes; returns every frame they complete, in order. */
  push(chunk: Buffer): Frame[] {
    if (chunk.length > 0) {
      this.#chunks.push(chunk);
      this.#length += chunk.length;
    }
    const frames: Frame[] = [];
    for (;;) {
      if (this.#length < 4) {
        // Too short to judge a full magic, but a non-prefix can already go.
        if (this.#length > 0) this.#resync(false);
        return frames;
      }
      const head = this.#peek(Math.min(this.#length, HEADER_SIZE));
      if (head.readUInt32LE(0) !== FRAME_MAGIC) {
        this.#resync(true);
        continue;
      }
      if (head.length < HEADER_SIZE) return frames;
      const len = head.readUInt32LE(12);
      if (len > MAX_PAYLOAD) {
        this.#skip(1);
        this.#discarded += 1;
        continue;
      }
      if (this.#length < HEADER_SIZE + len) return frames;
      const all = this.#peek(HEADER_SIZE + len);
      frames.push({
        type: all.readUInt8(4),
        flags: all.readUInt8(5),
        id: all.readUInt32LE(8),
        // Copy out: the frame must not pin (or alias) a larger receive buffer.
        payload: Buffer.from(all.subarray(HEADER_SIZE, HEADER_SIZE + len)),
      });
      this.#skip(HEADER_SIZE + len);
    }
  }

  /** Forgets everything buffered. */
  reset(): void {
    this.#chunks = [];
    this.#length = 0;
  }

  /** Drops bytes up to the next possible magic. */
  #resync(haveFullHead: boolean): void {
    const all = this.#peek(this.#length);
    // A magic at offset 0 is only possible when fewer than 4 bytes are buffered.
    const from = haveFullHead ? 1 : 0;
    const skip = from + magicScan(all.subarray(from));
    if (skip > 0) {
      this.#skip(skip);
      this.#discarded += skip;
    }
  }

  /** The first n buffered bytes as one Buffer (concatenating chunks only when needed). */
  #peek(n: number): Buffer {
    const first = this.#chunks[0]!;
    if (first.length >= n) return first.subarray(0, n);
    const joined = Buffer.concat(this.#chunks, this.#length);
    this.#chunks = [joined];
    return joined.subarray(0, n);
  }

  #skip(n: number): void {
    this.#length -= n;
    while (n > 0) {
      const first = this.#chunks[0]!;
      if (first.length <= n) {
        this.#chunks.shift();
        n -= first.length;
      } else {
        this.#chunks[0] = first.subarray(n);
        n = 0;
      }
    }
  }
}

/** Result of scanning raw bytes for the HELLO_ACK that carries our nonce. */
export type HelloAckScan =
  | { readonly found: true; readonly ack: HelloAck; readonly rest: Buffer }
  | { readonly found: false; readonly keep: Buffer };

/**
 * Looks for a complete HELLO_ACK frame carrying `nonce` anywhere in `buf`, without parsing what
 * precedes it: stale bytes from before a restore may hold a truncated frame whose declared length
 * would otherwise swallow the reply. On success returns the ACK and the bytes after it; otherwise
 * the suffix of `buf` worth keeping for the next attempt.
 */
export function scanHelloAck(buf: Buffer, nonce: Buffer): HelloAckScan {
  let from = 0;
  for (;;) {
    const at = buf.indexOf(nonce, from);
    if (at < 0) break;
    const start = at - HEADER_SIZE;
    if (
      start >= 0 &&
      buf.readUInt32LE(start) === FRAME_MAGIC &&
      buf[start + 4] === MsgType.HelloAck &&
      buf.readUInt32LE(start + 12) >= NONCE_SIZE + 4 &&
      buf.readUInt32LE(start + 12) <= MAX_PAYLOAD
    ) {
      const end = start + HEADER_SIZE + buf.readUInt32LE(start + 12);
      if (end > buf.length) return { found: false, keep: buf.subarray(start) };
      return {
        found: true,
        ack: decodeHelloAck(Buffer.from(buf.subarray(start + HEADER_SIZE, end))),
        rest: buf.subarray(end),
      };
    }
    from = at + 1;
  }
  // Keep enough of the tail to complete a header + nonce that straddles the next chunk.
  const keepFrom = Math.max(0, buf.length - (HEADER_SIZE + NONCE_SIZE - 1));
  return { found: false, keep: buf.subarray(keepFrom) };
}
