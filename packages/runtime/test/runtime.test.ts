/**
 * Snapshot, restore and fork with real QEMU VMs (issue #3).
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadGuestImage } from '../src/qemu.js';
import type { QemuRuntime } from '../src/runtime.js';
import {
  disposeRuntime,
  qemuPids,
  strayFiles,
  tempDataDir,
  testRuntime,
  text,
  uid,
} from './helpers.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const PREFIX = uid('rt');

describe('runtime (real QEMU VMs)', () => {
  let rt: QemuRuntime;
  const sh = async (vm: string, script: string) =>
    text(await rt.exec(vm, { argv: ['sh', '-c', script], timeoutMs: 30_000 }));

  beforeAll(async () => {
    rt = await testRuntime();
  });

  afterAll(async () => {
    await disposeRuntime(rt);
  });

  it('snapshots a running VM that keeps running, and forks it 10 ways in isolation', async () => {
    const src = `${PREFIX}-src`;
    await rt.launch({ id: src, machine: 'c1m2' });
    // State on disk, in guest memory (tmpfs lives in RAM) and in a running process.
    const setup = await sh(
      src,
      'echo disk-v1 > /root/f; echo mem-v1 > /dev/shm/m; nohup sleep 1000 >/dev/null 2>&1 & echo ok',
    );
    expect(setup.out).toBe('ok\n');

    const snapId = `${PREFIX}-s1`;
    const info = await rt.snapshot(src, snapId);
    expect(info.pauseMs).toBeGreaterThan(0);
    expect(info.pauseMs).toBeLessThan(info.totalMs + 1);

    // The source keeps running and changing after the snapshot.
    expect((await sh(src, 'cat /root/f /dev/shm/m')).out).toBe('disk-v1\nmem-v1\n');
    await sh(src, 'echo disk-v2 > /root/f; echo mem-v2 > /dev/shm/m');

    const forks = Array.from({ length: 10 }, (_, i) => `${PREFIX}-f${i}`);
    await Promise.all(forks.map((id) => rt.restore({ id, snapshotId: snapId })));
    const seen = await Promise.all(
      forks.map((id) =>
        sh(id, 'cat /root/f /dev/shm/m; pgrep -x sleep >/dev/null && echo proc-alive'),
      ),
    );
    for (const s of seen) expect(s.out).toBe('disk-v1\nmem-v1\nproc-alive\n');

    // Each fork writes its own values; none sees another's, and the source sees none.
    await Promise.all(
      forks.map((id, i) => sh(id, `echo fork-${i} > /root/f; echo fmem-${i} > /dev/shm/m; sync`)),
    );
    const after = await Promise.all(forks.map((id) => sh(id, 'cat /root/f /dev/shm/m')));
    after.forEach((s, i) => expect(s.out).toBe(`fork-${i}\nfmem-${i}\n`));
    expect((await sh(src, 'cat /root/f /dev/shm/m')).out).toBe('disk-v2\nmem-v2\n');

    // Forks are different machines.
    const hostnames = await Promise.all(forks.map((id) => sh(id, 'cat /etc/machine-id')));
    expect(new Set(hostnames.map((h) => h.out)).size).toBe(10);

    await Promise.all(forks.map((id) => rt.destroy(id)));
    await rt.destroy(src);
    await rt.deleteSnapshot(snapId);
    expect(qemuPids(PREFIX)).toEqual([]);
  });

  it('snapshots a fork of a fork (depth 3) and survives deleting parents', async () => {
    const gen0 = `${PREFIX}-g0`;
    await rt.launch({ id: gen0, machine: 'c1m2' });
    await sh(gen0, 'echo 0 > /root/gen; echo 0 > /dev/shm/gen');
    let parent = gen0;
    const snaps: string[] = [];
    for (let depth = 1; depth <= 3; depth++) {
      const snap = `${PREFIX}-d${depth}`;
      await rt.snapshot(parent, snap);
      snaps.push(snap);
      const child = `${PREFIX}-g${depth}`;
      await rt.restore({ id: child, snapshotId: snap });
      const r = await sh(
        child,
        `cat /root/gen /dev/shm/gen; echo ${depth} >> /root/gen; echo ${depth} >> /dev/shm/gen`,
      );
      expect(r.out).toBe(
        Array.from({ length: depth }, (_, i) => `${i}\n`)
          .join('')
          .repeat(2),
      );
      parent = child;
    }
    // Delete every snapshot while their forks still run: the forks keep working, and can still be
    // snapshotted and restored.
    for (const s of snaps) await rt.deleteSnapshot(s);
    expect((await sh(`${PREFIX}-g3`, 'cat /root/gen')).out).toBe('0\n1\n2\n3\n');
    await rt.snapshot(`${PREFIX}-g3`, `${PREFIX}-d4`);
    await rt.restore({ id: `${PREFIX}-g4`, snapshotId: `${PREFIX}-d4` });
    expect((await sh(`${PREFIX}-g4`, 'cat /root/gen /dev/shm/gen')).out).toBe(
      '0\n1\n2\n3\n'.repeat(2),
    );
    for (let d = 0; d <= 4; d++) await rt.destroy(`${PREFIX}-g${d}`);
    await rt.deleteSnapshot(`${PREFIX}-d4`);
    expect(strayFiles(rt.dataDir)).toEqual([]);
  });

  it('re-adopts VMs after the owning process is killed with SIGKILL, leaving no orphans', async () => {
    const ids = [`${PREFIX}-k1`, `${PREFIX}-k2`];
    const ownerDir = tempDataDir();
    const owner = spawn(
      process.execPath,
      ['--import', 'tsx', path.join(here, 'fixtures', 'owner.ts'), ownerDir, ...ids],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    );
    let out = '';
    await new Promise<void>((resolve, reject) => {
      owner.stdout.on('data', (d: Buffer) => {
        out += d.toString();
        if (out.includes('READY')) resolve();
      });
      owner.on('exit', (code) => reject(new Error(`owner exited early (${code}): ${out}`)));
    });
    owner.kill('SIGKILL');
    await new Promise((r) => owner.once('exit', r));
    expect(qemuPids(PREFIX).length).toBe(2);

    // A new owner of the same data dir asks for k1 only: k1 is adopted and works, k2 is an orphan
    // and is stopped.
    const next = await testRuntime(ownerDir);
    const result = await next.adopt([ids[0]!, `${PREFIX}-never-existed`]);
    expect(result.adopted).toEqual([ids[0]]);
    expect(result.orphans).toEqual([ids[1]]);
    expect(result.lost).toEqual([`${PREFIX}-never-existed`]);
    const r = await next.exec(ids[0]!, { argv: ['cat', '/root/owner'] });
    expect(r.stdout.toString()).toBe(`${ids[0]}\n`);
    expect(qemuPids(`${PREFIX}-k2`)).toEqual([]);
    await next.destroyAll();
    expect(qemuPids(PREFIX)).toEqual([]);
    expect(fs.readdirSync(path.join(ownerDir, 'vms'))).toEqual([]);
    expect(strayFiles(ownerDir)).toEqual([]);
    await disposeRuntime(next);
  });

  it('launches with a larger disk and grows the filesystem', async () => {
    const id = `${PREFIX}-big`;
    const info = await rt.launch({ id, machine: 'c1m2', diskGiB: 20 });
    expect(info.diskGiB).toBe(20);
    const r = await sh(id, "df -BG --output=size / | tail -1 | tr -d ' G'");
    expect(Number(r.out)).toBeGreaterThanOrEqual(19);
    await rt.destroy(id);
  });

  it('refuses to run a guest whose RAM is not mapped privately, leaving the base file intact', async () => {
    // Without the memshim QEMU would map the golden's memory file shared, and the guest's writes
    // would land in the file every VM of that machine type restores from.
    const broken = await testRuntime(undefined, {
      image: { ...loadGuestImage(), memshim: '/nonexistent/fastvm-memshim.so' },
    });
    try {
      const id = `${PREFIX}-noshim`;
      await expect(broken.launch({ id, machine: 'c1m2' })).rejects.toThrow(/mapped shared/);
      expect(qemuPids(id)).toEqual([]);
    } finally {
      await disposeRuntime(broken);
    }
    // The golden is still good: a normal launch restores and runs it.
    const ok = `${PREFIX}-after`;
    await rt.launch({ id: ok, machine: 'c1m2' });
    expect((await sh(ok, 'echo fine')).out).toBe('fine\n');
    await rt.destroy(ok);
  });

  it('leaves no process or layer behind', async () => {
    expect(qemuPids(PREFIX)).toEqual([]);
    expect(strayFiles(rt.dataDir)).toEqual([]);
  });
});
