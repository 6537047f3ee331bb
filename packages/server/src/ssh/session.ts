/**
 * One SSH "session" channel of the gateway, bridged to the guest agent (the guest runs no sshd):
 * - `pty-req` remembers the terminal (type, size); `window-change` resizes the guest pty;
 * - `env` collects variables (valid names, no NUL or newline, bounded), applied over the VM's
 *   stored `envVars` (which apply as to every exec) and over `TERM` from the pty request;
 * - `shell` runs `/bin/bash -l`, `exec` runs `/bin/bash -c <command>`: on a guest pty
 *   (`Runtime.openPty`) when the client asked for one, else as a process with stdin open and
 *   stdout/stderr apart (`Runtime.openProcess`); channel EOF is the command's stdin EOF;
 * - `subsystem sftp` runs the guest's `/usr/lib/openssh/sftp-server` if it has one, else says so;
 * - `signal` is passed on to a process; the exit becomes `exit-status` (or `exit-signal`).
 * A VM that is not running gets a message on stderr and exit status 1.
 * @module
 */
import os from 'node:os';
import type { Writable } from 'node:stream';
import type { ProcessSession, PtySession, Runtime } from '@fastvm/runtime';
import type { Logger } from 'pino';
import type { ServerChannel, Session } from 'ssh2';
import type { Store } from '../store/index.js';
import type { SshLogin } from './auth.js';

/** Tunables of a gateway session. */
export interface SshSessionSettings {
  /** The program of `shell` requests (a login shell). */
  shell: readonly string[];
  /** How an `exec` command string is run: argv + the command. */
  execPrefix: readonly string[];
  /** How long a hung-up command may take to exit before it is killed. */
  hangupGraceMs: number;
}

export const DEFAULT_SSH_SESSION_SETTINGS: SshSessionSettings = {
  shell: ['/bin/bash', '-l'],
  execPrefix: ['/bin/bash', '-c'],
  hangupGraceMs: 2000,
};

export const SFTP_SERVER = '/usr/lib/openssh/sftp-server';

/** Limits on `env` requests (the same name rule as a VM's envVars). */
const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
const MAX_ENV_VARS = 64;
const MAX_ENV_BYTES = 64 * 1024;
const MAX_DIM = 0xffff;
/** Longest wait for output to reach the client before the exit status is sent. */
const FLUSH_WAIT_MS = 30_000;

/** Signal numbers → the names `exit-signal` and `signal` requests use (no `SIG` prefix). */
const SIGNAL_NAMES = new Map<number, string>();
for (const [name, n] of Object.entries(os.constants.signals)) {
  if (!SIGNAL_NAMES.has(n)) SIGNAL_NAMES.set(n, name.slice(3)); // SIGABRT before SIGIOT
}

interface Terminal {
  term: string;
  rows: number;
  cols: number;
}

type Running = { kind: 'pty'; pty: PtySession } | { kind: 'process'; proc: ProcessSession };

/** Wiring a session needs from the gateway. */
export interface SshSessionDeps {
  store: Store;
  runtime: Runtime;
  logger: Logger;
  login: SshLogin;
  settings: SshSessionSettings;
  /** Called once when the session's command has ended or the channel closed. */
  onEnd: () => void;
}

/** Handles the requests of one session channel. */
export class SshSession {
  #terminal: Terminal | undefined;
  readonly #env: Record<string, string> = {};
  #envBytes = 0;
  #channel: ServerChannel | undefined;
  #running: Running | undefined;
  #ended = false;
  #exited = false;
  readonly #opened = Date.now();

