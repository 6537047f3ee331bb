/**
 * Restoring a snapshot (a golden or a user's) into a new VM: a new disk overlay, QEMU started with
 * `-incoming defer` on the snapshot's memory file (mapped privately by the memshim), the delta
 * written into its RAM, the device state loaded, the tap plugged in and the guest given its own
 * identity. See docs/ARCHITECTURE.md ("Memory: base file + private copy-on-write + deltas").
 * @module
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { AgentClient } from './agent-client.js';
import type { Confinement } from './confine.js';
import { SANDBOX } from './confine.js';
import { crashPoint } from './crash-points.js';
import { GUEST_NET, GUEST_NET_VERSION, pinGatewayMac } from './guest-net.js';
import { applyIdentity, freshIdentity } from './identity.js';
import type { TapfdHelper } from './helper.js';
import { PLUG_SOCKET, plugTap, TAP_FD } from './tap-handover.js';
import type { LayerStore } from './layers.js';
import { applyDeltas, findRamMapping } from './memory.js';
import { isMigrationEnd, stateUri } from './migration.js';
import { alive, spawnQemu, stopProcess } from './process.js';
import { type Accel, type GuestImage, qemuArgs, qemuBinary } from './qemu.js';
import { QmpClient } from './qmp.js';
import { type SnapshotRecord, type VmRecord, snapshotDeltas } from './records.js';
import { MACHINES, type NetworkOption, RuntimeError, type VmNetwork } from './types.js';
import { LiveVm } from './vm-state.js';
import { addPlaceholders, dropPlaceholders } from './volumes.js';

/** Pool fills run at this nice value, so that they yield the CPU to running VMs. */
export const POOL_NICE = 10;

export interface RestoreContext {
  readonly layers: LayerStore;
  readonly image: GuestImage;
  readonly accel: Accel;
  /** `qemu --version`. */
  readonly qemu: string;
  readonly log: (msg: string) => void;
  /** QEMU's user, sandbox and cgroup (undefined: QEMU runs as the server, unconfined). */
  readonly confine?: Confinement | undefined;
  /**
   * Starts a confined QEMU and hands it its taps (absent: the runtime starts QEMU itself, which
   * opens its tap by name).
   */
  readonly helper?: TapfdHelper | undefined;
}

export interface RestoreTarget {
  readonly id: string;
  readonly hostname?: string | undefined;
  readonly network?: NetworkOption | undefined;
  /** Recorded as the VM's source (not for goldens). */
  readonly snapshotId?: string | undefined;
  /** A warm-pool VM: started at a lower priority, returned `pooled`. */
  readonly pooled?: boolean;
}

