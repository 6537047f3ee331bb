/**
 * Moving a VM's state in and out of QEMU: device-state migrations to and from files, `cont`
 * after an outgoing migration, and the memshim's frozen copy of guest RAM used by snapshots.
 * @module
 */
import net from 'node:net';
import { QmpCommandError, type QmpClient, type QmpEvent } from './qmp.js';
import { RuntimeError } from './types.js';

export function isMigrationEnd(e: QmpEvent): boolean {
  const s = e.data?.status;
  return s === 'completed' || s === 'failed' || s === 'cancelled';
}

/**
 * The migration URI of a device-state file. QEMU 8.2+ reads and writes files itself (`file:`);
 * older ones go through `cat`, which costs a fork of the (large) QEMU process, a few ms of the
 * snapshot pause and of every restore.
 */
export function stateUri(qemuVersion: string, file: string, dir: 'in' | 'out'): string {
  const [major = 0, minor = 0] = (/version (\d+)\.(\d+)/.exec(qemuVersion) ?? [])
    .slice(1)
    .map(Number);
  if (major > 8 || (major === 8 && minor >= 2)) return `file:${file}`;
  return dir === 'in' ? `exec:cat ${shellQuote(file)}` : `exec:cat > ${shellQuote(file)}`;
}

/** Migrate device state (RAM is skipped: x-ignore-shared) to `uri` (see `stateUri`). */
export async function migrateToFile(qmp: QmpClient, uri: string): Promise<void> {
  const done = qmp.waitEvent('MIGRATION', { timeoutMs: 60_000, match: isMigrationEnd });
  await qmp.execute('migrate', { uri });
  const ev = await done;
  if (ev.data?.status !== 'completed') {
    const info = await qmp
      .execute<{ 'error-desc'?: string }>('query-migrate')
      .catch((): { 'error-desc'?: string } => ({}));
    throw new RuntimeError(
      'qemu_failed',
      `migration ${String(ev.data?.status)}: ${info['error-desc'] ?? ''}`,
    );
  }
}

/**
 * `cont` after an outgoing migration. QEMU emits the `completed` event a moment before it leaves
 * the finish-migrate run state, and refuses `cont` until then.
 */
export async function resumeAfterMigration(qmp: QmpClient): Promise<void> {
  for (let attempt = 0; ; attempt++) {
    try {
      await qmp.execute('cont');
      return;
    } catch (err) {
      if (
        !(err instanceof QmpCommandError) ||
        !/not finalized/.test(err.message) ||
        attempt > 500
      ) {
        throw err;
      }
      await new Promise((r) => setTimeout(r, 1));
    }
  }
}

/**
 * Ask a VM's memshim for a frozen copy-on-write copy of the QEMU process. The copy lives until
 * `release()` hangs up (or this process dies), then the memshim kills and reaps it.
 */
export function memshimFork(ctl: string): Promise<{ pid: number; release(): void }> {
  return new Promise((resolve, reject) => {
    const sock = net.createConnection(ctl);
    sock.setTimeout(5000, () => sock.destroy(new Error('memshim did not answer within 5 s')));
    let out = '';
    sock.setEncoding('utf8');
    sock.on('connect', () => sock.write('fork\n'));
    sock.on('data', (d: string) => {
      out += d;
      if (!out.includes('\n')) return;
      sock.setTimeout(0);
      const pid = parseInt(out, 10);
      if (pid > 0) resolve({ pid, release: () => sock.destroy() });
      else {
        sock.destroy();
        reject(new RuntimeError('qemu_failed', `memshim fork failed (${JSON.stringify(out)})`));
      }
    });
    sock.on('error', reject);
    sock.on('close', () => reject(new RuntimeError('qemu_failed', 'memshim hung up')));
  });
}

function shellQuote(s: string): string {
  return `'${s.replaceAll("'", "'\\''")}'`;
}
