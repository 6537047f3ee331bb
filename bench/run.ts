/**
 * FastVM benchmarks: `npm run bench [-- --quick] [-- --only restore,launch,...]`.
 *
 * Runs every scenario of issue #6 through the real stack (runtime, server, SDK) on a temporary
 * runtime data dir, with the baselines (cold boot, plain QEMU migration) measured in the same run,
 * prints a table and writes bench/results/latest.{json,md}. See bench/README.md.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { MACHINES, createQemuRuntime, defaultCacheDir, type QemuRuntime } from '@fastvm/runtime';
import { startServer, type ServerHandle } from '@fastvm/server';
import { FastVM } from 'fastvm';
import { hostTscKhz, kernelCmdline } from '@fastvm/runtime/qemu';
import { createVm, loadH1, loadH2, sdkRoundTrips, startApiServer, type ApiServer } from './api.js';
import { h2loadUnavailable, loadApiH2Load, loadFloor } from './h2load.js';
import { cliStart } from './cli.js';
import { dashboardBench, dashboardUnavailable } from './dashboard.js';
import { coldBoot, plainRestore, plainSnapshot, type DirectEnv } from './direct.js';
import { startPyExec, type PyExec } from './exec-py.js';
import { densityC1m2 } from './density.js';
import { startForkApiBench, type ForkApiBench } from './fork.js';
import {
  NET_COUNTS,
  NET_SCENARIOS,
  measureServer,
  netUnavailable,
  noteNet,
  recordNet,
  startVmServer,
  type VmServer,
} from './net.js';
import { benchAdmission } from './admission.js';
import { benchEgress } from './egress.js';
import { benchImport } from './images.js';
import { benchCluster } from './cluster.js';
import { loadAgent, loadWindow, startProxyBenchServer } from './proxy.js';
import { groupSnapDisk } from './snapdisk.js';
import { buildReport, printReport, writeReport } from './report.js';
import { Recorder } from './stats.js';
import { groupVolume } from './volume.js';
import { groupBuild } from './build.js';
import { groupMobility } from './mobility.js';
import {
  cmdlineMentions,
  cpuMs,
  gitRevision,
  hostInfo,
  killHard,
  memAvailableMiB,
  now,
  processMemMiB,
  sleep,
} from './sys.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, '..');

const GROUPS = [
  'restore',
  'launch',
  'snapshot',
  'plain',
  'fanout',
  'exec',
  'api',
  'cli',
  'net',
  'proxy',
  'snapdisk',
  'density',
  'confine',
  'volume',
  'dashboard',
  'egress',
  'build_import',
  'build',
  'cluster',
  'mobility',
] as const;
/** Groups a plain run leaves out (minutes of CPU, or they fill the host): `--only` them. */
const OPT_IN: readonly Group[] = ['density'];
/** Groups that run no VM of the bench's runtime (no warm-up launches needed). */
const NO_VM: readonly Group[] = [
  'api',
  'cli',
  'net',
  'proxy',
  'density',
  'dashboard',
  'egress',
  'build_import',
  'cluster',
];
type Group = (typeof GROUPS)[number];

const { values: argv } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    only: { type: 'string' },
    out: { type: 'string', default: path.join(here, 'results') },
    fanout: { type: 'string' },
    'density-max': { type: 'string', default: '1000' },
    help: { type: 'boolean', short: 'h', default: false },
  },
});
if (argv.help) {
  console.log(
    `usage: npm run bench -- [--quick] [--only ${GROUPS.join(',')}] [--out DIR]\n` +
      `(--only also takes ${NET_SCENARIOS.join(', ')}: they select the group net)\n` +
      'Writes DIR/latest.json and DIR/latest.md (default bench/results).',
  );
  process.exit(0);
}
const quick = argv.quick ?? false;
const only = new Set<Group>(
  (argv.only ? argv.only.split(',') : GROUPS.filter((g) => !OPT_IN.includes(g))).map((name) => {
    // The networked scenarios share their servers: any of their names selects the group.
    const g = (NET_SCENARIOS as readonly string[]).includes(name.replace(/_off$/, ''))
      ? 'net'
      : name;
    if (!(GROUPS as readonly string[]).includes(g)) throw new Error(`unknown group ${g}`);
    return g as Group;
  }),
);

/** Sample counts: the full run, and a quick one that finishes in a few minutes. */
const N = quick
  ? {
      restore: 8,
      restoreUnflat: 3,
      gen2Small: 3,
      launch: 8,
      confine: 8,
      cold: 3,
      snapVms: 1,
      snapPer: 5,
      restore256: 5,
      plain: 3,
      fanout: [
        [10, 2],
        [50, 1],
      ] as [number, number][],
      exec: 100,
      apiSeconds: 3,
      h2loadRequests: 30_000,
      roundTrips: 200,
      admissionLaunches: 60,
      cliStart: 10,
      dashboard: 5,
    }
  : {
      restore: 20,
      restoreUnflat: 10,
      gen2Small: 5,
      launch: 20,
      confine: 20,
      cold: 8,
      snapVms: 2,
      snapPer: 5,
      restore256: 10,
      plain: 8,
      fanout: [
        [10, 5],
        [50, 3],
        [100, 1],
      ] as [number, number][],
      exec: 500,
      apiSeconds: 10,
      h2loadRequests: 100_000,
      roundTrips: 200,
      admissionLaunches: 200,
      cliStart: 30,
      dashboard: 15,
    };

if (argv.fanout) {
  N.fanout = argv.fanout.split(',').map((p) => {
    const m = /^(\d+)x(\d+)$/.exec(p.trim());
    if (!m) throw new Error(`--fanout: expected SIZExRUNS, got ${p}`);
    return [Number(m[1]), Number(m[2])];
  });
}

const DIRTY_FILE = '/dev/shm/bench-dirty';
/**
 * Shell command that changes `mib` MiB of guest memory: a tmpfs file of random bytes (1 MiB of
 * /dev/urandom written `mib` times by python3: ~3.5x faster under TCG than
 * `head -c NM /dev/urandom`, which is the fallback).
 */
const dirtyCmd = (mib: number) =>
  `python3 -c 'import os\ns = os.urandom(1 << 20)\nwith open("${DIRTY_FILE}", "wb") as f:\n  for _ in range(${mib}): f.write(s)' ` +
  `|| head -c ${mib}M /dev/urandom > ${DIRTY_FILE}`;

// -------------------------------------------------------------------------------------------------
// Cleanup: every VM and process we start is killed even on failure or Ctrl-C.

fs.mkdirSync(defaultCacheDir(), { recursive: true });
const benchRoot = fs.mkdtempSync(path.join(defaultCacheDir(), 'bench-'));
const runtimes = new Set<QemuRuntime>();
const directPids = new Set<number>();
const apiServers = new Set<ApiServer>();
const servers = new Set<ServerHandle>();
const netServers = new Set<VmServer>();
let reaped = false;

