/**
 * Paced stdin for a command with open input (`Runtime.openProcess`). The agent queues at most
 * 1 MiB of input per command and drops a STDIN frame that would go over it (ERROR 105, ENOBUFS),
 * and it never acknowledges input. So the host sends one frame at a time followed by a PING: the
 * agent handles frames in order, so by the PONG it has queued the frame or refused it. A refused
 * frame is sent again a little later (the command is reading slower than the input comes);
 * nothing is lost or reordered. `write` returns false while more than `highWaterBytes` wait on
 * the host, and `onDrain` says when to send more (the SSH gateway pauses its channel meanwhile).
 * @module
 */
import type { AgentError, AgentProcess } from './agent-client.js';
import { MAX_CHUNK } from './agent-protocol.js';

/** errno the agent answers when a command's input queue is full. */
const ENOBUFS = 105;
/**
 * Bytes sent between two PINGs: one STDIN frame. With several frames per PING a refusal could hit
 * a middle frame while later ones get in, and the resend would duplicate or reorder input.
 */
const CHUNK_BYTES = MAX_CHUNK;
const RETRY_FIRST_MS = 10;
const RETRY_MAX_MS = 200;

export interface PacedInputOptions {
  /** Round trip through the agent after a chunk (rejects if the agent is gone). */
  ping: () => Promise<unknown>;
  /** Called when the host-side queue falls below half of `highWaterBytes` after `write` said false. */
  onDrain?: () => void;
  highWaterBytes?: number;
}

/** Feeds an `AgentProcess`'s stdin without overflowing the agent's input queue. */
export class PacedInput {
  readonly #queue: Buffer[] = [];
  #queued = 0;
  #pumping = false;
  #eof = false;
  #eofSent = false;
  #refused = false;
  #stopped = false;
  #full = false;
  readonly #highWater: number;

  constructor(
    private readonly proc: Pick<AgentProcess, 'write' | 'end'>,
    private readonly opts: PacedInputOptions,
  ) {
    this.#highWater = opts.highWaterBytes ?? 1024 * 1024;
  }

  /** The agent refused input of this command (pass every `onError` of the process here). */
  onAgentError(err: AgentError): boolean {
    if (err.errno !== ENOBUFS) return false;
    this.#refused = true;
    return true;
  }

  /** Queues input; false when the caller should wait for `onDrain` before writing more. */
  write(data: Uint8Array | string): boolean {
    if (this.#eof || this.#stopped) return true;
    const bytes = typeof data === 'string' ? Buffer.from(data, 'utf8') : Buffer.from(data);
    if (bytes.length > 0) {
      this.#queue.push(bytes);
      this.#queued += bytes.length;
      void this.#pump();
    }
    if (this.#queued > this.#highWater) this.#full = true;
    return !this.#full;
  }

  /** EOF once everything queued is delivered. */
  end(): void {
    if (this.#eof) return;
    this.#eof = true;
    void this.#pump();
  }

  /** The command is gone: drop what is queued. */
  stop(): void {
    this.#stopped = true;
    this.#queue.length = 0;
    this.#queued = 0;
  }

  async #pump(): Promise<void> {
    if (this.#pumping) return;
    this.#pumping = true;
    try {
      while (!this.#stopped) {
        const chunk = this.#take();
        if (!chunk) {
          if (this.#eof && !this.#eofSent) {
            this.#eofSent = true;
            this.proc.end();
          }
          return;
        }
        let wait = RETRY_FIRST_MS;
        for (;;) {
          this.#refused = false;
          this.proc.write(chunk);
          await this.opts.ping();
          if (!this.#refused || this.#stopped) break;
          await new Promise((r) => setTimeout(r, wait));
          wait = Math.min(wait * 2, RETRY_MAX_MS);
        }
        if (this.#stopped) return;
        this.#queued -= chunk.length;
        if (this.#full && this.#queued <= this.#highWater / 2) {
          this.#full = false;
          this.opts.onDrain?.();
        }
      }
    } catch {
      this.stop(); // the agent is gone; the process's `exited` says so
    } finally {
      this.#pumping = false;
    }
  }

  /** Up to `CHUNK_BYTES` from the head of the queue. */
  #take(): Buffer | undefined {
    if (this.#queue.length === 0) return undefined;
    const parts: Buffer[] = [];
    let n = 0;
    while (this.#queue.length > 0 && n < CHUNK_BYTES) {
      const head = this.#queue[0]!;
      const room = CHUNK_BYTES - n;
      if (head.length <= room) {
        parts.push(head);
        n += head.length;
        this.#queue.shift();
      } else {
        parts.push(head.subarray(0, room));
        this.#queue[0] = head.subarray(room);
        n += room;
      }
    }
    return parts.length === 1 ? parts[0] : Buffer.concat(parts, n);
  }
}
