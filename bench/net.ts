/**
 * Networked scenarios (issue 23): the same operations through the real server (its own process,
 * `fastvm-server serve`, QEMU runtime, warm pool of one) and the TypeScript SDK, once with host
 * networking on and once with `FASTVM_NETWORK=off`, one server after the other in the same run,
 * so that the cost of networking shows as a ratio (networked / not).
 *
 * - `fork10_net`: 10 concurrent `restore()` of one snapshot on one SDK client, each then
 *   `run(vm, "true")`; time until all answered (one sample per round). `fork10_net_ready`: until
 *   all `restore()` calls returned.
 * - `restore_run_net`: `restore()` → first `run(vm, "true")`, one VM at a time.
 * - `launch_run_net`: `launch()` from the warm pool → first `run(vm, "true")`, each sample once the
 *   pool holds a warm VM again.
 * The non-networked figures carry the suffix `_off`.
 *
 * The networked server gets a bridge and IPv4 subnet of its own (`FASTVM_BRIDGE`,
 * `FASTVM_IPV4_SUBNET`; default `fvbb0` and `10.226.0.0/24`, outside the 10.213–10.219 /24s
 * the tests pick; overridable with `FASTVM_BENCH_BRIDGE` / `FASTVM_BENCH_IPV4_SUBNET`) and each
 * server its own data dir in the system tmp dir, so they never meet another server on the host.
 * Every VM is deleted through the API before the server is stopped (SIGTERM: a clean stop with no
 * VM left removes the bridge, the taps and the nftables tables); if the bridge is still there, the
 * runtime's `NetworkManager.shutdown()` removes it. Without networking on the host (not root, no
 * nft…) the scenarios are skipped with the reason.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { NetworkManager, probeNetworking } from '@fastvm/runtime';
import { FastVM, type Snapshot, type VM } from 'fastvm';
import type { Recorder } from './stats.js';
import { cmdlineMentions, cpuMs, killHard, now, sleep } from './sys.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, '..');

export const NET_BRIDGE = process.env.FASTVM_BENCH_BRIDGE ?? 'fvbb0';
export const NET_SUBNET = process.env.FASTVM_BENCH_IPV4_SUBNET ?? '10.226.0.0/24';

/** Scenario names that select this group in `--only`. */
export const NET_SCENARIOS = [
  'fork10_net',
  'fork10_net_ready',
  'restore_run_net',
  'launch_run_net',
] as const;

/** Per server: fork10 rounds, restore samples, launch samples (issue 23's counts). */
export const NET_COUNTS = { forkRounds: 3, forks: 10, restores: 8, launches: 5 };

export interface VmServer {
  readonly url: string;
  readonly key: string;
  readonly child: ChildProcess;
  readonly dataDir: string;
  readonly networked: boolean;
  /** The server's start-up line about networking ("networking: bridge …" or "networking off: …"). */
  readonly summary: string;
  /** Deletes every VM and snapshot through the API, stops the server, removes its network and dir. */
  close(): Promise<void>;
  /** Last resort (process exit): kills the server and its QEMUs, removes the dir and the bridge. */
  reapSync(): void;
}

/** Why networked servers cannot run on this host, or undefined when they can. */
export async function netUnavailable(): Promise<string | undefined> {
  const p = await probeNetworking();
  return p.available ? undefined : (p.reason ?? 'unavailable');
}

function bridgeExists(bridge: string): boolean {
  return fs.existsSync(`/sys/class/net/${bridge}`);
}

/** Processes whose command line names `dir` (the server's QEMUs and their memshim copies). */
function pidsMentioning(dir: string, except: number[] = []): number[] {
  const out: number[] = [];
  for (const entry of fs.readdirSync('/proc')) {
    const pid = Number(entry);
    if (pid > 1 && !except.includes(pid) && cmdlineMentions(pid, dir)) out.push(pid);
  }
  return out;
}

/** The runtime's own teardown of a bridge it created (taps, per-VM tables, host table, sysctls). */
async function shutdownNetwork(dataDir: string): Promise<void> {
  const nm = await NetworkManager.create({
    stateDir: path.join(dataDir, 'network'),
    bridge: NET_BRIDGE,
    ipv4Subnet: NET_SUBNET,
    owner: dataDir,
  });
  await nm.shutdown();
}

