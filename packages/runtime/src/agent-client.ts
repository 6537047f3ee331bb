/**
 * Host side of the guest agent protocol (spec/agent-protocol.md). QEMU exposes the guest's
 * virtio-serial port `fastvm.agent` as a unix socket server; an AgentClient is one connection to
 * it (the agent's `--unix` test mode serves the same protocol).
 *
 * Requests carry ids chosen here; replies are routed back by id, and frames for ids we do not know
 * (commands from before a restore, or requests we gave up on) are dropped.
 */
import crypto from 'node:crypto';
import { EventEmitter } from 'node:events';
import net from 'node:net';

import {
  ExecTag,
  FrameDecoder,
  IdentityTag,
  MAX_CHUNK,
  MAX_PAYLOAD,
  MsgType,
  NONCE_SIZE,
  PROTOCOL_VERSION,
  decodeError,
  decodeExit,
  encodeFrame,
  encodeTlv,
  scanHelloAck,
  u32,
  u64,
  winsize,
  type Frame,
  type Tlv,
} from './agent-protocol.js';
import {
  RuntimeError,
  type ExecRequest,
  type ExecResult,
  type PtyExit,
  type PtySession,
} from './types.js';

/** Connection state: `idle` before connect(), `ready` after the handshake, `closed` for good. */
export type AgentClientState = 'idle' | 'connecting' | 'ready' | 'closed';

export interface AgentConnectOptions {
  /** Deadline for the whole connect: retries while the socket is missing, then the handshake. */
  readonly timeoutMs: number;
  /** Aborting gives up connecting (the promise rejects with the signal's reason). */
  readonly signal?: AbortSignal;
  /**
   * Reconnect when a HELLO is not answered within this long (until `timeoutMs`). For re-attaching
   * to a running guest: if the guest wrote at the moment the previous host connection died, QEMU
   * can leave the virtio-serial port throttled for good, and only closing the socket (QEMU then
   * resets the port) lets the guest's answers through again.
   */
  readonly helloAttemptMs?: number;
}

/** What IDENTITY sets in the guest; absent fields are left alone. */
export interface AgentIdentity {
  readonly hostname?: string;
  /** 32 hex characters for /etc/machine-id. */
  readonly machineId?: string;
  /** Wall clock, in nanoseconds since the epoch. */
  readonly clockNs?: bigint;
  /** Bytes mixed into the guest kernel's RNG (and credited). */
  readonly entropy?: Uint8Array;
  /** `IFACE MAC [ADDR/PREFIX ...]` lines. */
  readonly net?: readonly string[];
  /** `ip route replace` argument lines, e.g. `-6 default via fd00::1 dev eth0`. */
  readonly routes?: readonly string[];
}

export interface AgentRequestOptions {
  /** How long to wait for the reply. */
  readonly timeoutMs?: number;
}

/** A command started with `spawn`: interactive input, pty size, flow control. */
export interface SpawnRequest {
  readonly argv: readonly string[];
  readonly env?: Readonly<Record<string, string>>;
  readonly cwd?: string;
  /**
   * Run on a new pseudo-terminal of this size: it is the command's controlling terminal and its
   * stdin, stdout and stderr, so all output arrives through `onStdout`. Input is always open.
   */
  readonly pty?: { readonly rows: number; readonly cols: number };
  /** Without a pty: keep stdin open for `write()` until `end()` (default: /dev/null). */
  readonly stdinOpen?: boolean;
  /** Input written first (to the pty, or the stdin pipe). */
  readonly stdin?: Uint8Array;
  readonly timeoutMs?: number;
  readonly capBytes?: number;
  readonly onStdout: (chunk: Buffer) => void;
  readonly onStderr?: (chunk: Buffer) => void;
  /**
   * The agent refused something for this running command (input over its 1 MiB queue, a
   * resize); the command keeps running.
   */
  readonly onError?: (err: AgentError) => void;
}

/** How a spawned command ended. */
export interface ProcessExit extends PtyExit {
  readonly timedOut: boolean;
}

