/**
 * QemuRuntime: real microVMs on QEMU `microvm`, as a thin coordinator over parts with one job
 * each (see docs/ARCHITECTURE.md, "Runtime"):
 *
 *   golden.ts     golden-image cache (every VM is a restore of its machine type's golden)
 *   pool.ts       warm pool of restored, warmed-up VMs for launch()
 *   restore.ts    restoring a snapshot into a new VM      snapshot.ts   snapshots, disk growth
 *   layers.ts     layer store: paths, overlays, pins, flatten, GC    records.ts   vm/snapshot.json
 *   process.ts    QEMU processes: spawn, stop, recognise   vm-state.ts  one live VM and its state
 *
 * This file holds the public API, the data-dir lock, supervision and adoption after a restart.
 * @module
 */
import { EventEmitter } from 'node:events';
import { readFileSync } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { AgentClient } from './agent-client.js';
import { Confinement, type ConfineOptions } from './confine.js';
import { crashPoint } from './crash-points.js';
import { GoldenCache, cachedAccel, cachedTscKhz } from './golden.js';
import { syncClock } from './identity.js';
import { LayerStore, type MemoryChainLimits } from './layers.js';
import { WarmPool } from './pool.js';
import { alive, isQemuOf, qemuDirOf, qemusOf, stopProcess } from './process.js';
import {
  type Accel,
  type GuestImage,
  defaultCacheDir,
  kernelCmdline,
  loadGuestImage,
  qemuBinary,
  qemuVersion,
} from './qemu.js';
import { PacedInput } from './paced-input.js';
import { QmpClient, type QmpEvent } from './qmp.js';
import {
  checkId,
  type MemView,
  type SnapshotRecord,
  snapshotDeltas,
  snapshotMemFiles,
} from './records.js';
import { SnapshotDigester } from './digests.js';
import {
  exportSnapshot,
  importSnapshot,
  openSnapshotFile,
  type MobilityContext,
} from './mobility.js';
import { restoreVm, type RestoreContext, type RestoreTarget } from './restore.js';
import { checkBaseImage } from './base-image.js';
import { growDisk, reconcileDisk, snapshotVm, type SnapshotContext } from './snapshot.js';
import {
  type AdoptResult,
  DEFAULT_DISK_GIB,
  type ExecRequest,
  type ExecResult,
  type LaunchOptions,
  MACHINES,
  type MachineType,
  type NetworkClaim,
  type NetworkOption,
  type PoolNetwork,
  type ProcessRequest,
  type ProcessSession,
  type PtyRequest,
  type PtySession,
  type RestoreOptions,
  type Runtime,
  RuntimeError,
  type SnapshotDigests,
  type SnapshotFileFetch,
  type SnapshotImportResult,
  type SnapshotInfo,
  type SnapshotManifest,
  type VmInfo,
  type VmNetwork,
  type VolumeAttachRequest,
} from './types.js';
import { TapfdHelper } from './helper.js';
import { plugTap } from './tap-handover.js';
import { LiveVm } from './vm-state.js';
import type { Readable } from 'node:stream';
import { attachVolume, attachedVolumes, detachVolume, growVolume } from './volumes.js';

