/**
 * Crash points for the crash tests (`test/crash.test.ts`): with `FASTVM_CRASH_AT=<name>` the
 * process SIGKILLs itself on reaching that step, exactly as a `kill -9` landing there would.
 * Names: `snapshot:intent|switched|migrated|frozen|dumped|written`, `flatten:written`,
 * `merge:written`, `restore:spawned|migrated`,
 * `pool:renamed`, `disk:resized`, `pause:stopped`, `destroy:stopped`.
 * @module
 */
const CRASH_AT = process.env.FASTVM_CRASH_AT;

export function crashPoint(name: string): void {
  if (CRASH_AT === name) process.kill(process.pid, 'SIGKILL');
}