/** Last resort, synchronous: kill everything of ours and remove the bench dir. */
function reapSync(): void {
  if (reaped) return;
  reaped = true;
  for (const rt of runtimes) for (const vm of rt.list()) killHard(vm.pid);
  for (const pid of directPids) killHard(pid);
  for (const s of apiServers) s.child.kill('SIGKILL');
  for (const s of netServers) s.reapSync();
  // Anything else whose command line names our private dir (e.g. a VM of a detached runtime, or
  // the memshim's frozen copy of a QEMU process).
  for (const entry of fs.readdirSync('/proc')) {
    const pid = Number(entry);
    if (pid > 1 && pid !== process.pid && cmdlineMentions(pid, benchRoot)) killHard(pid);
  }
  fs.rmSync(benchRoot, { recursive: true, force: true });
}

async function gracefulCleanup(): Promise<void> {
  for (const s of servers) await s.close().catch(() => {});
  for (const s of apiServers) await s.close().catch(() => {});
  for (const s of netServers) await s.close().catch(() => {});
  for (const rt of runtimes) await rt.destroyAll().catch(() => {});
}

process.on('exit', reapSync);
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
  process.once(sig, () => {
    console.error(`\nbench: ${sig}, stopping every VM and removing ${benchRoot}`);
    void Promise.race([gracefulCleanup(), sleep(15_000)]).finally(() => {
      reapSync();
      process.exit(130);
    });
  });
}

// -------------------------------------------------------------------------------------------------

const rec = new Recorder();
const errors: string[] = [];
const info: string[] = [];
/** Restore phases the runtime logs, by VM id. */
const restorePhases = new Map<string, Record<string, number>>();
/** Background flatten durations the runtime logs, by snapshot id. */
const flattenMs = new Map<string, number>();
const flattenFailed = new Map<string, string>();

function runtimeLog(msg: string): void {
  if (process.env.DEBUG) console.log(`  [rt] ${msg}`);
  let m = /^runtime: restored (\S+) from (\S+): (.*) ms$/.exec(msg);
  if (m) {
    const phases: Record<string, number> = {};
    for (const part of m[3]!.split(', ')) {
      const [k, v] = part.split(' ');
      if (k && v && Number.isFinite(Number(v))) phases[k] = Number(v);
    }
    restorePhases.set(m[1]!, phases);
    return;
  }
  m = /^runtime: flattened (\S+) \(.*\) in (\d+) ms/.exec(msg);
  if (m) {
    flattenMs.set(m[1]!, Number(m[2]));
    return;
  }
  m = /^runtime: flatten of (\S+) failed: (.*)$/.exec(msg);
  if (m) {
    flattenFailed.set(m[1]!, m[2]!);
    return;
  }
  if (/golden/.test(msg)) {
    info.push(msg);
    console.log(`  ${msg}`);
  }
}

const log = (s: string) => console.log(s);
let rt: QemuRuntime;
let env: DirectEnv;

async function firstCmd(r: QemuRuntime, id: string): Promise<void> {
  const res = await r.exec(id, { argv: ['true'], timeoutMs: 60_000 });
  if (res.exitCode !== 0) throw new Error(`true in ${id} exited ${res.exitCode}`);
}

async function sh(id: string, script: string, timeoutMs = 600_000): Promise<string> {
  const res = await rt.exec(id, { argv: ['sh', '-c', script], timeoutMs });
  if (res.exitCode !== 0) {
    throw new Error(`${script} in ${id} exited ${res.exitCode}: ${res.stderr.toString()}`);
  }
  return res.stdout.toString();
}

/** Dirty `mib` MiB of guest memory (a tmpfs file of random bytes); returns the time it took. */
async function dirty(id: string, mib: number): Promise<number> {
  const t0 = now();
  await sh(id, dirtyCmd(mib));
  return now() - t0;
}

function snapshotJson(snapId: string): { delta?: { bytes: number } } | undefined {
  try {
    return JSON.parse(
      fs.readFileSync(path.join(rt.dataDir, 'snapshots', snapId, 'snapshot.json'), 'utf8'),
    ) as { delta?: { bytes: number } };
  } catch {
    return undefined;
  }
}

/**
 * Wait until the runtime's background flatten (or merge) of a snapshot is done, if it has one, so
 * that it does not compete with the next measurement for the CPU. (A snapshot whose deltas are
 * small stays a delta: nothing to wait for.)
 */
async function waitFlatten(snapId: string): Promise<void> {
  await rt.memorySettled(snapId);
  if (flattenFailed.has(snapId)) {
    throw new Error(`flatten of ${snapId} failed: ${flattenFailed.get(snapId)}`);
  }
}

/** restore → first `true` answered; destroys the VM unless `keep`. */
async function restoreSample(
  snapId: string,
  id: string,
  keep = false,
): Promise<{ readyMs: number; firstCmdMs: number; pid: number }> {
  const t0 = now();
  const vm = await rt.restore({ id, snapshotId: snapId });
  const t1 = now();
  await firstCmd(rt, id);
  const t2 = now();
  if (!keep) await rt.destroy(id);
  return { readyMs: t1 - t0, firstCmdMs: t2 - t0, pid: vm.pid };
}

function phasesOf(id: string): Record<string, number> | undefined {
  const p = restorePhases.get(id);
  restorePhases.delete(id);
  return p;
}

async function destroyAllVms(): Promise<void> {
  await Promise.allSettled(rt.list().map((vm) => rt.destroy(vm.id)));
}

/** A flattened snapshot of a freshly launched, idle c1m2 VM: the source of restores and forks. */
const BASE_SNAP = 'base-c1m2';
let baseSnapReady = false;
async function ensureBaseSnapshot(): Promise<string> {
  if (baseSnapReady) return BASE_SNAP;
  await rt.launch({ id: 'base-src', machine: 'c1m2' });
  await firstCmd(rt, 'base-src');
  await rt.snapshot('base-src', BASE_SNAP);
  await rt.destroy('base-src');
  await waitFlatten(BASE_SNAP);
  baseSnapReady = true;
  return BASE_SNAP;
}

// -------------------------------------------------------------------------------------------------
// Scenarios

