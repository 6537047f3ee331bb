/**
 * Per-VM cgroups: each QEMU in its own leaf `vm-<pid>` under a `fastvm` slice, with a CPU limit,
 * a memory limit and a pids limit. One interface over the two kernels' layouts:
 *
 *   v2  `<cgroup2 mount>/fastvm/vm-<pid>`: cpu.max, memory.max (+ memory.swap.max 0), pids.max;
 *       used when the cgroup2 hierarchy offers the cpu, memory and pids controllers.
 *   v1  `<controller mount>/<server's own cgroup>/fastvm/vm-<pid>` for each of cpu, memory and
 *       pids: cpu.cfs_quota_us, memory.limit_in_bytes (+ memsw), pids.max. Under the server's own
 *       cgroup, so that limits an operator set on the server still hold over its VMs.
 *
 * A leaf is named by QEMU's pid, which is unique among live processes and survives the rename of
 * a pool VM's directory; an empty leaf can always be removed, a busy one never (the kernel
 * refuses), so the sweep at start simply tries every leaf.
 * @module
 */
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';

export interface CgroupLimits {
  /** CPU time per period, in CPUs (1.5 = one and a half cores). */
  readonly cpus: number;
  readonly memoryBytes: number;
  readonly pids: number;
}

export interface Cgroups {
  readonly version: 1 | 2;
  /** The slice directories (one per v1 controller), for logs and `doctor`. */
  readonly slices: readonly string[];
  /**
   * Creates the leaf of `pid` with `limits` and moves the process (all its threads) into it
   * (asynchronous: a few ms of cgroupfs work that must not block the server's event loop).
   */
  place(pid: number, limits: CgroupLimits): Promise<void>;
  /** Removes the leaf of an exited process (ignored while it still holds a process). */
  release(pid: number): void;
  /** Removes every empty leaf (what a crash left). */
  sweep(): void;
  /** The leaf directories of `pid` (tests, `doctor`). */
  leaves(pid: number): string[];
}

const PERIOD_US = 100_000;

/** CPU time per period, in µs (`cpu.max`'s quota, `cpu.cfs_quota_us`). */
const quotaUs = (l: CgroupLimits): number => Math.round(l.cpus * PERIOD_US);

/**
 * The kernel's CPU `burst`: unused quota a VM that was below its limit carries over and may spend
 * on top of it in one period, here one period's quota (where the kernel has the knob). A VM's
 * load comes in bursts: a restore runs QEMU's main thread (device state, QMP) next to the vCPU
 * translating the first command, and a strict quota throttled that for a few ms. The average
 * stays at `cpus`: the carried-over time was not used before.
 */
const burstUs = quotaUs;
const ROOT = '/sys/fs/cgroup';

interface Mount {
  readonly dir: string;
  readonly type: string;
  readonly options: readonly string[];
}

function mounts(): Mount[] {
  let text = '';
  try {
    text = fs.readFileSync('/proc/self/mounts', 'utf8');
  } catch {
    return [];
  }
  return text
    .split('\n')
    .map((l) => l.split(' '))
    .filter((f) => f[2] === 'cgroup' || f[2] === 'cgroup2')
    .map((f) => ({
      dir: f[1]!.replace(/\\040/g, ' '),
      type: f[2]!,
      options: (f[3] ?? '').split(','),
    }));
}

/** This process's cgroup path per v1 controller (`/proc/self/cgroup`). */
function ownV1Paths(): Map<string, string> {
  const out = new Map<string, string>();
  try {
    for (const line of fs.readFileSync('/proc/self/cgroup', 'utf8').split('\n')) {
      const [, ctrls, p] = /^\d+:([^:]*):(.*)$/.exec(line) ?? [];
      if (!ctrls || p === undefined) continue;
      for (const c of ctrls.split(',')) out.set(c, p);
    }
  } catch {
    /* no /proc */
  }
  return out;
}

function write(file: string, value: string | number): void {
  fs.writeFileSync(file, String(value));
}

function tryWrite(file: string, value: string | number): void {
  try {
    write(file, value);
  } catch {
    /* an optional knob this kernel lacks */
  }
}

const put = (file: string, value: string | number) => fsp.writeFile(file, String(value));
const tryPut = (file: string, value: string | number) =>
  put(file, value).catch(() => {}); /* an optional knob this kernel lacks (swap accounting) */

function rmLeaf(dir: string): boolean {
  try {
    fs.rmdirSync(dir);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ENOENT'; // else busy: a process is in it
  }
}

/**
 * Removes leaves of a process that just exited. The kernel keeps an exited process in its cgroup
 * until its parent reaps it, so a busy leaf is tried again for a few seconds.
 */
function rmLeavesSoon(dirs: readonly string[], triesLeft = 50): void {
  const busy = dirs.filter((d) => !rmLeaf(d));
  if (busy.length > 0 && triesLeft > 0) {
    setTimeout(() => rmLeavesSoon(busy, triesLeft - 1), 100).unref();
  }
}

function leafDirs(slice: string): string[] {
  try {
    return fs
      .readdirSync(slice)
      .filter((n) => n.startsWith('vm-'))
      .map((n) => path.join(slice, n));
  } catch {
    return [];
  }
}

