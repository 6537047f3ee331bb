/**
 * Host facts and process helpers for the benchmarks: memory figures from /proc, the git
 * revision, and a registry of every process the benchmark must not leave behind.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import { qemuVersion as runtimeQemuVersion } from '@fastvm/runtime';

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export const now = () => performance.now();

/** `MemAvailable` from /proc/meminfo, in MiB. */
export function memAvailableMiB(): number {
  const m = /^MemAvailable:\s+(\d+) kB/m.exec(fs.readFileSync('/proc/meminfo', 'utf8'));
  return m ? parseInt(m[1]!, 10) / 1024 : NaN;
}

/** Proportional set size and RSS of a process (from /proc/PID/smaps_rollup), in MiB. */
export function processMemMiB(pid: number): { pss: number; rss: number; anon: number } {
  const text = fs.readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8');
  const kb = (field: string) => {
    const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(text);
    return m ? parseInt(m[1]!, 10) / 1024 : 0;
  };
  return { pss: kb('Pss'), rss: kb('Rss'), anon: kb('Anonymous') };
}

/** `git rev-parse --short HEAD`, with `-dirty` when tracked files differ from HEAD. */
export function gitRevision(cwd: string): string {
  try {
    const rev = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd, encoding: 'utf8' });
    let dirty = false;
    try {
      execFileSync('git', ['diff', '--quiet', 'HEAD', '--'], { cwd, stdio: 'ignore' });
    } catch {
      dirty = true;
    }
    return rev.trim() + (dirty ? '-dirty' : '');
  } catch {
    return 'unknown';
  }
}

export function qemuVersion(): string {
  try {
    return /version ([\d.]+)/.exec(runtimeQemuVersion('qemu-system-x86_64'))?.[1] ?? 'unknown';
  } catch {
    return 'unknown';
  }
}

export function hostInfo() {
  return {
    cores: os.cpus().length,
    memMiB: Math.round(os.totalmem() / 2 ** 20),
    cpu: os.cpus()[0]?.model ?? 'unknown',
    kernel: os.release(),
    qemu: qemuVersion(),
  };
}

/** Process liveness, as the runtime judges it (a zombie is dead). */
export { alive, waitExit } from '@fastvm/runtime/process';

/** Whether `pid` is a process whose command line mentions `needle` (guards against pid reuse). */
export function cmdlineMentions(pid: number, needle: string): boolean {
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(needle);
  } catch {
    return false;
  }
}

export function killHard(pid: number): void {
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    /* already gone */
  }
}

/** utime + stime of a process in ms (from /proc/PID/stat, 10 ms clock ticks); NaN if gone. */
export function cpuMs(pid: number | undefined): number {
  if (!pid) return NaN;
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) * 10;
  } catch {
    return NaN;
  }
}
