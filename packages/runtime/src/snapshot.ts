/**
 * Snapshots of running VMs, and the other changes to a live VM's disk: growing it, and setting
 * the disk record from QEMU's own view after a crash. See docs/ARCHITECTURE.md ("Snapshot of a
 * running VM", "Crash safety").
 * @module
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { helperArgv } from './base-image.js';
import type { Confinement } from './confine.js';
import { crashPoint } from './crash-points.js';
import { syncClock } from './identity.js';
import type { LayerStore } from './layers.js';
import { dumpDelta, findRamMapping } from './memory.js';
import { memshimFork, migrateToFile, resumeAfterMigration, stateUri } from './migration.js';
import type { GuestImage } from './qemu.js';
import { type MemView, type SnapshotRecord, type VmRecord, snapshotDeltas } from './records.js';
import { wrapQemuError } from './restore.js';
import { MACHINES, RuntimeError, type SnapshotInfo } from './types.js';
import type { LiveVm } from './vm-state.js';
import { snapshotVolumes } from './volumes.js';

export interface SnapshotContext {
  readonly layers: LayerStore;
  readonly image: GuestImage;
  readonly cmdline: string;
  /** `qemu --version`. */
  readonly qemu: string;
  readonly log: (msg: string) => void;
  /** QEMU's user (undefined: unconfined): the new overlay and the state file are granted to it. */
  readonly confine?: Confinement | undefined;
}

/**
 * Snapshot of a running VM: a new disk overlay for the VM, the old top frozen as the snapshot's
 * layer; device state migrated to a file; RAM frozen by a copy-on-write fork of QEMU while the VM
 * runs on, and its changed pages copied out into a delta. The pause covers the disk switch, the
 * device state and the fork only.
 */