/**
 * Starts `fastvm-server serve` (real QEMU runtime, default warm pool) in a child process on a
 * fresh data dir, with networking on (own bridge and subnet) or off.
 */
export async function startVmServer(networked: boolean): Promise<VmServer> {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), networked ? 'fvbn-on-' : 'fvbn-off-'));
  const key = 'fvm_' + crypto.randomBytes(24).toString('base64url');
  // Only our settings: an FASTVM_* of the caller's shell (a prefix, a port) must not leak in.
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (v !== undefined && !k.startsWith('FASTVM_')) env[k] = v;
  }
  Object.assign(env, {
    FASTVM_BOOTSTRAP_KEY: key,
    FASTVM_DATA_DIR: dataDir,
    FASTVM_PORT: '0',
    FASTVM_LOG_LEVEL: 'warn',
    FASTVM_POOL: '1',
    FASTVM_NETWORK: networked ? 'on' : 'off',
    // Not measured, and its default port (2222) may be another server's.
    FASTVM_SSH_PORT: 'off',
    ...(networked ? { FASTVM_BRIDGE: NET_BRIDGE, FASTVM_IPV4_SUBNET: NET_SUBNET } : {}),
  });
  const child = spawn(
    process.execPath,
    [path.join(repo, 'packages/server/bin/fastvm-server.js'), 'serve'],
    { cwd: repo, env, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  const stderr: string[] = [];
  child.stderr!.on('data', (b: Buffer) => {
    stderr.push(b.toString());
    if (stderr.length > 50) stderr.shift();
  });
  let closed = false;
  const reapSync = () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    for (const pid of pidsMentioning(dataDir, [process.pid])) killHard(pid);
    if (networked && bridgeExists(NET_BRIDGE) && fs.existsSync(dataDir)) {
      spawnSync(
        process.execPath,
        ['--import', 'tsx', path.join(here, 'net.ts'), '--shutdown-network', dataDir],
        { cwd: repo, stdio: 'inherit', timeout: 30_000 },
      );
    }
    fs.rmSync(dataDir, { recursive: true, force: true });
  };
  let url = '';
  let summary = '';
  try {
    await new Promise<void>((resolve, reject) => {
      const rl = readline.createInterface({ input: child.stdout! });
      const timer = setTimeout(
        () => reject(new Error('VM server did not start in 300 s')),
        300_000,
      );
      rl.on('line', (line) => {
        const m = /^FastVM API listening on (\S+)/.exec(line);
        if (m) url = m[1]!;
        if (/^networking/.test(line)) summary = line;
        if (url && summary) {
          clearTimeout(timer);
          resolve();
        }
      });
      child.once('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`VM server exited (${code}): ${stderr.join('').trim().slice(-2000)}`));
      });
    });
  } catch (err) {
    reapSync();
    throw err;
  }
  const server: VmServer = {
    url,
    key,
    child,
    dataDir,
    networked,
    summary,
    reapSync,
    async close() {
      if (closed) return;
      closed = true;
      try {
        if (child.exitCode === null && child.signalCode === null) {
          const client = new FastVM({ apiKey: key, baseUrl: url, maxRetries: 2, timeout: 60_000 });
          try {
            await removeAll(client);
            for (const s of await client.listSnapshots()) {
              await client.removeSnapshot(s).catch(() => {});
            }
          } catch {
            /* the reap below kills what is left */
          } finally {
            await client.close().catch(() => {});
          }
          child.kill('SIGTERM');
          await Promise.race([exited, sleep(20_000)]);
        }
        if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
        for (const pid of pidsMentioning(dataDir, [process.pid])) killHard(pid);
        if (networked && bridgeExists(NET_BRIDGE)) {
          await shutdownNetwork(dataDir).catch((err: unknown) => {
            console.error(`bench: could not remove bridge ${NET_BRIDGE}: ${String(err)}`);
          });
        }
      } finally {
        reapSync();
      }
    },
  };
  return server;
}

/** Deletes every VM of the (only) org, concurrently, and waits until the list is empty. */
async function removeAll(client: FastVM): Promise<void> {
  const deadline = now() + 120_000;
  for (;;) {
    const vms = await client.list();
    if (vms.length === 0) return;
    if (now() > deadline) throw new Error(`${vms.length} VMs still listed after 120 s`);
    await Promise.allSettled(vms.map((vm) => client.remove(vm)));
    await sleep(100);
  }
}

