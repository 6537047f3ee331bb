/**
 * The interactive console (contract §4.2.9 and §5): short-lived, single-use console tokens, and
 * WebSocket sessions that bridge a client's terminal to a login shell on a pseudo-terminal in
 * the guest (`Runtime.openPty`).
 *
 * Tokens are capabilities: `fvc_` + 192 random bits, kept only as SHA-256 hashes in memory with
 * their org, VM and expiry; redeeming one deletes it. They do not survive a server restart (the
 * console sessions would not either).
 *
 * WebSocket protocol (what the official Python CLI speaks):
 * - client → server, text frame: a JSON object `{"type":"resize","cols":N,"rows":N}` sets the
 *   window size; any other text frame is terminal input (its UTF-8 bytes);
 * - client → server, binary frame: terminal input, bytes as they are (our CLI and SDK use these,
 *   so any byte sequence, including one that looks like a resize message, is typed verbatim);
 * - server → client, binary frames: terminal output, bytes as the guest wrote them;
 * - when the shell exits, the server closes with code 1000 and the reason
 *   `{"type":"exit","exitCode":N}` (N = exit status, or 128 + signal);
 * - the client closing (or vanishing) hangs the terminal up: the shell gets SIGHUP, and is
 *   killed 2 s later if it is still running;
 * - 1011 with a reason when the VM or its agent goes away; 1001 when the server shuts down.
 * The shell starts on the first client message (usually the CLI's initial resize, so it starts at
 * the right size), after 150 ms, or at once when the URL carries `rows` and `cols`.
 * @module
 */
import { createHash, randomBytes } from 'node:crypto';
import type { PtyExit, PtySession, Runtime } from '@fastvm/runtime';
import type { Logger } from 'pino';
import type { WebSocket } from 'ws';
import { NotFoundError, StateConflictError, UnauthorizedError } from '../domain/index.js';
import type { Store } from '../store/index.js';
import { resolveVm } from './resolve.js';

/** Tunables of the console (defaults in `DEFAULT_CONSOLE_SETTINGS`). */
export interface ConsoleSettings {
  /** Lifetime of a console token. */
  tokenTtlSec: number;
  /** Most console sessions open at once on one VM. */
  maxSessionsPerVm: number;
  /** The program run on the pty: a login shell. */
  shell: readonly string[];
  /** Environment added for it. */
  env: Readonly<Record<string, string>>;
  /** How long a session waits for the client's first message (its size) before starting. */
  startWaitMs: number;
  /** WebSocket ping interval; a client that misses two pongs is dropped. */
  pingIntervalMs: number;
  /** How long a hung-up shell may take to exit before it is killed. */
  hangupGraceMs: number;
  /** Output queued on the socket above which the guest's output is paused, and below which it resumes. */
  highWaterBytes: number;
  lowWaterBytes: number;
}

export const DEFAULT_CONSOLE_SETTINGS: ConsoleSettings = {
  tokenTtlSec: 60,
  maxSessionsPerVm: 16,
  shell: ['/bin/bash', '-l'],
  env: { TERM: 'xterm-256color' },
  startWaitMs: 150,
  pingIntervalMs: 30_000,
  hangupGraceMs: 2000,
  highWaterBytes: 1024 * 1024,
  lowWaterBytes: 256 * 1024,
};

/** Response of `POST /v1/vms/{id}/console-token` (contract §3.4). */
export interface ConsoleToken {
  token: string;
  expiresInSec: number;
  websocketPath: string;
}

/** What a redeemed token grants: one console session on one VM of one org. */
export interface ConsoleGrant {
  orgId: string;
  vmId: string;
  /** The VM's environment variables when the token was redeemed (the shell's environment). */
  env?: Readonly<Record<string, string>>;
}

/** Terminal size from the WebSocket URL (`?rows=&cols=`), when both are given. */
export interface InitialSize {
  rows: number;
  cols: number;
}

/** Close codes the server uses. */
export const CLOSE = {
  exited: 1000,
  shuttingDown: 1001,
  lost: 1011,
} as const;