export async function snapshotVm(
  ctx: SnapshotContext,
  vm: LiveVm,
  snapshotId: string,
): Promise<SnapshotInfo> {
  const { layers, image, confine } = ctx;
  if (vm.state !== 'running') {
    throw new RuntimeError('not_running', `VM ${vm.id} is ${vm.state}, not running`);
  }
  const t0 = performance.now();
  const rec = vm.record;
  const spec = MACHINES[rec.machine];
  // The SCSI disks in the device state (volumes attached now; attach/detach run serially).
  const volumes = snapshotVolumes(vm);
  const dir = layers.snapDir(snapshotId);
  // (mkdir fails on an existing dir: a snapshot id is used once.)
  await fs.mkdir(dir).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'EEXIST') {
      throw new RuntimeError('invalid_argument', `snapshot ${snapshotId} already exists`);
    }
    throw err;
  });
  const state = path.join(dir, 'state.bin');
  const newTop = layers.newPath('disk', '.qcow2');
  const deltaPath = layers.newPath('mem', '.delta');
  const node = `disk${rec.nodeCounter + 1}`;
  let pauseStart = 0;
  let pauseMs = 0;
  let delta: { runs: number; bytes: number };
  // What the VM's memory is compared with: its previous snapshot's (pinned until the end).
  const view = await parentView(layers, rec);
  const viewFiles = [view.memBase, ...view.deltas.map((d) => d.path)];
  let frozen: { pid: number; release(): void } | undefined;
  let recorded: Promise<void> | undefined;
  try {
    const [, memFile] = await Promise.all([
      layers.newOverlay(newTop, rec.disk.top, rec.diskGiB),
      fs.realpath(rec.memBase),
    ]);
    const map = findRamMapping(rec.pid, memFile, spec.memoryMiB * 2 ** 20);
    if (confine) {
      // A confined QEMU opens the new overlay and writes the state file as its user; the old
      // top becomes a shared, read-only layer (QEMU may reopen it read-only).
      await fs.writeFile(state, '', { mode: 0o600 });
      await Promise.all([confine.grant(newTop, state), confine.seal(0o644, rec.disk.top)]);
    }
    // Intent first: a crash from here on leaves a record that names the new overlay.
    rec.nextTop = newTop;
    await layers.writeVm(vm.dir, rec);
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
    if (confine) await confine.seal(0o600, newTop);
    rec.disk = { top: newTop, topNode: node, chain: [rec.disk.top, ...rec.disk.chain] };
    rec.nodeCounter += 1;
    delete rec.nextTop;
    await migrateToFile(vm.qmp, stateUri(ctx.qemu, state, 'out'));
    crashPoint('snapshot:migrated');
    if (confine) await confine.seal(0o644, state);
    // Freeze memory: a copy-on-write copy of the process (forked by the memshim) keeps the RAM
    // as it is now, and the VM runs on while the changed pages are copied out of the copy.
    frozen = await memshimFork(path.join(vm.dir, 'memshim.sock'));
    crashPoint('snapshot:frozen');
    await resumeAfterMigration(vm.qmp);
    pauseMs = performance.now() - pauseStart;
    // The guest's clock stood still during the pause: set it again. Not awaited: the snapshot
    // does not depend on it, and an agent busy with a flood of output must not hold it up.
    void syncClock(vm.agent, { timeoutMs: 5000 }).catch((err: unknown) =>
      ctx.log(`runtime: clock sync of ${rec.id} after its snapshot failed: ${String(err)}`),
    );
    // (Written after the pause, while the delta is copied: until then the intent covers a crash.)
    recorded = layers.writeVm(vm.dir, rec);
    recorded.catch(() => {});
    delta = await dumpDelta(image.memdelta, frozen.pid, map, deltaPath, {
      memBase: view.memBase,
      deltas: view.deltas.map((d) => d.path),
    });
    await recorded;
    crashPoint('snapshot:dumped');
  } catch (err) {
    if (pauseStart && !pauseMs) await vm.qmp.execute('cont').catch(() => {});
    if (confine) await confine.seal(0o600, newTop).catch(() => {});
    await fs.rm(dir, { recursive: true, force: true });
    await fs.rm(deltaPath, { force: true });
    if (rec.nextTop) {
      // The switch itself failed (or its answer was lost): QEMU knows which layer is on top.
      await reconcileDisk(vm, ctx.log).catch(() => {});
      delete rec.nextTop;
    }
    await recorded?.catch(() => {});
    await layers.writeVm(vm.dir, rec).catch(() => {});
    layers.settle(newTop, deltaPath);
    void layers.gc();
    throw await wrapQemuError(err, `snapshot of ${rec.id} failed`, vm.dir);
  } finally {
    frozen?.release();
    layers.pin(viewFiles, -1);
  }
  const own = { path: deltaPath, bytes: delta.bytes };
  const snap: SnapshotRecord = {
    id: snapshotId,
    vmId: rec.id,
    machine: rec.machine,
    diskGiB: rec.diskGiB,
    accel: rec.accel,
    qemu: ctx.qemu,
    imageId: image.imageId,
    cmdline: ctx.cmdline,
    memBase: view.memBase,
    delta: own,
    ...(view.deltas.length ? { chain: view.deltas } : {}),
    disk: rec.disk.chain,
    state,
    paused: true,
    ...(rec.guestNet ? { guestNet: rec.guestNet } : {}),
    ...(rec.scsi ? { scsi: true } : {}),
    ...(volumes.length > 0 ? { volumes } : {}),
    ...(rec.baseImage ? { baseImage: rec.baseImage } : {}),
    createdAt: new Date().toISOString(),
  };
  await layers.writeSnapshot(snap);
  crashPoint('snapshot:written');
  // The VM's next snapshot is compared with this one. (A crash before this write leaves the older
  // view: the next delta is larger, not wrong.)
  rec.memView = { snapshotId, memBase: view.memBase, deltas: [...view.deltas, own] };
  await layers.writeVm(vm.dir, rec);
  layers.settle(newTop, deltaPath);
  layers.consolidate(snap);
  return {
    id: snapshotId,
    vmId: rec.id,
    machine: rec.machine,
    diskGiB: rec.diskGiB,
    pauseMs,
    totalMs: performance.now() - t0,
    ...(volumes.length > 0
      ? {
          volumes: volumes.map(({ volumeId, mountPath, readOnly }) => ({
            volumeId,
            mountPath,
            readOnly,
          })),
        }
      : {}),
  };
}

