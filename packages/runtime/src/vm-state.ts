/**
 * One live VM as the runtime holds it: its record, its QMP and agent connections, and one
 * explicit state with the legal transitions between states (instead of a set of booleans):
 *
 *   pooled ──▶ running ◀──▶ paused
 *     │           │            │
 *     └───────────┴─────┬──────┴──▶ detached   (the runtime let go; QEMU runs on)
 *                       ▼
 *                  destroying ──▶ exited      (also straight from any live state: QEMU died)
 *
 * Operations that change the VM's disk or memory layout (snapshots, pause, resume, disk growth)
 * run one at a time through `serially`.
 * @module
 */
import type { AgentClient } from './agent-client.js';
import type { QmpClient } from './qmp.js';
import type { VmRecord } from './records.js';
import { RuntimeError } from './types.js';

export type VmState = 'pooled' | 'running' | 'paused' | 'destroying' | 'detached' | 'exited';

const NEXT: Readonly<Record<VmState, readonly VmState[]>> = {
  pooled: ['running', 'destroying', 'detached', 'exited'],
  running: ['paused', 'destroying', 'detached', 'exited'],
  paused: ['running', 'destroying', 'detached', 'exited'],
  destroying: ['exited'],
  detached: [],
  exited: [],
};

export class LiveVm {
  #state: VmState;
  #queue: Promise<unknown> = Promise.resolve();

  constructor(
    public record: VmRecord,
    public dir: string,
    readonly qmp: QmpClient,
    readonly agent: AgentClient,
    state: VmState,
  ) {
    this.#state = state;
  }

  get state(): VmState {
    return this.#state;
  }

  get id(): string {
    return this.record.id;
  }

  /** Whether `to` is a legal next state. */
  can(to: VmState): boolean {
    return NEXT[this.#state].includes(to);
  }

  /** Moves to `to`; an illegal move is a bug in the runtime and throws. */
  to(to: VmState): void {
    if (!this.can(to)) {
      throw new RuntimeError(
        'not_running',
        `VM ${this.id}: cannot go from ${this.#state} to ${to}`,
      );
    }
    this.#state = to;
  }

  /**
   * The IDENTITY sent to the guest and not yet acknowledged (see `settleIdentity`), or undefined
   * once the VM was handed over with it applied.
   */
  identity: Promise<void> | undefined;

  /**
   * Hands the VM over while its IDENTITY is still on its way: the agent serves one connection in
   * order, so every request sent after it (exec, files, a terminal) finds the new identity
   * applied, and the operations that run `serially` (snapshot, pause) wait for it. The caller
   * saves the round trip (the runtime supervises the outcome: a failure stops the VM).
   */
  settleIdentity(identity: Promise<void>): void {
    this.identity = identity;
    const after = this.#queue.then(() => identity);
    this.#queue = after.catch(() => {});
  }

  /** Runs `fn` after every operation queued before it (a failure does not block the next). */
  serially<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#queue.then(fn);
    this.#queue = run.catch(() => {});
    return run;
  }

  /** The QEMU process is gone, or going, or no longer ours. */
  get gone(): boolean {
    return this.#state === 'exited' || this.#state === 'destroying' || this.#state === 'detached';
  }
}
