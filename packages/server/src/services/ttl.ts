/**
 * The TTL scheduler. A running VM with a TTL has `expiresAtMs` stored on its row; this keeps one
 * timer armed for the soonest expiry and calls `onExpire` when it passes. Because the expiry is
 * persisted, a restarted server re-arms from the rows (`watch` every running VM at start), and an
 * expiry that passed while the server was down fires at once.
 *
 * The clock only runs while the VM runs: pausing stores what is left (`ttlRemainingMs`) and a
 * resume turns it back into an expiry (see `lifecycle.ts`).
 * @module
 */
import type { Logger } from 'pino';
import type { VmRecord } from '../domain/index.js';
import type { VmEvents } from './vm-events.js';

/** Longest single `setTimeout` (≈24.8 days); longer TTLs re-arm when it fires. */
const MAX_TIMER_MS = 2 ** 31 - 1;
/** Retry delay after a failed expiry action (the VM was busy, the runtime hiccupped…). */
const RETRY_MS = 5000;

/** What `TtlScheduler` needs. */
export interface TtlSchedulerOptions {
  /** The VM changes the services publish: each one arms or disarms that VM's expiry. */
  events?: VmEvents;
  /** Pauses or deletes the VM (`LifecycleService.expire`). */
  onExpire: (orgId: string, vmId: string) => Promise<void>;
  logger: Logger;
}

/** See the module comment. */
export class TtlScheduler {
  readonly #due = new Map<string, { orgId: string; at: number }>();
  #timer: NodeJS.Timeout | undefined;
  #stopped = false;
  readonly #running = new Set<Promise<void>>();
  readonly #onExpire: TtlSchedulerOptions['onExpire'];
  readonly #logger: Logger;
  readonly #unsubscribe: (() => void) | undefined;

  constructor(opts: TtlSchedulerOptions) {
    this.#onExpire = opts.onExpire;
    this.#logger = opts.logger;
    this.#unsubscribe = opts.events?.subscribe((vm) => this.watch(vm));
  }

  /** Arms (running with a TTL and `expiresAtMs`) or disarms (anything else) the VM's expiry. */
  watch(vm: VmRecord): void {
    if (vm.status === 'running' && vm.ttl && typeof vm.expiresAtMs === 'number' && !vm.deletedAt) {
      this.#due.set(vm.id, { orgId: vm.orgId, at: vm.expiresAtMs });
    } else {
      this.#due.delete(vm.id);
    }
    this.#arm();
  }

  /** Epoch ms of a VM's armed expiry (tests, diagnostics). */
  dueAt(vmId: string): number | undefined {
    return this.#due.get(vmId)?.at;
  }

  /** Stops the timer; expiry actions already running are awaited. */
  async stop(): Promise<void> {
    this.#stopped = true;
    this.#unsubscribe?.();
    clearTimeout(this.#timer);
    this.#timer = undefined;
    await Promise.allSettled([...this.#running]);
  }

  #arm(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    if (this.#stopped || this.#due.size === 0) return;
    let next = Infinity;
    for (const { at } of this.#due.values()) next = Math.min(next, at);
    const delay = Math.min(Math.max(0, next - Date.now()), MAX_TIMER_MS);
    this.#timer = setTimeout(() => this.#fire(), delay);
    this.#timer.unref();
  }

  #fire(): void {
    this.#timer = undefined;
    const now = Date.now();
    for (const [vmId, { orgId, at }] of [...this.#due]) {
      if (at > now) continue;
      this.#due.delete(vmId);
      const job = this.#onExpire(orgId, vmId).catch((err: unknown) => {
        this.#logger.warn({ err, vmId }, 'TTL action failed; retrying');
        if (!this.#stopped && !this.#due.has(vmId)) {
          this.#due.set(vmId, { orgId, at: Date.now() + RETRY_MS });
          this.#arm();
        }
      });
      this.#running.add(job);
      void job.finally(() => this.#running.delete(job));
    }
    this.#arm();
  }
}