/**
 * The memory a VM's next snapshot is compared with, pinned (the caller unpins it): the snapshot it
 * last took or came from as that snapshot's record has it now (flattened or merged since, perhaps:
 * the same content in fewer files), else the files its own record names, else its base file.
 */
async function parentView(layers: LayerStore, rec: VmRecord): Promise<MemView> {
  const own: MemView = rec.memView ?? { memBase: rec.memBase, deltas: [] };
  const snap = rec.memView?.snapshotId
    ? await layers.readSnapshot(rec.memView.snapshotId)
    : undefined;
  const ownFiles = [own.memBase, ...own.deltas.map((d) => d.path)];
  const view = snap && { memBase: snap.memBase, deltas: snapshotDeltas(snap) };
  const files = view ? [view.memBase, ...view.deltas.map((d) => d.path)] : ownFiles;
  if (view && files.join('\n') !== ownFiles.join('\n')) {
    layers.pin(files, 1);
    // Deleted (and swept) between the read and the pin: fall back to the VM's own files.
    const there = await Promise.all(
      files.map((f) =>
        fs.access(f).then(
          () => true,
          () => false,
        ),
      ),
    );
    if (there.every(Boolean)) return view;
    layers.pin(files, -1);
  }
  layers.pin(ownFiles, 1);
  return own;
}

/** Grows a VM's disk: the top overlay in QEMU, then the filesystem online in the guest. */
export async function growDisk(layers: LayerStore, vm: LiveVm, diskGiB: number): Promise<void> {
  await vm.qmp.execute('block_resize', {
    'node-name': vm.record.disk.topNode,
    size: diskGiB * 2 ** 30,
  });
  crashPoint('disk:resized');
  // A base image may have no resize2fs of its own: it has ours (base-image.ts).
  const argv = vm.record.baseImage
    ? helperArgv('resize2fs', ['/dev/vda'])
    : ['resize2fs', '/dev/vda'];
  const r = await vm.agent.exec({ argv, timeoutMs: 60_000 });
  if (r.exitCode !== 0) {
    throw new RuntimeError('qemu_failed', `resize2fs failed: ${r.stderr.toString().trim()}`);
  }
  vm.record.diskGiB = diskGiB;
  await layers.writeVm(vm.dir, vm.record);
}

/**
 * Sets a VM's disk record from QEMU's block graph (`query-block`): the top layer, its node name
 * and the backing chain. Used where the record may lag behind QEMU: adoption after a crash and a
 * failed snapshot. The caller writes the record.
 */
export async function reconcileDisk(vm: LiveVm, log: (msg: string) => void): Promise<void> {
  interface Image {
    filename: string;
    'virtual-size': number;
    'backing-image'?: Image;
  }
  const blocks =
    await vm.qmp.execute<{ inserted?: { 'node-name': string; image: Image } }[]>('query-block');
  const inserted = blocks.find((b) => b.inserted)?.inserted;
  if (!inserted) throw new RuntimeError('qemu_failed', `VM ${vm.id} has no disk`);
  const chain: string[] = [];
  for (let b = inserted.image['backing-image']; b; b = b['backing-image']) chain.push(b.filename);
  const rec = vm.record;
  const before = JSON.stringify(rec.disk);
  rec.disk = { top: inserted.image.filename, topNode: inserted['node-name'], chain };
  rec.nodeCounter = Math.max(rec.nodeCounter, Number(/\d+$/.exec(rec.disk.topNode)?.[0] ?? 0));
  rec.diskGiB = Math.max(rec.diskGiB, Math.floor(inserted.image['virtual-size'] / 2 ** 30));
  if (JSON.stringify(rec.disk) !== before) {
    log(`runtime: ${rec.id}: disk record reconciled with QEMU (top ${rec.disk.top})`);
  }
}
