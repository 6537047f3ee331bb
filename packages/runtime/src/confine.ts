/**
 * Confinement of QEMU processes (the jailer's job): every VM's QEMU runs as the unprivileged
 * user `fastvm-qemu` (created here if missing), under QEMU's seccomp sandbox, in its own cgroup
 * leaf (cgroups.ts) with limits from its machine type. The server keeps the privileged work.
 *
 * Files: a QEMU opens what it writes while it starts (its directory, for the sockets and serial
 * log; its top disk overlay) and, during a snapshot, the new overlay and the device-state file.
 * Each of these is handed to the user just before QEMU opens it (`grant`) and taken back right
 * after (`seal`: root-owned again), so at any time the guest runs, the user owns nothing on disk:
 * QEMU keeps only its open descriptors. Shared layers (base images, goldens, frozen overlays,
 * memory files) are root-owned and world-readable; the directories on the way are searchable but
 * not listable, so reading another VM's layer takes its random name. Turned off by
 * `FASTVM_CONFINE=off` (bench comparison), and off by itself when the server is not root.
 * See docs/ARCHITECTURE.md ("Confinement").
 * @module
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { type Cgroups, detectCgroups } from './cgroups.js';
import { MACHINES, type MachineType } from './types.js';

export const QEMU_USER = process.env.FASTVM_QEMU_USER || 'fastvm-qemu';

/**
 * QEMU's seccomp sandbox. `spawn=deny` is left out: the memshim forks the frozen copy of guest
 * RAM for each snapshot (a `clone` without thread flags), which that set kills (measured: the
 * snapshot's QEMU dies of SIGSYS). Everything else is denied.
 */
export const SANDBOX =
  process.env.FASTVM_QEMU_SANDBOX || 'on,obsolete=deny,elevateprivileges=deny,resourcecontrol=deny';

/**
 * QEMU's own memory on top of guest RAM (TCG translation buffer `tb-size=64`, QEMU's heap, page
 * tables, its share of page cache), measured for a c1m2 with all guest RAM touched; see
 * ARCHITECTURE.md. `FASTVM_VM_MEMORY_OVERHEAD_MIB` overrides it.
 */
export const MEMORY_OVERHEAD_MIB = 256;

/** Threads and processes of one QEMU: main, RCU, vCPUs, up to 64 I/O workers, the frozen copy. */
export const PIDS_PER_VM = 128;

export interface Identity {
  readonly uid: number;
  readonly gid: number;
}

export interface ConfineOptions {
  /** Limits: CPUs per vCPU (default 1) and memory on top of RAM (MiB; default measured). */
  readonly cpusPerVcpu?: number;
  readonly memoryOverheadMiB?: number;
}

export class Confinement {
  readonly #grantedDirs = new Set<string>();

  private constructor(
    readonly user: Identity,
    readonly cgroups: Cgroups | undefined,
    /** Why there are no cgroups (when there are none). */
    readonly cgroupsMissing: string | undefined,
    private readonly opts: ConfineOptions,
  ) {}

  /**
   * Confinement for this process, or the reason there is none (`FASTVM_CONFINE=off`, not root).
   * Creates the user if missing and the cgroup slice.
   */
  static create(opts: ConfineOptions = {}): Confinement | string {
    if (process.env.FASTVM_CONFINE === 'off') return 'FASTVM_CONFINE=off';
    if (process.getuid?.() !== 0) return 'the server is not root (QEMU runs as its user)';
    const user = ensureUser();
    const cg = detectCgroups();
    return new Confinement(
      user,
      typeof cg === 'string' ? undefined : cg,
      typeof cg === 'string' ? cg : undefined,
      opts,
    );
  }

  /** The spawn options that make QEMU run as the user (supplementary groups are dropped). */
  get spawnAs(): Identity {
    return this.user;
  }

  /** The cgroup limits of a machine type. */
  limits(machine: MachineType): { cpus: number; memoryBytes: number; pids: number } {
    const spec = MACHINES[machine];
    const overhead =
      this.opts.memoryOverheadMiB ??
      (Number(process.env.FASTVM_VM_MEMORY_OVERHEAD_MIB) || MEMORY_OVERHEAD_MIB);
    return {
      cpus: spec.vcpus * (this.opts.cpusPerVcpu ?? 1),
      memoryBytes: (spec.memoryMiB + overhead) * 2 ** 20,
      pids: PIDS_PER_VM,
    };
  }

