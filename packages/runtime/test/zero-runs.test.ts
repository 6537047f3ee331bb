/** The zero-runs wire encoding of snapshot files (`src/zero-runs.ts`): exact round trips, small on holes, refuses bad frames. */
import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { decodeZeroRuns, encodeZeroRuns } from '../src/zero-runs.js';

async function collect(s: Readable): Promise<Buffer> {
  const out: Buffer[] = [];
  for await (const c of s) out.push(c as Buffer);
  return Buffer.concat(out);
}

/** `buf` cut into chunks of random sizes (1 byte … 300 KiB). */
function chunked(buf: Buffer): Readable {
  const parts: Buffer[] = [];
  for (let off = 0; off < buf.length;) {
    const n = 1 + Math.floor(Math.random() * 300_000);
    parts.push(buf.subarray(off, off + n));
    off += n;
  }
  return Readable.from(parts);
}

/** Mostly zeros with a few data islands, like a memory file. */
function sparse(size: number): Buffer {
  const buf = Buffer.alloc(size);
  for (let i = 0; i < 8; i++) {
    const at = Math.floor(Math.random() * (size - 5000));
    randomBytes(1 + Math.floor(Math.random() * 4999)).copy(buf, at);
  }
  return buf;
}

describe('zero-runs encoding', () => {
  it('round-trips exactly, however the bytes are chunked, and is small on holes', async () => {
    for (const buf of [
      sparse(8 << 20),
      randomBytes(3 << 20),
      Buffer.alloc(5 << 20),
      Buffer.alloc(0),
      Buffer.from([0]),
      Buffer.from([1, 0, 0, 2]),
    ]) {
      const wire = await collect(chunked(buf).pipe(encodeZeroRuns()));
      const back = await collect(chunked(wire).pipe(decodeZeroRuns()));
      expect(back.equals(buf)).toBe(true);
      if (buf.length === 5 << 20) expect(wire.length).toBeLessThan(100);
    }
    const holes = sparse(32 << 20);
    const wire = await collect(Readable.from([holes]).pipe(encodeZeroRuns()));
    expect(wire.length).toBeLessThan(1 << 20);
  });

  it('refuses an unknown frame, a zero-length frame and a stream cut inside a frame', async () => {
    const bad = async (bytes: Buffer) => collect(Readable.from([bytes]).pipe(decodeZeroRuns()));
    await expect(bad(Buffer.from([0x41, 0, 0, 0, 1, 7]))).rejects.toThrow(/bad frame type/);
    await expect(bad(Buffer.from([0x44, 0, 0, 0, 0]))).rejects.toThrow(/bad data frame/);
    await expect(bad(Buffer.from([0x44, 0, 0, 0, 4, 1, 2]))).rejects.toThrow(/cut short/);
    await expect(bad(Buffer.from([0x5a, 0, 0]))).rejects.toThrow(/cut short/);
  });
});
