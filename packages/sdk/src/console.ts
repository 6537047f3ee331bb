/**
 * Interactive console sessions ({@link FastVM.console}): a shell on a pseudo-terminal in the VM,
 * over the console WebSocket of the FastVM API (contract §5). The WebSocket client is the SDK's
 * own (`internal/websocket.ts`): no runtime dependency.
 * @module
 */
import { EventEmitter } from 'node:events';
import type { TLSOptions } from './core/transport.js';
import { MiniWebSocket } from './internal/websocket.js';

/** How a console session ended. */
export interface ConsoleExit {
  /**
   * The shell's exit status (128 + signal if it was killed), or `null` when the session ended
   * otherwise: closed by the client, the connection was lost, or the VM went away.
   */
  exitCode: number | null;
  /** WebSocket close code (1000 normal, 1001 server shutting down, 1006 connection lost, 1011 VM or agent lost). */
  closeCode: number;
  /** WebSocket close reason. */
  reason: string;
}

/** Events of a {@link ConsoleSession}. */
export interface ConsoleEvents {
  /** Terminal output, bytes as the VM's terminal wrote them. */
  data: [chunk: Buffer];
  /** The session ended (once). */
  exit: [exit: ConsoleExit];
}

/** Above this many unread bytes the async iterator stops reading the socket (backpressure). */
const ITERATOR_HIGH_WATER = 1024 * 1024;

/**
 * A console session: write keystrokes, resize the terminal, read output (as `data` events or by
 * async iteration), and learn the shell's exit status.
 *
 * @example
 * ```ts
 * const session = await client.console(vm, { cols: 80, rows: 24 });
 * session.write('uname -a; exit 3\n');
 * for await (const chunk of session) process.stdout.write(chunk);
 * console.log((await session.exited).exitCode); // 3
 * ```
 */
export class ConsoleSession extends EventEmitter<ConsoleEvents> implements AsyncIterable<Buffer> {
  /** Resolves when the session ends (never rejects). */
  readonly exited: Promise<ConsoleExit>;
  readonly #ws: MiniWebSocket;
  #exit: ConsoleExit | undefined;
  #resolveExit!: (e: ConsoleExit) => void;
  /** Chunks not yet taken by an iterator (only while one is iterating). */
  #queue: Buffer[] = [];
  #queued = 0;
  #iterating = false;
  #paused = false;
  #wake: (() => void) | undefined;

  /** @internal Use {@link FastVM.console}. */
  constructor(ws: MiniWebSocket) {
    super();
    this.#ws = ws;
    this.exited = new Promise((resolve) => (this.#resolveExit = resolve));
    // Output that arrived with the handshake waits in the socket until the caller (resuming from
    // `await client.console()`) has had the chance to add listeners or start iterating.
    setImmediate(() =>
      ws.attach({
        message: (data) => this.#onData(data),
        close: (code, reason) => this.#onClose(code, reason),
      }),
    );
  }

  /** Whether the session is still open. */
  get open(): boolean {
    return this.#exit === undefined && this.#ws.open;
  }

  /** Types input (keystrokes, pasted text); strings are sent as UTF-8. Ignored once closed. */
  write(data: string | Uint8Array): void {
    if (!this.open) return;
    const bytes = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
    if (bytes.length > 0) this.#ws.sendBinary(bytes);
  }

  /** Sets the terminal size; the shell's foreground program gets SIGWINCH. */
  resize(cols: number, rows: number): void {
    if (!this.open) return;
    if (!Number.isInteger(cols) || !Number.isInteger(rows) || cols < 1 || rows < 1) {
      throw new RangeError(`resize: cols and rows must be positive integers, got ${cols}×${rows}`);
    }
    this.#ws.sendText(JSON.stringify({ type: 'resize', cols, rows }));
  }

  /** Ends the session; the server hangs the shell up (SIGHUP). */
  close(): void {
    this.#ws.close(1000);
  }

  /** Yields output chunks until the session ends. One iterator at a time. */
  async *[Symbol.asyncIterator](): AsyncIterator<Buffer> {
    if (this.#iterating) throw new Error('ConsoleSession: already being iterated');
    this.#iterating = true;
    try {
      for (;;) {
        const chunk = this.#queue.shift();
        if (chunk) {
          this.#queued -= chunk.length;
          if (this.#paused && this.#queued < ITERATOR_HIGH_WATER / 2) {
            this.#paused = false;
            this.#ws.resume();
          }
          yield chunk;
          continue;
        }
        if (this.#exit) return;
        await new Promise<void>((resolve) => (this.#wake = resolve));
        this.#wake = undefined;
      }
    } finally {
      this.#iterating = false;
      this.#queue = [];
      this.#queued = 0;
      if (this.#paused) {
        this.#paused = false;
        this.#ws.resume();
      }
    }
  }

  #onData(data: Buffer): void {
    this.emit('data', data);
    if (!this.#iterating) return;
    this.#queue.push(data);
    this.#queued += data.length;
    if (!this.#paused && this.#queued > ITERATOR_HIGH_WATER) {
      this.#paused = true;
      this.#ws.pause();
    }
    this.#wake?.();
  }

  #onClose(code: number, reason: string): void {
    if (this.#exit) return;
    let exitCode: number | null = null;
    if (code === 1000) {
      try {
        const r = JSON.parse(reason) as { type?: unknown; exitCode?: unknown };
        if (r.type === 'exit' && typeof r.exitCode === 'number') exitCode = r.exitCode;
      } catch {
        // not an exit report
      }
    }
    this.#exit = { exitCode, closeCode: code, reason };
    this.#resolveExit(this.#exit);
    this.emit('exit', this.#exit);
    this.#wake?.();
  }
}

/** Options for opening a console connection. */
export interface OpenConsoleOptions {
  headers: Record<string, string>;
  tls: TLSOptions | undefined;
  timeoutMs: number;
  signal: AbortSignal | undefined;
  cols?: number | undefined;
  rows?: number | undefined;
}

/**
 * The console WebSocket URL for a token, built as the official CLI builds it (contract §5):
 * a `ws(s)://` `websocketPath` is used as is, otherwise it is appended to the base URL with the
 * scheme swapped; then `session=<token>` (and the initial size, which our server uses to start
 * the shell at once) is added to the query.
 */
export function consoleUrl(
  baseUrl: string,
  websocketPath: string,
  token: string,
  size: { cols?: number | undefined; rows?: number | undefined } = {},
): string {
  let url: string;
  if (/^wss?:\/\//i.test(websocketPath)) {
    url = websocketPath;
  } else {
    const base = baseUrl
      .replace(/^https:\/\//i, 'wss://')
      .replace(/^http:\/\//i, 'ws://')
      .replace(/\/+$/, '');
    url = base + (websocketPath.startsWith('/') ? '' : '/') + websocketPath;
  }
  url += `${url.includes('?') ? '&' : '?'}session=${encodeURIComponent(token)}`;
  if (size.cols !== undefined && size.rows !== undefined) {
    url += `&rows=${size.rows}&cols=${size.cols}`;
  }
  return url;
}

/** Connects and sends the initial size (as the official CLI does right after connecting). */
export async function openConsole(url: string, o: OpenConsoleOptions): Promise<ConsoleSession> {
  const ws = await MiniWebSocket.connect(url, {
    headers: o.headers,
    tls: o.tls,
    timeoutMs: o.timeoutMs,
    signal: o.signal,
  });
  const session = new ConsoleSession(ws);
  if (o.cols !== undefined && o.rows !== undefined) session.resize(o.cols, o.rows);
  return session;
}