class V2 implements Cgroups {
  readonly version = 2;
  readonly slices: readonly string[];
  constructor(readonly slice: string) {
    this.slices = [slice];
  }
  async place(pid: number, l: CgroupLimits): Promise<void> {
    const leaf = path.join(this.slice, `vm-${pid}`);
    await fsp.mkdir(leaf, { recursive: true });
    await Promise.all([
      put(path.join(leaf, 'cpu.max'), `${quotaUs(l)} ${PERIOD_US}`),
      tryPut(path.join(leaf, 'cpu.max.burst'), burstUs(l)),
      put(path.join(leaf, 'memory.max'), l.memoryBytes),
      tryPut(path.join(leaf, 'memory.swap.max'), 0),
      put(path.join(leaf, 'pids.max'), l.pids),
    ]);
    await put(path.join(leaf, 'cgroup.procs'), pid);
  }
  release(pid: number): void {
    rmLeavesSoon(this.leaves(pid));
  }
  sweep(): void {
    leafDirs(this.slice).forEach(rmLeaf);
  }
  leaves(pid: number): string[] {
    return [path.join(this.slice, `vm-${pid}`)];
  }
}

class V1 implements Cgroups {
  readonly version = 1;
  readonly slices: readonly string[];
  constructor(private readonly byCtrl: ReadonlyMap<'cpu' | 'memory' | 'pids', string>) {
    this.slices = [...byCtrl.values()];
  }
  async place(pid: number, l: CgroupLimits): Promise<void> {
    await Promise.all(
      [...this.byCtrl].map(async ([ctrl, slice]) => {
        const leaf = path.join(slice, `vm-${pid}`);
        await fsp.mkdir(leaf, { recursive: true });
        if (ctrl === 'cpu') {
          await put(path.join(leaf, 'cpu.cfs_period_us'), PERIOD_US);
          await put(path.join(leaf, 'cpu.cfs_quota_us'), quotaUs(l));
          await tryPut(path.join(leaf, 'cpu.cfs_burst_us'), burstUs(l));
        } else if (ctrl === 'memory') {
          await put(path.join(leaf, 'memory.limit_in_bytes'), l.memoryBytes);
          // memory + swap: the same value, so the VM cannot spill into swap either.
          await tryPut(path.join(leaf, 'memory.memsw.limit_in_bytes'), l.memoryBytes);
        } else {
          await put(path.join(leaf, 'pids.max'), l.pids);
        }
        await put(path.join(leaf, 'cgroup.procs'), pid);
      }),
    );
  }
  release(pid: number): void {
    rmLeavesSoon(this.leaves(pid));
  }
  sweep(): void {
    for (const slice of this.slices) leafDirs(slice).forEach(rmLeaf);
  }
  leaves(pid: number): string[] {
    return this.slices.map((s) => path.join(s, `vm-${pid}`));
  }
}

/**
 * The cgroups this host offers: v2 where its hierarchy has the cpu, memory and pids controllers,
 * else v1 (those of the three that are mounted), else undefined (with the reason).
 */
export function detectCgroups(
  slice = process.env.FASTVM_CGROUP_SLICE || 'fastvm',
): Cgroups | string {
  const all = mounts();
  const v2 = all.find((m) => m.type === 'cgroup2');
  if (v2) {
    const ctrls = readControllers(v2.dir);
    if (['cpu', 'memory', 'pids'].every((c) => ctrls.includes(c))) {
      const dir = path.join(v2.dir, slice);
      try {
        // The root may hold processes; the slice holds only leaves, so it may delegate.
        tryWrite(path.join(v2.dir, 'cgroup.subtree_control'), '+cpu +memory +pids');
        fs.mkdirSync(dir, { recursive: true });
        write(path.join(dir, 'cgroup.subtree_control'), '+cpu +memory +pids');
        return new V2(dir);
      } catch (err) {
        return `cgroup v2 at ${v2.dir}: cannot set up ${dir}: ${(err as Error).message}`;
      }
    }
  }
  const own = ownV1Paths();
  const byCtrl = new Map<'cpu' | 'memory' | 'pids', string>();
  for (const ctrl of ['cpu', 'memory', 'pids'] as const) {
    const m = all.find((x) => x.type === 'cgroup' && x.options.includes(ctrl));
    if (!m) continue;
    const dir = path.join(m.dir, own.get(ctrl) ?? '/', slice);
    try {
      fs.mkdirSync(dir, { recursive: true });
      byCtrl.set(ctrl, dir);
    } catch {
      /* read-only or not ours */
    }
  }
  if (byCtrl.size > 0) return new V1(byCtrl);
  return v2
    ? `no cgroup controllers: ${v2.dir} offers "${readControllers(v2.dir).join(' ')}" and no v1 cpu/memory/pids is mounted`
    : `no cgroup filesystem under ${ROOT}`;
}

function readControllers(dir: string): string[] {
  try {
    return fs.readFileSync(path.join(dir, 'cgroup.controllers'), 'utf8').trim().split(/\s+/);
  } catch {
    return [];
  }
}

/**
 * What `detectCgroups` would use, without creating anything (`doctor`): `{version, where}` or
 * the reason there is nothing.
 */
export function probeCgroups(): { version: 1 | 2; where: string } | string {
  const all = mounts();
  const v2 = all.find((m) => m.type === 'cgroup2');
  if (v2 && ['cpu', 'memory', 'pids'].every((c) => readControllers(v2.dir).includes(c))) {
    return { version: 2, where: `${v2.dir} (cpu, memory, pids)` };
  }
  const v1 = (['cpu', 'memory', 'pids'] as const).filter((c) =>
    all.some((x) => x.type === 'cgroup' && x.options.includes(c)),
  );
  if (v1.length === 3) return { version: 1, where: 'controllers cpu, memory, pids' };
  if (v1.length > 0) {
    return `only the v1 controllers ${v1.join(', ')} are mounted (cpu, memory and pids are needed)`;
  }
  return v2
    ? `${v2.dir} offers "${readControllers(v2.dir).join(' ')}", not cpu, memory and pids`
    : `no cgroup filesystem under ${ROOT}`;
}