/** Restores `snap` into a new VM; on failure nothing of it is left. */
export async function restoreVm(
  ctx: RestoreContext,
  snap: SnapshotRecord,
  target: RestoreTarget,
): Promise<LiveVm> {
  const { layers, image, accel, qemu, log, confine } = ctx;
  const { id, hostname, snapshotId, pooled = false } = target;
  if (snap.accel !== accel) {
    throw new RuntimeError(
      'invalid_argument',
      `snapshot was taken under ${snap.accel}, this host runs ${accel}`,
    );
  }
  if (snap.qemu && snap.qemu !== qemu) {
    throw new RuntimeError(
      'invalid_argument',
      `snapshot was taken by ${snap.qemu}; this host runs ${qemu}`,
    );
  }
  const spec = MACHINES[snap.machine];
  const dir = layers.vmDir(id);
  // A network given now is QEMU's tap from the start; a promised one is plugged into the NIC's
  // hub: from the start if it is there when QEMU starts (a spare port is: no QMP round trips
  // while the restore is under way), else later.
  let network: VmNetwork | undefined =
    target.network instanceof Promise ? undefined : target.network;
  let later = target.network instanceof Promise ? target.network : undefined;
  let hubTap: string | undefined;
  later?.catch(() => {}); // awaited below; a failure before that must not go unhandled
  await fs.mkdir(dir, { recursive: true });
  const top = layers.newPath('disk', '.qcow2');
  const phases = phaseTimer();
  let pid = 0;
  let qmp: QmpClient | undefined;
  let agent: AgentClient | undefined;
  try {
    await layers.newOverlay(top, snap.disk[0]!, snap.diskGiB);
    phases('overlay');
    const settled = later && (await settledValue(later));
    if (settled !== undefined && settled !== PENDING) {
      later = undefined;
      network = settled;
      hubTap = settled?.tap;
    }
    const memFile = await fs.realpath(snap.memBase);
    const record: VmRecord = {
      id,
      machine: snap.machine,
      diskGiB: snap.diskGiB,
      accel,
      pid: 0,
      memBase: snap.memBase,
      // Its first snapshot stores only what differs from this snapshot (not from a golden).
      ...(snapshotId
        ? { memView: { snapshotId, memBase: snap.memBase, deltas: snapshotDeltas(snap) } }
        : {}),
      disk: { top, topNode: 'disk0', chain: snap.disk },
      nodeCounter: 0,
      ...(snapshotId ? { snapshotId } : {}),
      ...(network ? { network } : {}),
      guestNet: GUEST_NET_VERSION,
      ...(snap.scsi ? { scsi: true } : {}),
      ...(snap.baseImage ? { baseImage: snap.baseImage } : {}),
      createdAt: new Date().toISOString(),
    };
    await layers.writeVm(dir, record);
    layers.settle(top);
    if (confine) {
      // QEMU creates its sockets and serial log in `dir` and opens `top` for writing as it
      // starts; both go back to root once it has (sealVmDir below), before the guest runs.
      // Shared layers are read by every QEMU (a flatten writes its base file 0600).
      confine.readable(snap.state);
      confine.readable(memFile);
      await confine.grant(dir, top);
    }
    // Confined, the helper starts QEMU (helper.ts), with its tap as a descriptor (tap-handover.ts).
    const helper = confine ? ctx.helper : undefined;
    const startTap = hubTap ?? network?.tap;
    const args = qemuArgs({
      accel,
      machine: spec,
      image,
      cmdline: snap.cmdline,
      memPath: snap.memBase,
      diskPath: top,
      qmpPath: path.join(dir, 'qmp.sock'),
      agentPath: path.join(dir, 'agent.sock'),
      serialPath: path.join(dir, 'serial.log'),
      tap: hubTap ? undefined : network?.tap,
      hubTap,
      tapFd: helper && startTap !== undefined ? TAP_FD : undefined,
      plugQmpPath: helper ? path.join(dir, PLUG_SOCKET) : undefined,
      mac: GUEST_NET.mac, // (a restored NIC keeps the snapshot's MAC: it is device state)
      incoming: true,
      sandbox: confine ? SANDBOX : undefined,
      scsi: snap.scsi ?? false,
    });
    const qemuEnv = {
      LD_PRELOAD: image.memshim,
      FASTVM_MEMSHIM_PATH: memFile,
      FASTVM_MEMSHIM_CTL: path.join(dir, 'memshim.sock'),
      // A pool fill yields the CPU to running VMs; launch() renices it (which needs root).
      ...(pooled && process.getuid?.() === 0 ? { FASTVM_MEMSHIM_NICE: String(POOL_NICE) } : {}),
      ...(confine ? { FASTVM_MEMSHIM_NODUMP: '1' } : {}),
    };
    pid = helper
      ? await helper.spawn({
          binary: qemuBinary(accel),
          args,
          env: { ...process.env, ...qemuEnv },
          log: path.join(dir, 'qemu.log'),
          user: confine?.user,
          tap: startTap,
        })
      : await spawnQemu(qemuBinary(accel), dir, args, qemuEnv, confine?.spawnAs);
    // Into its cgroup while QMP starts; before the guest's memory is touched (delta, migration).
    const placed = confine?.place(pid, snap.machine);
    placed?.catch(() => {}); // awaited below
    crashPoint('restore:spawned');
    record.pid = pid;
    await layers.writeVm(dir, record);
    phases('spawn');
    qmp = await QmpClient.connect(path.join(dir, 'qmp.sock'), {
      timeoutMs: 10_000,
      alive: () => alive(pid),
    });
    // QEMU has opened and bound all it needs: the files go back to root while the delta is
    // applied, and must be before the guest runs (the incoming migration below).
    const sealed = confine && Promise.all([confine.sealVmDir(dir), confine.seal(0o600, top)]);
    sealed?.catch(() => {}); // awaited below
    await placed;
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
    const deltas = snapshotDeltas(snap);
    if (deltas.length) {
      await applyDeltas(
        image.memdelta,
        pid,
        map,
        deltas.map((d) => d.path),
        helper,
      );
      phases('delta');
    }
    await qmp.execute('migrate-set-capabilities', {
      capabilities: [
        { capability: 'x-ignore-shared', state: true },
        { capability: 'events', state: true },
      ],
    });
    // The snapshot's volumes are part of its device state: empty stand-ins until the guest
    // has let go of them (below); the server attaches the real volumes afresh.
    const placeholders = snap.volumes ?? [];
    await addPlaceholders(qmp, placeholders);
    await sealed; // the guest runs as soon as the migration completes
    const done = qmp.waitEvent('MIGRATION', { timeoutMs: 30_000, match: isMigrationEnd });
    await qmp.execute('migrate-incoming', { uri: stateUri(qemu, snap.state, 'in') });
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
    // The guest keeps its network configuration (guest-net.ts), except one from before that, so
    // its identity and the tap (plugged once the promised network is there) go at once.
    const legacyNet = (snap.guestNet ?? 0) < GUEST_NET_VERSION;
    const identity = (async () => {
      await applyIdentity(agent, freshIdentity(id, hostname, legacyNet));
      if (legacyNet) await pinGatewayMac(agent);
    })();
    identity.catch(() => {}); // supervised once the VM is registered (runtime.ts)
    if (later) {
      network = await later;
      if (network) {
        await plugTap(qmp, dir, network.tap, ctx.helper);
        record.network = network;
        await layers.writeVm(dir, record);
      }
      phases('network');
    }
    if (placeholders.length > 0) {
      // (Sent after the IDENTITY, so applied after it.)
      await dropPlaceholders({ agent, qmp }, placeholders);
      phases('volumes');
    }
    log(`runtime: restored ${id} from ${snap.id}: ${phases.summary()}`);
    const vm = new LiveVm(record, dir, qmp, agent, pooled ? 'pooled' : 'running');
    // Handed over before the guest acknowledges its identity: see `LiveVm.settleIdentity`. A
    // pooled VM gets a new one when it is taken; this one only has to be applied by then.
    vm.settleIdentity(identity);
    return vm;
  } catch (err) {
    agent?.close();
    qmp?.close();
    if (pid) await stopProcess(pid);
    confine?.release(pid);
    const error = await wrapQemuError(err, `restore of ${snap.id} into ${id} failed`, dir);
    await fs.rm(dir, { recursive: true, force: true });
    await fs.rm(top, { force: true });
    layers.settle(top);
    throw error;
  }
}

/** A RuntimeError for `err`, with the tail of the VM's `qemu.log` (QEMU explains itself there). */
export async function wrapQemuError(err: unknown, what: string, dir: string): Promise<Error> {
  if (err instanceof RuntimeError) return err;
  let tail = '';
  try {
    tail = (await fs.readFile(path.join(dir, 'qemu.log'), 'utf8')).slice(-500);
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

const PENDING: unique symbol = Symbol('pending');

/**
 * What `p` resolved with if it has (within one turn of the microtask queue), else `PENDING`; a
 * rejected `p` counts as pending (its error surfaces where it is awaited).
 */
async function settledValue<T>(p: Promise<T>): Promise<T | typeof PENDING> {
  const pending: Promise<typeof PENDING> = Promise.resolve(PENDING);
  try {
    return await Promise.race([p, pending]);
  } catch {
    return PENDING;
  }
}
