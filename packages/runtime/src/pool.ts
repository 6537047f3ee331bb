/**
 * The warm pool: VMs per machine type restored from the golden snapshot and warmed up ahead of
 * time, handed out by `launch()`. A pooled VM is an ordinary restore (its own overlay, its dir
 * under `vms/pool-…` so the sweeper and adoption see it) that is not registered as a VM. After the
 * restore it runs the commands a user's VM runs first, which makes QEMU translate the guest code
 * they need: a restored VM starts with an empty translation cache, and that, not QEMU or the
 * migration, is most of a cold launch under TCG. Its NIC sits on QEMU hub 0; `take` plugs the
 * VM's tap into that hub, renames the dir and gives the VM its identity.
 * See docs/ARCHITECTURE.md ("Warm pool").
 * @module
 */
import crypto from 'node:crypto';
import fs from 'node:fs/promises';
import { crashPoint } from './crash-points.js';
import { applyIdentity, takenIdentity } from './identity.js';
import type { LayerStore } from './layers.js';
import { reniceProcess } from './process.js';
import type { SnapshotRecord } from './records.js';
import { type MachineType, type NetworkClaim, type NetworkOption } from './types.js';
import type { LiveVm } from './vm-state.js';

/** A pooled VM runs these after its restore (the server runs string commands with `sh -c`). */
const WARMUP: readonly string[][] = [['true'], ['sh', '-c', 'true']];
const FILL_DELAY_MS = 200;
const RETRY_MS = 10_000;

export interface PoolHooks {
  golden(machine: MachineType): Promise<SnapshotRecord>;
  /** Restores the golden into a VM in the `pooled` state (not registered). */
  restore(golden: SnapshotRecord, id: string): Promise<LiveVm>;
  /** Stops a VM that is not registered and removes its dir. */
  discard(vm: LiveVm): Promise<void>;
  /** Plugs `tap` into the NIC's hub of a waiting VM (tap-handover.ts). */
  plug(vm: LiveVm, tap: string): Promise<void>;
}

export class WarmPool {
  /** Waiting VMs by machine type, and the fill running for a type. */
  readonly #waiting = new Map<MachineType, LiveVm[]>();
  readonly #fills = new Map<MachineType, Promise<void>>();
  /** Dir names of VMs being made or waiting: adoption must not take them for orphans. */
  readonly #ids = new Set<string>();
  #closing = false;

  constructor(
    private readonly size: number,
    private readonly layers: LayerStore,
    private readonly hooks: PoolHooks,
    private readonly log: (msg: string) => void,
  ) {}

  /** How many warm VMs of a machine type are waiting. */
  ready(machine: MachineType): number {
    return this.#waiting.get(machine)?.length ?? 0;
  }

  /** Whether `name` (a dir under vms/) is a VM of this pool, being made or waiting. */
  owns(name: string): boolean {
    return this.#ids.has(name);
  }

