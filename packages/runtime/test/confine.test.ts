/**
 * Confinement on a real VM (one runtime, tightened limits so that a 2-core host can show them):
 * QEMU's user and seccomp, its cgroup leaf and limits, files its user can neither write nor
 * reach, a spinning guest held to its CPU limit, and a guest that fills its memory past the
 * limit: QEMU is killed inside its cgroup, the runtime reports the exit, the host goes on.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Confinement, MEMORY_OVERHEAD_MIB } from '../src/confine.js';
import type { QemuRuntime } from '../src/runtime.js';
import { disposeRuntime, testRuntime, text, uid } from './helpers.js';

/** c1m2 under this test: a quarter of a CPU, 160 MiB of memory. */
const CPUS_PER_VCPU = 0.25;
const LIMIT_MIB = 160;

function status(pid: number): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of fs.readFileSync(`/proc/${pid}/status`, 'utf8').split('\n')) {
    const [k, v] = line.split(':\t');
    if (k && v !== undefined) out[k] = v.trim();
  }
  return out;
}

/** CPU seconds (user + system, all threads) of a process. */
function cpuSeconds(pid: number): number {
  const f = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return (Number(f[11]) + Number(f[12])) / 100; // utime, stime in clock ticks (USER_HZ 100)
}

function leafFile(leaves: string[], name: string): string {
  const f = leaves.map((l) => path.join(l, name)).find((p) => fs.existsSync(p));
  if (!f) throw new Error(`no ${name} in ${leaves.join(', ')}`);
  return fs.readFileSync(f, 'utf8').trim();
}

