/**
 * The server's privileged helper, `fastvm-tapfd serve` (native/tapfd.c, run as root), kept
 * running: a request is a line to it and a line back. It does what would otherwise cost the
 * server a process start, and a fork of the server copies its page tables while its event loop
 * waits (measured: 3 ms at 44 MiB of memory, 7 ms at 245 MiB, 19 ms at 1 GiB):
 * - `spawn`: starts a confined QEMU (new session, its log, its user, its tap as descriptor 3);
 *   the helper is its parent and reaps it;
 * - `plug`: hands a tap to a running QEMU over its plug monitor (tap-handover.ts);
 * - `run`: runs a tool to its end (`fastvm-memdelta apply` at each restore with deltas).
 * Requests run concurrently. A helper that exits fails what it had in hand and is started again
 * by the next request; the QEMUs it started run on (they are detached, as adoption expects).
 * @module
 */
import { type ChildProcessWithoutNullStreams, spawn } from 'node:child_process';
import type { Socket } from 'node:net';
import type { Identity } from './confine.js';

const HELPER_TIMEOUT_MS = 10_000;

/** What `spawn` starts. */
export interface HelperSpawn {
  readonly binary: string;
  readonly args: readonly string[];
  /** The whole environment (entries with a tab or newline are left out). */
  readonly env: Readonly<Record<string, string | undefined>>;
  /** Standard output and error are appended here. */
  readonly log: string;
  /** Run as this user (absent: as root). */
  readonly user?: Identity | undefined;
  /** Open this tap as descriptor 3 first (`-netdev tap,fd=3`). */
  readonly tap?: string | undefined;
}

const plain = (s: string) => !/[\t\n]/.test(s);

export class TapfdHelper {
  #child: ChildProcessWithoutNullStreams | undefined;
  readonly #pending = new Map<string, (err: Error | undefined, value: string) => void>();
  #next = 0;
  #closed = false;

  constructor(private readonly helper: string) {}

  /** Starts a process; resolves with its pid once it has executed (not when it is ready). */
  async spawn(s: HelperSpawn): Promise<number> {
    const env = Object.entries(s.env)
      .filter((e): e is [string, string] => e[1] !== undefined)
      .map(([k, v]) => `${k}=${v}`)
      .filter(plain);
    const fields = [
      'spawn',
      s.log,
      s.user ? String(s.user.uid) : '-',
      s.user ? String(s.user.gid) : '-',
      s.tap ?? '-',
      String(env.length),
      ...env,
      s.binary,
      ...s.args,
    ];
    const pid = Number(await this.#request(fields, `start of ${s.binary}`));
    if (!Number.isInteger(pid) || pid <= 0) throw new Error(`fastvm-tapfd: bad pid ${pid}`);
    return pid;
  }

  /**
   * Runs `argv` (an absolute path first; as root, empty environment) to its end; rejects with
   * the end of its output unless it exits 0.
   */
  async run(argv: readonly string[]): Promise<void> {
    await this.#request(['run', ...argv], argv[0] ?? 'run');
  }

  /**
   * Plugs `tap` into a QEMU through its monitor at `socket`: a tap netdev `ids.tap` joined to hub
   * `ids.hub` by hub port `ids.port` (qemu.ts `HUB_NET`).
   */
  async plug(
    socket: string,
    tap: string,
    ids: { readonly hub: number; readonly tap: string; readonly port: string },
  ): Promise<void> {
    await this.#request(
      ['plug', socket, tap, ids.tap, String(ids.hub), ids.port],
      `tap handover of ${tap}`,
    );
  }

  close(): void {
    this.#closed = true;
    this.#child?.stdin.end();
    this.#child = undefined;
  }

  #request(fields: readonly string[], what: string): Promise<string> {
    if (this.#closed) return Promise.reject(new Error(`${what}: the helper is closed`));
    const bad = fields.find((f) => !plain(f));
    if (bad !== undefined) {
      return Promise.reject(new Error(`${what}: a tab or newline in ${JSON.stringify(bad)}`));
    }
    const child = this.#start();
    const id = String(++this.#next);
    return new Promise<string>((resolve, reject) => {
      const timer = setTimeout(
        () => this.#settle(id, new Error(`${what}: no answer from fastvm-tapfd`), ''),
        HELPER_TIMEOUT_MS,
      );
      this.#pending.set(id, (err, value) => {
        clearTimeout(timer);
        if (err) reject(new Error(`${what} failed: ${err.message}`));
        else resolve(value);
      });
      child.stdin.write(`${id}\t${fields.join('\t')}\n`);
    });
  }

  #settle(id: string, err: Error | undefined, value: string): void {
    const done = this.#pending.get(id);
    this.#pending.delete(id);
    done?.(err, value);
  }

  #start(): ChildProcessWithoutNullStreams {
    if (this.#child) return this.#child;
    const child = spawn(this.helper, ['serve'], { stdio: 'pipe', env: {} });
    this.#child = child;
    let buf = '';
    const errors: string[] = [];
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (chunk: string) => {
      buf += chunk;
      for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        const [id, verdict] = line.split(' ', 2);
        const rest = line.slice(`${id} ${verdict} `.length);
        if (verdict === 'ok') this.#settle(id!, undefined, rest);
        else this.#settle(id!, new Error(rest), '');
      }
    });
    child.stderr.on('data', (b: Buffer) => errors.push(b.toString()));
    child.stdin.on('error', () => {}); // its exit says it
    const gone = (why: string): void => {
      if (this.#child === child) this.#child = undefined;
      for (const id of [...this.#pending.keys()]) {
        this.#settle(id, new Error(`fastvm-tapfd ${why}${errors.join('').trim()}`), '');
      }
    };
    child.on('error', (err) => gone(`${err.message} `));
    child.on('close', (code, signal) => gone(`exited (${code ?? signal}) `));
    // An idle helper keeps no one waiting: the process may exit around it.
    child.unref();
    for (const s of [child.stdin, child.stdout, child.stderr]) (s as unknown as Socket).unref();
    return child;
  }
}