const TOKEN_PREFIX = 'fvc_';
const TOKEN_RE = /^fvc_[A-Za-z0-9_-]{32}$/;
const MAX_DIM = 0xffff;
const DEFAULT_SIZE: InitialSize = { rows: 24, cols: 80 };
/** Outstanding tokens kept per VM; minting more drops the oldest. */
const MAX_TOKENS_PER_VM = 64;

interface TokenEntry extends ConsoleGrant {
  expiresAt: number;
}

/** The WebSocket path of a VM's console (PRE spec path). */
export function consolePath(vmId: string): string {
  return `/v1/vms/${encodeURIComponent(vmId)}/console/ws`;
}

function hashToken(token: string): string {
  return createHash('sha256').update(token, 'utf8').digest('hex');
}

/** A window size from a resize message or the URL, or undefined if it is not one. */
export function parseSize(rows: unknown, cols: unknown): InitialSize | undefined {
  const r = typeof rows === 'string' && /^\d+$/.test(rows) ? Number(rows) : rows;
  const c = typeof cols === 'string' && /^\d+$/.test(cols) ? Number(cols) : cols;
  if (typeof r !== 'number' || typeof c !== 'number') return undefined;
  if (!Number.isInteger(r) || !Number.isInteger(c)) return undefined;
  if (r < 1 || c < 1) return undefined;
  return { rows: Math.min(r, MAX_DIM), cols: Math.min(c, MAX_DIM) };
}

/**
 * A client text frame: the window size if it is a resize message (contract §5: a JSON object with
 * `"type":"resize"`), otherwise undefined (the text is input). A resize message with unusable
 * numbers is still a control message: it returns null and is ignored.
 */