/** Whether a memshim build has what a confined QEMU needs (its read-only open of the memory file). */
function memshimConfines(file: string): boolean {
  try {
    return readFileSync(file).includes('FASTVM_MEMSHIM_NODUMP');
  } catch {
    return false; // missing: restores refuse to run the guest (its RAM would be shared)
  }
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
  /**
   * Confinement of QEMU (its own user, seccomp sandbox, a cgroup per VM; see confine.ts): on
   * when the runtime is root, unless `FASTVM_CONFINE=off`; `false` turns it off here. The
   * limits can be changed (tests).
   */
  readonly confine?: false | ConfineOptions;
  readonly log?: (msg: string) => void;
  /**
   * When a snapshot's memory (a delta over its parent's) is flattened or its chain merged; see
   * `MemoryChainLimits`. Defaults suit production; tests lower them.
   */
  readonly memoryChain?: MemoryChainLimits;
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
  readonly #opts: QemuRuntimeOptions;
  #image!: GuestImage;
  #accel!: Accel;
  #qemu!: string;
  #cmdline!: string;
  #layers!: LayerStore;
  #goldens!: GoldenCache;
  #pool!: WarmPool;
  #digests!: SnapshotDigester;
  #confine: Confinement | undefined;
  /** Starts confined QEMUs and hands them taps (helper.ts); undefined when unconfined. */
  #helper: TapfdHelper | undefined;
  /** Ports for pool VMs (`setPoolNetwork`). */
  #poolNetwork: PoolNetwork | undefined;
  /** Volume files being opened by a confined QEMU (`#openForQemu`), by path. */
  readonly #opening = new Map<string, Promise<void>>();
  readonly #vms = new Map<string, LiveVm>();
  /** Ids of VMs being made right now (not registered yet): adopt() must not take them. */
  readonly #starting = new Set<string>();
  readonly #events = new EventEmitter<{ exit: [string, string] }>();
  /** Imports in progress, by snapshot id (concurrent imports of one snapshot share one). */
  readonly #imports = new Map<string, Promise<SnapshotImportResult>>();
  #locked = false;

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

  /** QEMU's confinement, or undefined when QEMU runs unconfined as the server's user. */
  get confinement(): Confinement | undefined {
    return this.#confine;
  }

  /** `qemu --version` of the QEMU this runtime runs. */
  get qemuVersion(): string {
    return this.#qemu;
  }

  /** Load the image, pick the accelerator, create directories, start prewarming goldens. */
  async init(): Promise<void> {
    this.#image = this.#opts.image ?? loadGuestImage();
    await fs.mkdir(this.dataDir, { recursive: true });
    await fs.mkdir(this.goldenDir, { recursive: true });
    await this.#lock();
    this.#layers = new LayerStore(
      this.dataDir,
      this.#image.memdelta,
      this.#log,
      this.#opts.memoryChain,
    );
    // A VM whose memory view is a snapshot just flattened or merged moves onto the new file, so
    // that the files it replaced can go (a VM snapshotted every step keeps one chain alive); the
    // snapshot's digests are computed again for it.
    this.#layers.onConsolidated = async (snapshotId, before, after) => {
      const same = (v: MemView | undefined) =>
        v !== undefined &&
        [v.memBase, ...v.deltas.map((d) => d.path)].join('\n') === before.join('\n');
      await Promise.all(
        [...this.#vms.values()]
          .filter((vm) => vm.record.memView?.snapshotId === snapshotId)
          .map((vm) =>
            vm.serially(async () => {
              if (!same(vm.record.memView) || vm.gone) return;
              vm.record.memView = { snapshotId, ...after };
              await this.#layers.writeVm(vm.dir, vm.record);
            }),
          ),
      ).catch(() => {});
      // Digests of the new file (none at start-up yet: `resume` below finds the snapshot).
      this.#digests?.forget(snapshotId);
      this.#digests?.start(snapshotId);
    };
    await this.#layers.init();
    this.#initConfinement();
    this.#digests = new SnapshotDigester(this.#layers, this.#log);
    // Snapshots whose digest job a restart cut short get theirs now, one at a time.
    this.#digests.resume(await fs.readdir(path.join(this.dataDir, 'snapshots')));
    this.#accel = this.#opts.accel ?? (await cachedAccel(this.goldenDir, this.#image));
    this.#cmdline = kernelCmdline(await cachedTscKhz(this.goldenDir));
    this.#qemu = qemuVersion(qemuBinary(this.#accel));
    this.#log(`runtime: accel=${this.#accel} image=${this.#image.imageId} ${this.#qemu}`);
    this.#goldens = new GoldenCache({
      goldenDir: this.goldenDir,
      image: this.#image,
      accel: this.#accel,
      cmdline: this.#cmdline,
      qemu: this.#qemu,
      log: this.#log,
    });
    this.#pool = new WarmPool(
      this.#opts.pool ?? 0,
      this.#layers,
      {
        golden: (m) => this.#goldens.get(m),
        // With a port of its own when the host's networking gives one (`setPoolNetwork`).
        restore: async (golden, id) => {
          const pool = this.#poolNetwork;
          const network = pool?.reserve(id).catch((err: unknown) => {
            this.#log(`runtime: no port for pooled VM ${id}: ${String(err)}`);
            return undefined;
          });
          try {
            return await this.#restore(golden, { id, pooled: true, network });
          } catch (err) {
            if (pool) await pool.release(id).catch(() => {});
            throw err;
          }
        },
        discard: async (vm) => {
          await this.#discard(vm);
          // Its port, unless a launch took it along (then released with that VM).
          if (vm.record.network) {
            await this.#poolNetwork?.release(vm.record.qemuName ?? vm.id).catch(() => {});
          }
        },
        plug: (vm, tap) => plugTap(vm.qmp, vm.dir, tap, this.#helper),
      },
      this.#log,
    );
    for (const m of this.#opts.prewarm ?? []) {
      this.#goldens.get(m).then(
        () => this.#pool.fill(m),
        (err: unknown) => this.#log(`runtime: golden ${m} failed: ${String(err)}`),
      );
    }
  }

  /** Confinement on (user, dirs QEMU must reach, cgroup slice) or off with the reason. */
  #initConfinement(): void {
    const c =
      this.#opts.confine === false ? 'off by option' : Confinement.create(this.#opts.confine);
    if (typeof c === 'string') {
      this.#log(`runtime: QEMU runs unconfined: ${c}`);
      return;
    }
    // A confined QEMU needs the memshim's read-only open of the memory file (built by setup).
    if (!memshimConfines(this.#image.memshim)) {
      this.#log(
        `runtime: QEMU runs unconfined: ${this.#image.memshim} predates confinement; run \`npm run setup\``,
      );
      return;
    }
    // It cannot open a tap: the helper starts it with the descriptor (helper.ts, tap-handover.ts).
    if (!this.#image.tapfd) {
      this.#log('runtime: QEMU runs unconfined: no fastvm-tapfd in the cache; run `npm run setup`');
      return;
    }
    this.#confine = c;
    this.#helper = new TapfdHelper(this.#image.tapfd);
    // QEMU opens the image, the goldens and the layers by path: every directory on the way must
    // be searchable (not listable) by its user.
    c.searchable(
      [
        path.dirname(this.#image.kernel),
        path.dirname(this.#image.rootfs),
        this.goldenDir,
        ...['vms', 'snapshots', 'layers/disk', 'layers/mem', 'bases'].map((d) =>
          path.join(this.dataDir, d),
        ),
      ],
      this.#log,
    );
    // Other VMs' files are reached by name only: the directories are not listable.
    for (const d of ['vms', 'snapshots', 'layers/disk', 'layers/mem']) {
      fs.chmod(path.join(this.dataDir, d), 0o711).catch(() => {});
    }
    c.cgroups?.sweep();
    this.#log(
      `runtime: QEMU confined: user uid ${c.user.uid}, seccomp sandbox, ` +
        (c.cgroups
          ? `cgroup v${c.cgroups.version} ${c.cgroups.slices.join(' ')}`
          : `no cgroups (${c.cgroupsMissing})`),
    );
  }

  /**
   * Take the data dir: two runtimes sweeping the same layers would delete each other's files. A
   * lock left by a dead process (kill -9) is taken over.
   */
  async #lock(): Promise<void> {
    const file = path.join(this.dataDir, 'runtime.lock');
    for (;;) {
      try {
        await fs.writeFile(file, String(process.pid), { flag: 'wx' });
        this.#locked = true;
        return;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      }
      const owner = parseInt(await fs.readFile(file, 'utf8').catch(() => ''), 10);
      if (owner > 0 && owner !== process.pid && alive(owner)) {
        throw new RuntimeError(
          'invalid_argument',
          `data dir ${this.dataDir} is in use by pid ${owner}`,
        );
      }
      await fs.rm(file, { force: true });
    }
  }

  async #unlock(): Promise<void> {
    if (!this.#locked) return;
    this.#locked = false;
    await fs.rm(path.join(this.dataDir, 'runtime.lock'), { force: true });
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
    const base = opts.baseImage;
    if (base) checkBaseImage(base);
    let golden: SnapshotRecord;
    if (base) {
      this.#grantBase(base.rootfsPath);
      // Built (a cold boot) before the id is claimed: a base that does not boot leaves nothing.
      golden = await this.#goldens.get(opts.machine, base);
      if (diskGiB < golden.diskGiB) {
        throw new RuntimeError(
          'invalid_argument',
          `diskGiB must be at least ${golden.diskGiB} for ${base.id}`,
        );
      }
      await this.#claim(opts.id);
    } else {
      [golden] = await Promise.all([this.#goldens.get(opts.machine), this.#claim(opts.id)]);
    }
    let vm: LiveVm;
    try {
      // The warm pool holds VMs of the platform's image only: a base image restores its golden.
      // A claim is called once: by the pool, or here for a restore.
      const claim = typeof opts.network === 'function' ? once(opts.network) : undefined;
      const pooled = base
        ? undefined
        : await this.#pool.take(opts.machine, opts.id, opts.hostname, claim ?? opts.network);
      vm =
        pooled ??
        (await this.#restore(golden, {
          id: opts.id,
          hostname: opts.hostname,
          network: claim ? claim(undefined) : (opts.network as NetworkOption | undefined),
        }));
      this.#register(vm);
    } finally {
      this.#starting.delete(opts.id);
    }
    if (!base) this.#pool.fill(opts.machine);
    if (diskGiB > golden.diskGiB) await vm.serially(() => growDisk(this.#layers, vm, diskGiB));
    return this.#info(vm);
  }

  setPoolNetwork(pool: PoolNetwork | undefined): void {
    this.#poolNetwork = pool;
  }

  /** A confined QEMU opens a base image's file (the end of a disk chain) by path. */
  #grantBase(file: string): void {
    if (!this.#confine) return;
    this.#confine.searchable([path.dirname(file)], this.#log);
    this.#confine.readable(file);
  }

  async restore(opts: RestoreOptions): Promise<VmInfo> {
    checkId(opts.id);
    let snap = await this.#layers.readSnapshot(opts.snapshotId);
    if (!snap) {
      throw new RuntimeError('snapshot_not_found', `snapshot ${opts.snapshotId} not found`);
    }
    // Deltas this large are being flattened: wait, so that forks share the flattened pages
    // instead of each copying the deltas.
    const flattening = this.#layers.flattening(snap.id);
    const bytes = snapshotDeltas(snap).reduce((n, d) => n + d.bytes, 0);
    if (flattening && bytes > this.#layers.flattenBytes) {
      await flattening;
      snap = (await this.#layers.readSnapshot(opts.snapshotId)) ?? snap;
    }
    // Pinned, then read again: a flatten or merge may have switched the record (and the sweeper
    // taken the old files) before the pin.
    let pinned: string[];
    for (;;) {
      pinned = [...snapshotMemFiles(snap), snap.state, ...snap.disk];
      this.#layers.pin(pinned, 1);
      const again = await this.#layers.readSnapshot(opts.snapshotId);
      if (!again || snapshotMemFiles(again).join('\n') === snapshotMemFiles(snap).join('\n')) break;
      this.#layers.pin(pinned, -1);
      snap = again;
    }
    try {
      if (snap.baseImage) this.#grantBase(snap.disk[snap.disk.length - 1]!);
      // Refuse corrupted layers before QEMU maps them (cached: one hash per file per runtime).
      await this.#digests.verify(snap);
      await this.#claim(opts.id);
      try {
        const vm = await this.#restore(snap, {
          id: opts.id,
          hostname: opts.hostname,
          network: opts.network,
          snapshotId: snap.id,
        });
        this.#register(vm);
        this.#layers.restored(snap);
        return this.#info(vm);
      } finally {
        this.#starting.delete(opts.id);
      }
    } finally {
      this.#layers.pin(pinned, -1);
    }
  }

  async snapshot(vmId: string, snapshotId: string): Promise<SnapshotInfo> {
    checkId(snapshotId);
    const vm = this.#live(vmId);
    const info = await vm.serially(() => snapshotVm(this.#snapshotContext(), vm, snapshotId));
    // Off the hot path: the snapshot is ready now; its digests follow in the background.
    this.#digests.start(snapshotId);
    return info;
  }

  async exec(vmId: string, req: ExecRequest): Promise<ExecResult> {
    return (await this.#identified(vmId)).agent.exec(req);
  }

  /** An interactive command on a new pty in the guest (the console); see `Runtime.openPty`. */
  async openPty(vmId: string, req: PtyRequest): Promise<PtySession> {
    return (await this.#identified(vmId)).agent.spawn({
      argv: req.argv,
      ...(req.env ? { env: req.env } : {}),
      ...(req.cwd !== undefined ? { cwd: req.cwd } : {}),
      pty: { rows: req.rows, cols: req.cols },
      onStdout: req.onData,
      ...(req.onError ? { onError: req.onError } : {}),
    });
  }

  /** A command with open stdin and separate output streams (SSH exec); see `Runtime.openProcess`. */
  async openProcess(vmId: string, req: ProcessRequest): Promise<ProcessSession> {
    const { agent } = await this.#identified(vmId);
    // Refusals of input (the agent's queue is full) belong to the pacer, made once it runs.
    const pacer: { input?: PacedInput } = {};
    const proc = await agent.spawn({
      argv: req.argv,
      ...(req.env ? { env: req.env } : {}),
      ...(req.cwd !== undefined ? { cwd: req.cwd } : {}),
      stdinOpen: true,
      onStdout: req.onStdout,
      onStderr: req.onStderr,
      onError: (err) => {
        if (!pacer.input?.onAgentError(err)) req.onError?.(err);
      },
    });
    const paced = new PacedInput(proc, {
      ping: () => agent.ping(),
      ...(req.onInputDrain ? { onDrain: req.onInputDrain } : {}),
    });
    pacer.input = paced;
    void proc.exited.finally(() => paced.stop()).catch(() => {});
    return {
      get pid() {
        return proc.pid;
      },
      exited: proc.exited,
      write: (data) => paced.write(data),
      end: () => paced.end(),
      kill: (signal) => proc.kill(signal),
      pauseOutput: () => proc.pauseOutput(),
      resumeOutput: () => proc.resumeOutput(),
      close: (graceMs) => {
        paced.stop();
        proc.close(graceMs);
      },
    };
  }

  async destroy(vmId: string): Promise<void> {
    const vm = this.#vms.get(vmId);
    if (vm) {
      if (vm.can('destroying')) vm.to('destroying');
      await stopProcess(vm.record.pid, vm.qmp);
      this.#confine?.release(vm.record.pid);
      crashPoint('destroy:stopped');
      vm.agent.close();
      vm.qmp.close();
      this.#vms.delete(vmId);
    } else {
      const rec = await this.#layers.readVm(vmId);
      if (rec && this.#isOurQemu(rec.pid)) await stopProcess(rec.pid);
      if (rec) this.#confine?.release(rec.pid);
    }
    await fs.rm(this.#layers.vmDir(vmId), { recursive: true, force: true });
    await this.#layers.gc();
  }

  async deleteSnapshot(snapshotId: string): Promise<void> {
    this.#digests.forget(snapshotId);
    // A background writer of its record (the digest job, a flatten) may be renaming a file into
    // the dir right now: ENOTEMPTY is retried (a write after that fails: the dir is gone).
    await fs.rm(this.#layers.snapDir(snapshotId), {
      recursive: true,
      force: true,
      maxRetries: 5,
      retryDelay: 50,
    });
    await this.#layers.gc();
  }

  async hasSnapshot(snapshotId: string): Promise<boolean> {
    return (await this.#layers.readSnapshot(snapshotId)) !== undefined;
  }

  snapshotDigests(snapshotId: string): Promise<SnapshotDigests | undefined> {
    return this.#digests.get(snapshotId);
  }

  // ---------------------------------------------------------------------------------------------
  // Snapshot mobility (mobility.ts): export, serve and import snapshots between hosts.

  exportSnapshot(
    snapshotId: string,
    opts?: { haveGoldens?: readonly string[] },
  ): Promise<SnapshotManifest> {
    return exportSnapshot(this.#mobility(), snapshotId, opts);
  }

  openSnapshotFile(snapshotId: string, name: string): Promise<Readable> {
    return openSnapshotFile(this.#mobility(), snapshotId, name);
  }

  importSnapshot(
    manifest: SnapshotManifest,
    fetch: SnapshotFileFetch,
    opts?: { signal?: AbortSignal },
  ): Promise<SnapshotImportResult> {
    const id = String(manifest?.snapshotId);
    let run = this.#imports.get(id);
    if (!run) {
      run = importSnapshot(this.#mobility(), manifest, fetch, opts).finally(() =>
        this.#imports.delete(id),
      );
      this.#imports.set(id, run);
    }
    return run;
  }

  async goldenIds(): Promise<string[]> {
    const out: string[] = [];
    for (const name of await fs.readdir(this.goldenDir).catch(() => [] as string[])) {
      if (!name.startsWith('golden-')) continue;
      if (
        await fs.access(path.join(this.goldenDir, name, 'snapshot.json')).then(
          () => true,
          () => false,
        )
      ) {
        out.push(name);
      }
    }
    return out;
  }

  #mobility(): MobilityContext {
    return {
      layers: this.#layers,
      digests: this.#digests,
      goldenDir: this.goldenDir,
      image: this.#image,
      accel: this.#accel,
      qemu: this.#qemu,
      log: this.#log,
      confine: this.#confine,
    };
  }

  /** Waits for a snapshot's background flatten or merge, if one runs (tests, benches). */
  async memorySettled(snapshotId: string): Promise<void> {
    await this.#layers.flattening(snapshotId);
  }

  /** Waits for a snapshot's background digest job, if one runs (tests, benches). */
  async digestsSettled(snapshotId: string): Promise<void> {
    await this.#digests.pending(snapshotId);
  }

  get(vmId: string): VmInfo | undefined {
    const vm = this.#vms.get(vmId);
    return vm ? this.#info(vm) : undefined;
  }

  /** How many warm VMs of a machine type are waiting in the pool. */
  poolReady(machine: MachineType): number {
    return this.#pool.ready(machine);
  }

  /** The VMs this runtime supervises. */
  list(): VmInfo[] {
    return [...this.#vms.values()].map((vm) => this.#info(vm));
  }

  // ---------------------------------------------------------------------------------------------
  // Pause / resume (QMP stop / cont). The QEMU process and the guest's memory stay; a stopped
  // vCPU uses no host CPU. The state is recorded in vm.json, so adoption keeps a paused VM paused.

  async pause(vmId: string): Promise<void> {
    const vm = this.#vms.get(vmId);
    if (!vm || vm.gone) throw new RuntimeError('not_found', `VM ${vmId} is not running`);
    return vm.serially(async () => {
      if (vm.state === 'paused') return;
      await vm.qmp.execute('stop');
      // Its commands stand still: so do the host's backstops on them.
      vm.agent.freeze();
      crashPoint('pause:stopped');
      vm.to('paused');
      vm.record.paused = true;
      await this.#layers.writeVm(vm.dir, vm.record);
    });
  }

  async resume(vmId: string): Promise<void> {
    const vm = this.#vms.get(vmId);
    if (!vm || vm.gone) throw new RuntimeError('not_found', `VM ${vmId} is not running`);
    return vm.serially(async () => {
      if (vm.state !== 'paused') return;
      await vm.qmp.execute('cont');
      vm.agent.thaw();
      vm.to('running');
      vm.record.paused = false;
      await this.#layers.writeVm(vm.dir, vm.record);
      // The guest clock stood still while stopped; set it again (best effort).
      await syncClock(vm.agent, { timeoutMs: 5000 }).catch((err: unknown) =>
        this.#log(`runtime: clock sync of ${vmId} failed: ${String(err)}`),
      );
    });
  }

  // ---------------------------------------------------------------------------------------------
  // Volumes (volumes.ts): SCSI disks hot-added to the VM's virtio-scsi controller, mounted by
  // the agent. Serial with snapshots, so a snapshot's device state and record agree.

  async attachVolume(vmId: string, req: VolumeAttachRequest): Promise<void> {
    const vm = this.#live(vmId);
    await vm.serially(async () => {
      if (vm.state !== 'running')
        throw new RuntimeError('not_running', `VM ${vmId} is not running`);
      await attachVolume(this.#layers, vm, req, (file, open) => this.#openForQemu(file, open));
    });
  }

  /**
   * Runs `open` (a QMP call that makes QEMU open `file`) with the file handed to QEMU's user for
   * just that long: root-owned and 0600 again once QEMU holds its descriptor, so no QEMU can
   * open a volume it was not given. One open of a file at a time: two VMs attaching the same
   * read-only volume must not take it back from each other mid-open.
   */
  async #openForQemu(file: string, open: () => Promise<void>): Promise<void> {
    const confine = this.#confine;
    if (!confine) return open();
    const before = this.#opening.get(file) ?? Promise.resolve();
    const turn = before
      .catch(() => {})
      .then(async () => {
        confine.searchable([path.dirname(file)], this.#log);
        await confine.grant(file);
        try {
          await open();
        } finally {
          await confine.seal(0o600, file);
        }
      });
    this.#opening.set(file, turn);
    try {
      await turn;
    } finally {
      if (this.#opening.get(file) === turn) this.#opening.delete(file);
    }
  }

  async detachVolume(vmId: string, volumeId: string): Promise<void> {
    const vm = this.#live(vmId);
    await vm.serially(async () => {
      if (vm.state !== 'running')
        throw new RuntimeError('not_running', `VM ${vmId} is not running`);
      await detachVolume(this.#layers, vm, volumeId);
    });
  }

  async growVolume(vmId: string, volumeId: string, sizeGiB: number): Promise<void> {
    const vm = this.#live(vmId);
    await vm.serially(() => growVolume(this.#layers, vm, volumeId, sizeGiB));
  }

  onExit(listener: (vmId: string, reason: string) => void): () => void {
    this.#events.on('exit', listener);
    return () => this.#events.off('exit', listener);
  }

  async detach(): Promise<void> {
    this.#digests.close();
    await this.#pool.drain();
    await this.#goldens.drain();
    await this.#layers.drainFlattens();
    for (const vm of this.#vms.values()) {
      if (vm.can('detached')) vm.to('detached'); // closing our connections is not an exit
      vm.agent.close();
      vm.qmp.close();
    }
    this.#vms.clear();
    await this.#layers.gc();
    this.#helper?.close();
    await this.#unlock();
  }

  async destroyAll(): Promise<void> {
    this.#digests.close();
    await this.#pool.drain();
    await this.#goldens.drain();
    await this.#layers.drainFlattens();
    await Promise.all([...this.#vms.keys()].map((id) => this.destroy(id)));
    await this.#layers.gc();
    this.#helper?.close();
    await this.#unlock();
  }

  // ---------------------------------------------------------------------------------------------
  // Adoption after a restart

  async adopt(vmIds: readonly string[]): Promise<AdoptResult> {
    const wanted = new Set(vmIds);
    const adopted: string[] = [];
    const lost: string[] = [];
    const orphans: string[] = [];
    const onDisk = await this.#layers.vmIds();
    // QEMUs by name: a crash right after a spawn leaves one that no record names yet, still
    // writing into its VM's dir; it is stopped before that dir is removed.
    const running = await qemusOf(this.dataDir);
    const stopNamed = async (...names: (string | undefined)[]) => {
      for (const [pid, name] of running) if (names.includes(name)) await stopProcess(pid);
    };
    for (const id of onDisk) {
      if (this.#pool.owns(id) || this.#starting.has(id)) continue; // ours: pooled or starting
      if (this.#vms.has(id)) {
        if (wanted.has(id)) adopted.push(id);
        continue;
      }
      const dir = this.#layers.vmDir(id);
      const rec = await this.#layers.readVm(id);
      if (!wanted.has(id) || !rec) {
        // (A QEMU that the record does not name, or that has no record, is stopped by the sweep
        // of stray processes below.)
        if (rec && this.#isOurQemu(rec.pid)) await stopProcess(rec.pid);
        await stopNamed(id, rec?.qemuName);
        await fs.rm(dir, { recursive: true, force: true });
        orphans.push(id);
        continue;
      }
      if (!isQemuOf(rec.pid, rec.qemuName ?? id)) {
        await stopNamed(id, rec.qemuName);
        await fs.rm(dir, { recursive: true, force: true });
        lost.push(id);
        continue;
      }
      try {
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
        if (rec.paused) {
          await qmp.execute('stop');
          agent.freeze();
        }
        const vm = new LiveVm(rec, dir, qmp, agent, rec.paused ? 'paused' : 'running');
        // The record may be a step behind QEMU (a crash in the middle of a snapshot): QEMU's own
        // view of the disk chain wins, before the sweeper decides which layers are in use.
        await reconcileDisk(vm, this.#log);
        // A crash between handing a file to QEMU's user and taking it back leaves it granted.
        if (this.#confine) {
          await this.#confine.sealVmDir(dir);
          await this.#confine.seal(0o600, rec.disk.top);
        }
        delete rec.nextTop;
        await this.#layers.writeVm(dir, rec);
        this.#register(vm);
        adopted.push(id);
      } catch (err) {
        this.#log(`runtime: cannot re-adopt ${id}: ${String(err)}`);
        await stopProcess(rec.pid);
        await fs.rm(dir, { recursive: true, force: true });
        lost.push(id);
      }
    }
    for (const id of wanted) {
      if (!onDisk.includes(id) && !this.#vms.has(id)) lost.push(id);
    }
    await this.#stopStrayQemus();
    this.#confine?.cgroups?.sweep();
    await this.#layers.gc();
    return { adopted, lost, orphans };
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
    this.#pool.pids().forEach((pid) => known.add(pid));
    for (const [pid, name] of await qemusOf(this.dataDir)) {
      if (known.has(pid) || this.#pool.owns(name) || this.#starting.has(name)) continue;
      this.#log(`runtime: stopping stray QEMU ${pid} (${name})`);
      await stopProcess(pid);
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Internals

  /** Reserves an id for a VM about to be made (until `#starting.delete`). */
  async #claim(id: string): Promise<void> {
    const taken =
      this.#vms.has(id) ||
      this.#starting.has(id) ||
      (await fs.access(this.#layers.vmDir(id)).then(
        () => true,
        () => false,
      ));
    if (taken) throw new RuntimeError('invalid_argument', `VM ${id} already exists`);
    this.#starting.add(id);
  }

  #restore(snap: SnapshotRecord, target: RestoreTarget): Promise<LiveVm> {
    const ctx: RestoreContext = {
      layers: this.#layers,
      image: this.#image,
      accel: this.#accel,
      qemu: this.#qemu,
      log: this.#log,
      confine: this.#confine,
      helper: this.#helper,
    };
    return restoreVm(ctx, snap, target);
  }

  #snapshotContext(): SnapshotContext {
    return {
      layers: this.#layers,
      image: this.#image,
      cmdline: this.#cmdline,
      qemu: this.#qemu,
      log: this.#log,
      confine: this.#confine,
    };
  }

  /** Makes a started VM one of ours: supervised, listed, reachable by id. */
  #register(vm: LiveVm): void {
    const onGone = (reason: string) => {
      if (vm.state === 'exited' || vm.state === 'detached') return;
      const expected = vm.state === 'destroying';
      vm.to('exited');
      this.#confine?.release(vm.record.pid);
      if (expected) return;
      this.#log(`runtime: VM ${vm.id} exited unexpectedly: ${reason}`);
      this.#events.emit('exit', vm.id, reason);
    };
    // QMP closes exactly when QEMU exits (or is killed).
    vm.qmp.on('close', () => onGone('qemu exited'));
    // A guest that did not take its new identity must not run anything as its source: stopped.
    vm.identity?.then(
      () => (vm.identity = undefined),
      (err: unknown) => {
        if (vm.gone) return;
        onGone(
          `the guest did not take its identity: ${err instanceof Error ? err.message : String(err)}`,
        );
        void stopProcess(vm.record.pid, vm.qmp).catch(() => {});
      },
    );
    vm.qmp.on('event', (e: QmpEvent) => {
      if (e.event === 'SHUTDOWN' || e.event === 'GUEST_PANICKED')
        onGone(`guest ${e.event.toLowerCase()}`);
    });
    this.#vms.set(vm.id, vm);
  }

  /** Stops a VM that is not registered (a pooled one) and removes its dir. */
  async #discard(vm: LiveVm): Promise<void> {
    if (vm.can('destroying')) vm.to('destroying');
    await stopProcess(vm.record.pid, vm.qmp);
    this.#confine?.release(vm.record.pid);
    vm.agent.close();
    vm.qmp.close();
    await fs.rm(vm.dir, { recursive: true, force: true });
    await this.#layers.gc();
  }

  /**
   * A running VM whose guest has taken its new identity: a command waits for the IDENTITY that
   * was still on its way when the VM was handed over (`LiveVm.settleIdentity`), so nothing runs
   * in a guest that kept its source's hostname, machine id or random state.
   */
  async #identified(vmId: string): Promise<LiveVm> {
    const vm = this.#live(vmId);
    if (!vm.identity) return vm;
    try {
      await vm.identity;
    } catch (err) {
      throw new RuntimeError(
        'not_running',
        `VM ${vmId} did not take its identity: ${err instanceof Error ? err.message : String(err)}`,
      );
    }
    return this.#live(vmId);
  }

  #live(vmId: string): LiveVm {
    const vm = this.#vms.get(vmId);
    if (!vm) throw new RuntimeError('not_found', `VM ${vmId} not found`);
    if (vm.state === 'paused') throw new RuntimeError('not_running', `VM ${vmId} is paused`);
    if (vm.state !== 'running') throw new RuntimeError('not_running', `VM ${vmId} is not running`);
    return vm;
  }

  #info(vm: LiveVm): VmInfo {
    const spec = MACHINES[vm.record.machine];
    return {
      id: vm.id,
      machine: vm.record.machine,
      vcpus: spec.vcpus,
      memoryMiB: spec.memoryMiB,
      diskGiB: vm.record.diskGiB,
      state: vm.state === 'paused' ? 'paused' : vm.state === 'running' ? 'running' : 'stopped',
      pid: vm.record.pid,
      ...(vm.record.snapshotId ? { snapshotId: vm.record.snapshotId } : {}),
      ...(vm.record.volumes?.length ? { volumes: attachedVolumes(vm.record.volumes) } : {}),
      ...(vm.record.baseImage ? { baseImage: vm.record.baseImage } : {}),
    };
  }
}

/** `claim` called at most once: later calls get the first call's answer. */
function once(claim: NetworkClaim): NetworkClaim {
  let first: Promise<VmNetwork | undefined> | undefined;
  return (pooledFrom) => (first ??= claim(pooledFrom));
}