/** restore_2g, restore_8g (interleaved), unflattened restores, second-generation snapshots. */
async function groupRestore(): Promise<void> {
  const snap2 = await ensureBaseSnapshot();
  // 8 GiB: c4m8 (4 vCPUs, multi-threaded TCG on our 2 cores): the only 8 GiB machine type.
  await rt.launch({ id: 'r8-src', machine: 'c4m8' });
  await firstCmd(rt, 'r8-src');
  await rt.snapshot('r8-src', 'r8-snap');
  await rt.destroy('r8-src');
  await waitFlatten('r8-snap');

  // Restores right after a snapshot, before the background flatten merged its delta.
  await rt.launch({ id: 'ru-src', machine: 'c1m2' });
  await firstCmd(rt, 'ru-src');
  for (let i = 0; i < N.restoreUnflat; i++) {
    const sid = `ru-snap-${i}`;
    await rt.snapshot('ru-src', sid);
    const deltaMiB = (snapshotJson(sid)?.delta?.bytes ?? 0) / 2 ** 20;
    const s = await restoreSample(sid, `ru-${i}`);
    rec.add('restore_2g_unflattened', 'ms', s.firstCmdMs);
    const ph = phasesOf(`ru-${i}`);
    if (ph) rec.addPhases('restore_2g_unflattened', ph);
    rec.note(
      'restore_2g_unflattened',
      `restore started right after the snapshot (delta ~${deltaMiB.toFixed(0)} MiB applied, flatten running)`,
    );
    await waitFlatten(sid);
    await rt.deleteSnapshot(sid);
  }
  await rt.destroy('ru-src');

  for (let i = 0; i < N.restore; i++) {
    for (const [name, snap, gen2] of [
      ['restore_2g', snap2, 'snapshot_gen2'],
      ['restore_8g', 'r8-snap', 'snapshot_gen2_8g'],
    ] as const) {
      const id = `${name === 'restore_2g' ? 'r2' : 'r8'}-${i}`;
      const s = await restoreSample(snap, id, true);
      rec.add(name, 'ms', s.firstCmdMs);
      rec.add(`${name}_ready`, 'ms', s.readyMs);
      const ph = phasesOf(id);
      if (ph) rec.addPhases(name, ph);
      if (i < N.gen2Small) {
        // Snapshot of a restored VM that changed (almost) nothing: cost must not follow RAM size.
        const sid = `${id}-g2`;
        const inf = await rt.snapshot(id, sid);
        await firstCmd(rt, id); // the source resumed
        const delta = snapshotJson(sid)?.delta?.bytes;
        rec.add(`${gen2}_0`, 'ms', inf.pauseMs);
        rec.add(`${gen2}_total_0`, 'ms', inf.totalMs);
        if (delta !== undefined) rec.add(`${gen2}_total_0_delta`, 'MiB', delta / 2 ** 20);
        await waitFlatten(sid);
        await rt.deleteSnapshot(sid);
      }
      await rt.destroy(id);
    }
  }
  rec.note('restore_2g', 'c1m2 (1 vCPU, 2 GiB): restore() + first `true` answered');
  rec.note('restore_8g', 'c4m8 (4 vCPUs, 8 GiB, MTTCG on 2 cores): restore() + first `true`');
  rec.note('snapshot_gen2_8g_0', 'pause, snapshot of a restored c4m8 VM, ~0 MiB changed');
  await rt.deleteSnapshot('r8-snap');
}

/** launch() of a c1m2 → first `true`, then destroy; records `<name>` and `<name>_ready`. */
async function launchSample(r: QemuRuntime, id: string, name: string): Promise<void> {
  const t0 = now();
  await r.launch({ id, machine: 'c1m2' });
  const t1 = now();
  await firstCmd(r, id);
  const t2 = now();
  await r.destroy(id);
  rec.add(name, 'ms', t2 - t0);
  rec.add(`${name}_ready`, 'ms', t1 - t0);
}

/**
 * launch as the server does it (warm pool of 1, FASTVM_POOL's default), launch without the pool
 * (golden restore + identity), and cold boot of the same guest, interleaved.
 */
async function groupLaunch(): Promise<void> {
  // The server's setup: a pool of one warm VM per machine type. A launch takes it, the pool
  // refills in the background; samples are taken once it has (a user launching every few
  // seconds), and the refill time is recorded too.
  const prt = await createQemuRuntime({
    dataDir: path.join(benchRoot, 'pool-rt'),
    log: runtimeLog,
    pool: 1,
    prewarm: ['c1m2'],
  });
  runtimes.add(prt);
  try {
    const waitReady = async () => {
      const t = now();
      while (prt.poolReady('c1m2') < 1) {
        if (now() - t > 120_000) throw new Error('the warm pool did not refill in 120 s');
        await sleep(5);
      }
      return now() - t;
    };
    await waitReady();
    for (let i = 0; i < N.launch; i++) {
      const t0 = now();
      await launchSample(prt, `lp-${i}`, 'launch');
      rec.add('pool_refill', 'ms', now() - t0 + (await waitReady()));
    }
  } finally {
    await prt.destroyAll();
    runtimes.delete(prt);
  }
  rec.note(
    'launch',
    'launch() of c1m2 from the warm pool (server default) + first `true` answered',
  );
  rec.note('pool_refill', 'launch until the pool holds a warm VM again (restore + warm-up)');

  const every = Math.max(1, Math.floor(N.launch / N.cold));
  let cold = 0;
  const coldSample = async () => {
    const c = await coldBoot(env, MACHINES.c1m2, `cold-${cold++}`);
    rec.add('cold_boot', 'ms', c.readyMs);
    rec.add('cold_boot_first_cmd', 'ms', c.firstCmdMs);
  };
  for (let i = 0; i < N.launch; i++) {
    await launchSample(rt, `l-${i}`, 'launch_unpooled');
    const ph = phasesOf(`l-${i}`);
    if (ph) rec.addPhases('launch_unpooled', ph);
    if (i % every === 0 && cold < N.cold) await coldSample();
  }
  while (cold < N.cold) await coldSample();
  rec.note(
    'launch_unpooled',
    'launch() of c1m2 without a pool (golden restore + identity) + first `true` answered',
  );
  rec.note('cold_boot', 'own QEMU, same command line, kernel boot to agent HELLO answered');
}

/** Snapshot pause/total of running VMs with 0, 64, 256 MiB changed, and of restored VMs. */
async function groupSnapshot(): Promise<void> {
  const series = async (
    label: string,
    mib: number,
    start: (id: string) => Promise<void>,
    pauseName: string,
    totalName: string,
    keepAs?: string,
  ) => {
    for (let v = 0; v < N.snapVms; v++) {
      const id = `${label}-${v}`;
      await start(id);
      await firstCmd(rt, id);
      if (mib > 0) rec.add(`dirty_${mib}`, 'ms', await dirty(id, mib));
      for (let k = 0; k < N.snapPer; k++) {
        const sid = `${id}-k${k}`;
        const inf = await rt.snapshot(id, sid);
        const delta = snapshotJson(sid)?.delta?.bytes;
        const t = now();
        await firstCmd(rt, id); // the source resumed and answers
        rec.add('snapshot_resume_first_cmd', 'ms', now() - t);
        rec.add(pauseName, 'ms', inf.pauseMs);
        rec.add(totalName, 'ms', inf.totalMs);
        if (delta !== undefined) rec.add(`${totalName}_delta`, 'MiB', delta / 2 ** 20);
        await waitFlatten(sid);
        const f = flattenMs.get(sid);
        if (f !== undefined) rec.add(`flatten_${label}`, 'ms', f);
        await rt.deleteSnapshot(sid);
      }
      if (keepAs && v === 0) {
        await rt.snapshot(id, keepAs);
        await waitFlatten(keepAs);
      }
      await rt.destroy(id);
    }
  };
  const launch = async (id: string) => {
    await rt.launch({ id, machine: 'c1m2' });
  };
  await series('s0', 0, launch, 'snapshot_pause_0', 'snapshot_total_0');
  await series('s64', 64, launch, 'snapshot_pause_64', 'snapshot_total_64');
  await series('s256', 256, launch, 'snapshot_pause_256', 'snapshot_total_256', SNAP_256);
  snap256Ready = true;
  const base = await ensureBaseSnapshot();
  await series(
    'g2',
    256,
    async (id) => {
      await rt.restore({ id, snapshotId: base });
    },
    'snapshot_gen2_256',
    'snapshot_gen2_total_256',
  );
  rec.note('snapshot_pause_0', 'launched c1m2, nothing changed; pause = stop → cont');
  rec.note('snapshot_gen2_256', 'VM restored from a snapshot, then 256 MiB changed');
  rec.note(
    'snapshot_resume_first_cmd',
    'after snapshot() returns, the source answers `true` (it resumed)',
  );
}

