import { EventEmitter } from 'node:events';
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';

/** Connection states of a QMP client, in the order they are normally passed. */
export type QmpState = 'idle' | 'connecting' | 'negotiating' | 'ready' | 'closed';

export interface QmpEvent {
  readonly event: string;
  readonly data?: Record<string, unknown>;
  readonly timestamp?: { seconds: number; microseconds: number };
}

/** An error QEMU returned for a command (`{"error": {"class", "desc"}}`). */
export class QmpCommandError extends Error {
  constructor(
    readonly command: string,
    readonly errorClass: string,
    desc: string,
  ) {
    super(`QMP ${command}: ${errorClass}: ${desc}`);
    this.name = 'QmpCommandError';
  }
}

/** The connection failed or closed before a reply arrived. */
export class QmpConnectionError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'QmpConnectionError';
  }
}

interface Pending {
  readonly command: string;
  resolve(value: unknown): void;
  reject(err: Error): void;
  timer: NodeJS.Timeout;
}

interface QmpEvents {
  event: [QmpEvent];
  close: [Error | undefined];
}

/**
 * A QEMU Machine Protocol client over a unix socket.
 *
 * Commands are routed to their replies by `id`, so several may be in flight. Asynchronous events
 * are emitted as `event`; `waitEvent` resolves on the first matching one. When the socket closes,
 * every pending command rejects with a `QmpConnectionError` and `close` is emitted once.
 */
export class QmpClient extends EventEmitter<QmpEvents> {
  #state: QmpState = 'idle';
  #socket?: net.Socket;
  #buffer = '';
  #nextId = 1;
  readonly #pending = new Map<string, Pending>();
  #greeting?: (value: unknown) => void;

  get state(): QmpState {
    return this.#state;
  }

  /**
   * Connect to `path`, retrying while the socket does not exist yet (QEMU is still starting),
   * then negotiate capabilities.
   */
  static async connect(
    path: string,
    opts: {
      timeoutMs?: number;
      signal?: AbortSignal;
      /** Whether the QEMU is still there: a QEMU that exited fails the wait at once. */
      alive?: () => boolean;
    } = {},
  ): Promise<QmpClient> {
    const client = new QmpClient();
    await client.#connect(path, opts.timeoutMs ?? 10_000, opts.signal, opts.alive);
    return client;
  }

  async #connect(
    path: string,
    timeoutMs: number,
    signal?: AbortSignal,
    alive?: () => boolean,
  ): Promise<void> {
    this.#state = 'connecting';
    const deadline = Date.now() + timeoutMs;
    let delay = 1;
    for (;;) {
      signal?.throwIfAborted();
      try {
        this.#socket = await openSocket(path);
        break;
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        const gone = alive !== undefined && !alive();
        if ((code !== 'ENOENT' && code !== 'ECONNREFUSED') || gone || Date.now() > deadline) {
          this.#state = 'closed';
          const why = gone ? 'QEMU exited' : String(code);
          throw new QmpConnectionError(`cannot connect to QMP at ${path}: ${why}`, {
            cause: err,
          });
        }
        await sleep(delay);
        delay = Math.min(delay * 2, 2); // QEMU takes ~30 ms to listen: poll finely
      }
    }
    const socket = this.#socket;
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => this.#onData(chunk));
    socket.on('error', () => {});
    socket.on('close', () => this.#onClose());
    this.#state = 'negotiating';
    const greeting = new Promise((resolve, reject) => {
      this.#greeting = resolve;
      setTimeout(
        () => reject(new QmpConnectionError('no QMP greeting')),
        Math.max(deadline - Date.now(), 1000),
      ).unref();
    });
    await greeting;
    await this.execute('qmp_capabilities');
    this.#state = 'ready';
  }

  /** Send a command and resolve with its `return` value. */
  execute<T = unknown>(
    command: string,
    args?: Record<string, unknown>,
    opts: { timeoutMs?: number } = {},
  ): Promise<T> {
    const socket = this.#socket;
    if (!socket || this.#state === 'closed') {
      return Promise.reject(new QmpConnectionError(`QMP ${command}: connection closed`));
    }
    const id = String(this.#nextId++);
    const msg = JSON.stringify(
      args ? { execute: command, arguments: args, id } : { execute: command, id },
    );
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        reject(
          new QmpConnectionError(`QMP ${command}: no reply within ${opts.timeoutMs ?? 10_000} ms`),
        );
      }, opts.timeoutMs ?? 10_000);
      this.#pending.set(id, { command, resolve: resolve as (v: unknown) => void, reject, timer });
      socket.write(msg + '\n');
    });
  }

  /** Resolve with the first event named `name` that satisfies `match`. */
  waitEvent(
    name: string,
    opts: { timeoutMs?: number; match?: (e: QmpEvent) => boolean } = {},
  ): Promise<QmpEvent> {
    return new Promise((resolve, reject) => {
      const onEvent = (e: QmpEvent) => {
        if (e.event === name && (!opts.match || opts.match(e))) {
          cleanup();
          resolve(e);
        }
      };
      const onClose = () => {
        cleanup();
        reject(new QmpConnectionError(`QMP closed while waiting for ${name}`));
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new QmpConnectionError(`no ${name} event within ${opts.timeoutMs ?? 10_000} ms`));
      }, opts.timeoutMs ?? 10_000);
      const cleanup = () => {
        clearTimeout(timer);
        this.off('event', onEvent);
        this.off('close', onClose);
      };
      this.on('event', onEvent);
      this.on('close', onClose);
    });
  }

  /** Close the connection (QEMU keeps running). */
  close(): void {
    this.#socket?.destroy();
  }

  #onData(chunk: string): void {
    this.#buffer += chunk;
    let nl: number;
    while ((nl = this.#buffer.indexOf('\n')) >= 0) {
      const line = this.#buffer.slice(0, nl).trim();
      this.#buffer = this.#buffer.slice(nl + 1);
      if (line) this.#onMessage(line);
    }
  }

  #onMessage(line: string): void {
    let msg: Record<string, unknown>;
    try {
      msg = JSON.parse(line) as Record<string, unknown>;
    } catch {
      return;
    }
    if ('QMP' in msg) {
      this.#greeting?.(msg);
      this.#greeting = undefined;
      return;
    }
    if (typeof msg.event === 'string') {
      this.emit('event', msg as unknown as QmpEvent);
      return;
    }
    const id = typeof msg.id === 'string' ? msg.id : undefined;
    const pending = id ? this.#pending.get(id) : undefined;
    if (!id || !pending) return;
    this.#pending.delete(id);
    clearTimeout(pending.timer);
    if (msg.error) {
      const e = msg.error as { class?: string; desc?: string };
      pending.reject(new QmpCommandError(pending.command, e.class ?? 'GenericError', e.desc ?? ''));
    } else {
      pending.resolve(msg.return);
    }
  }

  #onClose(): void {
    if (this.#state === 'closed') return;
    this.#state = 'closed';
    for (const [id, p] of this.#pending) {
      clearTimeout(p.timer);
      p.reject(new QmpConnectionError(`QMP ${p.command}: connection closed`));
      this.#pending.delete(id);
    }
    this.emit('close', undefined);
  }
}

function openSocket(path: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.createConnection(path);
    s.once('connect', () => {
      s.off('error', reject);
      resolve(s);
    });
    s.once('error', reject);
  });
}
