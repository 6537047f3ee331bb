/**
 * Host admission: launches, restores, forks and resumes are admitted against the host's own
 * memory and CPUs as well as the org's quota, so the host refuses the VM that would push it into
 * OOM (a clear 503 `host_capacity` with `Retry-After`) instead of letting the kernel kill one.
 *
 * - Memory, on paper: the RAM of every VM whose QEMU holds it (`provisioning`, `running`,
 *   `pausing`, `paused`, `resuming`; a paused VM's QEMU keeps its memory) stays ≤
 *   (MemTotal − reserve) × `memoryOvercommit`. The default ratio is 16: a restored or forked VM
 *   shares the snapshot's pages copy-on-write and touches few of its own (28.6 MiB real per
 *   idle c1m2, 1.4% of its 2 GiB), so 16× still leaves each guest 1/16 of its RAM (128 MiB of a
 *   c1m2) to dirty on average, and `fork` of 100 c1m2 fits a 24 GiB host.
 * - Memory, for real: the host's MemAvailable right now, less the reserve, must hold the new
 *   VMs' share at the same ratio (RAM / `memoryOvercommit`), so that VMs that did dirty their
 *   memory stop admissions before the host runs short, whatever the paper count says.
 * - vCPUs: the vCPUs of the VMs that can run (the same states less `paused`, which gives its
 *   vCPUs back as in the quota) stay ≤ host CPUs × `cpuOvercommit`, default 64: an
 *   oversubscribed CPU only makes guests slower, never kills anything, and idle VMs cost
 *   ~0.3% of a core each (a `fork` of 100 fits two cores).
 *
 * Race-free: `admit` runs the check and the caller's write (the quota reservation that inserts
 * or moves the VM row) one at a time for the whole host, so two admissions never both see the
 * same room. Nothing else adds to the usage; releases (delete, pause) only make room.
 * @module
 */
import { readFileSync } from 'node:fs';
import os from 'node:os';
import { HostCapacityError } from '../domain/index.js';
import type { VmStatus } from '../domain/index.js';
import type { Store } from '../store/index.js';

/** What the host has. */
export interface HostTotals {
  memoryMiB: number;
  cpus: number;
}

/** Admission policy (see the module comment for the defaults). */
export interface HostCapacityConfig {
  /** Overrides the host's MemTotal (tests, or to admit against less than the machine has). */
  hostMemoryMiB?: number;
  /** Overrides the host's CPU count. */
  hostCpus?: number;
  /** Memory kept for the host itself (default: 10% of MemTotal, at least 1024 MiB). */
  reserveMiB?: number;
  /** Default 16. */
  memoryOvercommit?: number;
  /** Default 64. */
  cpuOvercommit?: number;
  /** The host's available memory now, in MiB (default: MemAvailable of /proc/meminfo). */
  memAvailableMiB?: () => number;
  /** The `Retry-After` of a refusal, in seconds (default 10). */
  retryAfterSec?: number;
}

/** A request's demand on the host. */
export interface HostRequest {
  vcpu?: number;
  memoryMiB?: number;
}

/** What VMs hold now and the most they may hold, per dimension. */
export interface HostUsage {
  memoryMiB: { used: number; limit: number };
  vcpu: { used: number; limit: number };
}

export const DEFAULT_MEMORY_OVERCOMMIT = 16;
export const DEFAULT_CPU_OVERCOMMIT = 64;

const HOLDS_MEMORY: readonly VmStatus[] = [
  'provisioning',
  'running',
  'pausing',
  'paused',
  'resuming',
];

/** A paused VM gives its vCPUs back (as in the quota). */
const HOLDS_VCPUS: readonly VmStatus[] = HOLDS_MEMORY.filter((s) => s !== 'paused');

/** A field of /proc/meminfo in MiB, or undefined where there is none. */
function meminfoMiB(field: string): number | undefined {
  try {
    const m = new RegExp(`^${field}:\\s+(\\d+)\\s+kB`, 'm').exec(
      readFileSync('/proc/meminfo', 'utf8'),
    );
    if (m) return Math.floor(Number(m[1]) / 1024);
  } catch {
    // not Linux
  }
  return undefined;
}

/** MemTotal of /proc/meminfo in MiB (os.totalmem where there is none). */
export function readMemTotalMiB(): number {
  return meminfoMiB('MemTotal') ?? Math.floor(os.totalmem() / (1024 * 1024));
}

/** MemAvailable of /proc/meminfo in MiB (os.freemem where there is none). */
export function readMemAvailableMiB(): number {
  return meminfoMiB('MemAvailable') ?? Math.floor(os.freemem() / (1024 * 1024));
}

/** See the module comment. */
export class HostCapacity {
  readonly totals: HostTotals;
  readonly memoryLimitMiB: number;
  readonly vcpuLimit: number;
  readonly retryAfterSec: number;
  readonly #reserveMiB: number;
  readonly #memRatio: number;
  readonly #memAvailable: () => number;
  #tail: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly store: Store,
    config: HostCapacityConfig = {},
  ) {
    this.totals = {
      memoryMiB: config.hostMemoryMiB ?? readMemTotalMiB(),
      cpus: config.hostCpus ?? os.availableParallelism(),
    };
    const reserve = config.reserveMiB ?? Math.max(1024, Math.floor(this.totals.memoryMiB * 0.1));
    const memRatio = config.memoryOvercommit ?? DEFAULT_MEMORY_OVERCOMMIT;
    const cpuRatio = config.cpuOvercommit ?? DEFAULT_CPU_OVERCOMMIT;
    this.memoryLimitMiB = Math.max(0, Math.floor((this.totals.memoryMiB - reserve) * memRatio));
    this.vcpuLimit = Math.floor(this.totals.cpus * cpuRatio);
    this.#reserveMiB = reserve;
    this.#memRatio = memRatio;
    this.#memAvailable = config.memAvailableMiB ?? readMemAvailableMiB;
    this.retryAfterSec = config.retryAfterSec ?? 10;
  }

  /** What the VMs on this host hold now, against the limits. */
  async usage(): Promise<HostUsage> {
    const { memoryMiB, vcpu } = await this.store.sumVmResources(HOLDS_MEMORY, HOLDS_VCPUS);
    return {
      memoryMiB: { used: memoryMiB, limit: this.memoryLimitMiB },
      vcpu: { used: vcpu, limit: this.vcpuLimit },
    };
  }

  /**
   * Runs `write` (which stores the rows holding `request`) if `request` fits the host, one
   * admission at a time; throws `HostCapacityError` naming the dimension otherwise.
   */
  admit<T>(request: HostRequest, write: () => Promise<T>): Promise<T> {
    const run = this.#tail.then(async () => {
      const usage = await this.usage();
      for (const dim of ['memoryMiB', 'vcpu'] as const) {
        const want = request[dim] ?? 0;
        const { used, limit } = usage[dim];
        if (want > 0 && used + want > limit) {
          throw new HostCapacityError(dim, limit, used, want, this.retryAfterSec);
        }
      }
      const share = Math.ceil((request.memoryMiB ?? 0) / this.#memRatio);
      const available = this.#memAvailable() - this.#reserveMiB;
      if (share > 0 && share > available) {
        // Reported as memory: what is left for VMs now against what this one may need.
        throw new HostCapacityError(
          'memoryMiB',
          Math.max(0, available),
          0,
          share,
          this.retryAfterSec,
        );
      }
      return write();
    });
    this.#tail = run.catch(() => {});
    return run;
  }
}