/** A running command started by `AgentClient.spawn`. */
export interface AgentProcess extends PtySession {
  readonly exited: Promise<ProcessExit>;
  /** EOF on stdin; with a pty, hangs the terminal up instead (SIGHUP to its session). */
  end(): void;
  /** Sends a signal to the command's process group. */
  kill(signal?: number): void;
}

/** Events of an AgentClient. */
export interface AgentClientEvents {
  /** The connection is gone (closed by us, by the agent, or lost); fired once. */
  close: [reason: RuntimeError];
}

/** The agent answered a request with ERROR. */
export class AgentError extends Error {
  constructor(
    /** errno-style code from the agent (22 = EINVAL for malformed requests). */
    readonly errno: number,
    /** Which request failed: 'exec', 'identity', 'ping', ... */
    readonly request: string,
    message: string,
  ) {
    super(`agent ${request} failed: ${message}`);
    this.name = 'AgentError';
  }
}

const RETRYABLE_CONNECT = new Set(['ENOENT', 'ECONNREFUSED', 'EAGAIN']);
const DEFAULT_PING_TIMEOUT_MS = 10_000;
const DEFAULT_IDENTITY_TIMEOUT_MS = 60_000;
const DEFAULT_SHUTDOWN_TIMEOUT_MS = 10_000;
/** An exec with a timeout that has not reported EXIT this long after it is given up on. */
const EXEC_TIMEOUT_GRACE_MS = 10_000;
const SIGKILL = 9;
const U32_MAX = 0xffff_ffff;
const U16_MAX = 0xffff;
/** How long `AgentProcess.close()` waits after the hangup before SIGKILL. */
const DEFAULT_CLOSE_GRACE_MS = 2000;

interface Pending {
  onFrame(frame: Frame): void;
  fail(err: Error): void;
}

function unavailable(message: string, cause?: unknown): RuntimeError {
  return new RuntimeError(
    'agent_unavailable',
    message,
    cause === undefined ? undefined : { cause },
  );
}

function invalid(message: string): RuntimeError {
  return new RuntimeError('invalid_argument', message);
}

