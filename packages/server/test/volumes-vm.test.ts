/**
 * Volumes on real QEMU VMs (issue 16), one sequence over shared VMs: hot attach to a running VM
 * (virtio-scsi + scsi-hd over QMP, mounted by the agent), write with checksums, a second
 * writable attach refused (409), a busy detach (502 `guest_umount_busy`, still attached), a
 * read-only attach on another launched VM that root cannot write through (the host refuses),
 * a restore that re-attaches the snapshot's volume, an online grow seen by the guest, and the
 * data surviving the VM's delete.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TestClient } from './helpers.js';
import { startVmTestServer, type VmTestServer } from './vm-server.js';

const sha256File = (f: string) =>
  crypto.createHash('sha256').update(fs.readFileSync(f)).digest('hex');

describe('volumes (real QEMU VMs)', () => {
  let vms: VmTestServer | undefined;
  let api: TestClient;
  let vol: { id: string };
  let file: string;
  let vm1: string;
  let vm2: string;
  let sum: string;

  const sh = async (vm: string, command: string) => {
    const r = await api.post(`/v1/vms/${vm}/exec`, { command });
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    return r.body as { exitCode: number; stdout: string; stderr: string };
  };
  const launch = async (body: object) => {
    const r = await api.post('/v1/vms', body);
    expect(r.status, JSON.stringify(r.body)).toBe(201);
    return r.body;
  };

  beforeAll(async () => {
    vms = await startVmTestServer();
    ({ api } = vms);
    const created = await api.post('/v1/volumes', { name: 'data', sizeGiB: 1, accessMode: 'rw' });
    expect(created.status).toBe(201);
    vol = created.body;
    file = path.join(vms.dataDir, 'volumes', `${vol.id}.ext4`);
    const [a, b] = await Promise.all([
      launch({ machineType: 'c1m2', name: 'vol-1' }),
      launch({ machineType: 'c1m2', name: 'vol-2' }),
    ]);
    vm1 = a.id as string;
    vm2 = b.id as string;
  }, 240_000);

  afterAll(async () => {
    await vms?.close();
  });

  it('hot-attaches to a running VM, writes; a second writer is refused; a busy mount stays', async () => {
    const t0 = Date.now();
    const att = await api.post(`/v1/vms/${vm1}/volumes`, {
      volumeId: vol.id,
      mountPath: '/data/v',
    });
    console.log(`hot attach → mounted: ${Date.now() - t0} ms`);
    expect(att.status, JSON.stringify(att.body)).toBe(200);
    expect(att.body).toMatchObject({ mountStatus: 'mounted', readOnly: false });
    if (vms?.runtime.confinement) {
      // A confined QEMU got the file for its open only: it is root's again, for root alone.
      const st = fs.statSync(file);
      expect({ uid: st.uid, mode: st.mode & 0o777 }).toEqual({ uid: 0, mode: 0o600 });
    }
    const w = await sh(
      vm1,
      'head -c 4194304 /dev/urandom > /data/v/blob && sha256sum /data/v/blob | cut -d" " -f1 && grep " /data/v " /proc/mounts',
    );
    expect(w.exitCode, w.stderr).toBe(0);
    const [line, mount] = w.stdout.trim().split('\n');
    sum = line!;
    expect(mount).toMatch(/^\/dev\/sd[a-z]+ \/data\/v ext4 rw/);

    const second = await api.post(`/v1/vms/${vm2}/volumes`, {
      volumeId: vol.id,
      mountPath: '/data/v',
    });
    expect(second.status).toBe(409);

    // A process with its working directory on the volume keeps the mount busy.
    await sh(vm1, 'cd /data/v && (nohup sleep 600 >/dev/null 2>&1 &)');
    const busy = await api.del(`/v1/vms/${vm1}/volumes/${vol.id}`);
    expect(busy.status).toBe(502);
    expect(busy.body.error).toBe('guest_umount_busy');
    expect((await api.get(`/v1/vms/${vm1}`)).body.volumes[0].mountStatus).toBe('mounted');
    expect((await sh(vm1, 'sha256sum /data/v/blob')).stdout).toContain(sum);

    const snap = await api.post('/v1/snapshots', { vmId: vm1, name: 'with-volume' });
    expect(snap.status).toBe(201);
    expect(snap.body.volumes).toEqual([
      { volumeId: vol.id, mountPath: '/data/v', readOnly: false },
    ]);
    (globalThis as { snapId?: string }).snapId = snap.body.id;

    await sh(vm1, 'pkill -x sleep; sleep 0.2');
    const ok = await api.del(`/v1/vms/${vm1}/volumes/${vol.id}`);
    expect(ok.status, JSON.stringify(ok.body)).toBe(200);
    expect((await sh(vm1, 'grep -c " /data/v " /proc/mounts || true')).stdout.trim()).toBe('0');
  }, 180_000);

  it('read-only on another VM: same bytes, and root in the guest cannot write (host-enforced)', async () => {
    const before = sha256File(file);
    const att = await api.post(`/v1/vms/${vm2}/volumes`, {
      volumeId: vol.id,
      mountPath: '/mnt/ro',
      readOnly: true,
    });
    expect(att.status, JSON.stringify(att.body)).toBe(200);
    expect((await sh(vm2, 'sha256sum /mnt/ro/blob')).stdout).toContain(sum);
    expect((await sh(vm2, 'echo x > /mnt/ro/new')).exitCode).not.toBe(0);
    // Past the mount: make the block device writable in the guest and write to it raw.
    const raw = await sh(
      vm2,
      'd=$(awk \'$2 == "/mnt/ro" { print $1 }\' /proc/mounts); blockdev --setrw "$d"; ' +
        'dd if=/dev/zero of="$d" bs=4096 count=1 seek=1000 oflag=direct conv=notrunc 2>&1; echo "dd=$?"',
    );
    expect(raw.stdout).not.toContain('dd=0');
    expect(sha256File(file)).toBe(before);
    expect((await api.del(`/v1/vms/${vm2}/volumes/${vol.id}`)).status).toBe(200);
  }, 120_000);

  it("a restore re-attaches the snapshot's volume; it grows online; data outlives the VM", async () => {
    const snapId = (globalThis as { snapId?: string }).snapId!;
    const restored = await launch({ snapshotId: snapId, name: 'vol-3' });
    expect(restored.attachmentWarnings).toBeUndefined();
    expect(restored.volumes).toEqual([
      { volumeId: vol.id, mountPath: '/data/v', mountStatus: 'mounted', readOnly: false },
    ]);
    const vm3 = restored.id as string;
    expect((await sh(vm3, 'sha256sum /data/v/blob')).stdout).toContain(sum);
    expect((await sh(vm3, 'echo from-vm3 > /data/v/note && sync')).exitCode).toBe(0);

    const size = async () =>
      Number((await sh(vm3, 'df -B1 --output=size /data/v | tail -1')).stdout.trim());
    const small = await size();
    const grown = await api.patch(`/v1/volumes/${vol.id}`, { sizeGiB: 2 });
    expect(grown.status, JSON.stringify(grown.body)).toBe(200);
    expect(grown.body.sizeGiB).toBe(2);
    const big = await size();
    expect(big).toBeGreaterThan(small + 0.9 * 2 ** 30);
    expect(fs.statSync(file).size).toBe(2 * 2 ** 30);

    // Deleting the VM detaches the volume and keeps its data; another VM reads it back.
    expect((await api.del(`/v1/vms/${vm3}`)).status).toBe(200);
    expect((await api.get(`/v1/volumes/${vol.id}`)).body).toMatchObject({
      status: 'ready',
      mountedCount: 0,
    });
    await api.post(`/v1/vms/${vm1}/volumes`, { volumeId: vol.id, mountPath: '/data/back' });
    const back = await sh(vm1, 'cat /data/back/note; sha256sum /data/back/blob');
    expect(back.stdout).toContain('from-vm3');
    expect(back.stdout).toContain(sum);
  }, 180_000);
});
