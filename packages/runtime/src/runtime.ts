/**
 * QemuRuntime: real microVMs on QEMU `microvm`.
 *
 * Every VM, including a "fresh" launch, is a restore: each machine type is booted once into a
 * cached golden snapshot, and new VMs restore it. See docs/ARCHITECTURE.md ("Runtime") for the
 * memory and disk layering this file implements.
 */
import { execFile, spawn } from 'node:child_process';
import crypto from 'node:crypto';
import { EventEmitter } from 'node:events';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { AgentClient } from './agent-client.js';
import { applyDelta, dumpDelta, findRamMapping, flattenDelta } from './memory.js';
import {
  type Accel,
  type GuestImage,
  defaultCacheDir,
  hostTscKhz,
  kernelCmdline,
  loadGuestImage,
  probeKvm,
  qemuArgs,
  qemuBinary,
  qemuVersion,
} from './qemu.js';
import { QmpClient, QmpCommandError, type QmpEvent } from './qmp.js';
import {
  type AdoptResult,
  DEFAULT_DISK_GIB,
  type ExecRequest,
  type ExecResult,
  type LaunchOptions,
  MACHINES,
  type MachineSpec,
  type MachineType,
  type NetworkOption,
  type PtyRequest,
  type PtySession,
  type RestoreOptions,
  type Runtime,
  RuntimeError,
  type SnapshotInfo,
  type VmInfo,
  type VmNetwork,
} from './types.js';

const execFileP = promisify(execFile);

/** Bump when the on-disk golden snapshot format or the QEMU device set changes. */
const GOLDEN_FORMAT = 5;
const ID_RE = /^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/;
/**
 * A restore of a snapshot whose delta is larger than this waits for the background flatten, so
 * that forks share the flattened pages instead of each copying the delta.
 */
const FLATTEN_WAIT_BYTES = 32 * 2 ** 20;

/** A pooled VM runs these after its restore (the server runs string commands with `sh -c`). */
const POOL_WARMUP: readonly string[][] = [['true'], ['sh', '-c', 'true']];
const POOL_FILL_DELAY_MS = 200;
const POOL_WARMUP_MAC = '02:00:00:00:00:02';
const POOL_WARMUP_ADDRS = 'fd00:0:0:ffff::2/64 192.0.2.2/24'; // documentation / ULA ranges
const POOL_NICE = 10;
const POOL_RETRY_MS = 10_000;

/**
 * Crash points for the crash tests (`test/crash.test.ts`): with `FASTVM_CRASH_AT=<name>` the
 * process SIGKILLs itself on reaching that step, exactly as a `kill -9` landing there would.
 */
const CRASH_AT = process.env.FASTVM_CRASH_AT;
function crashPoint(name: string): void {
  if (CRASH_AT === name) process.kill(process.pid, 'SIGKILL');
}

export interface QemuRuntimeOptions {
  /**
   * Where VMs, snapshots and layers live (e.g. `~/.local/share/fastvm/runtime`). One runtime at a
   * time owns a data dir (a lock file holds the owner's pid).
   */
  readonly dataDir: string;
  /** Shared, immutable cache of golden snapshots. Default: `<cache dir>/golden`. */
  readonly goldenDir?: string;
  /** Guest image; default: `guest.json` in the cache dir. */
  readonly image?: GuestImage;
  /** Force an accelerator instead of probing /dev/kvm. */
  readonly accel?: Accel;
  /** Machine types whose golden snapshot is built in the background at start. */
  readonly prewarm?: readonly MachineType[];
  /**
   * Warm pool: how many VMs per machine type to keep restored from the golden snapshot, warmed
   * up (one command run, so the guest's hot paths are translated) and waiting, for `launch()` to
   * hand out. A type's pool fills after its first launch (prewarmed types: at start). Costs
   * ~30 MiB of host memory per waiting VM. Default 0 (off).
   */
  readonly pool?: number;
  readonly log?: (msg: string) => void;
}

interface DiskState {
  /** Writable top layer. */
  top: string;
  /** QEMU node name of the top layer. */
  topNode: string;
  /** Read-only layers below the top, nearest first (the last one may be the raw base image). */
  chain: string[];
}

/** `vms/<id>/vm.json`: enough to re-adopt or clean up a VM after a restart. */
interface VmRecord {
  id: string;
  machine: MachineType;
  diskGiB: number;
  accel: Accel;
  pid: number;
  memBase: string;
  disk: DiskState;
  nodeCounter: number;
  snapshotId?: string;
  network?: VmNetwork;
  createdAt: string;
  /** QEMU's `-name` when it differs from the id (a VM handed out by the warm pool). */
  qemuName?: string;
  /** Stopped by `pause()` (QMP `stop`); kept so a restarted server adopts it still paused. */
  paused?: boolean;
  /**
   * Intent of a snapshot in progress: the overlay QEMU is being switched to. Written before the
   * switch, so that after a crash adoption knows the file may be QEMU's top layer (it asks QEMU,
   * see `#reconcileDisk`) and the sweeper keeps it until then.
   */
  nextTop?: string;
}

/** `snapshots/<id>/snapshot.json`. */
interface SnapshotRecord {
  id: string;
  vmId: string;
  machine: MachineType;
  diskGiB: number;
  accel: Accel;
  /** `qemu --version` of the QEMU that wrote the state (absent in records before it was kept). */
  qemu?: string;
  imageId: string;
  cmdline: string;
  memBase: string;
  delta?: { path: string; bytes: number };
  /** Frozen disk layers, nearest first. */
  disk: string[];
  state: string;
  /** The source was stopped when migrated: the restored VM needs `cont`. */
  paused: boolean;
  createdAt: string;
}

interface LiveVm {
  record: VmRecord;
  dir: string;
  qmp: QmpClient;
  agent: AgentClient;
  exited: boolean;
  destroying: boolean;
  /** Serialises snapshots of one VM. */
  busy: Promise<unknown>;
}

export async function createQemuRuntime(opts: QemuRuntimeOptions): Promise<QemuRuntime> {
  const rt = new QemuRuntime(opts);
  await rt.init();
  return rt;
}

export class QemuRuntime implements Runtime {
  readonly dataDir: string;
  readonly goldenDir: string;
  readonly #log: (msg: string) => void;
  #image!: GuestImage;
  #accel!: Accel;
  #qemu!: string;
  #cmdline!: string;
  readonly #vms = new Map<string, LiveVm>();
  readonly #goldens = new Map<MachineType, Promise<SnapshotRecord>>();
  readonly #events = new EventEmitter<{ exit: [string, string] }>();
  readonly #opts: QemuRuntimeOptions;
  #locked = false;
  /** Layer files created but not yet named by a record; the sweeper leaves them alone. */
  readonly #pending = new Set<string>();
  /** Layer files a restore is reading right now (path -> users); also kept by the sweeper. */
  readonly #pins = new Map<string, number>();
  /** Background flattens of snapshot deltas into standalone base files, by snapshot id. */
  readonly #flattening = new Map<string, Promise<void>>();
  /** Warm pool: waiting VMs by machine type, and the fill running for a type. */
  readonly #pool = new Map<MachineType, LiveVm[]>();
  readonly #poolFills = new Map<MachineType, Promise<void>>();
  /** Ids of this runtime's pooled VMs, being made or waiting: adopt() must not take them for orphans. */
  readonly #poolIds = new Set<string>();
  /** Ids of VMs being restored right now (not registered yet): adopt() must not take them either. */
  readonly #starting = new Set<string>();
  #closing = false;