const SNAP_256 = 'snap-256';
let snap256Ready = false;

/** Our restore vs the plain QEMU way (whole RAM migrated to a file), 256 MiB changed. */
async function groupPlain(): Promise<void> {
  if (!snap256Ready) {
    await rt.launch({ id: 'p-src', machine: 'c1m2' });
    await firstCmd(rt, 'p-src');
    rec.add('dirty_256', 'ms', await dirty('p-src', 256));
    await rt.snapshot('p-src', SNAP_256);
    await rt.destroy('p-src');
    await waitFlatten(SNAP_256);
    snap256Ready = true;
  }
  const plain = await plainSnapshot(env, MACHINES.c1m2, dirtyCmd(256));
  try {
    rec.add('plain_save_256', 'ms', plain.saveMs);
    rec.note(
      'plain_save_256',
      `migrate of the whole RAM to a file (${(plain.stateBytes / 2 ** 20).toFixed(0)} MiB)`,
    );
    const n = Math.max(N.plain, N.restore256);
    for (let i = 0; i < n; i++) {
      if (i < N.restore256) {
        const id = `r256-${i}`;
        const s = await restoreSample(SNAP_256, id, true);
        const mem = processMemMiB(s.pid);
        await rt.destroy(id);
        rec.add('restore_256', 'ms', s.firstCmdMs);
        rec.add('restore_256_pss', 'MiB', mem.pss);
        const ph = phasesOf(id);
        if (ph) rec.addPhases('restore_256', ph);
      }
      if (i < N.plain) {
        const p = await plainRestore(env, plain, `pr-${i}`);
        rec.add('plain_restore_256', 'ms', p.firstCmdMs);
        rec.add('plain_restore_256_pss', 'MiB', p.pssMiB);
      }
    }
  } finally {
    fs.rmSync(plain.dir, { recursive: true, force: true });
  }
  await rt.deleteSnapshot(SNAP_256);
  snap256Ready = false;
  rec.note('restore_256', 'FastVM restore of a c1m2 snapshot with 256 MiB changed + first `true`');
  rec.note(
    'plain_restore_256',
    'plain QEMU: memory-backend-ram, -incoming "exec:cat file" (whole RAM) + first `true`',
  );
  rec.note('restore_256_pss', 'PSS of the restored QEMU after its first command');
}

/** N concurrent restores of one snapshot, each running `true`; memory per fork. */
async function groupFanout(): Promise<void> {
  const snap = await ensureBaseSnapshot();
  let run = 0;
  let forkApi: ForkApiBench | undefined;
  for (const [n, runs] of N.fanout) {
    for (let r = 0; r < runs; r++) {
      await destroyAllVms();
      await sleep(1500); // let the previous run's teardown settle
      const ids = Array.from({ length: n }, (_, i) => `f${run}-${i}`);
      run++;
      const memBefore = memAvailableMiB();
      const t0 = now();
      const each: number[] = [];
      const results = await Promise.allSettled(
        ids.map(async (id) => {
          await rt.restore({ id, snapshotId: snap });
          await firstCmd(rt, id);
          each.push(now() - t0);
        }),
      );
      const allMs = now() - t0;
      const failed: PromiseSettledResult<unknown>[] = results.filter(
        (x) => x.status === 'rejected',
      );
      const ok = n - failed.length;
      // Idle a moment, then measure what the forks hold (and the CPU they burn while idle).
      const cpu0 = ids.map((id) => cpuMs(rt.get(id)?.pid));
      await sleep(2000);
      const cpu1 = ids.map((id) => cpuMs(rt.get(id)?.pid));
      const idleCpu = cpu1.reduce((a, c, i) => a + (c - cpu0[i]! || 0), 0) / 2000;
      const memAfter = memAvailableMiB();
      let pss = 0;
      let rss = 0;
      for (const id of ids) {
        const vm = rt.get(id);
        if (!vm) continue;
        try {
          const m = processMemMiB(vm.pid);
          pss += m.pss;
          rss += m.rss;
          rec.add('fanout_pss_per_fork', 'MiB', m.pss);
        } catch {
          /* exited */
        }
      }
      const name = n === 100 ? 'fanout_100_idle' : `fanout_${n}_all`;
      let again = '';
      if (n >= 100) {
        // Still alive and answering after idling.
        const t1 = now();
        const second = await Promise.allSettled(
          ids.filter((id) => rt.get(id)).map((id) => firstCmd(rt, id)),
        );
        const bad = second.filter((x) => x.status === 'rejected').length;
        again = `; ${second.length - bad}/${n} answered again after idling, in ${(now() - t1).toFixed(0)} ms`;
        if (bad) failed.push(...second.filter((x) => x.status === 'rejected'));
      }
      if (failed.length === 0) rec.add(name, 'ms', allMs);
      else {
        const why = (failed[0] as PromiseRejectedResult).reason as unknown;
        errors.push(`${name}: ${failed.length}/${n} forks failed (first: ${String(why)})`);
      }
      if (n === 10) for (const e of each) rec.add('fanout_10_each', 'ms', e);
      const drop = memBefore - memAfter;
      if (ok > 0 && drop > 0) rec.add('fanout_mem_per_fork', 'MiB', drop / ok);
      else if (ok > 0) {
        info.push(
          `fanout ${n}: MemAvailable rose by ${(-drop).toFixed(0)} MiB (other users freed memory); run not counted in fanout_mem_per_fork`,
        );
      }
      if (ok > 0) {
        rec.add('fanout_rss_per_fork', 'MiB', rss / ok);
      }
      rec.note(
        name,
        `${n} concurrent restores of one c1m2 snapshot, time until all answered \`true\`; ${failed.length} failed` +
          `; idle CPU ${(idleCpu * 100).toFixed(0)}% of a core for all ${ok}` +
          again,
      );
      log(
        `  fanout ${n}: all answered in ${allMs.toFixed(0)} ms, ${failed.length} failed, ` +
          `MemAvailable ${(memAfter - memBefore).toFixed(0)} MiB, PSS ${pss.toFixed(0)} MiB, ` +
          `idle CPU ${(idleCpu * 100).toFixed(0)}% of a core${again}`,
      );
      await destroyAllVms();
      if (n === 10) {
        // fork_10_api: the same fan-out as one API call (bench/fork.ts), right after this run.
        try {
          if (!forkApi) {
            forkApi = await startForkApiBench(benchRoot, runtimeLog);
            runtimes.add(forkApi.runtime);
            servers.add(forkApi.server);
          }
          await sleep(1500);
          const f = await forkApi.run(10);
          rec.add('fork_10_api', 'ms', f.allMs);
          rec.add('fork_10_api_call', 'ms', f.callMs);
          log(
            `  fork 10 (API): all answered in ${f.allMs.toFixed(0)} ms (the call ${f.callMs.toFixed(0)} ms)`,
          );
        } catch (err) {
          errors.push(`fork_10_api: ${String(err)}`);
        }
      }
    }
  }
  if (forkApi) {
    await forkApi.close().catch(() => {});
    servers.delete(forkApi.server);
    runtimes.delete(forkApi.runtime);
  }
  rec.note(
    'fork_10_api',
    'one POST /v1/snapshots/{id}/fork (count 10) through the SDK until all 10 answered `true` through the SDK; run after each fanout_10_all run',
  );
  rec.note('fork_10_api_call', 'the fork call alone (it answers when all 10 are running)');
  rec.note(
    'fanout_mem_per_fork',
    'drop of /proc/meminfo MemAvailable per fork, 2 s after all answered (other users of the host add noise)',
  );
  rec.note(
    'fanout_pss_per_fork',
    'PSS of each fork QEMU process (smaps_rollup), shared pages split',
  );
}