  /** Pids of the waiting VMs. */
  pids(): number[] {
    return [...this.#waiting.values()].flat().map((vm) => vm.record.pid);
  }

  /** Starts filling the pool of a machine type in the background, unless it is full or filling. */
  fill(machine: MachineType): void {
    if (this.size <= 0 || this.#closing || this.#fills.has(machine)) return;
    const list = this.#waiting.get(machine) ?? [];
    this.#waiting.set(machine, list);
    if (list.length >= this.size) return; // (a VM that dies while waiting leaves the list at once)
    const run = (async () => {
      // Let the launch that triggered the fill have the CPU for its first commands.
      await new Promise((r) => setTimeout(r, FILL_DELAY_MS));
      while (!this.#closing && list.length < this.size) await this.#addOne(machine, list);
    })()
      .catch((err: unknown) => {
        this.log(`runtime: pool fill for ${machine} failed: ${String(err)}`);
        // Try again later rather than wait for a launch to ask (a launch meanwhile restores cold).
        setTimeout(() => this.fill(machine), RETRY_MS).unref();
      })
      .finally(() => this.#fills.delete(machine));
    this.#fills.set(machine, run);
  }

  async #addOne(machine: MachineType, list: LiveVm[]): Promise<void> {
    const golden = await this.hooks.golden(machine);
    const id = `pool-${machine}-${crypto.randomBytes(6).toString('hex')}`;
    this.#ids.add(id);
    let vm: LiveVm;
    try {
      vm = await this.hooks.restore(golden, id);
    } catch (err) {
      this.#ids.delete(id);
      throw err;
    }
    vm.qmp.on('close', () => {
      // (Once handed out the VM is the runtime's: its own supervision records the exit.)
      if (vm.state === 'pooled' || vm.state === 'destroying') vm.to('exited');
      const i = list.indexOf(vm);
      if (i < 0) return; // handed out (or being discarded): not the pool's business
      list.splice(i, 1);
      this.log(`runtime: pooled VM ${id} exited while waiting`);
      void this.#discard(vm).then(() => this.fill(machine));
    });
    try {
      await vm.identity; // (a pooled VM is not supervised yet)
      // (The guest's network is configured already: it keeps the golden's, see guest-net.ts.)
      for (const argv of WARMUP) await vm.agent.exec({ argv, timeoutMs: 30_000 });
    } catch (err) {
      await this.#discard(vm);
      throw err;
    }
    if (this.#closing) await this.#discard(vm);
    else list.push(vm);
  }

  /**
   * A waiting VM made into VM `id` (dir renamed, reniced, new identity; its network: the port it
   * waited with, or a tap plugged in now), or undefined when none is ready. The VM comes back
   * `running`, not yet registered. A claim (`NetworkClaim`) is called here, with the name of the
   * pool VM when that has a port; when the network it gives is not the VM's own port, a VM with
   * one cannot take it (its NIC's hub has a tap) and is discarded.
   */
  async take(
    machine: MachineType,
    id: string,
    hostname: string | undefined,
    networkOption: NetworkOption | NetworkClaim | undefined,
  ): Promise<LiveVm | undefined> {
    const list = this.#waiting.get(machine);
    if (!list?.length) return undefined;
    for (let vm = list.shift(); vm; vm = list.shift()) {
      if (vm.state !== 'pooled') {
        await this.#discard(vm);
        continue;
      }
      const t0 = performance.now();
      const poolName = vm.id;
      const own = vm.record.network;
      const network = await (typeof networkOption === 'function'
        ? networkOption(own ? poolName : undefined)
        : networkOption);
      if (own && network?.tap !== own.tap) {
        await this.#discard(vm);
        continue;
      }
      // The guest's identity, the tap and the record are independent: all at once (the guest
      // keeps its network configuration, so the tap needs nothing from it). The VM is handed
      // over before the guest acknowledges its identity (`LiveVm.settleIdentity`).
      const identity = applyIdentity(vm.agent, takenIdentity(id, hostname));
      identity.catch(() => {});
      try {
        reniceProcess(vm.record.pid, 0);
        const dir = this.layers.vmDir(id);
        await fs.rename(vm.dir, dir);
        crashPoint('pool:renamed');
        vm.record.qemuName = poolName;
        vm.record.id = id;
        vm.dir = dir;
        // After the rename: the tap may go in through a socket in the VM's dir.
        const plugged = network && !own ? this.hooks.plug(vm, network.tap) : undefined;
        if (network) vm.record.network = network;
        vm.record.createdAt = new Date().toISOString();
        await Promise.all([this.layers.writeVm(dir, vm.record), plugged]);
      } catch (err) {
        this.log(`runtime: pooled VM ${poolName} could not become ${id}: ${String(err)}`);
        await this.#discard(vm);
        continue;
      }
      this.#ids.delete(poolName);
      vm.to('running');
      // Not awaited: the guest applies it before anything sent after it (see `settleIdentity`).
      vm.settleIdentity(identity);
      this.log(
        `runtime: launched ${id} from the pool in ${(performance.now() - t0).toFixed(1)} ms`,
      );
      return vm;
    }
    return undefined;
  }

  /** Stops filling and discards every waiting VM (close, detach). */
  async drain(): Promise<void> {
    this.#closing = true;
    await Promise.allSettled([...this.#fills.values()]);
    const waiting = [...this.#waiting.values()].flatMap((list) => list.splice(0));
    this.#waiting.clear();
    await Promise.all(waiting.map((vm) => this.#discard(vm)));
  }

  async #discard(vm: LiveVm): Promise<void> {
    this.#ids.delete(vm.record.qemuName ?? vm.id);
    await this.hooks.discard(vm);
  }
}
