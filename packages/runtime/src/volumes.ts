/**
 * Volumes: persistent disks (sparse raw ext4 files on the host) hot-attached to running VMs.
 *
 * QEMU's `microvm` has no PCI, so no PCI hotplug. Every VM started from a golden built since
 * volumes exist has a virtio-scsi controller on virtio-mmio (`scsi0`, `qemuArgs({scsi: true})`)
 * from boot; a volume is a `raw` block node over the file plus a `scsi-hd` on that controller,
 * both added over QMP (`blockdev-add`, `device_add`) while the guest runs. SCSI target `t`
 * (LUN 0) identifies the disk: the guest finds it in sysfs at `/sys/bus/scsi/devices/*:0:t:0`
 * (there is no udev), then the agent mounts it. Read-only attachments open the file read-only
 * in QEMU, so the guest's SCSI disk is write-protected and writes fail even with root.
 *
 * Snapshots record the SCSI disks a VM has (`SnapshotRecord.volumes`), not their contents. A
 * restore re-creates those devices as empty placeholders (the device state needs them), then
 * unmounts them lazily in the guest and unplugs them: the guest's cached view of the volume at
 * snapshot time must never meet the volume's current contents. The server then attaches the
 * real volumes again as fresh disks.
 * @module
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import { promisify } from 'node:util';
import type { LayerStore } from './layers.js';
import { QmpCommandError, type QmpClient } from './qmp.js';
import type { AttachedVolume, SnapshotVolume } from './records.js';
import { RuntimeError, type VolumeAttachRequest } from './types.js';
import type { LiveVm } from './vm-state.js';

const run = promisify(execFile);

/** SCSI targets 0..MAX_TARGET on the one controller: the most volumes per VM. */
export const MAX_VOLUMES_PER_VM = 64;

const GIB = 2 ** 30;

/** Node and device id of the volume on SCSI target `t`. */
const nodeOf = (t: number) => `vol${t}`;

// ---------------------------------------------------------------------------------------------
// Host files

/**
 * Creates a volume file: sparse (`truncate`), then an ext4 filesystem on it (`mkfs.ext4`, no
 * reserved blocks; the file's holes read as zeros, so mkfs marks the inode tables initialised
 * without writing them and the guest does no lazy-init writes: ~70 MiB allocated for 10 GiB).
 * Written under a temp name and renamed, so a crash leaves no half-made volume at `file`.
 */
export async function createVolumeFile(file: string, sizeGiB: number, label = ''): Promise<void> {
  const tmp = `${file}.${process.pid}.tmp`;
  try {
    const fh = await fs.open(tmp, 'w', 0o600);
    await fh.truncate(sizeGiB * GIB);
    await fh.close();
    await run(
      'mkfs.ext4',
      [
        '-q',
        '-F',
        '-m',
        '0',
        '-E',
        'lazy_itable_init=0,lazy_journal_init=0',
        ...(label ? ['-L', label.slice(0, 16)] : []),
        tmp,
      ],
      { timeout: 120_000 },
    );
    await fs.rename(tmp, file);
  } catch (err) {
    await fs.rm(tmp, { force: true });
    throw new RuntimeError('qemu_failed', `cannot create volume file: ${errText(err)}`, {
      cause: err,
    });
  }
}

/**
 * Resizes an unattached volume file and its filesystem (`e2fsck -f`, then `resize2fs`; the file
 * grows first or shrinks last). A shrink that the data does not fit in is refused
 * (`invalid_argument`) and changes nothing.
 */
export async function resizeVolumeFile(file: string, sizeGiB: number): Promise<void> {
  const { size } = await fs.stat(file);
  const bytes = sizeGiB * GIB;
  if (bytes === size) return;
  await fsck(file);
  if (bytes > size) {
    await fs.truncate(file, bytes);
    await run('resize2fs', [file], { timeout: 300_000 }).catch((err: unknown) => {
      throw new RuntimeError('qemu_failed', `resize2fs failed: ${errText(err)}`, { cause: err });
    });
    return;
  }
  try {
    await run('resize2fs', [file, `${sizeGiB * 1024 * 256}`], { timeout: 300_000 });
  } catch (err) {
    throw new RuntimeError(
      'invalid_argument',
      `the volume's data does not fit in ${sizeGiB} GiB (${errText(err).split('\n')[0]})`,
      { cause: err },
    );
  }
  await fs.truncate(file, bytes);
}

/**
 * Checks a volume's filesystem on the host (`e2fsck -p`: replays the journal of a volume whose
 * VM died with it mounted; `force`: a full check even when it looks clean). Never on a file a
 * VM has open.
 */