/**
 * `run(vm, "true")` through the SDK (HTTP/2) vs the runtime's agent client, same VM; and through
 * the Python SDK (exec_py), in the same interleaved blocks.
 */
async function groupExec(): Promise<void> {
  const rt2 = await createQemuRuntime({ dataDir: path.join(benchRoot, 'srv-rt'), log: runtimeLog });
  runtimes.add(rt2);
  const key = 'fvm_' + crypto.randomBytes(24).toString('base64url');
  const server = await startServer({
    dataDir: path.join(benchRoot, 'srv'),
    runtime: rt2,
    bootstrapKey: key,
    port: 0,
    logLevel: 'silent',
    shutdownGraceMs: 2000,
  });
  servers.add(server);
  const client = new FastVM({ apiKey: key, baseUrl: server.url, maxRetries: 0 });
  let vmId: string | undefined;
  let pid = 0;
  let py: PyExec | undefined;
  try {
    await client.warmup();
    const vm = await client.launch({ machine: 'c1m2', timeout: 300_000 });
    vmId = vm.id;
    pid = rt2.get(vm.id)?.pid ?? 0;
    try {
      py = await startPyExec(server.url, key, vm.id);
    } catch (err) {
      errors.push(`exec_py: ${err instanceof Error ? err.message : String(err)}`);
    }
    // The runtime's own time for the exec each SDK call made: the SDK's time less it is what the
    // API added to that very call (the guest's time varies from one exec to the next by more
    // than the whole HTTP path costs, so a difference of two p50s is noisy).
    const runtimeExec = rt2.exec.bind(rt2);
    let lastRuntimeMs = 0;
    rt2.exec = async (...args: Parameters<typeof runtimeExec>) => {
      const t = now();
      try {
        return await runtimeExec(...args);
      } finally {
        lastRuntimeMs = now() - t;
      }
    };
    const viaSdk = async () => {
      const t = now();
      const r = await client.run(vm, 'true');
      if (r.exitCode !== 0) throw new Error(`sdk run exited ${r.exitCode}`);
      const ms = now() - t;
      return { ms, overhead: ms - lastRuntimeMs };
    };
    const viaAgent = async () => {
      const t = now();
      const r = await runtimeExec(vm.id, { argv: ['sh', '-c', 'true'], timeoutMs: 60_000 });
      if (r.exitCode !== 0) throw new Error(`agent exec exited ${r.exitCode}`);
      return now() - t;
    };
    for (let i = 0; i < 20; i++) {
      await viaSdk();
      await viaAgent();
    }
    if (py) await py.run(20);
    // Alternate blocks so that a burst of noise hits both series alike.
    const block = 50;
    for (let done = 0; done < N.exec; done += block) {
      const k = Math.min(block, N.exec - done);
      for (let i = 0; i < k; i++) {
        const { ms, overhead } = await viaSdk();
        rec.add('exec_sdk', 'ms', ms);
        rec.add('exec_sdk_overhead', 'ms', overhead);
      }
      for (let i = 0; i < k; i++) rec.add('exec_agent', 'ms', await viaAgent());
      if (py) for (const v of await py.run(k)) rec.add('exec_py', 'ms', v);
    }
    const st = client.stats;
    rec.note(
      'exec_sdk',
      `SDK run(vm, "true") → real server → QemuRuntime; protocol ${String(st.protocol)}, ${st.sessionsOpened} session(s)`,
    );
    rec.note('exec_agent', 'runtime exec(["sh","-c","true"]) over the agent socket, same VM');
    rec.note(
      'exec_sdk_overhead',
      'per exec_sdk call: its time less the runtime exec() time of the same call (what the SDK, HTTP/2 and the server added)',
    );
    if (py) {
      rec.note(
        'exec_py',
        `Python SDK await client.run(vm, "true") → same server and VM, blocks interleaved with exec_sdk; ` +
          `protocol ${py.protocol}, ${py.connections} connection(s)`,
      );
    }
  } finally {
    await py?.close().catch(() => {});
    if (vmId) await client.remove(vmId).catch((e: unknown) => errors.push(`exec: ${String(e)}`));
    await client.close().catch(() => {});
    await server.close().catch(() => {});
    servers.delete(server);
    if (pid) killHard(pid); // normally gone already (removed above)
    runtimes.delete(rt2);
  }
}

/** The body `GET /v1/vms/{id}` answers (for the floor server to answer with). */
async function fetchVmBody(srv: ApiServer, vmId: string): Promise<string> {
  const res = await fetch(`${srv.url}/v1/vms/${vmId}`, { headers: { 'x-api-key': srv.key } });
  if (!res.ok) throw new Error(`GET /v1/vms/${vmId}: ${res.status}`);
  return res.text();
}

