/**
 * PacedInput: stdin for `Runtime.openProcess` through the agent's 1 MiB input queue, one frame
 * per PING, refused frames sent again: nothing lost, duplicated or reordered.
 */
import { describe, expect, it } from 'vitest';
import { PacedInput } from '../src/paced-input.js';

describe('PacedInput (stdin through the agent queue)', () => {
  it('delivers everything in order when the agent refuses frames, then EOF; says when to write more', async () => {
    const accepted: Buffer[] = [];
    let refuseNext = 0;
    let ended = false;
    let pending: { refused: boolean } | undefined;
    let drains = 0;
    const input: PacedInput = new PacedInput(
      {
        write: (data) => {
          // The agent refuses every third frame (its queue is full), as ERROR 105 before the PONG.
          const refused = ++refuseNext % 3 === 0;
          pending = { refused };
          if (!refused) accepted.push(Buffer.from(data as Uint8Array));
        },
        end: () => (ended = true),
      },
      {
        ping: async () => {
          await new Promise((r) => setImmediate(r));
          if (pending?.refused) {
            input.onAgentError(Object.assign(new Error('full'), { errno: 105 }) as never);
          }
        },
        onDrain: () => (drains += 1),
        highWaterBytes: 256 * 1024,
      },
    );
    const data = Buffer.alloc(1024 * 1024 + 123);
    for (let i = 0; i < data.length; i++) data[i] = (i * 7 + (i >> 12)) & 0xff;
    let full = false;
    for (let off = 0; off < data.length; off += 10_000) {
      if (!input.write(data.subarray(off, off + 10_000))) full = true;
    }
    input.end();
    for (let i = 0; i < 2000 && !ended; i++) await new Promise((r) => setTimeout(r, 5));
    expect(ended).toBe(true);
    expect(Buffer.concat(accepted).equals(data)).toBe(true);
    expect(full).toBe(true);
    expect(drains).toBeGreaterThan(0);
  });
});
