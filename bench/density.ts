/**
 * `density_c1m2` (issue 19): how many idle c1m2 VMs this host admits through the API, and what
 * each one costs. A real server with host admission at its defaults (and an org quota raised out
 * of the way) restores c1m2 VMs from one snapshot, a batch at a time, until the server answers
 * `503 host_capacity`; then every admitted VM must still answer, the host must not have
 * OOM-killed anything, and the memory and idle CPU per VM are measured.
 * @module
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { createQemuRuntime } from '@fastvm/runtime';
import { startServer } from '@fastvm/server';
import { APIError, FastVM, type VM } from 'fastvm';
import { cpuMs, memAvailableMiB, processMemMiB, sleep } from './sys.js';

export interface DensityResult {
  /** VMs admitted before the first refusal. */
  admitted: number;
  /** Whether the stop was a 503 host_capacity (false: `max` was reached first). */
  refused: boolean;
  refusal?: string;
  /** Admitted VMs that answered `true` after the idle window. */
  answered: number;
  /** Host MemAvailable drop per VM, MiB. */
  memPerVmMiB: number;
  /** Mean PSS of the VMs' QEMU processes, MiB. */
  pssPerVmMiB: number;
  /** Idle CPU per VM over the window, % of one core. */
  idleCpuPerVmPct: number;
  /** OOM kills on the host during the run (`oom_kill` of /proc/vmstat). */
  oomKills: number;
  seconds: number;
}

function oomKills(): number {
  const m = /^oom_kill (\d+)$/m.exec(fs.readFileSync('/proc/vmstat', 'utf8'));
  return m ? Number(m[1]) : 0;
}

export async function densityC1m2(
  root: string,
  runtimeLog: (msg: string) => void,
  opts: { max: number; batch?: number; idleMs?: number },
): Promise<DensityResult> {
  const t0 = performance.now();
  const runtime = await createQemuRuntime({
    dataDir: path.join(root, 'density-rt'),
    log: runtimeLog,
  });
  const key = 'fvm_' + crypto.randomBytes(24).toString('base64url');
  const server = await startServer({
    dataDir: path.join(root, 'density-srv'),
    runtime,
    bootstrapKey: key,
    port: 0,
    logLevel: 'silent',
    shutdownGraceMs: 2000,
    hostCapacity: {},
    quotaDefaults: { vcpu: 100_000, memoryMiB: 100_000_000, diskGiB: 1_000_000 },
  });
  const client = new FastVM({ apiKey: key, baseUrl: server.url, maxRetries: 0, timeout: 300_000 });
  const vms: VM[] = [];
  try {
    const base = await client.launch({ machine: 'c1m2', name: 'density-base' });
    await client.run(base, 'true');
    const snap = await client.snapshot(base, { name: 'density' });
    await client.remove(base);
    await runtime.digestsSettled(snap.id);

    const memBefore = memAvailableMiB();
    const oomBefore = oomKills();
    let refusal: string | undefined;
    const batch = opts.batch ?? 8;
    while (vms.length < opts.max && !refusal) {
      const n = Math.min(batch, opts.max - vms.length);
      const got = await Promise.allSettled(
        Array.from({ length: n }, () => client.restore(snap, { name: `d${vms.length}` })),
      );
      for (const r of got) {
        if (r.status === 'fulfilled') vms.push(r.value);
        else if (r.reason instanceof APIError && r.reason.status === 503) {
          refusal ??= `${r.reason.code ?? r.reason.status}: ${r.reason.message}`;
        } else throw r.reason;
      }
      runtimeLog(`density: ${vms.length} admitted${refusal ? ` (refused: ${refusal})` : ''}`);
    }
    // Idle, then measure what they hold and burn.
    await sleep(5000);
    const pids = vms.map((vm) => runtime.get(vm.id)?.pid);
    const cpu0 = pids.map((pid) => cpuMs(pid));
    const idleMs = opts.idleMs ?? 20_000;
    await sleep(idleMs);
    const cpu1 = pids.map((pid) => cpuMs(pid));
    const idleCpu = cpu1.reduce((a, c, i) => a + (c - cpu0[i]! || 0), 0) / idleMs;
    const memAfter = memAvailableMiB();
    let pss = 0;
    for (const pid of pids) {
      try {
        if (pid) pss += processMemMiB(pid).pss;
      } catch {
        /* exited: counted by the answer check below */
      }
    }
    const answers = await Promise.allSettled(vms.map((vm) => client.run(vm, 'true')));
    const answered = answers.filter(
      (a) => a.status === 'fulfilled' && a.value.exitCode === 0,
    ).length;
    const n = Math.max(vms.length, 1);
    return {
      admitted: vms.length,
      refused: refusal !== undefined,
      ...(refusal ? { refusal } : {}),
      answered,
      memPerVmMiB: (memBefore - memAfter) / n,
      pssPerVmMiB: pss / n,
      idleCpuPerVmPct: (idleCpu * 100) / n,
      oomKills: oomKills() - oomBefore,
      seconds: (performance.now() - t0) / 1000,
    };
  } finally {
    await Promise.allSettled(vms.map((vm) => client.remove(vm)));
    await client.close();
    await server.close();
    await runtime.destroyAll();
  }
}
