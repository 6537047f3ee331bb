/**
 * Taps handed to a confined QEMU by descriptor. QEMU's user cannot open `/dev/net/tun` (root-only
 * on many hosts) and must not be able to attach to taps at all, so the server's helper
 * `fastvm-tapfd` (native/tapfd.c, run as root) opens the tap and hands QEMU the descriptor:
 * - at start: QEMU is executed through `fastvm-tapfd exec`, which opens the tap as descriptor 3,
 *   drops to QEMU's user and executes QEMU (`-netdev tap,fd=3`);
 * - later (a pool VM taken, a restore whose network came late): the helper, kept running
 *   (`TapPlugger`), passes the descriptor over a second QMP monitor of QEMU's (`plug.sock`,
 *   `getfd`) and adds the netdevs there: a descriptor named with `getfd` belongs to the monitor
 *   that received it.
 * Unconfined QEMU (root) and VMs started without the monitor open their taps by name, as before.
 * See docs/ARCHITECTURE.md ("Confinement").
 * @module
 */
import { type ChildProcessWithoutNullStreams, spawn } from 'node:child_process';
import fs from 'node:fs';
import type { Socket } from 'node:net';
import path from 'node:path';
import type { Identity } from './confine.js';
import { HUB_NET } from './qemu.js';
import type { QmpClient } from './qmp.js';

/** QEMU's second monitor, in its VM dir: only `fastvm-tapfd plug` talks to it. */
export const PLUG_SOCKET = 'plug.sock';
/** The descriptor a tap is handed over on at start. */
export const TAP_FD = 3;
const { hub: HUB, tap: TAP_NETDEV, port: HUB_PORT } = HUB_NET;
const HELPER_TIMEOUT_MS = 10_000;

/** How a confined QEMU gets its taps: the helper, and the user QEMU runs as. */
export interface TapHandover {
  readonly helper: string;
  readonly user: Identity;
}

/** QEMU's command started through the helper with `tap` open on `TAP_FD`. */
export function execWithTap(
  h: TapHandover,
  tap: string,
  binary: string,
  args: readonly string[],
): { binary: string; args: string[] } {
  return {
    binary: h.helper,
    args: ['exec', String(h.user.uid), String(h.user.gid), tap, '--', binary, ...args],
  };
}

/**
 * Plugs `tap` into the NIC's hub of the running QEMU whose VM dir is `dir`: by descriptor through
 * the helper when that QEMU has the plug monitor, else by name over QMP (QEMU opens it itself).
 */
export async function plugTap(
  qmp: QmpClient,
  dir: string,
  tap: string,
  plugger: TapPlugger | undefined,
): Promise<void> {
  const socket = path.join(dir, PLUG_SOCKET);
  if (plugger && fs.existsSync(socket)) {
    await plugger.plug(socket, tap);
    return;
  }
  // Both at once: QMP runs a monitor's commands in order, so the hub port is added after the tap
  // (one round trip instead of two). A failed tap's error is the one reported.
  const tapAdded = qmp.execute('netdev_add', {
    type: 'tap',
    id: TAP_NETDEV,
    ifname: tap,
    script: 'no',
    downscript: 'no',
  });
  const portAdded = qmp.execute('netdev_add', {
    type: 'hubport',
    id: HUB_PORT,
    hubid: HUB,
    netdev: TAP_NETDEV,
  });
  portAdded.catch(() => {});
  await tapAdded;
  await portAdded;
}

/**
 * `fastvm-tapfd serve`, started on first use and kept: a plug is a line to it and a line back
 * (starting a process from the server costs milliseconds; the helper forks a child of its own
 * per plug instead). Plugs run concurrently. A helper that exits fails what it had in hand and is
 * started again by the next plug.
 */
export class TapPlugger {
  #child: ChildProcessWithoutNullStreams | undefined;
  readonly #pending = new Map<string, (err?: Error) => void>();
  #next = 0;
  #closed = false;

  constructor(private readonly helper: string) {}

  plug(socket: string, tap: string): Promise<void> {
    if (this.#closed) return Promise.reject(new Error('tap handover: closed'));
    const fields = ['plug', socket, tap, TAP_NETDEV, String(HUB), HUB_PORT];
    if (fields.some((f) => /[\t\n]/.test(f))) {
      return Promise.reject(new Error(`tap handover: a tab or newline in ${socket} or ${tap}`));
    }
    const child = this.#start();
    const id = String(++this.#next);
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(
        () => this.#settle(id, new Error(`tap handover of ${tap}: no answer`)),
        HELPER_TIMEOUT_MS,
      );
      this.#pending.set(id, (err) => {
        clearTimeout(timer);
        if (err) reject(err);
        else resolve();
      });
      child.stdin.write(`${id}\t${fields.join('\t')}\n`);
    });
  }

  close(): void {
    this.#closed = true;
    this.#child?.stdin.end();
    this.#child = undefined;
  }

  #settle(id: string, err?: Error): void {
    const done = this.#pending.get(id);
    this.#pending.delete(id);
    done?.(err);
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
        const why = line.slice(`${id} ${verdict} `.length);
        this.#settle(id!, verdict === 'ok' ? undefined : new Error(`tap handover failed: ${why}`));
      }
    });
    child.stderr.on('data', (b: Buffer) => errors.push(b.toString()));
    child.stdin.on('error', () => {}); // its exit says it
    const gone = (why: string): void => {
      if (this.#child === child) this.#child = undefined;
      for (const id of [...this.#pending.keys()]) {
        this.#settle(id, new Error(`tap handover: fastvm-tapfd ${why}${errors.join('').trim()}`));
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
