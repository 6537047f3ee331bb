/**
 * Volumes (issue 16): `npm run bench -- --only volume`. On one VM of the bench's runtime:
 *
 * - `volume_attach`: hot attach (QMP `blockdev-add` + `device_add scsi-hd` on the VM's
 *   virtio-scsi controller, the guest finds the disk in sysfs and mounts it) until the mount is
 *   there, then a detach (unmount, `device_del`) between samples (`volume_detach`).
 * - `volume_write` / `root_write` and `volume_read` / `root_read`: sequential `dd` of 64 MiB
 *   in the guest (1 MiB blocks, `conv=fsync` on write; read with `iflag=direct` so the guest's
 *   page cache does not answer), on the volume and on the root disk (virtio-blk over the VM's
 *   qcow2 overlay) in the same run, alternating; the ratios `volume_write_vs_root`,
 *   `volume_read_vs_root` are per pair.
 * @module
 */
import fs from 'node:fs';
import path from 'node:path';
import { createVolumeFile, type QemuRuntime } from '@fastvm/runtime';
import type { Recorder } from './stats.js';
import { now } from './sys.js';

export async function groupVolume(
  rt: QemuRuntime,
  rec: Recorder,
  root: string,
  counts: { attach: number; io: number },
): Promise<void> {
  const dir = path.join(root, 'volumes');
  fs.mkdirSync(dir, { recursive: true });
  const file = path.join(dir, 'bench.ext4');
  await createVolumeFile(file, 2);
  const id = 'bench-vol';
  await rt.launch({ id, machine: 'c1m2' });
  const sh = async (script: string) => {
    const r = await rt.exec(id, { argv: ['sh', '-c', script], timeoutMs: 300_000 });
    if (r.exitCode !== 0) throw new Error(`${script}: ${r.stderr.toString()}`);
    return r.stdout.toString();
  };
  const req = { volumeId: 'v', file, readOnly: false, mountPath: '/data/bench' };
  try {
    for (let i = 0; i < counts.attach + 1; i++) {
      const t = now();
      await rt.attachVolume(id, req);
      const attach = now() - t;
      const t2 = now();
      await rt.detachVolume(id, 'v');
      const detach = now() - t2;
      if (i === 0) continue; // warm-up: first use of the SCSI paths in this guest
      rec.add('volume_attach', 'ms', attach);
      rec.add('volume_detach', 'ms', detach);
    }
    rec.note(
      'volume_attach',
      'runtime attachVolume: blockdev-add + device_add scsi-hd, guest finds the disk (sysfs) and mounts ext4',
    );
    rec.note(
      'volume_detach',
      'runtime detachVolume: umount in the guest, SCSI delete, device_del + blockdev-del',
    );

    await rt.attachVolume(id, req);
    // dd reports "N bytes (…) copied, S s, R MB/s" on stderr: time it ourselves instead.
    const mibps = async (script: string) => {
      const t = now();
      await sh(script);
      return 64 / ((now() - t) / 1000);
    };
    const write = (p: string) => `dd if=/dev/zero of=${p} bs=1M count=64 conv=fsync 2>/dev/null`;
    const read = (p: string) =>
      `echo 3 > /proc/sys/vm/drop_caches; dd if=${p} of=/dev/null bs=1M iflag=direct 2>/dev/null`;
    for (let i = 0; i < counts.io + 1; i++) {
      const vw = await mibps(write('/data/bench/f'));
      const rw = await mibps(write('/root/bench-f'));
      const vr = await mibps(read('/data/bench/f'));
      const rr = await mibps(read('/root/bench-f'));
      if (i === 0) continue;
      rec.add('volume_write', 'MiB/s', vw);
      rec.add('root_write', 'MiB/s', rw);
      rec.add('volume_read', 'MiB/s', vr);
      rec.add('root_read', 'MiB/s', rr);
      rec.add('volume_write_vs_root', 'ratio', vw / rw);
      rec.add('volume_read_vs_root', 'ratio', vr / rr);
    }
    rec.note(
      'volume_write',
      'guest dd 64 MiB, 1 MiB blocks, conv=fsync, on the volume (virtio-scsi, raw file)',
    );
    rec.note(
      'root_write',
      'same on the root disk (virtio-blk, qcow2 overlay), same VM, alternating',
    );
    rec.note('volume_read', 'guest dd 64 MiB with iflag=direct after drop_caches, on the volume');
    rec.note('root_read', 'same on the root disk');
  } finally {
    await rt.destroy(id).catch(() => {});
    fs.rmSync(dir, { recursive: true, force: true });
  }
}