  constructor(opts: QemuRuntimeOptions) {
    this.#opts = opts;
    this.dataDir = path.resolve(opts.dataDir);
    this.goldenDir = path.resolve(opts.goldenDir ?? path.join(defaultCacheDir(), 'golden'));
    this.#log = opts.log ?? (() => {});
  }

  get accel(): Accel {
    return this.#accel;
  }

  get image(): GuestImage {
    return this.#image;
  }

  /** Load the image, pick the accelerator, create directories, start prewarming goldens. */
  async init(): Promise<void> {
    this.#image = this.#opts.image ?? loadGuestImage();
    for (const d of ['vms', 'snapshots', 'layers/disk', 'layers/mem', 'templates']) {
      fs.mkdirSync(path.join(this.dataDir, d), { recursive: true });
    }
    fs.mkdirSync(this.goldenDir, { recursive: true });
    this.#lock();
    // A snapshot's record is written last: a snapshot dir without one is what a crash left.
    for (const id of fs.readdirSync(path.join(this.dataDir, 'snapshots'))) {
      if (!fs.existsSync(path.join(this.#snapDir(id), 'snapshot.json'))) {
        fs.rmSync(this.#snapDir(id), { recursive: true, force: true });
      }
    }
    this.#accel = this.#opts.accel ?? (await this.#probeAccel());
    this.#cmdline = kernelCmdline(this.#tscKhz());
    this.#qemu = qemuVersion(qemuBinary(this.#accel));
    this.#log(`runtime: accel=${this.#accel} image=${this.#image.imageId} ${this.#qemu}`);
    for (const m of this.#opts.prewarm ?? []) {
      this.#golden(m).then(
        () => this.#fillPool(m),
        (err: unknown) => this.#log(`runtime: golden ${m} failed: ${String(err)}`),
      );
    }
  }

  /**
   * The host TSC frequency for the kernel command line, read once and kept next to the goldens:
   * the command line is part of a golden's key, and `cpu MHz` can drift on hosts that scale
   * their clock, which would otherwise trigger needless golden rebuilds.
   */
  #tscKhz(): number {
    const file = path.join(this.goldenDir, 'tsc.json');
    const cached = readJson<{ khz: number }>(file);
    if (cached && cached.khz > 0) return cached.khz;
    const khz = hostTscKhz();
    writeJsonAtomic(file, { khz });
    return khz;
  }

  async #probeAccel(): Promise<Accel> {
    // Cached next to the goldens: the answer depends on the host and kernel, not the data dir.
    const cache = path.join(this.goldenDir, 'accel.json');
    try {
      const c = JSON.parse(fs.readFileSync(cache, 'utf8')) as { kernel: string; accel: Accel };
      if (c.kernel === this.#image.kernel && !process.env.FASTVM_ACCEL) return c.accel;
    } catch {
      /* no cached probe */
    }
    const accel: Accel = (await probeKvm(this.#image, path.join(this.goldenDir, 'probe')))
      ? 'kvm'
      : 'tcg';
    fs.writeFileSync(cache, JSON.stringify({ kernel: this.#image.kernel, accel }));
    return accel;
  }

  /**
   * Take the data dir: two runtimes sweeping the same layers would delete each other's files. A
   * lock left by a dead process (kill -9) is taken over.
   */
  #lock(): void {
    const file = path.join(this.dataDir, 'runtime.lock');
    for (;;) {
      try {
        fs.writeFileSync(file, String(process.pid), { flag: 'wx' });
        this.#locked = true;
        return;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      }
      const owner = parseInt(fs.readFileSync(file, 'utf8'), 10);
      if (owner > 0 && owner !== process.pid && alive(owner)) {
        throw new RuntimeError(
          'invalid_argument',
          `data dir ${this.dataDir} is in use by pid ${owner}`,
        );
      }
      fs.rmSync(file, { force: true });
    }
  }

  #unlock(): void {
    if (!this.#locked) return;
    this.#locked = false;
    fs.rmSync(path.join(this.dataDir, 'runtime.lock'), { force: true });
  }

  // ---------------------------------------------------------------------------------------------
  // Public API

  async launch(opts: LaunchOptions): Promise<VmInfo> {
    checkId(opts.id);
    const spec = MACHINES[opts.machine];
    if (!spec) throw new RuntimeError('invalid_argument', `unknown machine type ${opts.machine}`);
    const diskGiB = opts.diskGiB ?? DEFAULT_DISK_GIB;
    if (diskGiB < this.#image.rootfsGiB) {
      throw new RuntimeError(
        'invalid_argument',
        `diskGiB must be at least ${this.#image.rootfsGiB}`,
      );
    }
    const golden = await this.#golden(opts.machine);
    const vm =
      (await this.#takePooled(opts.machine, opts.id, opts.hostname, opts.network)) ??
      (await this.#restoreFrom(golden, opts.id, opts.hostname, opts.network, undefined));
    this.#fillPool(opts.machine);
    if (diskGiB > golden.diskGiB) await this.#growDisk(vm, diskGiB);
    return this.#info(vm);
  }

  async restore(opts: RestoreOptions): Promise<VmInfo> {
    checkId(opts.id);
    let snap = this.#readSnapshot(opts.snapshotId);
    if (!snap) {
      throw new RuntimeError('snapshot_not_found', `snapshot ${opts.snapshotId} not found`);
    }
    const flattening = this.#flattening.get(snap.id);
    if (flattening && (snap.delta?.bytes ?? 0) > FLATTEN_WAIT_BYTES) {
      await flattening;
      snap = this.#readSnapshot(opts.snapshotId) ?? snap;
    }
    const pinned = [snap.memBase, snap.state, ...snap.disk];
    if (snap.delta) pinned.push(snap.delta.path);
    this.#pin(pinned, 1);
    try {
      const vm = await this.#restoreFrom(snap, opts.id, opts.hostname, opts.network, snap.id);
      return this.#info(vm);
    } finally {
      this.#pin(pinned, -1);
    }
  }

  async snapshot(vmId: string, snapshotId: string): Promise<SnapshotInfo> {
    checkId(snapshotId);
    const vm = this.#live(vmId);
    const run = vm.busy.then(() => this.#snapshot(vm, snapshotId));
    vm.busy = run.catch(() => {});
    return run;
  }

  async exec(vmId: string, req: ExecRequest): Promise<ExecResult> {
    const vm = this.#live(vmId);
    return vm.agent.exec(req);
  }

  /** An interactive command on a new pty in the guest (the console); see `Runtime.openPty`. */
  async openPty(vmId: string, req: PtyRequest): Promise<PtySession> {
    const vm = this.#live(vmId);
    return vm.agent.spawn({
      argv: req.argv,
      ...(req.env ? { env: req.env } : {}),
      ...(req.cwd !== undefined ? { cwd: req.cwd } : {}),
      pty: { rows: req.rows, cols: req.cols },
      onStdout: req.onData,
      ...(req.onError ? { onError: req.onError } : {}),
    });
  }

  async destroy(vmId: string): Promise<void> {
    const vm = this.#vms.get(vmId);
    if (vm) {
      vm.destroying = true;
      await this.#stopProcess(vm.record.pid, vm.qmp);
      crashPoint('destroy:stopped');
      vm.agent.close();
      vm.qmp.close();
      this.#vms.delete(vmId);
    } else {
      const rec = this.#readVm(vmId);
      if (rec) await this.#stopProcess(rec.pid);
    }
    fs.rmSync(this.#vmDir(vmId), { recursive: true, force: true });
    this.#gc();
  }

  async deleteSnapshot(snapshotId: string): Promise<void> {
    fs.rmSync(this.#snapDir(snapshotId), { recursive: true, force: true });
    this.#gc();
  }

  async hasSnapshot(snapshotId: string): Promise<boolean> {
    return this.#readSnapshot(snapshotId) !== undefined;
  }

  get(vmId: string): VmInfo | undefined {
    const vm = this.#vms.get(vmId);
    return vm ? this.#info(vm) : undefined;
  }

  /** How many warm VMs of a machine type are waiting in the pool. */
  poolReady(machine: MachineType): number {
    return this.#pool.get(machine)?.length ?? 0;
  }

  /** Ids of the VMs this runtime supervises. */
  list(): VmInfo[] {
    return [...this.#vms.values()].map((vm) => this.#info(vm));
  }

  async adopt(vmIds: readonly string[]): Promise<AdoptResult> {
    const wanted = new Set(vmIds);
    const adopted: string[] = [];
    const lost: string[] = [];
    const orphans: string[] = [];
    const onDisk = fs.readdirSync(path.join(this.dataDir, 'vms'));
    for (const id of onDisk) {
      if (this.#poolIds.has(id) || this.#starting.has(id)) continue; // ours: pooled or starting
      if (this.#vms.has(id)) {
        if (wanted.has(id)) adopted.push(id);
        continue;
      }
      const rec = this.#readVm(id);
      if (!wanted.has(id) || !rec) {
        // (A QEMU that the record does not name, or that has no record, is stopped by the sweep
        // of stray processes below.)
        if (rec && this.#isOurQemu(rec.pid)) await this.#stopProcess(rec.pid);
        fs.rmSync(this.#vmDir(id), { recursive: true, force: true });
        orphans.push(id);
        continue;
      }
      if (!isQemuOf(rec.pid, rec.qemuName ?? id)) {
        fs.rmSync(this.#vmDir(id), { recursive: true, force: true });
        lost.push(id);
        continue;
      }
      try {
        const dir = this.#vmDir(id);
        const qmp = await QmpClient.connect(path.join(dir, 'qmp.sock'), { timeoutMs: 5000 });
        // A stopped guest cannot answer the agent's HELLO: let it run for the handshake. vm.json
        // decides what it is afterwards, so a VM left stopped by a crash in the middle of a
        // snapshot (or of a pause that was not recorded yet) runs again.
        const status = await qmp.execute<{ running: boolean }>('query-status');
        if (rec.paused || !status.running) await qmp.execute('cont');
        const t0 = performance.now();
        const agent = await AgentClient.connect(path.join(dir, 'agent.sock'), {
          timeoutMs: 15_000,
          helloAttemptMs: 2_000,
        });
        if (performance.now() - t0 > 2_000) {
          this.#log(
            `runtime: ${id}: agent answered after ${(performance.now() - t0).toFixed(0)} ms (reconnected)`,
          );
        }
        if (rec.paused) await qmp.execute('stop');
        const vm: LiveVm = {
          record: rec,
          dir,
          qmp,
          agent,
          exited: false,
          destroying: false,
          busy: Promise.resolve(),
        };
        // The record may be a step behind QEMU (a crash in the middle of a snapshot): QEMU's own
        // view of the disk chain wins, before the sweeper decides which layers are in use.
        await this.#reconcileDisk(vm);
        delete rec.nextTop;
        writeJsonAtomic(path.join(dir, 'vm.json'), rec);
        this.#supervise(vm);
        this.#vms.set(id, vm);
        adopted.push(id);
      } catch (err) {
        this.#log(`runtime: cannot re-adopt ${id}: ${String(err)}`);
        await this.#stopProcess(rec.pid);
        fs.rmSync(this.#vmDir(id), { recursive: true, force: true });
        lost.push(id);
      }
    }
    for (const id of wanted) {
      if (!onDisk.includes(id) && !this.#vms.has(id)) lost.push(id);
    }
    await this.#stopStrayQemus();
    this.#gc();
    return { adopted, lost, orphans };
  }

  /**
   * Sets a VM's disk record from QEMU's block graph (`query-block`): the top layer, its node name
   * and the backing chain. Used where the record may lag behind QEMU: adoption after a crash and a
   * failed snapshot.
   */
  async #reconcileDisk(vm: LiveVm): Promise<void> {
    interface Image {
      filename: string;
      'virtual-size': number;
      'backing-image'?: Image;
    }
    const blocks =
      await vm.qmp.execute<{ inserted?: { 'node-name': string; image: Image } }[]>('query-block');
    const inserted = blocks.find((b) => b.inserted)?.inserted;
    if (!inserted) throw new RuntimeError('qemu_failed', `VM ${vm.record.id} has no disk`);
    const chain: string[] = [];
    for (let b = inserted.image['backing-image']; b; b = b['backing-image']) chain.push(b.filename);
    const rec = vm.record;
    const before = JSON.stringify(rec.disk);
    rec.disk = { top: inserted.image.filename, topNode: inserted['node-name'], chain };
    rec.nodeCounter = Math.max(rec.nodeCounter, Number(/\d+$/.exec(rec.disk.topNode)?.[0] ?? 0));
    rec.diskGiB = Math.max(rec.diskGiB, Math.floor(inserted.image['virtual-size'] / 2 ** 30));
    if (JSON.stringify(rec.disk) !== before) {
      this.#log(`runtime: ${rec.id}: disk record reconciled with QEMU (top ${rec.disk.top})`);
    }
  }

  /** Whether `pid` is a QEMU process of this data dir (not a recycled pid). */
  #isOurQemu(pid: number): boolean {
    return pid > 0 && qemuDirOf(pid, this.dataDir) !== undefined;
  }

  /**
   * Stops every QEMU process that runs from this data dir's `vms/` but is neither a supervised
   * VM nor a pooled one: what a crash between starting QEMU and recording its pid leaves behind.
   */
  async #stopStrayQemus(): Promise<void> {
    const known = new Set<number>([...this.#vms.values()].map((vm) => vm.record.pid));
    for (const list of this.#pool.values()) list.forEach((vm) => known.add(vm.record.pid));
    let pids: string[] = [];
    try {
      pids = fs.readdirSync('/proc').filter((p) => /^\d+$/.test(p));
    } catch {
      return;
    }
    for (const p of pids) {
      const pid = Number(p);
      if (known.has(pid)) continue;
      const name = qemuDirOf(pid, this.dataDir);
      if (name === undefined || this.#poolIds.has(name) || this.#starting.has(name)) continue;
      this.#log(`runtime: stopping stray QEMU ${pid} (${name})`);
      await this.#stopProcess(pid);
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Pause / resume (QMP stop / cont). The QEMU process and the guest's memory stay; a stopped
  // vCPU uses no host CPU. The state is recorded in vm.json, so adoption keeps a paused VM paused.

  async pause(vmId: string): Promise<void> {
    const vm = this.#vms.get(vmId);
    if (!vm || vm.exited) throw new RuntimeError('not_found', `VM ${vmId} is not running`);
    const run = vm.busy.then(async () => {
      if (vm.record.paused) return;
      await vm.qmp.execute('stop');
      crashPoint('pause:stopped');
      vm.record.paused = true;
      writeJsonAtomic(path.join(vm.dir, 'vm.json'), vm.record);
    });
    vm.busy = run.catch(() => {});
    return run;
  }

  async resume(vmId: string): Promise<void> {
    const vm = this.#vms.get(vmId);
    if (!vm || vm.exited) throw new RuntimeError('not_found', `VM ${vmId} is not running`);
    const run = vm.busy.then(async () => {
      if (!vm.record.paused) return;
      await vm.qmp.execute('cont');
      vm.record.paused = false;
      writeJsonAtomic(path.join(vm.dir, 'vm.json'), vm.record);
      // The guest clock stood still while stopped; set it again (best effort).
      await vm.agent
        .setIdentity({ clockNs: BigInt(Date.now()) * 1_000_000n }, { timeoutMs: 5000 })
        .catch((err: unknown) =>
          this.#log(`runtime: clock sync of ${vmId} failed: ${String(err)}`),
        );
    });
    vm.busy = run.catch(() => {});
    return run;
  }

  onExit(listener: (vmId: string, reason: string) => void): () => void {
    this.#events.on('exit', listener);
    return () => this.#events.off('exit', listener);
  }

  async detach(): Promise<void> {
    await this.#drainPool();
    await Promise.allSettled([...this.#goldens.values(), ...this.#flattening.values()]);
    for (const vm of this.#vms.values()) {
      vm.destroying = true; // closing our connections is not an exit
      vm.agent.close();
      vm.qmp.close();
    }
    this.#vms.clear();
    this.#unlock();
  }

  async destroyAll(): Promise<void> {
    await this.#drainPool();
    await Promise.allSettled([...this.#goldens.values(), ...this.#flattening.values()]);
    await Promise.all([...this.#vms.keys()].map((id) => this.destroy(id)));
    this.#unlock();
  }

  // ---------------------------------------------------------------------------------------------
  // Warm pool. A pooled VM is an ordinary restore of the golden snapshot (its own overlay, its dir
  // under vms/ so the sweeper and adoption see it) that is not registered as a VM. After the
  // restore it runs the commands a user's VM runs first, which makes QEMU translate the guest
  // code they need: a restored VM starts with an empty translation cache, and that, not QEMU
  // or the migration, is most of a cold launch under TCG. Its NIC sits on QEMU hub 0; launch()
  // plugs the VM's tap into that hub, renames the dir and gives the VM its identity.

  /** Starts filling the pool of a machine type in the background, unless it is full or filling. */
  #fillPool(machine: MachineType): void {
    const size = this.#opts.pool ?? 0;
    if (size <= 0 || this.#closing || this.#poolFills.has(machine)) return;
    const list = this.#pool.get(machine) ?? [];
    this.#pool.set(machine, list);
    if (list.length >= size) return; // (a VM that dies while waiting leaves the list at once)
    const fill = (async () => {
      // Let the launch that triggered the fill have the CPU for its first commands.
      await new Promise((r) => setTimeout(r, POOL_FILL_DELAY_MS));
      while (!this.#closing && list.length < size) {
        const golden = await this.#golden(machine);
        const id = `pool-${machine}-${crypto.randomBytes(6).toString('hex')}`;
        this.#poolIds.add(id);
        const vm = await this.#restoreFrom(golden, id, undefined, undefined, undefined, true).catch(
          (err: unknown) => {
            this.#poolIds.delete(id);
            throw err;
          },
        );
        vm.qmp.on('close', () => {
          vm.exited = true;
          const i = list.indexOf(vm);
          if (i < 0) return; // handed out (or being discarded): not the pool's business
          list.splice(i, 1);
          this.#log(`runtime: pooled VM ${id} exited while waiting`);
          void this.#discard(vm).then(() => this.#fillPool(machine));
        });
        try {
          for (const argv of POOL_WARMUP) await vm.agent.exec({ argv, timeoutMs: 30_000 });
          // The network part of the identity a launch applies: addresses on a NIC with no
          // uplink yet (hub 0), then removed again.
          await vm.agent.setIdentity({ net: [`eth0 ${POOL_WARMUP_MAC} ${POOL_WARMUP_ADDRS}`] });
          await vm.agent.setIdentity({ net: [`eth0 ${POOL_WARMUP_MAC}`] });
        } catch (err) {
          await this.#discard(vm);
          throw err;
        }
        if (this.#closing) await this.#discard(vm);
        else list.push(vm);
      }
    })()
      .catch((err: unknown) => {
        this.#log(`runtime: pool fill for ${machine} failed: ${String(err)}`);
        // Try again later rather than wait for a launch to ask (a launch meanwhile restores cold).
        setTimeout(() => this.#fillPool(machine), POOL_RETRY_MS).unref();
      })
      .finally(() => this.#poolFills.delete(machine));
    this.#poolFills.set(machine, fill);
  }

  /** A waiting VM of the pool made into VM `id`, or undefined when none is ready. */
  async #takePooled(
    machine: MachineType,
    id: string,
    hostname: string | undefined,
    networkOption: NetworkOption | undefined,
  ): Promise<LiveVm | undefined> {
    const list = this.#pool.get(machine);
    if (!list?.length) return undefined;
    const network = await networkOption;
    for (let vm = list.shift(); vm; vm = list.shift()) {
      if (vm.exited) {
        await this.#discard(vm);
        continue;
      }
      if (this.#vms.has(id) || fs.existsSync(this.#vmDir(id))) {
        list.unshift(vm);
        throw new RuntimeError('invalid_argument', `VM ${id} already exists`);
      }
      const t0 = performance.now();
      this.#starting.add(id);
      try {
        if (network) await plugTap(vm.qmp, network.tap);
        reniceProcess(vm.record.pid, 0);
        const dir = this.#vmDir(id);
        fs.renameSync(vm.dir, dir);
        crashPoint('pool:renamed');
        vm.record.qemuName = vm.record.id;
        vm.record.id = id;
        vm.dir = dir;
        if (network) vm.record.network = network;
        vm.record.createdAt = new Date().toISOString();
        writeJsonAtomic(path.join(dir, 'vm.json'), vm.record);
        await vm.agent.setIdentity(freshIdentity(id, hostname, network));
      } catch (err) {
        this.#log(`runtime: pooled VM ${vm.record.id} could not become ${id}: ${String(err)}`);
        await this.#discard(vm);
        continue;
      } finally {
        this.#starting.delete(id);
      }
      this.#poolIds.delete(vm.record.qemuName!);
      this.#supervise(vm);
      this.#vms.set(id, vm);
      this.#log(
        `runtime: launched ${id} from the pool in ${(performance.now() - t0).toFixed(1)} ms`,
      );
      return vm;
    }
    return undefined;
  }

  /** Stops a VM that is not registered (a pooled one) and removes its dir. */
  async #discard(vm: LiveVm): Promise<void> {
    this.#poolIds.delete(vm.record.qemuName ?? vm.record.id);
    vm.destroying = true;
    await this.#stopProcess(vm.record.pid, vm.qmp);
    vm.agent.close();
    vm.qmp.close();
    fs.rmSync(vm.dir, { recursive: true, force: true });
    this.#gc();
  }

  /** Stops filling and discards every waiting VM (close, detach). */
  async #drainPool(): Promise<void> {
    this.#closing = true;
    await Promise.allSettled([...this.#poolFills.values()]);
    const waiting = [...this.#pool.values()].flatMap((list) => list.splice(0));
    this.#pool.clear();
    await Promise.all(waiting.map((vm) => this.#discard(vm)));
  }

  // ---------------------------------------------------------------------------------------------
  // Golden snapshots

  #golden(machine: MachineType): Promise<SnapshotRecord> {
    let p = this.#goldens.get(machine);
    if (!p) {
      p = this.#loadOrBuildGolden(machine);
      this.#goldens.set(machine, p);
      p.catch(() => this.#goldens.delete(machine));
    }
    return p;
  }

  async #loadOrBuildGolden(machine: MachineType): Promise<SnapshotRecord> {
    const key = crypto
      .createHash('sha256')
      .update(
        JSON.stringify([
          GOLDEN_FORMAT,
          this.#image.imageId,
          machine,
          this.#accel,
          this.#cmdline,
          this.#qemu,
        ]),
      )
      .digest('hex')
      .slice(0, 16);
    const id = `golden-${machine}-${key}`;
    const dir = path.join(this.goldenDir, id);
    const existing = readJson<SnapshotRecord>(path.join(dir, 'snapshot.json'));
    if (existing) return existing;
    const t0 = Date.now();
    this.#log(`runtime: building golden snapshot for ${machine} (cold boot)`);
    const rec = await this.#bootGolden(id, MACHINES[machine]);
    this.#log(`runtime: golden ${machine} ready in ${Date.now() - t0} ms`);
    return rec;
  }

  /**
   * Cold-boot the guest with RAM in a shared file, warm it up, and freeze it into
   * `<goldenDir>/<id>/`. Goldens are an immutable cache shared by every runtime on the host (like
   * the guest image): built in a private directory and renamed into place, never swept.
   */
  async #bootGolden(id: string, spec: MachineSpec): Promise<SnapshotRecord> {
    const final = path.join(this.goldenDir, id);
    const work = path.join(
      this.goldenDir,
      `.build-${id}-${process.pid}-${crypto.randomUUID().slice(0, 8)}`,
    );
    fs.mkdirSync(work, { recursive: true });
    const at = (dir: string) => ({
      mem: path.join(dir, 'mem'),
      disk: path.join(dir, 'disk.qcow2'),
      state: path.join(dir, 'state.bin'),
    });
    await qemuImgCreate(at(work).disk, this.#image.rootfs, 'raw', this.#image.rootfsGiB);
    const args = qemuArgs({
      accel: this.#accel,
      machine: spec,
      image: this.#image,
      cmdline: this.#cmdline,
      memPath: at(work).mem,
      diskPath: at(work).disk,
      qmpPath: path.join(work, 'qmp.sock'),
      agentPath: path.join(work, 'agent.sock'),
      serialPath: path.join(work, 'serial.log'),
      mac: '02:00:00:00:00:01',
      incoming: false,
    });
    const pid = this.#spawnQemu(work, args, {});
    let qmp: QmpClient | undefined;
    let agent: AgentClient | undefined;
    try {
      qmp = await QmpClient.connect(path.join(work, 'qmp.sock'), { timeoutMs: 10_000 });
      agent = await AgentClient.connect(path.join(work, 'agent.sock'), { timeoutMs: 120_000 });
      // Warm the guest's page cache with what users run first; forks share these pages.
      const warm = await agent.exec({
        argv: ['sh', '-c', 'python3 -c pass; curl --version >/dev/null; tmux -V >/dev/null; sync'],
        timeoutMs: 60_000,
      });
      if (warm.exitCode !== 0) {
        throw new RuntimeError('qemu_failed', `golden warm-up failed: ${warm.stderr.toString()}`);
      }
      await qmp.execute('migrate-set-capabilities', {
        capabilities: [
          { capability: 'x-ignore-shared', state: true },
          { capability: 'events', state: true },
        ],
      });
      await migrateToFile(qmp, this.#stateUri(at(work).state, 'out'));
      await qmp.execute('quit').catch(() => {});
      await waitExit(pid, 5000);
      for (const f of ['qmp.sock', 'agent.sock']) fs.rmSync(path.join(work, f), { force: true });
      const rec: SnapshotRecord = {
        id,
        vmId: id,
        machine: spec.name,
        diskGiB: this.#image.rootfsGiB,
        accel: this.#accel,
        qemu: this.#qemu,
        imageId: this.#image.imageId,
        cmdline: this.#cmdline,
        memBase: at(final).mem,
        disk: [at(final).disk, this.#image.rootfs],
        state: at(final).state,
        paused: false,
        createdAt: new Date().toISOString(),
      };
      writeJsonAtomic(path.join(work, 'snapshot.json'), rec);
      try {
        fs.renameSync(work, final);
      } catch {
        // Another runtime finished the same golden first; use that one.
        fs.rmSync(work, { recursive: true, force: true });
        const other = readJson<SnapshotRecord>(path.join(final, 'snapshot.json'));
        if (!other) throw new RuntimeError('qemu_failed', `golden ${id} is unreadable`);
        return other;
      }
      return rec;
    } catch (err) {
      fs.rmSync(work, { recursive: true, force: true });
      throw err;
    } finally {
      agent?.close();
      qmp?.close();
      await this.#stopProcess(pid);
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Restore, snapshot

  async #restoreFrom(
    snap: SnapshotRecord,
    id: string,
    hostname: string | undefined,
    networkOption: NetworkOption | undefined,
    snapshotId: string | undefined,
    pooled = false,
  ): Promise<LiveVm> {
    if (this.#vms.has(id) || fs.existsSync(this.#vmDir(id))) {
      throw new RuntimeError('invalid_argument', `VM ${id} already exists`);
    }
    if (snap.accel !== this.#accel) {
      throw new RuntimeError(
        'invalid_argument',
        `snapshot was taken under ${snap.accel}, this host runs ${this.#accel}`,
      );
    }
    if (snap.qemu && snap.qemu !== this.#qemu) {
      throw new RuntimeError(
        'invalid_argument',
        `snapshot was taken by ${snap.qemu}; this host runs ${this.#qemu}`,
      );
    }
    const spec = MACHINES[snap.machine];
    const dir = this.#vmDir(id);
    // A network given now is QEMU's tap from the start; a promised one is plugged in later.
    let network = networkOption instanceof Promise ? undefined : networkOption;
    const later = networkOption instanceof Promise ? networkOption : undefined;
    later?.catch(() => {}); // awaited below; a failure before that must not go unhandled
    this.#starting.add(id);
    fs.mkdirSync(dir, { recursive: true });
    const top = this.#layerPath('disk', '.qcow2');
    const phases = phaseTimer();
    let pid = 0;
    let qmp: QmpClient | undefined;
    let agent: AgentClient | undefined;
    try {
      await this.#newOverlay(top, snap.disk[0]!, snap.diskGiB);
      phases('overlay');
      const memFile = fs.realpathSync(snap.memBase);
      const record: VmRecord = {
        id,
        machine: snap.machine,
        diskGiB: snap.diskGiB,
        accel: this.#accel,
        pid: 0,
        memBase: snap.memBase,
        disk: { top, topNode: 'disk0', chain: snap.disk },
        nodeCounter: 0,
        ...(snapshotId ? { snapshotId } : {}),
        ...(network ? { network } : {}),
        createdAt: new Date().toISOString(),
      };
      writeJsonAtomic(path.join(dir, 'vm.json'), record);
      this.#settle(top);
      const args = qemuArgs({
        accel: this.#accel,
        machine: spec,
        image: this.#image,
        cmdline: snap.cmdline,
        memPath: snap.memBase,
        diskPath: top,
        qmpPath: path.join(dir, 'qmp.sock'),
        agentPath: path.join(dir, 'agent.sock'),
        serialPath: path.join(dir, 'serial.log'),
        tap: network?.tap,
        mac: network?.mac ?? randomMac(),
        incoming: true,
      });
      pid = this.#spawnQemu(dir, args, {
        LD_PRELOAD: this.#image.memshim,
        FASTVM_MEMSHIM_PATH: memFile,
        FASTVM_MEMSHIM_CTL: path.join(dir, 'memshim.sock'),
        // A pool fill yields the CPU to running VMs; launch() renices it (which needs root).
        ...(pooled && process.getuid?.() === 0 ? { FASTVM_MEMSHIM_NICE: String(POOL_NICE) } : {}),
      });
      crashPoint('restore:spawned');
      record.pid = pid;
      writeJsonAtomic(path.join(dir, 'vm.json'), record);
      phases('spawn');
      qmp = await QmpClient.connect(path.join(dir, 'qmp.sock'), { timeoutMs: 10_000 });
      phases('qmp');
      const map = findRamMapping(pid, memFile, spec.memoryMiB * 2 ** 20);
      if (!map.private) {
        throw new RuntimeError(
          'qemu_failed',
          `guest RAM of ${id} is mapped shared (the memshim is not loaded): refusing to run it on ${snap.memBase}`,
        );
      }
      // The agent socket exists as soon as QMP does; connecting early queues our HELLO, which the
      // guest answers the moment it runs.
      const agentP = AgentClient.connect(path.join(dir, 'agent.sock'), { timeoutMs: 30_000 });
      agentP.catch(() => {});
      if (snap.delta) {
        await applyDelta(this.#image.memdelta, pid, map, snap.delta.path);
        phases('delta');
      }
      await qmp.execute('migrate-set-capabilities', {
        capabilities: [
          { capability: 'x-ignore-shared', state: true },
          { capability: 'events', state: true },
        ],
      });
      const done = qmp.waitEvent('MIGRATION', { timeoutMs: 30_000, match: isMigrationEnd });
      await qmp.execute('migrate-incoming', { uri: this.#stateUri(snap.state, 'in') });
      const ev = await done;
      if (ev.data?.status !== 'completed') {
        // QEMU prints why an incoming migration failed on stderr (qemu.log), not over QMP.
        await new Promise((r) => setTimeout(r, 50));
        throw new Error(`migration ${String(ev.data?.status)}`);
      }
      phases('migrate');
      crashPoint('restore:migrated');
      if (snap.paused) await qmp.execute('cont');
      agent = await agentP;
      phases('agent');
      if (later) {
        network = await later;
        if (network) {
          await plugTap(qmp, network.tap);
          record.network = network;
          writeJsonAtomic(path.join(dir, 'vm.json'), record);
        }
        phases('network');
      }
      await agent.setIdentity(freshIdentity(id, hostname, network));
      phases('identity');
      this.#log(`runtime: restored ${id} from ${snap.id}: ${phases.summary()}`);
      const vm: LiveVm = {
        record,
        dir,
        qmp,
        agent,
        exited: false,
        destroying: false,
        busy: Promise.resolve(),
      };
      if (!pooled) {
        this.#supervise(vm);
        this.#vms.set(id, vm);
      }
      return vm;
    } catch (err) {
      agent?.close();
      qmp?.close();
      if (pid) await this.#stopProcess(pid);
      const error = wrap(err, `restore of ${snap.id} into ${id} failed`, dir); // reads qemu.log
      fs.rmSync(dir, { recursive: true, force: true });
      fs.rmSync(top, { force: true });
      this.#settle(top);
      throw error;
    } finally {
      this.#starting.delete(id);
    }
  }

  async #snapshot(vm: LiveVm, snapshotId: string): Promise<SnapshotInfo> {
    if (vm.exited) throw new RuntimeError('not_running', `VM ${vm.record.id} is not running`);
    if (this.#readSnapshot(snapshotId)) {
      throw new RuntimeError('invalid_argument', `snapshot ${snapshotId} already exists`);
    }
    const t0 = performance.now();
    const rec = vm.record;
    const spec = MACHINES[rec.machine];
    const dir = this.#snapDir(snapshotId);
    fs.mkdirSync(dir, { recursive: true });
    const state = path.join(dir, 'state.bin');
    const newTop = this.#layerPath('disk', '.qcow2');
    const deltaPath = this.#layerPath('mem', '.delta');
    const node = `disk${rec.nodeCounter + 1}`;
    await this.#newOverlay(newTop, rec.disk.top, rec.diskGiB);
    const map = findRamMapping(rec.pid, fs.realpathSync(rec.memBase), spec.memoryMiB * 2 ** 20);
    let pauseStart = 0;
    let pauseMs = 0;
    let delta: { runs: number; bytes: number };
    let frozen: { pid: number; release(): void } | undefined;
    try {
      // Intent first: a crash from here on leaves a record that names the new overlay.
      rec.nextTop = newTop;
      writeJsonAtomic(path.join(vm.dir, 'vm.json'), rec);
      crashPoint('snapshot:intent');
      pauseStart = performance.now();
      await vm.qmp.execute('stop');
      // Freeze the disk: the VM continues on a new overlay, the old top becomes read-only.
      await vm.qmp.execute('blockdev-snapshot-sync', {
        'node-name': rec.disk.topNode,
        'snapshot-file': newTop,
        'snapshot-node-name': node,
        format: 'qcow2',
        mode: 'existing',
      });
      crashPoint('snapshot:switched');
      rec.disk = { top: newTop, topNode: node, chain: [rec.disk.top, ...rec.disk.chain] };
      rec.nodeCounter += 1;
      delete rec.nextTop;
      writeJsonAtomic(path.join(vm.dir, 'vm.json'), rec);
      await migrateToFile(vm.qmp, this.#stateUri(state, 'out'));
      crashPoint('snapshot:migrated');
      // Freeze memory: a copy-on-write copy of the process (forked by the memshim) keeps the
      // RAM as it is now, and the VM runs on while the changed pages are copied out of the copy.
      frozen = await memshimFork(path.join(vm.dir, 'memshim.sock'));
      crashPoint('snapshot:frozen');
      await resume(vm.qmp);
      pauseMs = performance.now() - pauseStart;
      delta = await dumpDelta(this.#image.memdelta, frozen.pid, map, deltaPath);
    } catch (err) {
      if (pauseStart && !pauseMs) await vm.qmp.execute('cont').catch(() => {});
      fs.rmSync(dir, { recursive: true, force: true });
      fs.rmSync(deltaPath, { force: true });
      if (rec.nextTop) {
        // The switch itself failed (or its answer was lost): QEMU knows which layer is on top.
        await this.#reconcileDisk(vm).catch(() => {});
        delete rec.nextTop;
      }
      writeJsonAtomic(path.join(vm.dir, 'vm.json'), rec);
      this.#settle(newTop, deltaPath);
      this.#gc();
      throw wrap(err, `snapshot of ${rec.id} failed`, vm.dir);
    } finally {
      frozen?.release();
    }
    writeJsonAtomic(path.join(vm.dir, 'vm.json'), rec);
    const snap: SnapshotRecord = {
      id: snapshotId,
      vmId: rec.id,
      machine: rec.machine,
      diskGiB: rec.diskGiB,
      accel: rec.accel,
      qemu: this.#qemu,
      imageId: this.#image.imageId,
      cmdline: this.#cmdline,
      memBase: rec.memBase,
      delta: { path: deltaPath, bytes: delta.bytes },
      disk: rec.disk.chain,
      state,
      paused: true,
      createdAt: new Date().toISOString(),
    };
    writeJsonAtomic(path.join(dir, 'snapshot.json'), snap);
    crashPoint('snapshot:written');
    this.#settle(newTop, deltaPath);
    this.#startFlatten(snap);
    return {
      id: snapshotId,
      vmId: rec.id,
      machine: rec.machine,
      diskGiB: rec.diskGiB,
      pauseMs,
      totalMs: performance.now() - t0,
    };
  }

  async #growDisk(vm: LiveVm, diskGiB: number): Promise<void> {
    await vm.qmp.execute('block_resize', {
      'node-name': vm.record.disk.topNode,
      size: diskGiB * 2 ** 30,
    });
    crashPoint('disk:resized');
    const r = await vm.agent.exec({ argv: ['resize2fs', '/dev/vda'], timeoutMs: 60_000 });
    if (r.exitCode !== 0) {
      throw new RuntimeError('qemu_failed', `resize2fs failed: ${r.stderr.toString().trim()}`);
    }
    vm.record.diskGiB = diskGiB;
    writeJsonAtomic(path.join(vm.dir, 'vm.json'), vm.record);
  }

  // ---------------------------------------------------------------------------------------------
  // Processes

  /**
   * The migration URI of a device-state file. QEMU 8.2+ reads and writes files itself (`file:`);
   * older ones go through `cat`, which costs a fork of the (large) QEMU process, a few ms of the
   * snapshot pause and of every restore.
   */
  #stateUri(file: string, dir: 'in' | 'out'): string {
    const [major = 0, minor = 0] = (/version (\d+)\.(\d+)/.exec(this.#qemu) ?? [])
      .slice(1)
      .map(Number);
    if (major > 8 || (major === 8 && minor >= 2)) return `file:${file}`;
    return dir === 'in' ? `exec:cat ${shellQuote(file)}` : `exec:cat > ${shellQuote(file)}`;
  }

  #spawnQemu(dir: string, args: string[], env: Record<string, string>): number {
    const log = fs.openSync(path.join(dir, 'qemu.log'), 'a');
    try {
      // Detached, with no pipes to us: VMs outlive a restart of the server and are re-adopted.
      // QEMU is started directly: a wrapper (nice, env, ...) would load the LD_PRELOAD memshim
      // and take its settings, and QEMU would then map guest RAM shared.
      const child = spawn(qemuBinary(this.#accel), args, {
        detached: true,
        stdio: ['ignore', log, log],
        env: { ...process.env, ...env },
      });
      child.on('error', () => {});
      child.unref();
      if (!child.pid) throw new RuntimeError('qemu_failed', 'cannot start qemu-system-x86_64');
      return child.pid;
    } finally {
      fs.closeSync(log);
    }
  }

  #supervise(vm: LiveVm): void {
    const onGone = (reason: string) => {
      if (vm.exited) return;
      vm.exited = true;
      if (vm.destroying) return;
      this.#log(`runtime: VM ${vm.record.id} exited unexpectedly: ${reason}`);
      this.#events.emit('exit', vm.record.id, reason);
    };
    // QMP closes exactly when QEMU exits (or is killed).
    vm.qmp.on('close', () => onGone('qemu exited'));
    vm.qmp.on('event', (e: QmpEvent) => {
      if (e.event === 'SHUTDOWN' || e.event === 'GUEST_PANICKED')
        onGone(`guest ${e.event.toLowerCase()}`);
    });
  }

  /** Soft (QMP quit) then hard (SIGKILL) stop of a QEMU process. */
  async #stopProcess(pid: number, qmp?: QmpClient): Promise<void> {
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

  // ---------------------------------------------------------------------------------------------
  // Storage

  #vmDir(id: string): string {
    return path.join(this.dataDir, 'vms', id);
  }

  #snapDir(id: string): string {
    return path.join(this.dataDir, 'snapshots', id);
  }

  /**
   * Create a qcow2 overlay on `backing` (a qcow2 layer). The first overlay on a layer is made by
   * qemu-img and kept as a template; later ones are a copy of it (~1 ms instead of ~15 ms).
   */
  async #newOverlay(file: string, backing: string, gib: number): Promise<void> {
    const tmpl = path.join(
      this.dataDir,
      'templates',
      `${path.basename(backing, '.qcow2')}-${crypto.createHash('sha256').update(backing).digest('hex').slice(0, 8)}-${gib}.qcow2`,
    );
    if (!fs.existsSync(tmpl)) {
      const tmp = `${tmpl}.${crypto.randomUUID()}`;
      await qemuImgCreate(tmp, backing, 'qcow2', gib);
      fs.renameSync(tmp, tmpl);
    }
    fs.copyFileSync(tmpl, file);
  }

  /** A new layer file path, protected from the sweeper until `#settle`. */
  #layerPath(kind: 'disk' | 'mem', ext: string): string {
    const p = path.join(this.dataDir, 'layers', kind, crypto.randomUUID() + ext);
    this.#pending.add(p);
    return p;
  }

  #settle(...paths: string[]): void {
    for (const p of paths) this.#pending.delete(p);
  }

  #pin(paths: string[], delta: 1 | -1): void {
    for (const p of paths) {
      const n = (this.#pins.get(p) ?? 0) + delta;
      if (n > 0) this.#pins.set(p, n);
      else this.#pins.delete(p);
    }
  }

  /**
   * Merge a snapshot's delta into a standalone base file in the background, then point the
   * snapshot at it: later restores map it directly and share its pages instead of each copying the
   * delta into private memory.
   */
  #startFlatten(snap: SnapshotRecord): void {
    const delta = snap.delta;
    if (!delta) return;
    const out = this.#layerPath('mem', '.mem');
    const job = (async () => {
      const t0 = performance.now();
      await flattenDelta(this.#image.memdelta, snap.memBase, delta.path, out);
      const current = this.#readSnapshot(snap.id);
      if (!current?.delta) return; // deleted meanwhile; the sweeper removes `out`
      const { delta: _merged, ...rest } = current;
      writeJsonAtomic(path.join(this.#snapDir(snap.id), 'snapshot.json'), {
        ...rest,
        memBase: out,
      });
      this.#log(
        `runtime: flattened ${snap.id} (${delta.bytes >> 20} MiB delta) in ${(performance.now() - t0).toFixed(0)} ms`,
      );
    })()
      .catch((err: unknown) => this.#log(`runtime: flatten of ${snap.id} failed: ${String(err)}`))
      .finally(() => {
        this.#settle(out);
        this.#flattening.delete(snap.id);
        this.#gc();
      });
    this.#flattening.set(snap.id, job);
  }

  #readVm(id: string): VmRecord | undefined {
    return readJson<VmRecord>(path.join(this.#vmDir(id), 'vm.json'));
  }

  #readSnapshot(id: string): SnapshotRecord | undefined {
    if (!ID_RE.test(id)) return undefined;
    return readJson<SnapshotRecord>(path.join(this.#snapDir(id), 'snapshot.json'));
  }

  /**
   * Mark and sweep: a layer file lives while a VM directory or a snapshot record names it.
   * Deleting a snapshot therefore never breaks a fork or a later snapshot built on it.
   */
  #gc(): void {
    const live = new Set<string>([...this.#pending, ...this.#pins.keys()]);
    for (const id of fs.readdirSync(path.join(this.dataDir, 'vms'))) {
      const rec = this.#readVm(id);
      if (!rec) continue;
      live.add(rec.memBase).add(rec.disk.top);
      rec.disk.chain.forEach((l) => live.add(l));
      if (rec.nextTop) live.add(rec.nextTop);
    }
    for (const id of fs.readdirSync(path.join(this.dataDir, 'snapshots'))) {
      const s = this.#readSnapshot(id);
      if (!s) continue;
      live.add(s.memBase);
      s.disk.forEach((l) => live.add(l));
      if (s.delta) live.add(s.delta.path);
    }
    // Overlay templates go with the layer they are made for (goldens' layers are never swept).
    const templates = path.join(this.dataDir, 'templates');
    for (const f of fs.readdirSync(templates)) {
      const layer = path.join(
        this.dataDir,
        'layers',
        'disk',
        `${f.split('-').slice(0, 5).join('-')}.qcow2`,
      );
      const golden = f.startsWith('disk-');
      if (!golden && !live.has(layer)) fs.rmSync(path.join(templates, f), { force: true });
    }
    for (const kind of ['disk', 'mem']) {
      const dir = path.join(this.dataDir, 'layers', kind);
      for (const f of fs.readdirSync(dir)) {
        const p = path.join(dir, f);
        if (!live.has(p)) fs.rmSync(p, { force: true });
      }
    }
  }

  #live(vmId: string): LiveVm {
    const vm = this.#vms.get(vmId);
    if (!vm) throw new RuntimeError('not_found', `VM ${vmId} not found`);
    if (vm.exited) throw new RuntimeError('not_running', `VM ${vmId} is not running`);
    if (vm.record.paused) throw new RuntimeError('not_running', `VM ${vmId} is paused`);
    return vm;
  }

  #info(vm: LiveVm): VmInfo {
    const spec = MACHINES[vm.record.machine];
    return {
      id: vm.record.id,
      machine: vm.record.machine,
      vcpus: spec.vcpus,
      memoryMiB: spec.memoryMiB,
      diskGiB: vm.record.diskGiB,
      state: vm.exited ? 'stopped' : vm.record.paused ? 'paused' : 'running',
      pid: vm.record.pid,
      ...(vm.record.snapshotId ? { snapshotId: vm.record.snapshotId } : {}),
    };
  }
}

// -----------------------------------------------------------------------------------------------
// Helpers

/** Records the time since the previous mark under a name; `summary()` lists them. */
function phaseTimer(): ((name: string) => void) & { summary(): string } {
  let last = performance.now();
  const parts: string[] = [];
  const mark = (name: string) => {
    const now = performance.now();
    parts.push(`${name} ${(now - last).toFixed(1)}`);
    last = now;
  };
  return Object.assign(mark, { summary: () => parts.join(', ') + ' ms' });
}

/**
 * Ask a VM's memshim for a frozen copy-on-write copy of the QEMU process. The copy lives until
 * `release()` hangs up (or this process dies), then the memshim kills and reaps it.
 */
function memshimFork(ctl: string): Promise<{ pid: number; release(): void }> {
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

function checkId(id: string): void {
  if (!ID_RE.test(id))
    throw new RuntimeError('invalid_argument', `invalid id ${JSON.stringify(id)}`);
}

function isMigrationEnd(e: QmpEvent): boolean {
  const s = e.data?.status;
  return s === 'completed' || s === 'failed' || s === 'cancelled';
}

/**
 * `cont` after an outgoing migration. QEMU emits the `completed` event a moment before it leaves
 * the finish-migrate run state, and refuses `cont` until then.
 */
async function resume(qmp: QmpClient): Promise<void> {
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

/** Migrate device state (RAM is skipped: x-ignore-shared) to `uri` (see `#stateUri`). */
async function migrateToFile(qmp: QmpClient, uri: string): Promise<void> {
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

async function qemuImgCreate(
  file: string,
  backing: string,
  backingFmt: 'raw' | 'qcow2',
  gib: number,
) {
  await execFileP('qemu-img', [
    'create',
    '-q',
    '-f',
    'qcow2',
    '-u',
    '-F',
    backingFmt,
    '-b',
    backing,
    file,
    `${gib}G`,
  ]);
}

function shellQuote(s: string): string {
  return `'${s.replaceAll("'", "'\\''")}'`;
}

function randomMac(): string {
  const b = crypto.randomBytes(5);
  return ['02', ...[...b].map((x) => x.toString(16).padStart(2, '0'))].join(':');
}

/** What makes a VM (launched, restored or taken from the pool) itself and not its source. */
function freshIdentity(id: string, hostname: string | undefined, network: VmNetwork | undefined) {
  return {
    hostname: hostname ?? `vm-${id.slice(0, 8)}`,
    machineId: crypto.randomBytes(16).toString('hex'),
    clockNs: BigInt(Date.now()) * 1_000_000n,
    entropy: crypto.randomBytes(64),
    ...(network ? { net: [netLine(network)], routes: routeLines(network) } : {}),
  };
}

function netLine(n: VmNetwork): string {
  return ['eth0', n.mac, n.ipv6, n.ipv4].filter(Boolean).join(' ');
}

function routeLines(n: VmNetwork): string[] {
  const r: string[] = [];
  if (n.ipv6Gateway) r.push(`-6 default via ${n.ipv6Gateway} dev eth0`);
  if (n.ipv4Gateway) r.push(`default via ${n.ipv4Gateway} dev eth0`);
  return r;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  // A zombie child is dead for our purposes.
  try {
    return !/^\d+ \(.*\) Z/.test(fs.readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

/** Sets the nice value of every thread of a process (Linux keeps it per thread). */
function reniceProcess(pid: number, nice: number): void {
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

/** Connects a tap to the NIC of a VM started with its NIC on QEMU hub 0 (no `tap` at start). */
async function plugTap(qmp: QmpClient, tap: string): Promise<void> {
  await qmp.execute('netdev_add', {
    type: 'tap',
    id: 'tap0',
    ifname: tap,
    script: 'no',
    downscript: 'no',
  });
  await qmp.execute('netdev_add', { type: 'hubport', id: 'hp1', hubid: 0, netdev: 'tap0' });
}

/**
 * The VM directory name under `<dataDir>/vms/` that QEMU process `pid` runs from (its QMP socket
 * path), or undefined when `pid` is not a QEMU of that data dir.
 */
function qemuDirOf(pid: number, dataDir: string): string | undefined {
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

/** Whether `pid` is the QEMU process named `name` (`-name`; not a recycled pid). */
function isQemuOf(pid: number, name: string): boolean {
  try {
    const argv = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    const i = argv.indexOf('-name');
    return alive(pid) && i >= 0 && argv[i + 1] === name;
  } catch {
    return false;
  }
}

async function waitExit(pid: number, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (!alive(pid)) return true;
    await new Promise((r) => setTimeout(r, 10));
  }
  return !alive(pid);
}

function readJson<T>(file: string): T | undefined {
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8')) as T;
  } catch {
    return undefined;
  }
}

function writeJsonAtomic(file: string, value: unknown): void {
  const tmp = `${file}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, JSON.stringify(value, null, 2));
  fs.renameSync(tmp, file);
}

function wrap(err: unknown, what: string, dir: string): Error {
  if (err instanceof RuntimeError) return err;
  let tail = '';
  try {
    tail = fs.readFileSync(path.join(dir, 'qemu.log'), 'utf8').slice(-500);
  } catch {
    /* no log */
  }
  return new RuntimeError(
    'qemu_failed',
    `${what}: ${String(err)}${tail ? `\nqemu: ${tail}` : ''}`,
    {
      cause: err,
    },
  );
}