describe('confinement (real QEMU VM)', () => {
  let rt: QemuRuntime;
  let conf: Confinement;
  const id = uid('cf');
  let pid = 0;

  beforeAll(async () => {
    rt = await testRuntime(undefined, {
      confine: { cpusPerVcpu: CPUS_PER_VCPU, memoryOverheadMiB: LIMIT_MIB - 2048 },
    });
    conf = rt.confinement!;
    expect(conf).toBeDefined();
    pid = (await rt.launch({ id, machine: 'c1m2' })).pid;
  });
  afterAll(async () => {
    await disposeRuntime(rt);
  });

  it('default limits: vCPUs as CPUs, RAM plus the measured overhead, a pids cap', () => {
    const def = Confinement.create();
    if (typeof def === 'string') throw new Error(def);
    expect(def.limits('c2m4')).toEqual({
      cpus: 2,
      memoryBytes: (4096 + MEMORY_OVERHEAD_MIB) * 2 ** 20,
      pids: 128,
    });
  });

  it('QEMU runs as the unprivileged user, non-dumpable, with seccomp on', () => {
    const s = status(pid);
    const uids = s.Uid!.split(/\s+/).map(Number);
    expect(uids).toEqual([conf.user.uid, conf.user.uid, conf.user.uid, conf.user.uid]);
    expect(conf.user.uid).not.toBe(0);
    expect(s.Gid!.split(/\s+/).map(Number)).toEqual(Array(4).fill(conf.user.gid));
    expect(s.Groups).toBe('');
    expect(s.Seccomp).toBe('2');
    expect(s.NoNewPrivs).toBe('1');
    // Non-dumpable: its /proc files belong to root, so other QEMUs of the user cannot ptrace it.
    expect(fs.statSync(`/proc/${pid}/mem`).uid).toBe(0);
  });

  it('the helper started QEMU (no fork of the server): its child, in a session of its own', () => {
    // /proc/PID/stat: pid (comm) state ppid pgrp session ...
    const stat = (p: number) =>
      fs.readFileSync(`/proc/${p}/stat`, 'utf8').split(') ')[1]!.split(' ');
    const [, ppid, , session] = stat(pid);
    expect(fs.readFileSync(`/proc/${ppid}/comm`, 'utf8').trim()).toBe('fastvm-tapfd');
    expect(Number(session)).toBe(pid);
    expect(fs.readlinkSync(`/proc/${pid}/fd/0`)).toBe('/dev/null');
    expect(fs.readlinkSync(`/proc/${pid}/fd/1`)).toMatch(/\/qemu\.log$/);
    // The helper ignores SIGCHLD (the kernel reaps its children); QEMU must not inherit that.
    expect(BigInt(`0x${status(pid).SigIgn}`) & (1n << 16n)).toBe(0n);
  });

  it('QEMU is in its own cgroup leaf with the limits of its machine type', () => {
    const cg = conf.cgroups!;
    expect(cg).toBeDefined();
    const leaves = cg.leaves(pid);
    for (const leaf of leaves) {
      expect(fs.readFileSync(path.join(leaf, 'cgroup.procs'), 'utf8').split('\n')).toContain(
        String(pid),
      );
    }
    const limit = LIMIT_MIB * 2 ** 20;
    if (cg.version === 2) {
      expect(leafFile(leaves, 'cpu.max')).toBe('25000 100000');
      if (leaves.some((l) => fs.existsSync(path.join(l, 'cpu.max.burst')))) {
        expect(leafFile(leaves, 'cpu.max.burst')).toBe('25000');
      }
      expect(leafFile(leaves, 'memory.max')).toBe(String(limit));
    } else {
      expect(leafFile(leaves, 'cpu.cfs_quota_us')).toBe('25000');
      expect(leafFile(leaves, 'cpu.cfs_period_us')).toBe('100000');
      if (leaves.some((l) => fs.existsSync(path.join(l, 'cpu.cfs_burst_us')))) {
        expect(leafFile(leaves, 'cpu.cfs_burst_us')).toBe('25000');
      }
      expect(leafFile(leaves, 'memory.limit_in_bytes')).toBe(String(limit));
    }
    expect(leafFile(leaves, 'pids.max')).toBe('128');
  });

  it('the user can write none of the files and connect to none of the sockets', async () => {
    await rt.snapshot(id, `${id}-s`);
    const vmDir = path.join(rt.dataDir, 'vms', id);
    const vm = JSON.parse(fs.readFileSync(path.join(vmDir, 'vm.json'), 'utf8')) as {
      disk: { top: string; chain: string[] };
      memBase: string;
    };
    const snap = JSON.parse(
      fs.readFileSync(path.join(rt.dataDir, 'snapshots', `${id}-s`, 'snapshot.json'), 'utf8'),
    ) as { state: string; disk: string[] };
    const files = [
      vm.disk.top, // its own top overlay: QEMU holds it open, the user does not own it
      vm.disk.chain[0]!, // the frozen layer of the snapshot
      ...vm.disk.chain.slice(1),
      vm.memBase,
      snap.state,
      path.join(vmDir, 'vm.json'),
      path.join(vmDir, 'serial.log'),
      path.join(vmDir, 'new-file'),
      rt.image.kernel,
    ];
    const asUser = (cmd: string, ...args: string[]) =>
      spawnSync(
        'setpriv',
        [
          `--reuid=${conf.user.uid}`,
          `--regid=${conf.user.gid}`,
          '--clear-groups',
          '--',
          'sh',
          '-c',
          cmd,
          'sh',
          ...args,
        ],
        { encoding: 'utf8' },
      );
    const writable = asUser(
      'for f; do if (: >> "$f") 2>/dev/null; then echo "$f"; fi; done',
      ...files,
    );
    expect(writable.status).toBe(0);
    expect(writable.stdout).toBe('');
    // Layers are readable (QEMU reopens backing files read-only), the data dir not listable.
    const readable = asUser(
      'head -c 1 "$1" >/dev/null && ! ls "$2" >/dev/null 2>&1 && echo ok',
      vm.disk.chain[0]!,
      path.join(rt.dataDir, 'layers', 'disk'),
    );
    expect(readable.stdout.trim()).toBe('ok');
    const connect = asUser(
      'for s; do if python3 -c "import socket,sys; socket.socket(socket.AF_UNIX).connect(sys.argv[1])" "$s" 2>/dev/null; then echo "$s"; fi; done',
      ...['qmp.sock', 'agent.sock', 'memshim.sock'].map((s) => path.join(vmDir, s)),
    );
    expect(connect.stdout).toBe('');
    // The snapshot restores under the same confinement.
    const fork = await rt.restore({ id: `${id}-f`, snapshotId: `${id}-s` });
    expect(status(fork.pid).Uid!.split(/\s+/)[0]).toBe(String(conf.user.uid));
    expect(text(await rt.exec(fork.id, { argv: ['echo', 'fork'] })).out).toBe('fork\n');
    await rt.destroy(fork.id);
  });

  it('a guest spinning its vCPU gets no more CPU than its limit', async () => {
    const spin = await rt.exec(id, {
      argv: ['sh', '-c', 'nohup timeout 12 sh -c "while :; do :; done" >/dev/null 2>&1 & echo $!'],
    });
    expect(spin.exitCode).toBe(0);
    await new Promise((r) => setTimeout(r, 1000));
    const leaves = conf.cgroups!.leaves(pid);
    const throttled = () => Number(/nr_throttled (\d+)/.exec(leafFile(leaves, 'cpu.stat'))?.[1]);
    const [c0, th0, t0] = [cpuSeconds(pid), throttled(), performance.now()];
    await new Promise((r) => setTimeout(r, 5000));
    const [c1, th1, t1] = [cpuSeconds(pid), throttled(), performance.now()];
    const used = (c1 - c0) / ((t1 - t0) / 1000);
    console.log(`spinning guest: QEMU used ${used.toFixed(3)} CPUs (limit ${CPUS_PER_VCPU})`);
    expect(used).toBeLessThanOrEqual(CPUS_PER_VCPU * 1.1 + 0.02);
    expect(th1).toBeGreaterThan(th0); // the limit, not the host's load, held it back
    await rt.exec(id, { argv: ['sh', '-c', `kill ${text(spin).out.trim()} || true`] });
  });

  it('a guest filling memory past the limit kills its QEMU only: the runtime reports the exit, the host goes on', async () => {
    const leaves = conf.cgroups!.leaves(pid);
    const exited = new Promise<string>((resolve) =>
      rt.onExit((vmId, reason) => vmId === id && resolve(reason)),
    );
    // What the leaf shows while the guest fills memory (it goes away with the process).
    const memFile = (v1: string, v2: string) =>
      conf.cgroups!.version === 1 ? leafFile(leaves, v1) : leafFile(leaves, v2);
    let peak = 0;
    const watch = setInterval(() => {
      try {
        peak = Math.max(peak, Number(memFile('memory.max_usage_in_bytes', 'memory.peak')));
      } catch {
        /* gone */
      }
    }, 50);
    // 400 MiB written (not just allocated) by the guest: far more than the 160 MiB its QEMU may use.
    const fill = rt.exec(id, {
      argv: ['python3', '-c', "b = b'\\1' * (400 << 20); print(len(b))"],
      timeoutMs: 120_000,
    });
    fill.catch(() => {});
    const reason = await exited;
    clearInterval(watch);
    expect(reason).toBe('qemu exited');
    await expect(fill).rejects.toThrow();
    expect(rt.get(id)?.state).toBe('stopped');
    console.log(
      `memory-filling guest: QEMU peaked at ${(peak / 2 ** 20).toFixed(0)} MiB (limit ${LIMIT_MIB})`,
    );
    expect(peak).toBeGreaterThan((LIMIT_MIB - 16) * 2 ** 20);
    expect(peak).toBeLessThanOrEqual(LIMIT_MIB * 2 ** 20);
    // The kernel's OOM killer acted inside the VM's cgroup, on its QEMU.
    const log = execFileSync('dmesg', { encoding: 'utf8' });
    expect(log).toMatch(new RegExp(`CONSTRAINT_MEMCG.*task_memcg=[^,]*/vm-${pid},.*pid=${pid},`));
    // The leaf goes with the process.
    await expect.poll(() => leaves.some((l) => fs.existsSync(l)), { timeout: 10_000 }).toBe(false);
    // The host is unharmed: the runtime still launches and runs VMs.
    const next = await rt.launch({ id: `${id}-n`, machine: 'c1m2' });
    expect(text(await rt.exec(next.id, { argv: ['echo', 'alive'] })).out).toBe('alive\n');
    expect(() => execFileSync('kill', ['-0', String(pid)], { stdio: 'ignore' })).toThrow();
  }, 180_000);
});
