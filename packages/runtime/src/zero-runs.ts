/**
 * A wire encoding for snapshot files that are mostly holes (a golden's or a flattened memory
 * file: 2 GiB of which ~100 MiB are data): runs of zero bytes travel as their length only.
 * Used by snapshot mobility's file route (`?encoding=zero-runs`); the decoder gives back the
 * exact bytes, so the importer's size and SHA-256 checks are unchanged.
 *
 *   'D' u32be n  <n bytes>     data
 *   'Z' u64be n                n zero bytes
 * @module
 */
import { Transform, type TransformCallback } from 'node:stream';

/** Zero runs shorter than this are sent as data (a frame costs 9 bytes; scanning costs too). */
const BLOCK = 1 << 16;
const ZERO = Buffer.alloc(1 << 20);
const DATA = 0x44;
const ZEROS = 0x5a;
/** Largest data frame the decoder accepts. */
const MAX_DATA = 1 << 24;

/** Raw bytes in, frames out. */
export function encodeZeroRuns(): Transform {
  let zeros = 0;
  const flushZeros = (t: Transform) => {
    if (zeros === 0) return;
    const h = Buffer.alloc(9);
    h[0] = ZEROS;
    h.writeBigUInt64BE(BigInt(zeros), 1);
    t.push(h);
    zeros = 0;
  };
  return new Transform({
    transform(chunk: Buffer, _enc, cb: TransformCallback) {
      let dataStart = -1;
      const flushData = (end: number) => {
        if (dataStart < 0) return;
        const h = Buffer.alloc(5);
        h[0] = DATA;
        h.writeUInt32BE(end - dataStart, 1);
        this.push(h);
        this.push(chunk.subarray(dataStart, end));
        dataStart = -1;
      };
      for (let off = 0; off < chunk.length; off += BLOCK) {
        const end = Math.min(chunk.length, off + BLOCK);
        const piece = chunk.subarray(off, end);
        if (piece.equals(ZERO.subarray(0, piece.length))) {
          flushData(off);
          zeros += piece.length;
        } else {
          if (dataStart < 0) {
            flushZeros(this);
            dataStart = off;
          }
        }
      }
      flushData(chunk.length);
      cb();
    },
    flush(cb: TransformCallback) {
      flushZeros(this);
      cb();
    },
  });
}

/** Frames in, raw bytes out; a malformed or cut frame is an error. */
export function decodeZeroRuns(): Transform {
  let pending: Buffer = Buffer.alloc(0);
  /** Bytes of the current data frame still to pass through. */
  let dataLeft = 0;
  return new Transform({
    transform(chunk: Buffer, _enc, cb: TransformCallback) {
      let buf = pending.length ? Buffer.concat([pending, chunk]) : chunk;
      pending = Buffer.alloc(0);
      try {
        while (buf.length > 0) {
          if (dataLeft > 0) {
            const n = Math.min(dataLeft, buf.length);
            this.push(buf.subarray(0, n));
            dataLeft -= n;
            buf = buf.subarray(n);
            continue;
          }
          const type = buf[0];
          if (type === DATA) {
            if (buf.length < 5) break;
            dataLeft = buf.readUInt32BE(1);
            if (dataLeft === 0 || dataLeft > MAX_DATA) throw new Error('bad data frame');
            buf = buf.subarray(5);
          } else if (type === ZEROS) {
            if (buf.length < 9) break;
            let n = Number(buf.readBigUInt64BE(1));
            if (!Number.isSafeInteger(n) || n === 0) throw new Error('bad zero-run frame');
            buf = buf.subarray(9);
            while (n > 0) {
              const k = Math.min(n, ZERO.length);
              this.push(ZERO.subarray(0, k));
              n -= k;
            }
          } else {
            throw new Error(`bad frame type ${String(type)}`);
          }
        }
      } catch (err) {
        cb(new Error(`zero-runs stream: ${(err as Error).message}`));
        return;
      }
      pending = Buffer.from(buf);
      cb();
    },
    flush(cb: TransformCallback) {
      if (pending.length > 0 || dataLeft > 0) cb(new Error('zero-runs stream: cut short'));
      else cb();
    },
  });
}