export async function fsck(file: string, force = true): Promise<void> {
  try {
    await run('e2fsck', [...(force ? ['-f'] : []), '-p', file], { timeout: 300_000 });
  } catch (err) {
    // Exit 1: errors corrected. Anything above that is a filesystem that needs a human.
    const code = (err as { code?: number }).code;
    if (code !== 1) {
      throw new RuntimeError('qemu_failed', `e2fsck of the volume failed: ${errText(err)}`, {
        cause: err,
      });
    }
  }
}

/** Bytes in use in a volume's filesystem, from its superblock (`dumpe2fs -h`). */
export async function volumeUsedBytes(file: string): Promise<number | undefined> {
  try {
    const { stdout } = await run('dumpe2fs', ['-h', file], { timeout: 30_000 });
    const field = (name: string) =>
      Number(new RegExp(`^${name}:\\s+(\\d+)`, 'm').exec(stdout)?.[1]);
    const used = (field('Block count') - field('Free blocks')) * field('Block size');
    return Number.isFinite(used) ? used : undefined;
  } catch {
    return undefined;
  }
}

// ---------------------------------------------------------------------------------------------
// Guest side (run by the agent; arguments are positional, never spliced into the script)

/** Waits for the disk on SCSI target $1 (a scan of that target if the hotplug event is late). */
const FIND_DISK = `
t=$1; i=0
while :; do
  for d in /sys/bus/scsi/devices/*:0:$t:0/block/*; do [ -e "$d" ] && break 2; done
  i=$((i+1))
  if [ $i -eq 1 ]; then for h in /sys/class/scsi_host/host*/scan; do echo "0 $t 0" > "$h"; done 2>/dev/null; fi
  [ $i -gt 400 ] && { echo "the disk on SCSI target $t did not appear in the guest" >&2; exit 2; }
  sleep 0.025
done
dev=/dev/\${d##*/}; i=0
while [ ! -b "$dev" ]; do i=$((i+1)); [ $i -gt 200 ] && { echo "$dev did not appear" >&2; exit 2; }; sleep 0.01; done
`;

/** $1 target, $2 mount path, $3 "ro" or "rw". Idempotent. */
const MOUNT = `${FIND_DISK}
mp=$2
if grep -q "^$dev $mp " /proc/mounts; then exit 0; fi
mkdir -p "$mp" || exit 3
if [ "$3" = ro ]; then
  # A journal left dirty (a VM killed with the volume mounted) cannot be replayed read-only.
  mount -t ext4 -o ro "$dev" "$mp" 2>/dev/null || mount -t ext4 -o ro,noload "$dev" "$mp"
else
  mount -t ext4 "$dev" "$mp"
fi
`;

/** $1 target, $2 mount path. Exit 16: busy (the mount stays). */
const UMOUNT = `
t=$1; mp=$2
if grep -q " $mp ext4 " /proc/mounts; then
  out=$(umount "$mp" 2>&1) || { echo "$out" >&2; case "$out" in *busy*) exit 16;; esac; exit 1; }
fi
for d in /sys/bus/scsi/devices/*:0:$t:0; do [ -e "$d/delete" ] && echo 1 > "$d/delete"; done
rmdir "$mp" 2>/dev/null
exit 0
`;

/** $1 target, $2 mount path: detaches a restored placeholder whatever still uses it. */
const DROP = `
t=$1; mp=$2
grep -q " $mp ext4 " /proc/mounts && umount -l "$mp"
for d in /sys/bus/scsi/devices/*:0:$t:0; do [ -e "$d/delete" ] && echo 1 > "$d/delete"; done
exit 0
`;

/** $1 target: re-reads the disk's capacity and grows the mounted filesystem. */
const GROW = `${FIND_DISK}
for a in /sys/bus/scsi/devices/*:0:$t:0; do echo 1 > "$a/rescan"; done
resize2fs "$dev"
`;

async function guest(vm: LiveVm, script: string, args: string[], timeoutMs = 60_000) {
  const r = await vm.agent.exec({ argv: ['sh', '-c', script, 'sh', ...args], timeoutMs });
  return { code: r.timedOut ? 124 : r.exitCode, err: r.stderr.toString().trim() };
}

// ---------------------------------------------------------------------------------------------
// Live VMs

function requireController(vm: LiveVm): void {
  if (!vm.record.scsi) {
    throw new RuntimeError(
      'unsupported',
      `VM ${vm.id} has no SCSI controller for volumes: it comes from a snapshot taken before ` +
        'volumes existed; launch a new VM (or restore a newer snapshot) to attach volumes',
    );
  }
}