  constructor(
    session: Session,
    private readonly deps: SshSessionDeps,
  ) {
    // The client closed the channel (or the connection went), maybe before any command.
    session.on('close', () => this.#end('channel closed'));
    session.on('pty', (accept, reject, info) => {
      const rows = clampDim(info.rows, 24);
      const cols = clampDim(info.cols, 80);
      if (this.#channel || rows === undefined || cols === undefined) return reject?.();
      this.#terminal = { term: info.term || 'xterm-256color', rows, cols };
      accept?.();
    });
    session.on('window-change', (accept, reject, info) => {
      const rows = clampDim(info.rows);
      const cols = clampDim(info.cols);
      if (rows === undefined || cols === undefined) return reject?.();
      if (this.#terminal) this.#terminal = { ...this.#terminal, rows, cols };
      if (this.#running?.kind === 'pty') this.#running.pty.resize(rows, cols);
      accept?.();
    });
    session.on('env', (accept, reject, info) => {
      if (this.#channel || !this.#addEnv(String(info.key), String(info.val))) return reject?.();
      accept?.();
    });
    session.on('signal', (accept, reject, info) => {
      const signal = signalNumber(String(info.name));
      if (signal === undefined || !this.#running) return reject?.();
      if (this.#running.kind === 'process') this.#running.proc.kill(signal);
      else if (signal === 1) this.#running.pty.close(this.deps.settings.hangupGraceMs);
      else return reject?.();
      accept?.();
    });
    session.on('shell', (accept) => {
      this.#start(accept(), 'shell', this.deps.settings.shell);
    });
    session.on('exec', (accept, _reject, info) => {
      this.#start(accept(), 'exec', [...this.deps.settings.execPrefix, String(info.command)]);
    });
    session.on('subsystem', (accept, reject, info) => {
      if (info.name !== 'sftp') return reject?.();
      // Without a pty whatever the client asked: sftp speaks binary on stdin/stdout.
      this.#terminal = undefined;
      this.#start(accept(), 'sftp', [
        '/bin/sh',
        '-c',
        `if [ -x ${SFTP_SERVER} ]; then exec ${SFTP_SERVER}; fi; ` +
          `echo "fastvm: sftp (and scp, which uses it) needs ${SFTP_SERVER} in the VM; ` +
          `install openssh-sftp-server there, or use 'scp -O' with scp in the VM, or pipe through 'ssh <vm> cat'" >&2; exit 1`,
      ]);
    });
  }

  /** Server shutdown: hang up what runs and close the channel. */
  hangUp(why: string): void {
    this.#end(why);
    this.#channel?.destroy();
  }

  #addEnv(key: string, val: string): boolean {
    if (!ENV_NAME.test(key) || key.length > 256 || /[\0\r\n]/.test(val)) return false;
    const bytes = Buffer.byteLength(key) + Buffer.byteLength(val);
    if (!(key in this.#env) && Object.keys(this.#env).length >= MAX_ENV_VARS) return false;
    if (this.#envBytes + bytes > MAX_ENV_BYTES) return false;
    this.#env[key] = val;
    this.#envBytes += bytes;
    return true;
  }

  #start(channel: ServerChannel | undefined, kind: string, argv: readonly string[]): void {
    if (!channel) return;
    this.#channel = channel;
    const { logger, login } = this.deps;
    channel.on('close', () => this.#end('channel closed'));
    channel.on('error', () => this.#end('channel error'));
    this.#run(channel, kind, argv).catch((err: unknown) => {
      // The command did not start (the VM stopped meanwhile, the agent refused): exit status 1.
      logger.warn({ err, vmId: login.vmId, kind }, 'ssh: session failed');
      this.#fail(channel, `fastvm: cannot start the ${kind}: ${message(err)}`, 1);
    });
  }

  async #run(channel: ServerChannel, kind: string, argv: readonly string[]): Promise<void> {
    const { store, runtime, logger, login } = this.deps;
    if (!login.vmId) return this.#fail(channel, `fastvm: ${login.problem ?? 'no such VM'}`, 1);
    const vm = await store.getVm(login.orgId, login.vmId);
    if (!vm || vm.status === 'deleting' || vm.status === 'deleted') {
      return this.#fail(channel, `fastvm: VM ${login.vmRef} no longer exists`, 1);
    }
    if (vm.status !== 'running') {
      const hint = vm.status === 'paused' ? ` (resume it: fastvm vm resume ${vm.id})` : '';
      return this.#fail(
        channel,
        `fastvm: VM ${vm.name || vm.id} is ${vm.status}, not running${hint}`,
        1,
      );
    }
    const terminal = this.#terminal;
    const env = { ...(terminal ? { TERM: terminal.term } : {}), ...vm.envVars, ...this.#env };
    const hasEnv = Object.keys(env).length > 0;
    const fields = { vmId: vm.id, orgId: login.orgId, fingerprint: login.fingerprint, kind };
    if (terminal) {
      const pty = await runtime.openPty(vm.id, {
        argv,
        ...(hasEnv ? { env } : {}),
        rows: terminal.rows,
        cols: terminal.cols,
        onData: (chunk) => this.#output(channel, chunk),
        onError: (err) => logger.warn({ err, vmId: vm.id }, 'ssh: guest refused input'),
      });
      this.#running = { kind: 'pty', pty };
      if (this.#ended) return pty.close(this.deps.settings.hangupGraceMs);
      logger.info({ ...fields, pty: true, pid: pty.pid }, 'ssh: session started');
      // Size changes that came while the shell started.
      const now = this.#terminal;
      if (now && (now.rows !== terminal.rows || now.cols !== terminal.cols)) {
        pty.resize(now.rows, now.cols);
      }
      channel.on('data', (data: Buffer) => pty.write(data));
      void this.#afterExit(channel, pty.exited);
    } else {
      const proc = await runtime.openProcess(vm.id, {
        argv,
        ...(hasEnv ? { env } : {}),
        onStdout: (chunk) => this.#output(channel, chunk),
        onStderr: (chunk) => this.#output(channel.stderr, chunk),
        onInputDrain: () => channel.resume(),
        onError: (err) => logger.warn({ err, vmId: vm.id }, 'ssh: guest refused input'),
      });
      this.#running = { kind: 'process', proc };
      if (this.#ended) return proc.close(this.deps.settings.hangupGraceMs);
      logger.info({ ...fields, pty: false, pid: proc.pid }, 'ssh: session started');
      channel.on('data', (data: Buffer) => {
        if (!proc.write(data)) channel.pause();
      });
      channel.on('end', () => proc.end());
      void this.#afterExit(channel, proc.exited);
    }
  }

  /** Guest output to the channel (or its stderr), pausing the guest while the client lags. */
  #output(stream: Writable, chunk: Buffer): void {
    if (this.#ended || !stream.writable) return;
    if (!stream.write(chunk)) {
      const running = this.#running;
      const target = running?.kind === 'pty' ? running.pty : running?.proc;
      target?.pauseOutput();
      stream.once('drain', () => target?.resumeOutput());
    }
  }

  async #afterExit(
    channel: ServerChannel,
    exited: Promise<{ exitCode: number; signal: number }>,
  ): Promise<void> {
    const { logger, login } = this.deps;
    let exit: { exitCode: number; signal: number };
    try {
      exit = await exited;
    } catch (err) {
      logger.warn({ err, vmId: login.vmId }, 'ssh: lost the command');
      return this.#fail(channel, `fastvm: lost the connection to the VM: ${message(err)}`);
    }
    this.#exited = true;
    logger.info(
      {
        vmId: login.vmId,
        exitCode: exit.exitCode,
        signal: exit.signal,
        ms: Date.now() - this.#opened,
      },
      'ssh: command exited',
    );
    await flushed(channel);
    await flushed(channel.stderr);
    const name = exit.signal ? SIGNAL_NAMES.get(exit.signal) : undefined;
    if (name) channel.exit(name, false, '');
    else channel.exit(exit.exitCode);
    channel.end();
    this.#end('exited');
  }

  /** A message on stderr, then the exit status (none: the client reports a lost connection). */
  #fail(channel: ServerChannel, text: string, exitCode?: number): void {
    if (channel.writable) {
      channel.stderr.write(`${text}\r\n`);
      if (exitCode !== undefined) channel.exit(exitCode);
      channel.end();
    }
    this.#exited = true;
    this.#end('failed');
  }

  #end(why: string): void {
    if (this.#ended) return;
    this.#ended = true;
    const running = this.#running;
    if (running && !this.#exited) {
      this.deps.logger.info({ vmId: this.deps.login.vmId, why }, 'ssh: hanging up the command');
      if (running.kind === 'pty') running.pty.close(this.deps.settings.hangupGraceMs);
      else running.proc.close(this.deps.settings.hangupGraceMs);
    }
    this.deps.onEnd();
  }
}

/** Resolves when everything written to `stream` so far has gone out (or it cannot). */
function flushed(stream: Writable): Promise<void> {
  if (!stream.writable) return Promise.resolve();
  return new Promise((resolve) => {
    // A channel the client closed never calls back: give up after a while.
    const timer = setTimeout(resolve, FLUSH_WAIT_MS);
    timer.unref();
    stream.write(Buffer.alloc(0), () => {
      clearTimeout(timer);
      resolve();
    });
  });
}

/** A window dimension; 0 (the client does not know) becomes `fallback`. */
function clampDim(n: unknown, fallback?: number): number | undefined {
  if (typeof n !== 'number' || !Number.isInteger(n) || n < 0) return undefined;
  if (n === 0) return fallback;
  return Math.min(n, MAX_DIM);
}

function signalNumber(name: string): number | undefined {
  const n = (os.constants.signals as Record<string, number | undefined>)[`SIG${name}`];
  return n !== undefined && n >= 1 && n <= 64 ? n : undefined;
}

function message(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