/** GET /v1/vms/{id} throughput, HTTP/2 vs HTTP/1.1 (FakeRuntime server in a child process). */
async function groupApi(): Promise<void> {
  const dir = path.join(benchRoot, 'api');
  fs.mkdirSync(dir, { recursive: true });
  const srv = await startApiServer(dir);
  apiServers.add(srv);
  try {
    const vmId = await createVm(srv);
    // Latency of single SDK calls (formerly a test with a p50 < 50 ms assertion).
    const rt = await sdkRoundTrips(srv, vmId, N.roundTrips);
    for (const v of rt.run) rec.add('api_sdk_run', 'ms', v);
    for (const v of rt.get) rec.add('api_sdk_get', 'ms', v);
    rec.note(
      'api_sdk_run',
      `SDK run(vm, "true") → FakeRuntime server (child process), alternating with get; ${rt.sessions} h2c session(s)`,
    );
    rec.note('api_sdk_get', 'SDK get(vm) → FakeRuntime server (child process), same session');
    await benchAdmission(rec, path.join(dir, 'admission'), N.admissionLaunches);
    const h2 = await loadH2(srv, vmId, 64, N.apiSeconds);
    for (const c of h2.perSecond) rec.add('api_h2_rps', 'req/s', c);
    rec.add('api_h2_server_cpu_per_req', 'ms', h2.serverCpuMsPerReq);
    rec.add('api_h2_client_cpu_per_req', 'ms', h2.clientCpuMsPerReq);
    rec.note(
      'api_h2_rps',
      `FakeRuntime server (child process); 64 streams on ${h2.sessions} HTTP/2 connection; ` +
        `${h2.total} requests in ${h2.seconds} s, ${h2.errors} errors; samples = 1-s windows`,
    );
    const h1 = await loadH1(srv, vmId, 64, N.apiSeconds);
    for (const c of h1.perSecond) rec.add('api_h1_rps', 'req/s', c);
    rec.add('api_h1_server_cpu_per_req', 'ms', h1.serverCpuMsPerReq);
    rec.add('api_h1_client_cpu_per_req', 'ms', h1.clientCpuMsPerReq);
    rec.note(
      'api_h1_rps',
      `FakeRuntime server (child process); 64 keep-alive sockets (${h1.sessions} opened); ` +
        `${h1.total} requests in ${h1.seconds} s, ${h1.errors} errors; samples = 1-s windows`,
    );
    rec.note(
      'api_h2_server_cpu_per_req',
      'CPU time of the server process per request (utime+stime / requests): less load-sensitive than req/s',
    );
    if (h2.errors || h1.errors) errors.push(`api: ${h2.errors} h2 / ${h1.errors} h1 errors`);
    // The same GET under a C load generator, against the floor of a bare node:http2 server.
    const why = h2loadUnavailable();
    if (why) {
      info.push(`api_h2load: skipped, ${why}`);
    } else {
      const body = await fetchVmBody(srv, vmId);
      for (const proto of ['h2', 'h1'] as const) {
        const api = await loadApiH2Load(proto, srv, vmId, N.h2loadRequests);
        const floor = await loadFloor(proto, body, N.h2loadRequests);
        for (const r of api) {
          rec.add(`api_${proto}load_rps`, 'req/s', r.rps);
          rec.add(`api_${proto}load_server_cpu_per_req`, 'ms', r.serverCpuMsPerReq);
        }
        for (const r of floor) {
          rec.add(`api_${proto}_floor_rps`, 'req/s', r.rps);
          rec.add(`api_${proto}_floor_server_cpu_per_req`, 'ms', r.serverCpuMsPerReq);
        }
        const failed = api.reduce((n, r) => n + r.failed, 0);
        if (failed) errors.push(`api_${proto}load: ${failed} requests failed`);
      }
      rec.note(
        'api_h2load_rps',
        `h2load -c1 -m64 (one HTTP/2 connection, 64 streams), rounds of ${N.h2loadRequests} × GET /v1/vms/{id} after a warm-up; FakeRuntime server`,
      );
      rec.note(
        'api_h1load_rps',
        `h2load --h1 -c64 -m1 (64 HTTP/1.1 keep-alive connections), rounds of ${N.h2loadRequests} × GET /v1/vms/{id} after a warm-up`,
      );
      rec.note(
        'api_h2_floor_rps',
        'the same h2load runs against a bare node:http2 (node:http for h1) server answering the same body (no routing, auth, store, metrics)',
      );
    }
  } finally {
    await srv.close();
    apiServers.delete(srv);
  }
}

/**
 * Idle c1m2 VMs through the API until host admission refuses (opt-in: `--only density`, with
 * `--density-max N` to stop earlier). Destroys the bench runtime's VMs first: it fills the host.
 */
async function groupDensity(): Promise<void> {
  await destroyAllVms();
  const r = await densityC1m2(benchRoot, runtimeLog, { max: Number(argv['density-max']) });
  rec.add('density_c1m2', 'count', r.admitted);
  rec.add('density_mem_per_vm', 'MiB', r.memPerVmMiB);
  rec.add('density_pss_per_vm', 'MiB', r.pssPerVmMiB);
  rec.add('density_idle_cpu_per_vm', '%', r.idleCpuPerVmPct);
  rec.note(
    'density_c1m2',
    `idle c1m2 restores through the API (host admission at its defaults) until ` +
      `${r.refused ? `refused (${r.refusal})` : `the cap of ${argv['density-max']}`}; ` +
      `${r.answered}/${r.admitted} answered after idling; ${r.oomKills} OOM kills on the host; ${r.seconds.toFixed(0)} s`,
  );
  if (r.answered !== r.admitted)
    errors.push(`density: ${r.admitted - r.answered} VMs did not answer`);
  if (r.oomKills > 0) errors.push(`density: the host OOM-killed ${r.oomKills} processes`);
}

/** `fastvm --version` start-up vs `node -e 0`, interleaved. */
async function groupCli(): Promise<void> {
  const { cli, node } = await cliStart(N.cliStart);
  for (const v of cli) rec.add('cli_start', 'ms', v);
  for (const v of node) rec.add('node_start', 'ms', v);
  rec.note('cli_start', '`node packages/cli/bin/fastvm.cjs --version`, spawn → exit (built CLI)');
  rec.note('node_start', '`node -e 0`, spawn → exit, interleaved with cli_start (the floor)');
}

/** The web console in headless Chromium (bench/dashboard.ts), FakeRuntime server. */
async function groupDashboard(): Promise<void> {
  const why = dashboardUnavailable();
  if (why) {
    info.push(`dashboard: skipped, ${why}`);
    log(`  dashboard: skipped, ${why}`);
    return;
  }
  const dir = path.join(benchRoot, 'dashboard');
  fs.mkdirSync(dir, { recursive: true });
  const srv = await startApiServer(dir);
  apiServers.add(srv);
  try {
    const vmIds: string[] = [];
    for (let i = 0; i < 20; i++) vmIds.push(await createVm(srv));
    const d = await dashboardBench(srv.url, srv.key, vmIds, N.dashboard);
    for (const v of d.cold) rec.add('dash_load_cold', 'ms', v);
    for (const v of d.warm) rec.add('dash_load_warm', 'ms', v);
    for (const v of d.blank) rec.add('dash_blank', 'ms', v);
    for (const v of d.exec) rec.add('dash_exec', 'ms', v);
    for (const v of d.execFetch) rec.add('dash_exec_fetch', 'ms', v);
    rec.note(
      'dash_load_cold',
      `new browser context (empty cache), signed in: navigation to / until the 20-VM table shows; ` +
        `${d.assetKiB.toFixed(0)} KiB of JS/CSS (uncompressed)`,
    );
    rec.note('dash_load_warm', 'reload of the same page: assets from the cache (immutable)');
    rec.note('dash_blank', 'navigation to /healthz in the same context: the floor of a page load');
    rec.note('dash_exec', 'Enter in the exec form → streamed `echo` output and exit line shown');
    rec.note('dash_exec_fetch', 'the same NDJSON exec by fetch from the page, no UI (baseline)');
  } finally {
    await srv.close();
    apiServers.delete(srv);
  }
}

