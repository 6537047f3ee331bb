/**
 * VM change notifications. Services publish every VM row they changed (status, TTL); listeners
 * that react to VM state, today the TTL scheduler (`ttl.ts`), subscribe. Services depend on
 * this hub, not on the listeners, so a listener that needs the services (the TTL scheduler
 * calls `LifecycleService.expire`) is simply built after them: no dependency cycle.
 * @module
 */
import type { Logger } from 'pino';
import type { VmRecord } from '../domain/index.js';

/** Called with the VM row as it is after a change. Must not throw (errors are logged). */
export type VmChangeListener = (vm: VmRecord) => void;

/** See the module comment. */
export class VmEvents {
  readonly #listeners = new Set<VmChangeListener>();

  constructor(private readonly logger?: Logger) {}

  /** Tells every listener that `vm` changed (call with the row the store returned). */
  changed(vm: VmRecord): void {
    for (const listener of this.#listeners) {
      try {
        listener(vm);
      } catch (err) {
        this.logger?.error({ err, vmId: vm.id }, 'VM change listener failed');
      }
    }
  }

  /** Adds a listener; returns its unsubscribe function. */
  subscribe(listener: VmChangeListener): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }
}