/** Ignores QMP's "already there" / "not there" answers, so that every step can be redone. */
async function tolerant(p: Promise<unknown>, ok: RegExp): Promise<void> {
  try {
    await p;
  } catch (err) {
    if (!(err instanceof QmpCommandError && ok.test(err.message))) throw err;
  }
}

async function addDisk(
  qmp: QmpClient,
  t: number,
  file: { driver: 'file'; filename: string } | { driver: 'null-co'; size: number },
  readOnly: boolean,
): Promise<void> {
  const node = nodeOf(t);
  const fileNode =
    file.driver === 'file'
      ? { ...file, 'node-name': `${node}f`, 'read-only': readOnly }
      : { ...file, 'node-name': `${node}f`, 'read-zeroes': true };
  await tolerant(
    qmp.execute('blockdev-add', {
      driver: 'raw',
      'node-name': node,
      'read-only': readOnly,
      file: fileNode,
    }),
    /[Dd]uplicate|already/,
  );
  await tolerant(
    qmp.execute('device_add', {
      driver: 'scsi-hd',
      id: node,
      drive: node,
      bus: 'scsi0.0',
      'scsi-id': t,
      lun: 0,
    }),
    /[Dd]uplicate|already/,
  );
}

async function removeDisk(qmp: QmpClient, t: number): Promise<void> {
  const node = nodeOf(t);
  const deleted = qmp.waitEvent('DEVICE_DELETED', {
    timeoutMs: 5000,
    match: (e) => e.data?.device === node,
  });
  deleted.catch(() => {});
  let present = true;
  await tolerant(
    qmp.execute('device_del', { id: node }).catch((err: unknown) => {
      present = false;
      throw err;
    }),
    /not found/,
  );
  if (present) await deleted.catch(() => {}); // (scsi-hd unplugs at once; the event is a courtesy)
  await tolerant(qmp.execute('blockdev-del', { 'node-name': node }), /not found|[Cc]annot find/);
}

/**
 * Hot-attaches a volume to a running VM and mounts it in the guest. Idempotent: attaching a
 * volume that is attached (or half-attached by a crash) finishes the job. Call serially.
 */
export async function attachVolume(
  layers: LayerStore,
  vm: LiveVm,
  req: VolumeAttachRequest,
  /** Runs the QMP call that makes QEMU open the file (confinement hands the file over for it). */
  opening: (file: string, open: () => Promise<void>) => Promise<void> = (_f, open) => open(),
): Promise<void> {
  requireController(vm);
  const rec = vm.record;
  const vols = (rec.volumes ??= []);
  let entry = vols.find((v) => v.volumeId === req.volumeId);
  if (entry && (entry.mountPath !== req.mountPath || entry.readOnly !== req.readOnly)) {
    throw new RuntimeError(
      'invalid_argument',
      `volume ${req.volumeId} is already attached at ${entry.mountPath}`,
    );
  }
  if (!entry) {
    if (vols.some((v) => v.mountPath === req.mountPath)) {
      throw new RuntimeError('invalid_argument', `${req.mountPath} is taken by another volume`);
    }
    const used = new Set(vols.map((v) => v.target));
    let target = 0;
    while (used.has(target)) target++;
    if (target >= MAX_VOLUMES_PER_VM) {
      throw new RuntimeError('invalid_argument', `at most ${MAX_VOLUMES_PER_VM} volumes per VM`);
    }
    const { size } = await fs.stat(req.file).catch((err: unknown) => {
      throw new RuntimeError('invalid_argument', `volume file missing: ${errText(err)}`);
    });
    entry = { ...req, target, bytes: size, state: 'attaching' };
    vols.push(entry);
    // The intent first: after a crash, adoption and the server's recovery know the target.
    await layers.writeVm(vm.dir, rec);
  }
  try {
    const target = entry.target;
    await opening(req.file, () =>
      addDisk(vm.qmp, target, { driver: 'file', filename: req.file }, req.readOnly),
    );
    const r = await guest(vm, MOUNT, [
      String(entry.target),
      req.mountPath,
      req.readOnly ? 'ro' : 'rw',
    ]);
    if (r.code !== 0) {
      throw new RuntimeError(
        'guest_failed',
        `mounting ${req.mountPath} in the guest failed: ${r.err}`,
      );
    }
  } catch (err) {
    // Leave nothing half-attached behind.
    await guest(vm, DROP, [String(entry.target), req.mountPath]).catch(() => {});
    await removeDisk(vm.qmp, entry.target).catch(() => {});
    rec.volumes = vols.filter((v) => v !== entry);
    await layers.writeVm(vm.dir, rec);
    if (err instanceof RuntimeError) throw err;
    throw new RuntimeError('qemu_failed', `attaching the volume failed: ${errText(err)}`, {
      cause: err,
    });
  }
  entry.state = 'mounted';
  await layers.writeVm(vm.dir, rec);
}