/**
 * Networked scenarios (issue 23, bench/net.ts): the real server in a child process, through the
 * SDK, with host networking on (own bridge and subnet) and with FASTVM_NETWORK=off, one server
 * after the other; quick: on, off; full: on, off, off, on (a drift of the host load hits both).
 */
async function groupNet(): Promise<void> {
  const why = await netUnavailable();
  if (why) {
    const line = `net: skipped, networked servers need root (CAP_NET_ADMIN), /dev/net/tun and nft: ${why}`;
    info.push(line);
    log(`  ${line}`);
    return;
  }
  const order = quick ? [true, false] : [true, false, false, true];
  for (const networked of order) {
    const srv = await startVmServer(networked);
    netServers.add(srv);
    try {
      log(`  server ${networked ? 'with networking' : 'FASTVM_NETWORK=off'}: ${srv.summary}`);
      if (networked && !srv.summary.startsWith('networking:')) {
        throw new Error(`the networked server runs without networking: ${srv.summary}`);
      }
      const s = await measureServer(srv, NET_COUNTS, log);
      recordNet(rec, s, networked);
      if (networked) noteNet(rec, srv.summary);
      if (s.poolMisses) {
        info.push(`net: the pool was not seen refilled before ${s.poolMisses} launch sample(s)`);
      }
    } finally {
      await srv.close();
      netServers.delete(srv);
    }
  }
}

/** Image import (issue 15, bench/images.ts): pull + unpack + ext4 of a ~100 MiB image, cold and cached. */
async function groupBuildImport(): Promise<void> {
  const skipped = await benchImport(rec, log, { quick, root: benchRoot });
  if (skipped) {
    info.push(skipped);
    log(`  ${skipped}`);
  }
}

/** Egress firewall on against off (issue 20, bench/egress.ts): connect and resolve from a VM. */
async function groupEgress(): Promise<void> {
  const skipped = await benchEgress(rec, log, { quick, root: benchRoot });
  if (skipped) {
    info.push(skipped);
    log(`  ${skipped}`);
  }
}

/** Several hosts (issue 22, bench/cluster.ts): the forwarding hop, a placed launch. */
async function groupCluster(): Promise<void> {
  const skipped = await benchCluster(rec, log, { quick });
  if (skipped) {
    info.push(skipped);
    log(`  ${skipped}`);
  }
}

/**
 * The service proxy (issue 14, bench/proxy.ts): 1 KiB answers over 32 keep-alive connections
 * through the proxy and to the same VM port directly, in alternating windows; a server with
 * networking in a child process, its VM running an asyncio server from the test fixtures.
 */
async function groupProxy(): Promise<void> {
  const why = await netUnavailable();
  if (why) {
    const line = `proxy: skipped, the VM needs host networking (root, /dev/net/tun, nft): ${why}`;
    info.push(line);
    log(`  ${line}`);
    return;
  }
  const dir = path.join(benchRoot, 'proxy');
  fs.mkdirSync(dir, { recursive: true });
  const srv = await startProxyBenchServer(dir);
  try {
    const direct = {
      connect: srv.address,
      port: srv.port,
      hostHeader: `[${srv.address}]:${srv.port}`,
    };
    const proxied = { connect: '127.0.0.1', port: srv.proxyPort, hostHeader: srv.host };
    // Short windows, alternating, many of them: other work on the host comes and goes in
    // bursts, and each pair of windows sees about the same load.
    const seconds = quick ? 1.5 : 2;
    const rounds = quick ? 6 : 12;
    const agents = { proxy_direct: loadAgent(32), proxy: loadAgent(32) };
    const targets = { proxy_direct: direct, proxy: proxied };
    let errs = 0;
    try {
      for (const name of ['proxy_direct', 'proxy'] as const) {
        await loadWindow(targets[name], agents[name], 32, 0, 1); // open and warm the connections
      }
      for (let round = 0; round < rounds; round++) {
        const rps: Record<string, number> = {};
        for (const name of round % 2
          ? (['proxy', 'proxy_direct'] as const)
          : (['proxy_direct', 'proxy'] as const)) {
          const w = await loadWindow(targets[name], agents[name], 32, seconds);
          rec.add(`${name}_rps`, 'req/s', w.rps);
          for (const v of w.latencies) rec.add(`${name}_latency`, 'ms', v);
          errs += w.errors;
          rps[name] = w.rps;
        }
        if (rps.proxy_direct) rec.add('proxy_rps_ratio', 'ratio', rps.proxy! / rps.proxy_direct);
      }
    } finally {
      agents.proxy.destroy();
      agents.proxy_direct.destroy();
    }
    rec.note(
      'proxy_rps_ratio',
      'proxy_rps / proxy_direct_rps of each pair of adjacent windows (one sample per pair)',
    );
    rec.note(
      'proxy_rps',
      `GET / (1 KiB) through the service proxy (Host: bench--<vm>.proxy.localhost), 32 keep-alive ` +
        `connections; ${seconds}-s windows alternating with proxy_direct_rps; samples = windows`,
    );
    rec.note(
      'proxy_direct_rps',
      "the same VM port reached directly at the VM's public IPv6 from the host (same backend: " +
        'an asyncio HTTP/1.1 server in the guest, fast_http.py)',
    );
    rec.note(
      'proxy_latency',
      'per-request latency through the proxy (all requests of the windows)',
    );
    if (errs) errors.push(`proxy: ${errs} failed requests`);
  } finally {
    await srv.close();
  }
}

/**
 * Confinement's cost: restore (a flattened c1m2 snapshot) and launch (golden restore + identity)
 * to the first `true`, by the bench's runtime (confined when the bench runs as root) and by a
 * second runtime with confinement off (`confine: false`, as `FASTVM_CONFINE=off`), interleaved.
 */
