/**
 * Exec sessions: streaming commands with an id, whose output is kept (the last `bufferBytes`,
 * stdout and stderr together, in the order produced) so that a client can attach, leave and
 * attach again from a byte offset, and whose end (exit status, or why there is none) stays
 * readable for `retainMs` after it. Every NDJSON exec is one; a detached exec or one with
 * `keepAlive` outlives its request, a plain one is killed when its client goes (as before) and
 * its output is kept only while it runs.
 * Sessions live in this process only: a server restart forgets them (the commands keep running
 * in the guest, unobserved). See docs/ARCHITECTURE.md ("Exec sessions").
 *
 * Offsets count output bytes: stdout and stderr share one sequence, so offset N is the N-th byte
 * the command wrote to either stream, and a client that counts the bytes it has received knows
 * where to resume.
 * @module
 */
import { randomUUID } from 'node:crypto';
import type { Logger } from 'pino';
import { NotFoundError, QuotaExceededError, type VmRecord } from '../domain/index.js';
import type { VmEvents } from './vm-events.js';
import type { PreparedExec, VmService } from './vm-service.js';

/** Bounds on what sessions keep (see the module comment). */
export interface ExecSessionLimits {
  /** Output bytes kept per session; older bytes are dropped (default 1 MiB). */
  bufferBytes: number;
  /** Sessions per VM, running and ended; the oldest ended one makes room (default 32). */
  maxPerVm: number;
  /** How long an ended session stays listed and attachable (default 10 minutes). */
  retainMs: number;
}

export const DEFAULT_EXEC_SESSION_LIMITS: Readonly<ExecSessionLimits> = {
  bufferBytes: 1024 * 1024,
  maxPerVm: 32,
  retainMs: 10 * 60 * 1000,
};

/** `killed`: stopped by a client leaving or by a kill request; `failed`: the VM went away. */
export type ExecSessionStatus = 'running' | 'exited' | 'killed' | 'failed';

/** Output: `offset` is that of the chunk's first byte. */
export interface ExecOutput {
  type: 'stdout' | 'stderr';
  offset: number;
  data: Buffer;
}

/** How a session ended: an exit status, or an error (killed, VM gone) with no status. */
export type ExecEnd =
  | { type: 'exit'; exitCode: number; timedOut: boolean; durationMs: number }
  | { type: 'error'; status: 'killed' | 'failed'; message: string };

export type ExecEvent = ExecOutput | ExecEnd;

/** Receives a session's events in order; must not throw. */
export type ExecListener = (event: ExecEvent) => void;

/** One command; see the module comment. */
export class ExecSession {
  readonly id = randomUUID();
  readonly startedAt = new Date();
  endedAt: Date | undefined;
  end: ExecEnd | undefined;
  stdoutBytes = 0;
  stderrBytes = 0;
  /** Set when the session ended: when it will be forgotten. */
  expiresAt: Date | undefined;
  readonly #chunks: ExecOutput[] = [];
  #buffered = 0;
  #next = 0;
  readonly #listeners = new Set<ExecListener>();
  readonly #abort = new AbortController();

  constructor(
    readonly vm: Pick<VmRecord, 'id' | 'orgId'>,
    readonly argv: readonly string[],
    /** Survives the disconnect of the request that started it. */
    readonly keepAlive: boolean,
    private readonly bufferBytes: number,
  ) {}

  get status(): ExecSessionStatus {
    if (!this.end) return 'running';
    return this.end.type === 'exit' ? 'exited' : this.end.status;
  }

  /** Output bytes produced so far: the offset the next byte will have. */
  get outputBytes(): number {
    return this.#next;
  }

  /** The offset of the oldest byte still kept (0 until something is dropped). */
  get truncatedBefore(): number {
    return this.#chunks[0]?.offset ?? this.#next;
  }

  /** Aborted when the session is killed (the command's signal). */
  get signal(): AbortSignal {
    return this.#abort.signal;
  }

