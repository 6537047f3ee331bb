/**
 * QEMU processes: start (detached, so VMs outlive the server), stop (QMP `quit`, then SIGKILL),
 * and recognise them again after a restart (by `/proc/<pid>/cmdline`, never by pid alone).
 * @module
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { QmpClient } from './qmp.js';
import { RuntimeError } from './types.js';

/**
 * Starts QEMU detached with its output in `<dir>/qemu.log` and no pipes to us, so the VM outlives
 * a restart of the server and is re-adopted. QEMU is started directly: a wrapper (nice, env, ...)
 * would load the LD_PRELOAD memshim and take its settings, and QEMU would then map guest RAM
 * shared. The one exception, `fastvm-tapfd exec` (tap-handover.ts), is static: LD_PRELOAD does
 * not reach it. With `as` it runs as that user (confinement; libuv drops supplementary groups).
 */
export async function spawnQemu(
  binary: string,
  dir: string,
  args: string[],
  env: Record<string, string>,
  as?: { uid: number; gid: number },
): Promise<number> {
  const log = await fsp.open(path.join(dir, 'qemu.log'), 'a');
  try {
    const child = spawn(binary, args, {
      detached: true,
      stdio: ['ignore', log.fd, log.fd],
      env: { ...process.env, ...env },
      ...(as ? { uid: as.uid, gid: as.gid } : {}),
    });
    child.on('error', () => {});
    child.unref();
    if (!child.pid) throw new RuntimeError('qemu_failed', `cannot start ${binary}`);
    return child.pid;
  } finally {
    await log.close();
  }
}

/** Soft (QMP `quit`) then hard (SIGKILL) stop of a QEMU process. */
export async function stopProcess(pid: number, qmp?: QmpClient): Promise<void> {
  if (!pid || !alive(pid)) return;
  if (qmp && qmp.state === 'ready') {
    await qmp.execute('quit', undefined, { timeoutMs: 1000 }).catch(() => {});
    if (await waitExit(pid, 1000)) return;
  }
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    return;
  }
  await waitExit(pid, 5000);
}

/** Whether a process exists and is not a zombie. */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    return !/^\d+ \(.*\) Z/.test(fs.readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

export async function waitExit(pid: number, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (!alive(pid)) return true;
    await new Promise((r) => setTimeout(r, 10));
  }
  return !alive(pid);
}

/** Whether `pid` is the QEMU process named `name` (`-name`; not a recycled pid). */
export function isQemuOf(pid: number, name: string): boolean {
  try {
    const argv = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    const i = argv.indexOf('-name');
    return alive(pid) && i >= 0 && argv[i + 1] === name;
  } catch {
    return false;
  }
}

/**
 * The VM directory name under `<dataDir>/vms/` that QEMU process `pid` runs from (its QMP socket
 * path), or undefined when `pid` is not a QEMU of that data dir.
 */
export function qemuDirOf(pid: number, dataDir: string): string | undefined {
  let argv: string[];
  try {
    argv = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
  } catch {
    return undefined;
  }
  if (!/qemu-system/.test(path.basename(argv[0] ?? ''))) return undefined;
  const prefix = `unix:${path.join(dataDir, 'vms')}/`;
  const qmp = argv.find((a) => a.startsWith(prefix));
  if (!qmp || !alive(pid)) return undefined;
  return qmp.slice(prefix.length).split('/')[0];
}

/** Every QEMU process running from `<dataDir>/vms/`, as pid → VM directory name. */
export async function qemusOf(dataDir: string): Promise<Map<number, string>> {
  const found = new Map<number, string>();
  let pids: string[] = [];
  try {
    pids = (await fsp.readdir('/proc')).filter((p) => /^\d+$/.test(p));
  } catch {
    return found;
  }
  for (const p of pids) {
    const name = qemuDirOf(Number(p), dataDir);
    if (name !== undefined) found.set(Number(p), name);
  }
  return found;
}

/** Sets the nice value of every thread of a process (Linux keeps it per thread). */
export function reniceProcess(pid: number, nice: number): void {
  let tids: string[] = [];
  try {
    tids = fs.readdirSync(`/proc/${pid}/task`);
  } catch {
    return; // gone: the caller finds out from QMP
  }
  for (const tid of tids) {
    try {
      if (os.getPriority(Number(tid)) !== nice) os.setPriority(Number(tid), nice);
    } catch {
      /* the thread ended, or we may not lower the value (not root) */
    }
  }
}