async function groupConfine(): Promise<void> {
  if (!rt.confinement) {
    rec.note('confine_restore_ratio', 'skipped: the bench runtime is not confined (not root?)');
    return;
  }
  const snap = await ensureBaseSnapshot();
  const off = await createQemuRuntime({
    dataDir: path.join(benchRoot, 'unconfined-rt'),
    log: runtimeLog,
    confine: false,
  });
  runtimes.add(off);
  const restoreOn: number[] = [];
  const restoreOff: number[] = [];
  const launchOn: number[] = [];
  const launchOff: number[] = [];
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  try {
    // The unconfined runtime takes its own snapshot the same way (a snapshot's layers live in
    // its runtime's data dir: chains reference them there).
    const offSnap = `${snap}-unconfined`;
    await off.launch({ id: 'cf-src', machine: 'c1m2' });
    await firstCmd(off, 'cf-src');
    await off.snapshot('cf-src', offSnap);
    await off.destroy('cf-src');
    // Not measured: each runtime's first restore hashes the layers (digests.ts).
    for (const [r, s] of [
      [rt, snap],
      [off, offSnap],
    ] as const) {
      await r.restore({ id: 'cf-warm-r', snapshotId: s });
      await r.destroy('cf-warm-r');
    }
    for (let i = 0; i < N.confine; i++) {
      for (const [r, restores, launches, tag, s] of [
        [rt, restoreOn, launchOn, 'on', snap],
        [off, restoreOff, launchOff, 'off', offSnap],
      ] as const) {
        const t0 = now();
        await r.restore({ id: `cf-r-${tag}-${i}`, snapshotId: s });
        await firstCmd(r, `cf-r-${tag}-${i}`);
        restores.push(now() - t0);
        await r.destroy(`cf-r-${tag}-${i}`);
        rec.add(`confine_restore_${tag}`, 'ms', restores.at(-1)!);
        const t1 = now();
        await r.launch({ id: `cf-l-${tag}-${i}`, machine: 'c1m2' });
        await firstCmd(r, `cf-l-${tag}-${i}`);
        launches.push(now() - t1);
        await r.destroy(`cf-l-${tag}-${i}`);
        rec.add(`confine_launch_${tag}`, 'ms', launches.at(-1)!);
      }
    }
  } finally {
    await off.destroyAll();
    runtimes.delete(off);
  }
  rec.add('confine_restore_ratio', 'ratio', median(restoreOn) / median(restoreOff));
  rec.add('confine_launch_ratio', 'ratio', median(launchOn) / median(launchOff));
  rec.note(
    'confine_restore_on',
    'restore of an idle c1m2 snapshot + first `true`, QEMU confined (user, seccomp, cgroup)',
  );
  rec.note(
    'confine_restore_off',
    'the same by a runtime with confinement off (its own snapshot, taken the same way), interleaved',
  );
  rec.note('confine_restore_ratio', 'median on / median off (target ≤ 1.05)');
  rec.note(
    'confine_launch_on',
    'launch() without a pool (golden restore + identity) + first `true`, confined',
  );
  rec.note('confine_launch_off', 'the same with confinement off, interleaved');
  rec.note('confine_launch_ratio', 'median on / median off (target ≤ 1.05)');
}

// -------------------------------------------------------------------------------------------------

async function main(): Promise<number> {
  const started = now();
  const startDate = new Date();
  const loadStart = os.loadavg();
  const otherQemu = fs
    .readdirSync('/proc')
    .filter((p) => /^\d+$/.test(p) && cmdlineMentions(Number(p), 'qemu-system')).length;
  log(
    `FastVM bench (${quick ? 'quick' : 'full'}) in ${benchRoot}; load ${loadStart.map((l) => l.toFixed(2)).join(' ')}, ` +
      `${otherQemu} other QEMU processes running`,
  );
  rt = await createQemuRuntime({ dataDir: path.join(benchRoot, 'rt'), log: runtimeLog });
  runtimes.add(rt);
  env = {
    image: rt.image,
    accel: rt.accel,
    cmdline: kernelCmdline(hostTscKhz()),
    root: path.join(benchRoot, 'direct'),
    track: (pid, live) => (live ? directPids.add(pid) : directPids.delete(pid)),
  };
  fs.mkdirSync(env.root, { recursive: true });

  // Warm-up (not measured): builds missing golden snapshots, warms the page cache.
  const needsVms = [...only].some((g) => !NO_VM.includes(g));
  const machines: ('c1m2' | 'c4m8')[] = !needsVms
    ? []
    : only.has('restore')
      ? ['c1m2', 'c4m8']
      : ['c1m2'];
  for (const m of machines) {
    const t = now();
    await rt.launch({ id: `warm-${m}`, machine: m });
    await firstCmd(rt, `warm-${m}`);
    await rt.destroy(`warm-${m}`);
    log(`  warm-up ${m}: ${(now() - t).toFixed(0)} ms`);
  }

  const groups: Record<Group, () => Promise<void>> = {
    restore: groupRestore,
    launch: groupLaunch,
    snapshot: groupSnapshot,
    plain: groupPlain,
    fanout: groupFanout,
    exec: groupExec,
    api: groupApi,
    cli: groupCli,
    net: groupNet,
    proxy: groupProxy,
    density: groupDensity,
    snapdisk: () =>
      groupSnapDisk({
        rec,
        root: benchRoot,
        runtime: async (dataDir, extra = {}) => {
          const r = await createQemuRuntime({ dataDir, log: runtimeLog, ...extra });
          runtimes.add(r);
          return r;
        },
        release: async (r) => {
          await r.destroyAll();
          runtimes.delete(r);
        },
        samples: quick
          ? { chain: 10, restores: 3, baseline: 2 }
          : { chain: 10, restores: 8, baseline: 4 },
        log,
      }),
    confine: groupConfine,
    volume: () =>
      groupVolume(rt, rec, benchRoot, quick ? { attach: 5, io: 3 } : { attach: 15, io: 6 }),
    dashboard: groupDashboard,
    egress: groupEgress,
    build_import: groupBuildImport,
    build: () =>
      groupBuild({
        rec,
        root: benchRoot,
        runtime: async (dataDir) => {
          const r = await createQemuRuntime({ dataDir, log: runtimeLog });
          runtimes.add(r);
          return r;
        },
        release: async (r) => {
          await r.destroyAll();
          runtimes.delete(r);
        },
        track: (s, live) => (live ? servers.add(s) : servers.delete(s)),
        rounds: quick ? 3 : 8,
        log,
      }),
    cluster: groupCluster,
    mobility: () =>
      groupMobility({ rt, rec, root: benchRoot, samples: quick ? 3 : 8, log, runtimeLog }),
  };
  for (const g of GROUPS) {
    if (!only.has(g)) continue;
    const t = now();
    log(`> ${g}`);
    try {
      await groups[g]();
    } catch (err) {
      errors.push(`${g}: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
      console.error(`  ${g} failed: ${String(err)}`);
    } finally {
      await destroyAllVms();
    }
    log(`  ${g} done in ${((now() - t) / 1000).toFixed(1)} s`);
  }
  await rt.destroyAll();
  runtimes.delete(rt);

  const report = buildReport({
    rec,
    date: startDate.toISOString(),
    revision: gitRevision(repo),
    machine: { ...hostInfo(), accel: rt.accel },
    quick,
    groups: [...only],
    allGroups: only.size === GROUPS.length - OPT_IN.length,
    durationS: (now() - started) / 1000,
    load: { start: loadStart, end: os.loadavg(), otherQemuAtStart: otherQemu },
    errors,
    info,
  });
  printReport(report);
  const files = writeReport(report, argv.out!);
  log(`\nwrote ${files.join(', ')}`);
  return errors.length ? 1 : 0;
}

let code = 1;
try {
  code = await main();
} catch (err) {
  console.error(err);
} finally {
  await gracefulCleanup();
  reapSync();
}
process.exit(code);