/** Waits until no snapshot of the server's runtime still waits for its background flatten. */
async function waitFlattened(dataDir: string, timeoutMs = 120_000): Promise<void> {
  const dir = path.join(dataDir, 'runtime', 'snapshots');
  const deadline = now() + timeoutMs;
  while (now() < deadline) {
    let pending = false;
    for (const s of fs.existsSync(dir) ? fs.readdirSync(dir) : []) {
      try {
        const rec = JSON.parse(fs.readFileSync(path.join(dir, s, 'snapshot.json'), 'utf8')) as {
          delta?: { bytes: number };
          chain?: { bytes: number }[];
        };
        // Deltas past the runtime's flatten threshold (32 MiB) are flattened in the background.
        const bytes = [...(rec.chain ?? []), ...(rec.delta ? [rec.delta] : [])].reduce(
          (n, d) => n + d.bytes,
          0,
        );
        if (bytes > 32 * 2 ** 20) pending = true;
      } catch {
        /* being written */
      }
    }
    if (!pending) return;
    await sleep(50);
  }
  throw new Error(`snapshot flatten not done in ${timeoutMs} ms`);
}

/**
 * Waits until the server's warm pool holds a c1m2 VM that has finished warming: a `vms/pool-…`
 * directory whose QEMU process burns < 10% of a core over 250 ms. Returns the wait, or undefined
 * if none became ready in time.
 */
async function waitPoolReady(dataDir: string, timeoutMs = 120_000): Promise<number | undefined> {
  const vmsDir = path.join(dataDir, 'runtime', 'vms');
  const t0 = now();
  while (now() - t0 < timeoutMs) {
    const pool = (fs.existsSync(vmsDir) ? fs.readdirSync(vmsDir) : []).filter((n) =>
      n.startsWith('pool-c1m2-'),
    );
    for (const name of pool) {
      const pid = pidsMentioning(path.join(vmsDir, name) + '/', [process.pid]).find((p) =>
        cmdlineMentions(p, 'qemu-system'),
      );
      if (!pid) continue;
      const c0 = cpuMs(pid);
      await sleep(250);
      const c1 = cpuMs(pid);
      if (Number.isFinite(c1 - c0) && c1 - c0 < 25 && fs.existsSync(path.join(vmsDir, name))) {
        return now() - t0;
      }
    }
    await sleep(50);
  }
  return undefined;
}

async function runTrue(client: FastVM, vm: VM): Promise<void> {
  const r = await client.run(vm, 'true', { timeout: 120_000 });
  if (r.exitCode !== 0) throw new Error(`run(${vm.id}, "true") exited ${r.exitCode}`);
}

/** One server's samples, all in ms. */
export interface NetSamples {
  forkAll: number[];
  forkReady: number[];
  restoreRun: number[];
  launchRun: number[];
  poolMisses: number;
}