  /** Kills a running command (the session ends `killed`). */
  kill(reason: string): void {
    if (!this.end) this.#abort.abort(new Error(reason));
  }

  /**
   * Replays the kept output from `fromOffset` (raised to `truncatedBefore`, lowered to the end),
   * then the live output and the end. Returns where the replay starts and a function that stops
   * following. A session that has ended delivers everything at once.
   */
  follow(fromOffset: number, listener: ExecListener): { from: number; stop: () => void } {
    const from = Math.min(Math.max(fromOffset, this.truncatedBefore), this.#next);
    for (const chunk of this.#chunks) {
      const skip = from - chunk.offset;
      if (skip >= chunk.data.length) continue;
      listener(
        skip > 0 ? { ...chunk, offset: from, data: chunk.data.subarray(skip) } : { ...chunk },
      );
    }
    if (this.end) {
      listener(this.end);
      return { from, stop: () => {} };
    }
    this.#listeners.add(listener);
    return { from, stop: () => this.unfollow(listener) };
  }

  /** Stops a listener of `follow` (or of `ExecSessions.start`). */
  unfollow(listener: ExecListener): void {
    this.#listeners.delete(listener);
  }

  /** @internal Output from the command. */
  push(type: ExecOutput['type'], data: Buffer): void {
    if (this.end || data.length === 0) return;
    const chunk: ExecOutput = { type, offset: this.#next, data };
    this.#next += data.length;
    if (type === 'stdout') this.stdoutBytes += data.length;
    else this.stderrBytes += data.length;
    this.#chunks.push(chunk);
    this.#buffered += data.length;
    while (this.#buffered > this.bufferBytes) {
      const first = this.#chunks[0]!;
      const excess = this.#buffered - this.bufferBytes;
      if (first.data.length <= excess) {
        this.#chunks.shift();
        this.#buffered -= first.data.length;
      } else {
        this.#chunks[0] = {
          ...first,
          offset: first.offset + excess,
          data: first.data.subarray(excess),
        };
        this.#buffered -= excess;
      }
    }
    for (const listener of this.#listeners) listener(chunk);
  }

  /** @internal Forgets the kept output (`truncatedBefore` becomes `outputBytes`). */
  dropOutput(): void {
    this.#chunks.length = 0;
    this.#buffered = 0;
  }

  /** @internal The command ended. */
  finish(end: ExecEnd, retainMs: number): void {
    if (this.end) return;
    this.end = end;
    this.endedAt = new Date();
    this.expiresAt = new Date(this.endedAt.getTime() + retainMs);
    for (const listener of this.#listeners) listener(end);
    this.#listeners.clear();
  }
}

/** The sessions of every VM, org-scoped through the VM record the caller resolved. */
export class ExecSessions {
  readonly limits: ExecSessionLimits;
  readonly #byVm = new Map<string, Map<string, ExecSession>>();
  /** When each ended session is forgotten. */
  readonly #timers = new Map<ExecSession, NodeJS.Timeout>();
  readonly #unsubscribe: (() => void) | undefined;
  readonly #logger: Logger | undefined;

  constructor(
    private readonly vms: Pick<VmService, 'runExec'>,
    opts: { limits?: Partial<ExecSessionLimits>; events?: VmEvents; logger?: Logger } = {},
  ) {
    this.limits = { ...DEFAULT_EXEC_SESSION_LIMITS, ...opts.limits };
    this.#logger = opts.logger;
    // A deleted VM's sessions go with it.
    this.#unsubscribe = opts.events?.subscribe((vm) => {
      if (vm.status === 'deleted') this.#dropVm(vm.id);
    });
  }

  /**
   * Starts a prepared exec as a session. `keepAlive`: it survives its client (detached, or a
   * stream that asked to); the caller kills the others when their client goes. `listener`
   * follows it from before the command starts, so it misses no byte however fast the output
   * comes (`follow` after `start` could find the first bytes dropped already).
   * @throws QuotaExceededError (`execSessions`) when `maxPerVm` sessions of the VM still run.
   */
  start(
    prepared: PreparedExec,
    opts: { keepAlive: boolean; listener?: ExecListener },
  ): ExecSession {
    const vm = prepared.vm;
    let sessions = this.#byVm.get(vm.id);
    if (!sessions) this.#byVm.set(vm.id, (sessions = new Map()));
    if (sessions.size >= this.limits.maxPerVm) {
      const oldestEnded = [...sessions.values()].find((s) => s.end);
      if (!oldestEnded) {
        throw new QuotaExceededError(
          'execSessions',
          this.limits.maxPerVm,
          sessions.size,
          1,
          `at most ${this.limits.maxPerVm} exec sessions can run in one VM at a time`,
        );
      }
      sessions.delete(oldestEnded.id);
      clearTimeout(this.#timers.get(oldestEnded));
      this.#timers.delete(oldestEnded);
    }
    const session = new ExecSession(vm, prepared.argv, opts.keepAlive, this.limits.bufferBytes);
    sessions.set(session.id, session);
    if (opts.listener) session.follow(0, opts.listener);
    this.vms
      .runExec(prepared, {
        signal: session.signal,
        // No cap: every byte is streamed (contract: NDJSON is uncapped); the session keeps the
        // last `bufferBytes`.
        capBytes: 0,
        onStdout: (chunk) => session.push('stdout', chunk),
        onStderr: (chunk) => session.push('stderr', chunk),
      })
      .then(
        (res) =>
          this.#ended(session, {
            type: 'exit',
            exitCode: res.exitCode,
            timedOut: res.timedOut,
            durationMs: Math.round(res.durationMs),
          }),
        (err: unknown) => {
          const killed = session.signal.aborted;
          const reason: unknown = killed ? session.signal.reason : err;
          if (!killed) this.#logger?.warn({ err, vmId: vm.id, execId: session.id }, 'exec failed');
          this.#ended(session, {
            type: 'error',
            status: killed ? 'killed' : 'failed',
            message: reason instanceof Error ? reason.message : String(reason),
          });
        },
      );
    return session;
  }

  /** The VM's sessions, oldest first. */
  list(vm: Pick<VmRecord, 'id'>): ExecSession[] {
    return [...(this.#byVm.get(vm.id)?.values() ?? [])];
  }

  /** @throws NotFoundError unless `execId` is a session of this VM. */
  get(vm: Pick<VmRecord, 'id'>, execId: string): ExecSession {
    const session = this.#byVm.get(vm.id)?.get(execId);
    if (!session) throw new NotFoundError('exec session', { field: 'execId' });
    return session;
  }

  /**
   * Forgets every session (server shutdown). Their commands are not killed: like the VMs, they
   * run on in the guest without a server.
   */
  close(): void {
    this.#unsubscribe?.();
    for (const timer of this.#timers.values()) clearTimeout(timer);
    this.#timers.clear();
    this.#byVm.clear();
  }

  #ended(session: ExecSession, end: ExecEnd): void {
    session.finish(end, this.limits.retainMs);
    // Nobody can come back for a plain stream's output (its client saw it all, or left and so
    // killed it): keep only its status and counts.
    if (!session.keepAlive) session.dropOutput();
    const timer = setTimeout(() => {
      this.#timers.delete(session);
      const sessions = this.#byVm.get(session.vm.id);
      if (sessions?.get(session.id) !== session) return;
      sessions.delete(session.id);
      if (sessions.size === 0) this.#byVm.delete(session.vm.id);
    }, this.limits.retainMs);
    timer.unref();
    this.#timers.set(session, timer);
  }

  #dropVm(vmId: string): void {
    const sessions = this.#byVm.get(vmId);
    if (!sessions) return;
    this.#byVm.delete(vmId);
    for (const s of sessions.values()) s.kill('the VM was deleted');
  }
}