  /** Moves a started QEMU into its cgroup leaf (nothing without cgroups). */
  async place(pid: number, machine: MachineType): Promise<void> {
    await this.cgroups?.place(pid, this.limits(machine));
  }

  release(pid: number): void {
    if (pid > 0) this.cgroups?.release(pid);
  }

  /** Hands files (or a directory) to the user, for QEMU to open or create them. */
  async grant(...files: string[]): Promise<void> {
    await Promise.all(files.map((f) => fsp.chown(f, this.user.uid, this.user.gid)));
  }

  /**
   * Takes files back once QEMU has them open: root-owned, `mode` (0o644: readable by every QEMU,
   * for layers that become shared; 0o600: nobody else).
   */
  async seal(mode: number, ...files: string[]): Promise<void> {
    await Promise.all(
      files.map(async (f) => {
        await fsp.chown(f, 0, 0);
        await fsp.chmod(f, mode);
      }),
    );
  }

  /**
   * After QEMU started (its QMP greeting: every socket is bound, the serial log open): the VM's
   * directory and the sockets in it go back to root, the sockets 0600, so only the server (not
   * another QEMU of the same user) can connect to them.
   */
  async sealVmDir(dir: string): Promise<void> {
    const entries = await fsp.readdir(dir);
    await Promise.all(
      entries.map(async (name) => {
        const f = path.join(dir, name);
        await fsp.chown(f, 0, 0).catch(() => {});
        if (name.endsWith('.sock')) await fsp.chmod(f, 0o600).catch(() => {});
      }),
    );
    await fsp.chown(dir, 0, 0);
    await fsp.chmod(dir, 0o755);
  }

  /** Makes a shared file readable by QEMU (a golden's device state is written 0600). */
  readable(file: string): void {
    try {
      const st = fs.statSync(file);
      if ((st.mode & 0o004) === 0) fs.chmodSync(file, (st.mode & 0o7777) | 0o044);
    } catch {
      /* missing: the restore reports it */
    }
  }

  /**
   * Every directory from `/` down to each of `dirs` must be searchable by the user (not
   * listable): adds `o+x` where it is missing (e.g. `/root`, for the guest image cache in
   * `~/.cache/fastvm`) and reports what it changed.
   */
  searchable(dirs: readonly string[], log: (msg: string) => void): void {
    for (const dir of dirs) {
      let d = path.resolve(dir);
      for (;;) {
        if (!this.#grantedDirs.has(d)) {
          try {
            const st = fs.statSync(d);
            if ((st.mode & 0o001) === 0) {
              fs.chmodSync(d, (st.mode & 0o7777) | 0o001);
              log(`runtime: confinement: made ${d} searchable for ${QEMU_USER} (o+x)`);
            }
            this.#grantedDirs.add(d);
          } catch {
            /* missing: made later */
          }
        }
        const up = path.dirname(d);
        if (up === d) break;
        d = up;
      }
    }
  }
}

let cachedUser: Identity | undefined;

/** The uid/gid of `fastvm-qemu`, created as a system user (no home, no shell) if missing. */
export function ensureUser(name = QEMU_USER): Identity {
  if (cachedUser) return cachedUser;
  let found = lookupUser(name);
  if (!found) {
    try {
      execFileSync(
        'useradd',
        [
          '--system',
          '--no-create-home',
          '--home-dir',
          '/nonexistent',
          '--shell',
          '/usr/sbin/nologin',
          '--user-group',
          name,
        ],
        { stdio: 'ignore' },
      );
    } catch {
      /* a concurrent start made it; checked below */
    }
    found = lookupUser(name);
    if (!found) throw new Error(`cannot create the user ${name} for QEMU (useradd failed)`);
  }
  cachedUser = found;
  return found;
}

/** The user's ids from the passwd database, or undefined. */
export function lookupUser(name = QEMU_USER): Identity | undefined {
  try {
    const line = execFileSync('getent', ['passwd', name], { encoding: 'utf8' }).trim();
    const [, , uid, gid] = line.split(':');
    if (uid === undefined || gid === undefined) return undefined;
    return { uid: Number(uid), gid: Number(gid) };
  } catch {
    return undefined;
  }
}