export function parseControl(text: string): InitialSize | null | undefined {
  if (!text.startsWith('{')) return undefined;
  let msg: unknown;
  try {
    msg = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (typeof msg !== 'object' || msg === null || Array.isArray(msg)) return undefined;
  const m = msg as Record<string, unknown>;
  if (m.type !== 'resize') return undefined;
  return parseSize(m.rows, m.cols) ?? null;
}

/** Console tokens and sessions. */
export class ConsoleService {
  readonly settings: ConsoleSettings;
  readonly #tokens = new Map<string, TokenEntry>();
  readonly #sessions = new Map<string, Set<ConsoleSession>>();

  constructor(
    private readonly deps: { store: Store; runtime: Runtime; logger: Logger },
    settings: Partial<ConsoleSettings> = {},
  ) {
    this.settings = { ...DEFAULT_CONSOLE_SETTINGS, ...settings };
  }

  /** Open console sessions (all VMs). */
  get sessionCount(): number {
    let n = 0;
    for (const set of this.#sessions.values()) n += set.size;
    return n;
  }

  /**
   * Mints a console token for a running VM of the org (`NotFoundError` for unknown or other
   * orgs' VMs, `StateConflictError` if it is not running).
   */
  async mint(orgId: string, ref: string): Promise<ConsoleToken> {
    const vm = await resolveVm(this.deps.store, orgId, ref);
    if (vm.status !== 'running') {
      throw new StateConflictError(`VM is ${vm.status}, not running`, { status: vm.status });
    }
    const now = Date.now();
    this.#sweep(now);
    const mine = [...this.#tokens].filter(([, t]) => t.vmId === vm.id);
    for (const [hash] of mine.slice(0, Math.max(0, mine.length - MAX_TOKENS_PER_VM + 1))) {
      this.#tokens.delete(hash);
    }
    const token = TOKEN_PREFIX + randomBytes(24).toString('base64url');
    const ttl = this.settings.tokenTtlSec;
    this.#tokens.set(hashToken(token), { orgId, vmId: vm.id, expiresAt: now + ttl * 1000 });
    return { token, expiresInSec: ttl, websocketPath: consolePath(vm.id) };
  }

  /**
   * Redeems a token for the console of VM `pathId` (the id in the WebSocket path). The token is
   * used up whatever happens next. `UnauthorizedError` for a missing, unknown, expired, used or
   * other VM's token; `NotFoundError` if the VM is gone; `StateConflictError` if it is not
   * running or has too many sessions.
   */
  async redeem(token: string | undefined, pathId: string): Promise<ConsoleGrant> {
    if (!token) {
      throw new UnauthorizedError('missing console token: connect with ?session=<token>');
    }
    const now = Date.now();
    const hash = TOKEN_RE.test(token) ? hashToken(token) : undefined;
    const entry = hash ? this.#tokens.get(hash) : undefined;
    if (hash) this.#tokens.delete(hash);
    this.#sweep(now);
    if (!entry || entry.expiresAt <= now || entry.vmId !== pathId) {
      throw new UnauthorizedError('invalid, expired or already used console token');
    }
    const vm = await this.deps.store.getVm(entry.orgId, entry.vmId);
    if (!vm) throw new NotFoundError('vm');
    if (vm.status !== 'running') {
      throw new StateConflictError(`VM is ${vm.status}, not running`, { status: vm.status });
    }
    if ((this.#sessions.get(vm.id)?.size ?? 0) >= this.settings.maxSessionsPerVm) {
      throw new StateConflictError(
        `too many console sessions on this VM (${this.settings.maxSessionsPerVm}); close one first`,
      );
    }
    return { orgId: entry.orgId, vmId: entry.vmId, env: { ...vm.envVars } };
  }

  /**
   * Runs a console session on an accepted WebSocket until the shell exits or the client leaves.
   * Call synchronously from the WebSocket handler, so no early message is missed.
   */
  attach(ws: WebSocket, grant: ConsoleGrant, size?: InitialSize, log?: Logger): void {
    const session = new ConsoleSession(ws, grant, this.deps.runtime, this.settings, {
      logger: log ?? this.deps.logger,
      onEnd: () => {
        const set = this.#sessions.get(grant.vmId);
        set?.delete(session);
        if (set?.size === 0) this.#sessions.delete(grant.vmId);
      },
    });
    let set = this.#sessions.get(grant.vmId);
    if (!set) this.#sessions.set(grant.vmId, (set = new Set()));
    set.add(session);
    session.start(size);
  }

  /** Server shutdown: closes every session (1001) and hangs up its shell. */
  closeAll(): void {
    for (const set of this.#sessions.values()) {
      for (const s of set) s.shutdown();
    }
  }

  #sweep(now: number): void {
    for (const [hash, t] of this.#tokens) if (t.expiresAt <= now) this.#tokens.delete(hash);
  }
}

/** One WebSocket ↔ pty bridge. */
class ConsoleSession {
  #pty: PtySession | undefined;
  #starting = false;
  #ended = false;
  #exited = false;
  #pausedOutput = false;
  #alive = true;
  #startTimer: NodeJS.Timeout | undefined;
  #pingTimer: NodeJS.Timeout | undefined;
  /** Input and resizes received before the shell runs. */
  #early: Array<Buffer | InitialSize> = [];
  readonly #opened = Date.now();

  constructor(
    private readonly ws: WebSocket,
    private readonly grant: ConsoleGrant,
    private readonly runtime: Runtime,
    private readonly settings: ConsoleSettings,
    private readonly hooks: { logger: Logger; onEnd: () => void },
  ) {}

  start(size: InitialSize | undefined): void {
    const { ws } = this;
    ws.on('message', (data: Buffer | ArrayBuffer | Buffer[], isBinary: boolean) =>
      this.#onMessage(toBuffer(data), isBinary),
    );
    ws.on('close', () => this.#end('client closed'));
    ws.on('error', () => this.#end('socket error'));
    ws.on('pong', () => (this.#alive = true));
    this.#pingTimer = setInterval(() => {
      if (!this.#alive) {
        ws.terminate();
        return;
      }
      this.#alive = false;
      ws.ping();
    }, this.settings.pingIntervalMs);
    this.#pingTimer.unref();
    if (size) this.#open(size);
    else this.#startTimer = setTimeout(() => this.#open(DEFAULT_SIZE), this.settings.startWaitMs);
  }

  /** Server shutdown. */
  shutdown(): void {
    this.#close(CLOSE.shuttingDown, 'server shutting down');
  }

  #onMessage(data: Buffer, isBinary: boolean): void {
    if (this.#ended) return;
    let item: Buffer | InitialSize | null;
    if (isBinary) {
      item = data;
    } else {
      const control = parseControl(data.toString('utf8'));
      item = control === undefined ? data : control;
    }
    if (item === null) return; // a resize with unusable numbers
    if (!this.#pty) {
      // The first message decides the starting size (the CLI sends its size right away).
      if (!this.#starting) {
        this.#open(Buffer.isBuffer(item) ? DEFAULT_SIZE : item);
        if (!Buffer.isBuffer(item)) return;
      }
      this.#early.push(item);
      return;
    }
    this.#apply(item);
  }

  #apply(item: Buffer | InitialSize): void {
    const pty = this.#pty!;
    if (Buffer.isBuffer(item)) {
      if (item.length > 0) pty.write(item);
    } else {
      pty.resize(item.rows, item.cols);
    }
  }

  #open(size: InitialSize): void {
    if (this.#starting || this.#ended) return;
    this.#starting = true;
    clearTimeout(this.#startTimer);
    const { logger } = this.hooks;
    this.runtime
      .openPty(this.grant.vmId, {
        argv: this.settings.shell,
        // The VM's variables over the console's own (TERM): the user's choice wins, as in exec.
        env: { ...this.settings.env, ...this.grant.env },
        rows: size.rows,
        cols: size.cols,
        onData: (chunk) => this.#output(chunk),
        onError: (err) => logger.warn({ err, vmId: this.grant.vmId }, 'console input refused'),
      })
      .then(
        (pty) => {
          this.#pty = pty;
          if (this.#ended) {
            pty.close(this.settings.hangupGraceMs);
            return;
          }
          logger.info({ vmId: this.grant.vmId, pid: pty.pid, ...size }, 'console opened');
          for (const item of this.#early.splice(0)) this.#apply(item);
          pty.exited.then(
            (exit) => this.#onExit(exit),
            (err: unknown) => this.#close(CLOSE.lost, `console lost: ${message(err)}`),
          );
        },
        (err: unknown) => {
          logger.warn({ err, vmId: this.grant.vmId }, 'console: cannot start the shell');
          this.#close(CLOSE.lost, `cannot start the console: ${message(err)}`);
        },
      );
  }

  #output(chunk: Buffer): void {
    const { ws } = this;
    if (this.#ended || ws.readyState !== ws.OPEN) return;
    ws.send(chunk, { binary: true }, () => {
      if (this.#pausedOutput && ws.bufferedAmount <= this.settings.lowWaterBytes) {
        this.#pausedOutput = false;
        this.#pty?.resumeOutput();
      }
    });
    if (!this.#pausedOutput && ws.bufferedAmount > this.settings.highWaterBytes) {
      this.#pausedOutput = true;
      this.#pty?.pauseOutput();
    }
  }

  #onExit(exit: PtyExit): void {
    this.#exited = true;
    this.hooks.logger.info(
      { vmId: this.grant.vmId, exitCode: exit.exitCode, ms: Date.now() - this.#opened },
      'console closed: the shell exited',
    );
    this.#close(CLOSE.exited, JSON.stringify({ type: 'exit', exitCode: exit.exitCode }));
  }

  #close(code: number, reason: string): void {
    const { ws } = this;
    if (ws.readyState === ws.OPEN || ws.readyState === ws.CONNECTING) {
      ws.close(code, truncateReason(reason));
    }
    this.#end(reason);
  }

  /** Ends the session once: stops timers and hangs up a shell that is still running. */
  #end(why: string): void {
    if (this.#ended) return;
    this.#ended = true;
    clearTimeout(this.#startTimer);
    clearInterval(this.#pingTimer);
    this.#early = [];
    if (this.#pty && !this.#exited) {
      this.hooks.logger.info({ vmId: this.grant.vmId, why }, 'console closed: hanging up');
      this.#pty.close(this.settings.hangupGraceMs);
    }
    this.hooks.onEnd();
  }
}

function toBuffer(data: Buffer | ArrayBuffer | Buffer[]): Buffer {
  if (Buffer.isBuffer(data)) return data;
  if (Array.isArray(data)) return Buffer.concat(data);
  return Buffer.from(data);
}

function message(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** A close reason fits in 123 bytes of UTF-8. */
function truncateReason(reason: string): string {
  let r = reason;
  while (Buffer.byteLength(r, 'utf8') > 123) r = r.slice(0, -1);
  return r;
}