/** Runs every scenario against one server; warm-ups first (golden, pool, snapshot, page cache). */
export async function measureServer(
  server: VmServer,
  counts: typeof NET_COUNTS,
  log: (s: string) => void,
): Promise<NetSamples> {
  const out: NetSamples = {
    forkAll: [],
    forkReady: [],
    restoreRun: [],
    launchRun: [],
    poolMisses: 0,
  };
  const client = new FastVM({
    apiKey: server.key,
    baseUrl: server.url,
    maxRetries: 0,
    timeout: 300_000,
  });
  const label = server.networked ? 'net on ' : 'net off';
  try {
    await client.warmup();
    // Warm-up: the server prewarms c1m2 (golden) and fills its pool; a launch takes from it.
    await waitPoolReady(server.dataDir);
    const src = await client.launch({ machine: 'c1m2' });
    await runTrue(client, src);
    if (server.networked && !src.publicIpv6) {
      throw new Error(`networked server gave ${src.id} no publicIpv6`);
    }
    const snap: Snapshot = await client.snapshot(src, { name: 'net-bench', timeout: 300_000 });
    await client.remove(src);
    await waitFlattened(server.dataDir);
    const warm = await client.restore(snap);
    await runTrue(client, warm);
    await client.remove(warm);

    // fork10: N concurrent restores of one snapshot, each then running `true`.
    for (let r = 0; r < counts.forkRounds; r++) {
      await removeAll(client);
      await waitPoolReady(server.dataDir);
      await sleep(1500); // let the previous round's teardown settle
      const t0 = now();
      let lastReady = 0;
      const results = await Promise.allSettled(
        Array.from({ length: counts.forks }, async () => {
          const vm = await client.restore(snap);
          lastReady = Math.max(lastReady, now() - t0);
          await runTrue(client, vm);
        }),
      );
      const all = now() - t0;
      const failed = results.filter((x) => x.status === 'rejected');
      if (failed.length) {
        throw new Error(
          `fork${counts.forks}: ${failed.length} restores failed (first: ${String((failed[0] as PromiseRejectedResult).reason)})`,
        );
      }
      out.forkAll.push(all);
      out.forkReady.push(lastReady);
      log(
        `  ${label} fork${counts.forks} round ${r + 1}: all ready ${lastReady.toFixed(0)} ms, all answered ${all.toFixed(0)} ms`,
      );
    }
    await removeAll(client);

    // restore → first run, one at a time.
    await waitPoolReady(server.dataDir);
    await sleep(1000);
    for (let i = 0; i < counts.restores; i++) {
      const t0 = now();
      const vm = await client.restore(snap);
      await runTrue(client, vm);
      out.restoreRun.push(now() - t0);
      await client.remove(vm);
      await sleep(300);
    }
    log(`  ${label} restore → run: ${out.restoreRun.map((v) => v.toFixed(0)).join(' ')} ms`);

    // warm-pool launch → first run, each once the pool has refilled.
    for (let i = 0; i < counts.launches; i++) {
      if ((await waitPoolReady(server.dataDir)) === undefined) out.poolMisses++;
      await sleep(300);
      const t0 = now();
      const vm = await client.launch({ machine: 'c1m2' });
      await runTrue(client, vm);
      out.launchRun.push(now() - t0);
      await client.remove(vm);
    }
    log(`  ${label} launch → run: ${out.launchRun.map((v) => v.toFixed(0)).join(' ')} ms`);
    await client.removeSnapshot(snap).catch(() => {});
  } finally {
    await client.close().catch(() => {});
  }
  return out;
}

/** Records one server's samples under the networked (`…`) or non-networked (`…_off`) names. */
export function recordNet(rec: Recorder, s: NetSamples, networked: boolean): void {
  const sfx = networked ? '' : '_off';
  for (const v of s.forkAll) rec.add(`fork10_net${sfx}`, 'ms', v);
  for (const v of s.forkReady) rec.add(`fork10_net_ready${sfx}`, 'ms', v);
  for (const v of s.restoreRun) rec.add(`restore_run_net${sfx}`, 'ms', v);
  for (const v of s.launchRun) rec.add(`launch_run_net${sfx}`, 'ms', v);
}

export function noteNet(rec: Recorder, summary: string): void {
  const srv = 'fastvm-server child, TS SDK, one h2c session';
  rec.note(
    'fork10_net',
    `networking on (${summary}): 10 concurrent restore() of one c1m2 snapshot + run "true", until all answered; ${srv}`,
  );
  rec.note('fork10_net_off', 'the same, FASTVM_NETWORK=off');
  rec.note(
    'fork10_net_ready',
    'networking on: 10 concurrent restore(), until all returned (ready)',
  );
  rec.note('fork10_net_ready_off', 'the same, FASTVM_NETWORK=off');
  rec.note('restore_run_net', `networking on: restore() → first run(vm, "true"); ${srv}`);
  rec.note('restore_run_net_off', 'the same, FASTVM_NETWORK=off');
  rec.note(
    'launch_run_net',
    `networking on: launch() from the warm pool (refilled) → first run(vm, "true"); ${srv}`,
  );
  rec.note('launch_run_net_off', 'the same, FASTVM_NETWORK=off');
}

// `tsx bench/net.ts --shutdown-network DATADIR`: the last-resort network teardown of `reapSync`
// (which must be synchronous, so it runs this in a child).
if (process.argv[2] === '--shutdown-network' && process.argv[3]) {
  await shutdownNetwork(process.argv[3]).catch((err: unknown) => {
    console.error(`bench: could not remove bridge ${NET_BRIDGE}: ${String(err)}`);
  });
}