function abortReason(signal: AbortSignal): unknown {
  return signal.reason ?? new Error('aborted');
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(abortReason(signal!));
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/** One connection attempt; rejects with the socket error. */
function connectOnce(socketPath: string, signal?: AbortSignal): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = net.createConnection(socketPath);
    const onAbort = (): void => {
      socket.destroy();
      reject(abortReason(signal!));
    };
    socket.once('connect', () => {
      signal?.removeEventListener('abort', onAbort);
      socket.removeAllListeners('error');
      resolve(socket);
    });
    socket.once('error', (err) => {
      signal?.removeEventListener('abort', onAbort);
      socket.destroy();
      reject(err);
    });
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

function hasNul(s: string): boolean {
  return s.includes('\0');
}

function checkU32(name: string, v: number | undefined): number {
  if (v === undefined) return 0;
  if (!Number.isInteger(v) || v < 0 || v > U32_MAX) {
    throw invalid(`${name} must be an integer between 0 and ${U32_MAX}`);
  }
  return v;
}

function checkWinsize(rows: number, cols: number): Buffer {
  for (const [name, v] of [
    ['rows', rows],
    ['cols', cols],
  ] as const) {
    if (!Number.isInteger(v) || v < 1 || v > U16_MAX) {
      throw invalid(`${name} must be an integer between 1 and ${U16_MAX}`);
    }
  }
  return winsize(rows, cols);
}

/** Encodes an EXEC payload, validating what the agent would reject. */
function execPayload(
  req: Omit<ExecRequest, 'onStdout' | 'onStderr' | 'signal'> & {
    readonly pty?: { readonly rows: number; readonly cols: number };
    readonly stdinOpen?: boolean;
  },
): Buffer {
  if (!Array.isArray(req.argv) || req.argv.length === 0) throw invalid('argv must not be empty');
  if (req.argv.some((a) => typeof a !== 'string' || hasNul(a))) {
    throw invalid('argv entries must be strings without NUL bytes');
  }
  if (req.argv[0] === '') throw invalid('argv[0] must not be empty');
  const records: Tlv[] = req.argv.map((a) => [ExecTag.Argv, a] as const);
  for (const [key, value] of Object.entries(req.env ?? {})) {
    if (
      key === '' ||
      key.includes('=') ||
      hasNul(key) ||
      typeof value !== 'string' ||
      hasNul(value)
    ) {
      throw invalid(`bad environment variable ${JSON.stringify(key)}`);
    }
    records.push([ExecTag.Env, `${key}=${value}`]);
  }
  if (req.cwd !== undefined) {
    if (req.cwd === '' || hasNul(req.cwd)) throw invalid('cwd must be a non-empty path');
    records.push([ExecTag.Cwd, req.cwd]);
  }
  if (req.stdin !== undefined) records.push([ExecTag.Stdin, req.stdin]);
  const timeoutMs = checkU32('timeoutMs', req.timeoutMs);
  const cap = checkU32('capBytes', req.capBytes);
  if (timeoutMs > 0) records.push([ExecTag.TimeoutMs, u32(timeoutMs)]);
  if (cap > 0) records.push([ExecTag.Cap, u32(cap)]);
  if (req.pty) records.push([ExecTag.Pty, checkWinsize(req.pty.rows, req.pty.cols)]);
  else if (req.stdinOpen) records.push([ExecTag.StdinOpen, Buffer.alloc(0)]);
  const payload = encodeTlv(records);
  if (payload.length > MAX_PAYLOAD) {
    throw invalid(
      `exec request is ${payload.length} bytes; the limit is ${MAX_PAYLOAD} (stdin included)`,
    );
  }
  return payload;
}

/** Encodes an IDENTITY payload; fields go in tag order. */
function identityPayload(id: AgentIdentity): Buffer {
  const records: Tlv[] = [];
  if (id.hostname !== undefined) records.push([IdentityTag.Hostname, id.hostname]);
  if (id.machineId !== undefined) {
    if (!/^[0-9a-fA-F]{32}$/.test(id.machineId))
      throw invalid('machineId must be 32 hex characters');
    records.push([IdentityTag.MachineId, id.machineId]);
  }
  if (id.clockNs !== undefined) {
    if (id.clockNs < 0n || id.clockNs >= 1n << 64n) throw invalid('clockNs must fit in a u64');
    records.push([IdentityTag.ClockNs, u64(id.clockNs)]);
  }
  if (id.entropy !== undefined) records.push([IdentityTag.Entropy, id.entropy]);
  for (const line of id.net ?? []) records.push([IdentityTag.Net, line]);
  for (const line of id.routes ?? []) records.push([IdentityTag.Route, line]);
  const payload = encodeTlv(records);
  if (payload.length > MAX_PAYLOAD) throw invalid('identity request too large');
  return payload;
}

/**
 * A connection to one guest agent.
 *
 * ```ts
 * const agent = await AgentClient.connect('/run/vm/agent.sock', { timeoutMs: 10_000 });
 * const r = await agent.exec({ argv: ['echo', 'hello'] });
 * agent.close();
 * ```
 */
export class AgentClient extends EventEmitter<AgentClientEvents> {
  readonly #path: string;
  #state: AgentClientState = 'idle';
  #socket: net.Socket | undefined;
  readonly #decoder = new FrameDecoder();
  readonly #pending = new Map<number, Pending>();
  /** The backstops of running commands; they stand still while the guest does (see `freeze`). */
  readonly #backstops = new Set<GuestTimer>();
  #frozen = false;
  #nextId = 1;
  #agentVersion = '';
  #lastSocketError: Error | undefined;

  private constructor(socketPath: string) {
    super();
    this.#path = socketPath;
  }

  /**
   * Connects to the agent socket at `socketPath` and performs the HELLO handshake. While the
   * socket does not exist yet or refuses connections (QEMU still starting), it retries until
   * `timeoutMs` has passed. Everything the agent sent before answering our HELLO is discarded.
   *
   * @throws RuntimeError `agent_unavailable` when the deadline passes or the agent speaks another
   *   protocol version; the signal's reason when aborted.
   */
  static async connect(socketPath: string, opts: AgentConnectOptions): Promise<AgentClient> {
    const client = new AgentClient(socketPath);
    await client.#open(opts);
    return client;
  }

  /** Current connection state. */
  get state(): AgentClientState {
    return this.#state;
  }

  /** The agent's version string from its HELLO_ACK. */
  get agentVersion(): string {
    return this.#agentVersion;
  }

  /** The unix socket path this client connects to. */
  get path(): string {
    return this.#path;
  }

  /**
   * Round trip through the agent: sends PING with `payload` (at most 64 KiB) and resolves with
   * the echoed bytes.
   */
  async ping(
    payload: Uint8Array = Buffer.alloc(0),
    opts: AgentRequestOptions = {},
  ): Promise<Buffer> {
    if (payload.length > MAX_CHUNK) throw invalid(`ping payload over ${MAX_CHUNK} bytes`);
    const frame = await this.#call(
      'ping',
      MsgType.Ping,
      Buffer.from(payload),
      opts.timeoutMs ?? DEFAULT_PING_TIMEOUT_MS,
    );
    if (frame.type !== MsgType.Pong || !frame.payload.equals(payload)) {
      throw new Error(`agent ping: unexpected reply type 0x${frame.type.toString(16)}`);
    }
    return frame.payload;
  }

  /**
   * Runs a command in the guest and resolves once its main process has exited (background
   * processes it started may keep running). Output is collected into the result and also
   * streamed to `onStdout`/`onStderr` as it arrives. `timeoutMs` is enforced by the agent (the
   * process group is killed and the result has `timedOut`); aborting `signal` kills the process
   * group and rejects with the signal's reason.
   *
   * @throws RuntimeError `invalid_argument` for a malformed request (e.g. stdin over ~1 MiB),
   *   `agent_unavailable` if the connection is lost; AgentError if the agent refuses it.
   */
  exec(req: ExecRequest): Promise<ExecResult> {
    let payload: Buffer;
    try {
      payload = execPayload(req);
      this.#ensureReady('exec');
    } catch (err) {
      return Promise.reject(err);
    }
    const signal = req.signal;
    if (signal?.aborted) return Promise.reject(abortReason(signal));

    return new Promise<ExecResult>((resolve, reject) => {
      const id = this.#allocId();
      const stdout: Buffer[] = [];
      const stderr: Buffer[] = [];
      let done = false;
      let backstop: GuestTimer | undefined;

      const finish = (err: unknown, result?: ExecResult): void => {
        if (done) return;
        done = true;
        this.#pending.delete(id);
        backstop?.clear();
        signal?.removeEventListener('abort', onAbort);
        if (result) resolve(result);
        else reject(err);
      };
      // Kill the command in the guest, stop listening for it, and reject.
      const giveUp = (err: unknown): void => {
        this.#trySend(MsgType.Signal, id, u32(SIGKILL));
        finish(err);
      };
      const onAbort = (): void => giveUp(abortReason(signal!));
      const deliver = (cb: ((chunk: Buffer) => void) | undefined, chunk: Buffer): void => {
        if (!cb) return;
        try {
          cb(chunk);
        } catch (err) {
          giveUp(err);
        }
      };

      this.#pending.set(id, {
        onFrame: (f) => {
          switch (f.type) {
            case MsgType.Stdout:
              stdout.push(f.payload);
              deliver(req.onStdout, f.payload);
              break;
            case MsgType.Stderr:
              stderr.push(f.payload);
              deliver(req.onStderr, f.payload);
              break;
            case MsgType.Exit: {
              const exit = decodeExit(f.payload);
              finish(undefined, {
                exitCode: exit.exitCode,
                stdout: Buffer.concat(stdout),
                stderr: Buffer.concat(stderr),
                timedOut: exit.timedOut,
                stdoutTruncated: exit.stdoutTruncated,
                stderrTruncated: exit.stderrTruncated,
                durationMs: exit.durationMs,
              });
              break;
            }
            case MsgType.Error: {
              const e = decodeError(f.payload);
              finish(new AgentError(e.code, 'exec', e.message));
              break;
            }
            default:
              break; // STARTED and anything newer
          }
        },
        fail: (err) => finish(err),
      });
      signal?.addEventListener('abort', onAbort, { once: true });
      if (req.timeoutMs) {
        const limit = req.timeoutMs + EXEC_TIMEOUT_GRACE_MS;
        backstop = this.#backstop(limit, () =>
          giveUp(unavailable(`exec: no exit status from the agent ${limit} ms after the start`)),
        );
      }
      this.#send(MsgType.Exec, id, payload);
    });
  }

  /**
   * Starts a command and resolves once it runs (STARTED), with a handle to feed its input,
   * resize its pty, pause its output and wait for its exit. With `pty`, the command gets a new
   * pseudo-terminal as controlling terminal (an interactive shell); otherwise `stdinOpen` keeps
   * a stdin pipe open for `write()`. Output goes to the callbacks as it arrives; while
   * `pauseOutput()` is in effect the agent stops reading it, so the command blocks once the
   * pty/pipe buffer is full.
   *
   * @throws RuntimeError `invalid_argument` for a malformed request, `agent_unavailable` if the
   *   connection is lost; AgentError if the agent refuses to start it. `exited` rejects with
   *   `agent_unavailable` when the connection is lost while the command runs.
   */
  spawn(req: SpawnRequest): Promise<AgentProcess> {
    let payload: Buffer;
    try {
      payload = execPayload(req);
      this.#ensureReady('exec');
    } catch (err) {
      return Promise.reject(err);
    }
    const streaming = Boolean(req.pty) || req.stdinOpen === true;
    return new Promise<AgentProcess>((resolveStart, rejectStart) => {
      const id = this.#allocId();
      let started = false;
      let done = false;
      let ended = false;
      let killTimer: NodeJS.Timeout | undefined;
      let backstop: GuestTimer | undefined;
      let resolveExit!: (e: ProcessExit) => void;
      let rejectExit!: (err: unknown) => void;
      const exited = new Promise<ProcessExit>((res, rej) => {
        resolveExit = res;
        rejectExit = rej;
      });
      exited.catch(() => {}); // the caller may only look at it later

      const finish = (err: unknown, result?: ProcessExit): void => {
        if (done) return;
        done = true;
        this.#pending.delete(id);
        clearTimeout(killTimer);
        backstop?.clear();
        if (!started) rejectStart(err);
        else if (result) resolveExit(result);
        else rejectExit(err);
      };
      const live = (): boolean => started && !done && this.#state === 'ready';
      const deliver = (cb: ((chunk: Buffer) => void) | undefined, chunk: Buffer): void => {
        if (!cb) return;
        try {
          cb(chunk);
        } catch (err) {
          this.#trySend(MsgType.Signal, id, u32(SIGKILL));
          finish(err);
        }
      };
      const requireStream = (what: string): void => {
        if (!streaming) throw invalid(`${what}: the command was started without pty or stdinOpen`);
      };

      let pid = 0;
      const proc: AgentProcess = {
        get pid() {
          return pid;
        },
        exited,
        write: (data) => {
          requireStream('write');
          if (!live() || ended) return;
          const bytes = typeof data === 'string' ? Buffer.from(data, 'utf8') : Buffer.from(data);
          for (let off = 0; off < bytes.length; off += MAX_CHUNK) {
            this.#send(MsgType.Stdin, id, bytes.subarray(off, off + MAX_CHUNK));
          }
        },
        end: () => {
          requireStream('end');
          if (!live() || ended) return;
          ended = true;
          this.#send(MsgType.Stdin, id, Buffer.alloc(0));
        },
        resize: (rows, cols) => {
          if (!req.pty) throw invalid('resize: the command has no pty');
          const ws = checkWinsize(rows, cols);
          if (live()) this.#send(MsgType.Resize, id, ws);
        },
        kill: (sig = SIGKILL) => {
          if (!Number.isInteger(sig) || sig < 1 || sig > 64) throw invalid(`bad signal ${sig}`);
          if (live()) this.#send(MsgType.Signal, id, u32(sig));
        },
        pauseOutput: () => {
          if (live()) this.#send(MsgType.Flow, id, Buffer.from([0]));
        },
        resumeOutput: () => {
          if (live()) this.#send(MsgType.Flow, id, Buffer.from([1]));
        },
        close: (graceMs = DEFAULT_CLOSE_GRACE_MS) => {
          if (!live()) return;
          if (streaming) proc.end();
          else proc.kill(1);
          if (killTimer === undefined && !done) {
            killTimer = setTimeout(() => proc.kill(SIGKILL), graceMs);
            killTimer.unref();
          }
        },
      };

      this.#pending.set(id, {
        onFrame: (f) => {
          switch (f.type) {
            case MsgType.Started:
              if (started) break;
              started = true;
              pid = f.payload.length >= 4 ? f.payload.readUInt32LE(0) : 0;
              resolveStart(proc);
              break;
            case MsgType.Stdout:
              deliver(req.onStdout, f.payload);
              break;
            case MsgType.Stderr:
              deliver(req.onStderr, f.payload);
              break;
            case MsgType.Exit: {
              const exit = decodeExit(f.payload);
              finish(undefined, {
                exitCode: exit.exitCode,
                signal: exit.signal,
                timedOut: exit.timedOut,
                durationMs: exit.durationMs,
              });
              break;
            }
            case MsgType.Error: {
              const e = decodeError(f.payload);
              const err = new AgentError(e.code, started ? 'input' : 'exec', e.message);
              if (!started) finish(err);
              else req.onError?.(err);
              break;
            }
            default:
              break;
          }
        },
        fail: (err) => finish(err),
      });
      if (req.timeoutMs) {
        const limit = req.timeoutMs + EXEC_TIMEOUT_GRACE_MS;
        backstop = this.#backstop(limit, () => {
          this.#trySend(MsgType.Signal, id, u32(SIGKILL));
          finish(unavailable(`exec: no exit status from the agent ${limit} ms after the start`));
        });
      }
      this.#send(MsgType.Exec, id, payload);
    });
  }

  /**
   * Sets the guest's identity: hostname (and /etc/hosts), machine id, clock, entropy, network
   * addresses and routes. Fields are applied in that order; the first failure stops it.
   *
   * @throws AgentError naming the field that failed (e.g. "net: ip link set ...").
   */
  async setIdentity(identity: AgentIdentity, opts: AgentRequestOptions = {}): Promise<void> {
    const payload = identityPayload(identity);
    await this.#call(
      'identity',
      MsgType.Identity,
      payload,
      opts.timeoutMs ?? DEFAULT_IDENTITY_TIMEOUT_MS,
    );
  }

  /**
   * Asks the agent to sync and power the VM off. Resolves when the agent acknowledges, or when
   * the connection closes first (the VM went down).
   */
  async shutdown(opts: AgentRequestOptions = {}): Promise<void> {
    try {
      await this.#call(
        'shutdown',
        MsgType.Shutdown,
        Buffer.alloc(0),
        opts.timeoutMs ?? DEFAULT_SHUTDOWN_TIMEOUT_MS,
      );
    } catch (err) {
      if (
        err instanceof RuntimeError &&
        err.code === 'agent_unavailable' &&
        this.#state === 'closed'
      ) {
        return;
      }
      throw err;
    }
  }

  /**
   * Stops the clocks of running commands' backstops (the VM was paused: its commands, and the
   * agent's own timeouts, stand still). `thaw` starts them again with the time they had left.
   */
  freeze(): void {
    this.#frozen = true;
    for (const t of this.#backstops) t.freeze();
  }

  /** See `freeze`. */
  thaw(): void {
    this.#frozen = false;
    for (const t of this.#backstops) t.thaw();
  }

  /** A backstop timer for a command: counts only while the guest runs, gone once cleared. */
  #backstop(ms: number, fire: () => void): GuestTimer {
    const timer = new GuestTimer(ms, () => {
      this.#backstops.delete(timer);
      fire();
    });
    timer.onClear = () => this.#backstops.delete(timer);
    this.#backstops.add(timer);
    if (!this.#frozen) timer.thaw();
    return timer;
  }

  /**
   * Closes the connection. Pending requests reject with `agent_unavailable`; commands keep
   * running in the guest. Idempotent.
   */
  close(): void {
    this.#teardown(unavailable(`agent connection to ${this.#path} closed`));
  }

  // ---------------------------------------------------------------------------------------------

  async #open(opts: AgentConnectOptions): Promise<void> {
    this.#state = 'connecting';
    const deadline = Date.now() + opts.timeoutMs;
    try {
      for (;;) {
        const attempt = opts.helloAttemptMs
          ? Math.min(deadline, Date.now() + opts.helloAttemptMs)
          : deadline;
        const socket = await this.#connectWithRetry(deadline, opts.signal);
        try {
          await this.#handshake(socket, attempt, opts.signal);
          return;
        } catch (err) {
          if (attempt >= deadline || opts.signal?.aborted) throw err;
          // Not answered in this attempt: a fresh connection resets a stuck port.
        }
      }
    } catch (err) {
      this.#state = 'closed';
      this.#socket?.destroy();
      throw err;
    }
  }

  async #connectWithRetry(deadline: number, signal?: AbortSignal): Promise<net.Socket> {
    let delay = 5;
    for (;;) {
      if (signal?.aborted) throw abortReason(signal);
      try {
        return await connectOnce(this.#path, signal);
      } catch (err) {
        if (signal?.aborted) throw abortReason(signal);
        const code = (err as NodeJS.ErrnoException).code ?? '';
        const left = deadline - Date.now();
        if (!RETRYABLE_CONNECT.has(code) || left <= 0) {
          throw unavailable(
            `cannot connect to the agent at ${this.#path}: ${(err as Error).message}`,
            err,
          );
        }
        await sleep(Math.min(delay, left), signal);
        delay = Math.min(delay * 2, 100);
      }
    }
  }

  /** Sends HELLO and waits for the HELLO_ACK with our nonce, discarding everything before it. */
  #handshake(socket: net.Socket, deadline: number, signal?: AbortSignal): Promise<void> {
    this.#socket = socket;
    const nonce = crypto.randomBytes(NONCE_SIZE);
    return new Promise<void>((resolve, reject) => {
      let seen = Buffer.alloc(0);
      let socketError: Error | undefined;
      const cleanup = (): void => {
        clearTimeout(timer);
        socket.off('data', onData);
        socket.off('close', onClose);
        socket.off('error', onError);
        signal?.removeEventListener('abort', onAbort);
      };
      const fail = (err: unknown): void => {
        cleanup();
        socket.destroy();
        reject(err);
      };
      const onData = (chunk: Buffer): void => {
        const scan = scanHelloAck(seen.length ? Buffer.concat([seen, chunk]) : chunk, nonce);
        if (!scan.found) {
          seen = Buffer.from(scan.keep);
          return;
        }
        if (scan.ack.version !== PROTOCOL_VERSION) {
          fail(
            unavailable(
              `agent at ${this.#path} speaks protocol ${scan.ack.version}, want ${PROTOCOL_VERSION}`,
            ),
          );
          return;
        }
        cleanup();
        this.#agentVersion = scan.ack.agentVersion;
        this.#attach(socket, scan.rest);
        resolve();
      };
      const onClose = (): void =>
        fail(
          unavailable(`agent connection to ${this.#path} closed during the handshake`, socketError),
        );
      const onError = (err: Error): void => {
        socketError = err;
      };
      const onAbort = (): void => fail(abortReason(signal!));
      const timer = setTimeout(
        () => fail(unavailable(`agent at ${this.#path} did not answer HELLO in time`)),
        Math.max(0, deadline - Date.now()),
      );
      socket.on('data', onData);
      socket.on('close', onClose);
      socket.on('error', onError);
      signal?.addEventListener('abort', onAbort, { once: true });
      socket.write(encodeFrame(MsgType.Hello, 0, nonce));
    });
  }

  #attach(socket: net.Socket, rest: Buffer): void {
    this.#state = 'ready';
    socket.on('data', (chunk: Buffer) => this.#onData(chunk));
    socket.on('error', (err) => {
      this.#lastSocketError = err;
    });
    socket.on('close', () => {
      const cause = this.#lastSocketError;
      this.#teardown(
        unavailable(
          `agent connection to ${this.#path} lost${cause ? `: ${cause.message}` : ''}`,
          cause,
        ),
      );
    });
    if (rest.length > 0) this.#onData(Buffer.from(rest));
  }

  #onData(chunk: Buffer): void {
    for (const frame of this.#decoder.push(chunk)) {
      // Unknown ids: commands from before a restore, or requests we stopped waiting for.
      this.#pending.get(frame.id)?.onFrame(frame);
    }
  }

  #teardown(reason: RuntimeError): void {
    if (this.#state === 'closed') return;
    this.#state = 'closed';
    this.#socket?.destroy();
    const pending = [...this.#pending.values()];
    this.#pending.clear();
    for (const p of pending) p.fail(reason);
    this.emit('close', reason);
  }

  #ensureReady(what: string): void {
    if (this.#state !== 'ready') {
      throw unavailable(`agent ${what}: the connection to ${this.#path} is ${this.#state}`);
    }
  }

  #allocId(): number {
    let id = this.#nextId;
    while (this.#pending.has(id)) id = (id % U32_MAX) + 1;
    this.#nextId = (id % U32_MAX) + 1;
    return id;
  }

  #send(type: number, id: number, payload: Buffer): void {
    this.#socket!.write(encodeFrame(type, id, payload));
  }

  /** Best-effort send that never throws (used while giving up on a request). */
  #trySend(type: number, id: number, payload: Buffer): void {
    if (this.#state === 'ready') this.#send(type, id, payload);
  }

  /** One request, one reply frame (ERROR becomes an AgentError). */
  #call(what: string, type: number, payload: Buffer, timeoutMs: number): Promise<Frame> {
    return new Promise<Frame>((resolve, reject) => {
      this.#ensureReady(what);
      const id = this.#allocId();
      const timer =
        timeoutMs > 0
          ? setTimeout(() => {
              this.#pending.delete(id);
              reject(unavailable(`agent ${what}: no reply within ${timeoutMs} ms`));
            }, timeoutMs)
          : undefined;
      this.#pending.set(id, {
        onFrame: (f) => {
          this.#pending.delete(id);
          clearTimeout(timer);
          if (f.type === MsgType.Error) {
            const e = decodeError(f.payload);
            reject(new AgentError(e.code, what, e.message));
          } else {
            resolve(f);
          }
        },
        fail: (err) => {
          clearTimeout(timer);
          reject(err);
        },
      });
      this.#send(type, id, payload);
    });
  }
}

/**
 * A timer of guest time, roughly: it runs while thawed and stands still while frozen (the VM is
 * paused), keeping the time it has left.
 */
class GuestTimer {
  #left: number;
  #since = 0;
  #timer: NodeJS.Timeout | undefined;
  #cleared = false;
  onClear: (() => void) | undefined;

  constructor(
    ms: number,
    private readonly fire: () => void,
  ) {
    this.#left = ms;
  }

  freeze(): void {
    if (!this.#timer) return;
    clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#left -= performance.now() - this.#since;
  }

  thaw(): void {
    if (this.#timer || this.#cleared) return;
    this.#since = performance.now();
    this.#timer = setTimeout(
      () => {
        this.#cleared = true;
        this.fire();
      },
      Math.max(0, this.#left),
    );
  }

  clear(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    if (!this.#cleared) {
      this.#cleared = true;
      this.onClear?.();
    }
  }
}
