/**
 * The warm pool: launch() hands out a VM restored from the golden snapshot and warmed up ahead of
 * time (real QEMU VMs).
 */
import { GUEST_NET } from '../src/guest-net.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { QemuRuntime } from '../src/runtime.js';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { disposeRuntime, strayFiles, testRuntime, text, uid } from './helpers.js';

const PREFIX = uid('pl');

/** QEMU processes whose command line names a path in `dataDir`. */
function qemuOf(dataDir: string): number[] {
  try {
    const out = execFileSync('pgrep', ['-f', `^qemu-system.*${dataDir}/`], { encoding: 'utf8' });
    return out.split('\n').filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

async function waitPool(rt: QemuRuntime, n: number, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (rt.poolReady('c1m2') < n) {
    if (Date.now() > deadline) throw new Error(`pool did not reach ${n} VMs`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('warm pool (real QEMU VMs)', () => {
  let rt: QemuRuntime;
  const logs: string[] = [];
  const sh = async (vm: string, script: string) =>
    text(await rt.exec(vm, { argv: ['sh', '-c', script], timeoutMs: 30_000 }));

  beforeAll(async () => {
    rt = await testRuntime(undefined, { pool: 2, prewarm: ['c1m2'], log: (m) => logs.push(m) });
  });

  afterAll(async () => {
    await disposeRuntime(rt);
  });

  it('adopt() while the pool fills leaves the pooled VMs alone', async () => {
    // The server adopts its VMs at start, while the prewarmed pool is filling.
    const deadline = Date.now() + 60_000;
    while (!fs.readdirSync(path.join(rt.dataDir, 'vms')).some((d) => d.startsWith('pool-'))) {
      if (Date.now() > deadline) throw new Error('the pool never started filling');
      await new Promise((r) => setTimeout(r, 5));
    }
    const res = await rt.adopt([]);
    expect(res.orphans).toEqual([]);
    await waitPool(rt, 2);
    expect(logs.filter((m) => /pool fill .* failed/.test(m))).toEqual([]);
  });

  it('launches from the pool: each VM has its own identity, disk and memory', async () => {
    await waitPool(rt, 2);
    const [a, b] = [`${PREFIX}-a`, `${PREFIX}-b`];
    await Promise.all([
      rt.launch({ id: a, machine: 'c1m2' }),
      rt.launch({ id: b, machine: 'c1m2', hostname: 'box-b' }),
    ]);
    expect(logs.filter((m) => /launched .* from the pool/.test(m))).toHaveLength(2);
    expect(
      rt
        .list()
        .map((v) => v.id)
        .sort(),
    ).toEqual([a, b].sort());

    const id = 'cat /etc/machine-id; hostname; echo $(( $(date +%s) / 60 ))';
    const [ra, rb] = [await sh(a, id), await sh(b, id)];
    const [midA, hostA, minA] = ra.out.trim().split('\n');
    const [midB, hostB] = rb.out.trim().split('\n');
    expect(hostA).toBe(`vm-${a.slice(0, 8)}`);
    expect(hostB).toBe('box-b');
    expect(midA).toMatch(/^[0-9a-f]{32}$/);
    expect(midA).not.toBe(midB);
    // The guest clock was set at hand-out, not left at the golden snapshot's time.
    expect(Math.abs(Number(minA) - Math.floor(Date.now() / 60_000))).toBeLessThanOrEqual(1);

    // The NIC has the fixed guest configuration of the golden (guest-net.ts), nothing else.
    expect((await sh(a, 'ip -br addr show dev eth0 scope global')).out).toMatch(
      new RegExp(
        `${GUEST_NET.ipv6}/64.*${GUEST_NET.ipv4.replaceAll('.', '\\.')}/32|${GUEST_NET.ipv4.replaceAll('.', '\\.')}/32.*${GUEST_NET.ipv6}/64`,
      ),
    );

    await sh(a, 'echo only-a > /root/f; echo mem-a > /dev/shm/m');
    expect((await sh(b, 'cat /root/f /dev/shm/m 2>&1 || echo missing')).out).toContain('missing');

    // A pooled VM snapshots and forks like any other.
    await rt.snapshot(a, `${PREFIX}-s`);
    await rt.restore({ id: `${PREFIX}-f`, snapshotId: `${PREFIX}-s` });
    expect((await sh(`${PREFIX}-f`, 'cat /root/f /dev/shm/m')).out).toBe('only-a\nmem-a\n');

    // The pool refills in the background.
    await waitPool(rt, 2);
  });

  it('replaces a waiting VM that dies', async () => {
    const pooled = () =>
      fs
        .readdirSync(path.join(rt.dataDir, 'vms'))
        .filter((d) => d.startsWith('pool-'))
        .sort();
    await waitPool(rt, 2);
    const before = pooled();
    const victim = before[0]!;
    const rec = JSON.parse(
      fs.readFileSync(path.join(rt.dataDir, 'vms', victim, 'vm.json'), 'utf8'),
    ) as { pid: number };
    process.kill(rec.pid, 'SIGKILL');
    const deadline = Date.now() + 60_000;
    while (pooled().includes(victim) || rt.poolReady('c1m2') < 2) {
      if (Date.now() > deadline) throw new Error('the pool did not replace the dead VM');
      await new Promise((r) => setTimeout(r, 50));
    }
    expect(pooled()).toHaveLength(2);
    expect(pooled()).toContain(before[1]);
  });

  it('hands a VM over before the guest acknowledges its identity; one it refuses is stopped', async () => {
    await waitPool(rt, 2);
    const exits: Array<[string, string]> = [];
    const off = rt.onExit((vm, reason) => exits.push([vm, reason]));
    try {
      // The agent refuses this hostname, but only after launch() has returned: no command runs
      // in it (it would run as its source), and the VM is stopped.
      const bad = `${PREFIX}-bad`;
      await rt.launch({ id: bad, machine: 'c1m2', hostname: 'not a hostname!' });
      await expect(rt.exec(bad, { argv: ['true'], timeoutMs: 30_000 })).rejects.toThrow(
        /identity|not running|not found/,
      );
      const deadline = Date.now() + 30_000;
      while (!exits.some(([vm]) => vm === bad)) {
        if (Date.now() > deadline) throw new Error('the VM that refused its identity still runs');
        await new Promise((r) => setTimeout(r, 20));
      }
      expect(exits.find(([vm]) => vm === bad)![1]).toMatch(/did not take its identity.*hostname/);
      await rt.destroy(bad);
      // What is sent right after a launch already sees the new identity.
      const good = `${PREFIX}-g`;
      await rt.launch({ id: good, machine: 'c1m2', hostname: 'fresh-host' });
      expect((await sh(good, 'hostname')).out).toBe('fresh-host\n');
      await rt.destroy(good);
    } finally {
      off();
    }
  });

  it('re-adopts a VM that came from the pool; close leaves no pooled VM behind', async () => {
    const a = `${PREFIX}-a`;
    const dataDir = rt.dataDir;
    await rt.detach();
    // The two waiting VMs are gone; the three handed out keep running.
    expect(qemuOf(dataDir)).toHaveLength(3);
    rt = await testRuntime(dataDir);
    const res = await rt.adopt([a, `${PREFIX}-b`, `${PREFIX}-f`]);
    expect(res.adopted.sort()).toEqual([a, `${PREFIX}-b`, `${PREFIX}-f`].sort());
    expect((await sh(a, 'cat /root/f')).out).toBe('only-a\n');
    await rt.destroyAll();
    expect(qemuOf(dataDir)).toEqual([]);
    expect(strayFiles(dataDir)).toEqual([]);
  });
});

describe('warm pool with ports of its own (real QEMU VMs)', () => {
  it('a pool VM whose restore fails gives its reserved port back', async (ctx) => {
    const logs: string[] = [];
    const rt = await testRuntime(undefined, { pool: 1, log: (m) => logs.push(m) });
    try {
      // Confined, QEMU gets its tap from the helper, which attaches only to taps that exist:
      // a port whose tap is missing fails the restore. (Unconfined, QEMU would create it.)
      if (!rt.confinement) ctx.skip();
      const reserved: string[] = [];
      const released: string[] = [];
      rt.setPoolNetwork({
        reserve: async (name) => {
          reserved.push(name);
          return { tap: `fvnt${PREFIX.slice(-8)}`, mac: GUEST_NET.mac };
        },
        release: async (name) => {
          released.push(name);
        },
      });
      // The pool is empty: this launch restores cold, then the pool fills.
      await rt.launch({ id: `${PREFIX}-nt`, machine: 'c1m2' });
      const deadline = Date.now() + 60_000;
      while (released.length === 0 && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 50));
      }
      expect(reserved[0]).toMatch(/^pool-c1m2-/);
      expect(released[0]).toBe(reserved[0]);
      expect(rt.poolReady('c1m2')).toBe(0);
      expect(logs.some((m) => /pool fill for c1m2 failed/.test(m))).toBe(true);
    } finally {
      await disposeRuntime(rt);
    }
  });
});
