/**
 * Tracks background work (launches that outlive their request, snapshot and delete operations)
 * so that deletes can wait for a VM's in-flight work and shutdown can drain it.
 * @module
 */

export class TaskTracker {
  private readonly all = new Set<Promise<unknown>>();
  private readonly byKey = new Map<string, Set<Promise<unknown>>>();

  /** Registers `promise` under `key` until it settles; returns it unchanged. */
  track<T>(key: string, promise: Promise<T>): Promise<T> {
    const settled = promise.then(
      () => undefined,
      () => undefined,
    );
    let set = this.byKey.get(key);
    if (!set) this.byKey.set(key, (set = new Set()));
    set.add(settled);
    this.all.add(settled);
    void settled.then(() => {
      this.all.delete(settled);
      set.delete(settled);
      if (set.size === 0 && this.byKey.get(key) === set) this.byKey.delete(key);
    });
    return promise;
  }

  /** Resolves once everything tracked under `key` right now has settled. */
  async settled(key: string): Promise<void> {
    const set = this.byKey.get(key);
    if (set) await Promise.all([...set]);
  }

  /** Waits for all tracked work, at most `timeoutMs`; returns whether everything settled. */
  async drain(timeoutMs: number): Promise<boolean> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<false>((resolve) => {
      timer = setTimeout(() => resolve(false), timeoutMs);
      timer.unref();
    });
    const done = (async () => {
      while (this.all.size > 0) await Promise.all([...this.all]);
      return true as const;
    })();
    try {
      return await Promise.race([done, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  get size(): number {
    return this.all.size;
  }
}