/**
 * Unmounts a volume in the guest and unplugs it. A mount in use stays attached and throws
 * `busy`. Idempotent (an unknown volume is detached already).
 */
export async function detachVolume(
  layers: LayerStore,
  vm: LiveVm,
  volumeId: string,
): Promise<void> {
  const rec = vm.record;
  const entry = rec.volumes?.find((v) => v.volumeId === volumeId);
  if (!entry) return;
  const r = await guest(vm, UMOUNT, [String(entry.target), entry.mountPath]);
  if (r.code === 16) {
    throw new RuntimeError('busy', `${entry.mountPath} is busy in the guest: ${r.err}`);
  }
  if (r.code !== 0) {
    throw new RuntimeError('guest_failed', `unmounting ${entry.mountPath} failed: ${r.err}`);
  }
  entry.state = 'detaching';
  await layers.writeVm(vm.dir, rec);
  await removeDisk(vm.qmp, entry.target);
  rec.volumes = rec.volumes!.filter((v) => v !== entry);
  await layers.writeVm(vm.dir, rec);
}

/**
 * Grows an attached (read-write) volume to `sizeGiB`: QEMU grows the file (`block_resize`), the
 * guest re-reads the capacity and grows the mounted filesystem (`resize2fs`, online).
 */
export async function growVolume(
  layers: LayerStore,
  vm: LiveVm,
  volumeId: string,
  sizeGiB: number,
): Promise<void> {
  const entry = vm.record.volumes?.find((v) => v.volumeId === volumeId);
  if (!entry) throw new RuntimeError('not_found', `volume ${volumeId} is not attached to ${vm.id}`);
  if (entry.readOnly) {
    throw new RuntimeError('invalid_argument', 'a read-only attachment cannot be grown');
  }
  await vm.qmp.execute('block_resize', { 'node-name': nodeOf(entry.target), size: sizeGiB * GIB });
  entry.bytes = sizeGiB * GIB;
  await layers.writeVm(vm.dir, vm.record);
  const r = await guest(vm, GROW, [String(entry.target)], 300_000);
  if (r.code !== 0)
    throw new RuntimeError('guest_failed', `resize2fs in the guest failed: ${r.err}`);
}

/** What a snapshot records of a VM's volumes: the SCSI disks its device state includes. */
export function snapshotVolumes(vm: LiveVm): SnapshotVolume[] {
  return (vm.record.volumes ?? []).map((v) => ({
    volumeId: v.volumeId,
    mountPath: v.mountPath,
    readOnly: v.readOnly,
    target: v.target,
    bytes: v.bytes,
  }));
}

/** Before the device state loads: empty stand-ins for the snapshot's SCSI disks. */
export async function addPlaceholders(
  qmp: QmpClient,
  vols: readonly SnapshotVolume[],
): Promise<void> {
  for (const v of vols) {
    await addDisk(qmp, v.target, { driver: 'null-co', size: v.bytes }, true);
  }
}

/** After the restore: the guest lets go of the stand-ins (lazily) and QEMU unplugs them. */
export async function dropPlaceholders(
  vm: LiveVm | { agent: LiveVm['agent']; qmp: QmpClient },
  vols: readonly SnapshotVolume[],
): Promise<void> {
  for (const v of vols) {
    const r = await guest(vm as LiveVm, DROP, [String(v.target), v.mountPath]);
    if (r.code !== 0) throw new RuntimeError('guest_failed', `releasing ${v.mountPath}: ${r.err}`);
    await removeDisk(vm.qmp, v.target);
  }
}

/** The volumes of a VM as the runtime reports them. */
export function attachedVolumes(vols: readonly AttachedVolume[] | undefined) {
  return (vols ?? []).map((v) => ({
    volumeId: v.volumeId,
    mountPath: v.mountPath,
    readOnly: v.readOnly,
    mounted: v.state === 'mounted',
  }));
}

function errText(err: unknown): string {
  const e = err as { stderr?: string; message?: string };
  return (e.stderr?.trim() || e.message || String(err)).slice(0, 500);
}
