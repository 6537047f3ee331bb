/**
 * The chaos suite: rounds of mixed operations on real VMs through the HTTP API, with `kill -9` of
 * the server at a random moment (often within 80 ms, so that it lands mid-request), a restart on
 * the same data dir, and a check of what must hold after any crash:
 *
 * - lost: a VM that was running or paused (or whose launch/restore had answered) is gone, stopped
 *   or unanswering; a snapshot that was ready (or had answered 201) is not ready or not
 *   restorable; a delete that had answered is undone;
 * - stuck: anything in a transitional status after recovery, or a request that hangs;
 * - quota mismatches: usage differs from the sum over live rows, or the QEMU processes differ
 *   from the VMs that hold resources;
 * - broken disks: a VM lost data it had synced, cannot be snapshotted again, or its QEMU writes
 *   to a deleted layer file;
 * - volumes: the run's volume is gone or not ready (a VM delete, restart or kill never deletes
 *   one), two VMs hold it while one of them may write, an attachment of a running VM is left
 *   `pending`/`detaching`, or its content is not the marker a synced write last confirmed (or
 *   the one in flight at the kill);
 * - leftovers (after deleting everything and stopping): QEMU processes, taps, the bridge,
 *   nftables tables, network namespaces, layer files, VM directories or volume files.
 *
 * Used by `npm run chaos` (`chaos/run.ts`) and, with a few rounds, by the test suite.
 * @module
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  deletedButOpen,
  filesUnder,
  links,
  netnsList,
  nftTables,
  qemuProcesses,
  removeNetwork,
} from './host.js';
import { ServerProcess, freePort } from './server-process.js';

export interface ChaosOptions {
  rounds: number;
  seed?: number;
  /** VMs kept alive between rounds (default 3). */
  maxVms?: number;
  /** Run VMs with networking (default: when root and /dev/net/tun exist). */
  network?: boolean;
  log?: (line: string) => void;
  /** Keep the data dir (server logs, database) even when nothing was found. */
  keep?: boolean;
}

export interface ChaosReport {
  seed: number;
  rounds: number;
  kills: number;
  lost: number;
  stuck: number;
  quotaMismatches: number;
  brokenDisks: number;
  leftovers: number;
  /** One line per bad count, saying what was found. */
  findings: string[];
  operations: number;
  /**
   * What recovery found after the kills (sums of the server's `recovered state` log lines): how
   * often a kill landed in the middle of a launch, snapshot or delete.
   */
  recovered: Record<string, number>;
  seconds: number;
}

/** The report's counts on one line, as `npm run chaos` prints it. */
export function summary(r: ChaosReport): string {
  return (
    `rounds ${r.rounds}, kills ${r.kills}, lost ${r.lost}, stuck ${r.stuck}, ` +
    `quota mismatches ${r.quotaMismatches}, broken disks ${r.brokenDisks}, leftovers ${r.leftovers}`
  );
}

interface Vm {
  id: string;
  name: string;
  status: string;
  cpu: number;
  memoryMiB: number;
  diskGiB: number;
  volumes?: Array<{ volumeId: string; mountStatus: string }>;
}
interface Snap {
  id: string;
  name: string;
  status: string;
  vmId: string;
}

/** What the suite knows for sure: confirmed by an answer before a kill, or checked after one. */
interface Model {
  /** VM id → content of /root/marker that a synced write confirmed (undefined: none known). */
  markers: Map<string, string | undefined>;
  /** Snapshot id → marker of its VM when it was taken. */
  snapMarkers: Map<string, string | undefined>;
  /** VMs and snapshots that must exist in a good state after the next restart. */
  mustLiveVms: Set<string>;
  mustLiveSnaps: Set<string>;
  /** Deletes that answered: must stay deleted. */
  deletedVms: Set<string>;
  deletedSnaps: Set<string>;
}

const TRANSITIONAL_VM = ['provisioning', 'pausing', 'resuming', 'deleting'];
const QUOTA_VM = ['provisioning', 'running', 'pausing', 'resuming', 'deleting'];
const MEMORY_VM = [...QUOTA_VM, 'paused'];

/** The QEMU pid a runtime VM directory records, if any. */
function vmRecordPid(dir: string): number | undefined {
  try {
    return (JSON.parse(fs.readFileSync(path.join(dir, 'vm.json'), 'utf8')) as { pid: number }).pid;
  } catch {
    return undefined;
  }
}

/** A seeded PRNG (mulberry32). */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

class Api {
  constructor(
    readonly url: string,
    readonly key: string,
  ) {}

  async call<T = unknown>(
    method: string,
    p: string,
    body?: unknown,
    timeoutMs = 60_000,
  ): Promise<{ status: number; body: T }> {
    const res = await fetch(this.url + p, {
      method,
      headers: {
        'x-api-key': this.key,
        ...(body === undefined ? {} : { 'content-type': 'application/json' }),
      },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      signal: AbortSignal.timeout(timeoutMs),
    });
    const text = await res.text();
    let parsed: unknown = text;
    try {
      parsed = JSON.parse(text);
    } catch {
      /* not JSON */
    }
    return { status: res.status, body: parsed as T };
  }

  async run(vmId: string, command: string): Promise<{ exitCode: number; stdout: string }> {
    const r = await this.call<{ exitCode: number; stdout: string }>(
      'POST',
      `/v1/vms/${vmId}/exec`,
      { command, timeoutSec: 30 },
      45_000,
    );
    if (r.status !== 200) throw new Error(`exec ${r.status}: ${JSON.stringify(r.body)}`);
    return r.body;
  }
}

/** Runs the suite; see the module comment. */
export async function runChaos(opts: ChaosOptions): Promise<ChaosReport> {
  const seed = opts.seed ?? crypto.randomInt(2 ** 31);
  const rand = prng(seed);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)]!;
  const log = opts.log ?? (() => {});
  const maxVms = opts.maxVms ?? 3;
  const network =
    opts.network ?? (process.getuid?.() === 0 && fs.existsSync('/dev/net/tun') ? true : false);
  const t0 = Date.now();

  const report: ChaosReport = {
    seed,
    rounds: 0,
    kills: 0,
    lost: 0,
    stuck: 0,
    quotaMismatches: 0,
    brokenDisks: 0,
    leftovers: 0,
    findings: [],
    operations: 0,
    recovered: {},
    seconds: 0,
  };
  const countRecovery = () => {
    for (const line of fs.readFileSync(server.lastLog(), 'utf8').split('\n')) {
      if (!line.includes('"recovered state"')) continue;
      for (const [k, v] of Object.entries(JSON.parse(line) as Record<string, unknown>)) {
        if (typeof v === 'number' && !['level', 'time', 'pid'].includes(k)) {
          report.recovered[k] = (report.recovered[k] ?? 0) + v;
        }
      }
    }
  };
  const flag = (
    kind: 'lost' | 'stuck' | 'quotaMismatches' | 'brokenDisks' | 'leftovers',
    what: string,
  ) => {
    report[kind]++;
    report.findings.push(`round ${report.rounds}: ${kind}: ${what}`);
    log(`  ! ${kind}: ${what}`);
  };

  const root = path.join(os.homedir(), '.cache', 'fastvm', 'test');
  fs.mkdirSync(root, { recursive: true });
  const dataDir = fs.mkdtempSync(path.join(root, 'chaos-'));
  const runtimeDir = path.join(dataDir, 'runtime');
  const tag = crypto.randomBytes(2).toString('hex');
  const bridge = `fvch${tag}`;
  const key = `fvm_chaos_${crypto.randomBytes(16).toString('hex')}`;
  const env: Record<string, string> = {
    FASTVM_BOOTSTRAP_KEY: key,
    FASTVM_POOL: '1',
    ...(network
      ? {
          FASTVM_BRIDGE: bridge,
          FASTVM_IPV4_SUBNET: `10.218.${crypto.randomInt(256)}.0/24`,
        }
      : { FASTVM_NETWORK: 'off' }),
  };
  const linksBefore = links();
  const netnsBefore = netnsList();
  const server = new ServerProcess(dataDir, await freePort(), env);
  const api = new Api(server.url, key);
  const model: Model = {
    markers: new Map(),
    snapMarkers: new Map(),
    mustLiveVms: new Set(),
    mustLiveSnaps: new Set(),
    deletedVms: new Set(),
    deletedSnaps: new Set(),
  };
  let names = 0;
  const newName = (p: string) => `${p}-${++names}`;

  const listVms = async () => (await api.call<Vm[]>('GET', '/v1/vms', undefined, 30_000)).body;
  const listSnaps = async () =>
    (await api.call<Snap[]>('GET', '/v1/snapshots', undefined, 30_000)).body;

  /** Launch (or restore) a VM and write its marker; updates the model as answers arrive. */
  async function launch(snapshotId?: string): Promise<void> {
    const name = newName(snapshotId ? 'fork' : 'vm');
    const r = await api.call<Vm>(
      'POST',
      '/v1/vms',
      snapshotId ? { snapshotId, name } : { machineType: 'c1m2', name },
    );
    if (r.status !== 201) return;
    model.mustLiveVms.add(r.body.id);
    if (snapshotId) {
      model.markers.set(r.body.id, model.snapMarkers.get(snapshotId));
      return;
    }
    model.markers.set(r.body.id, undefined);
    const w = await api.run(r.body.id, `printf %s ${name} > /root/marker && sync`);
    if (w.exitCode === 0) model.markers.set(r.body.id, name);
  }

  async function snapshot(vmId: string): Promise<string | undefined> {
    const marker = model.markers.get(vmId);
    const r = await api.call<Snap>('POST', '/v1/snapshots', { vmId, name: newName('snap') });
    if (r.status !== 201) return undefined;
    model.snapMarkers.set(r.body.id, marker);
    model.mustLiveSnaps.add(r.body.id);
    return r.body.id;
  }

  async function deleteVm(id: string): Promise<void> {
    model.mustLiveVms.delete(id);
    const r = await api.call('DELETE', `/v1/vms/${id}`);
    if (r.status < 300) model.deletedVms.add(id);
  }

  async function deleteSnap(id: string): Promise<void> {
    model.mustLiveSnaps.delete(id);
    const r = await api.call('DELETE', `/v1/snapshots/${id}`);
    if (r.status < 300) model.deletedSnaps.add(id);
  }

  // Volumes: one for the whole run, attached, written, detached and re-attached at random.
  let volumeId = '';
  /** Markers the volume may hold: the last one a synced write confirmed, plus any in flight. */
  let volMarkers = new Set<string>();
  const VOL_PATH = '/data/chaos';
  const holdersOf = (vms: Vm[]) =>
    vms.filter(
      (v) =>
        ['running', 'paused', 'provisioning', 'pausing', 'resuming'].includes(v.status) &&
        (v.volumes ?? []).some((a) => a.volumeId === volumeId),
    );
  async function attachVolume(vmId: string): Promise<void> {
    await api.call('POST', `/v1/vms/${vmId}/volumes`, { volumeId, mountPath: VOL_PATH });
  }
  async function writeVolume(vmId: string): Promise<void> {
    const m = newName('vol');
    volMarkers.add(m); // in flight: the kill may land before or after it reaches the disk
    const w = await api.run(vmId, `printf %s ${m} > ${VOL_PATH}/marker && sync`);
    if (w.exitCode === 0) volMarkers = new Set([m]);
  }

  /** One random operation on the current state (not awaited by the round before the kill). */
  function operation(vms: Vm[], snaps: Snap[]): Promise<unknown> {
    const running = vms.filter((v) => v.status === 'running');
    const paused = vms.filter((v) => v.status === 'paused');
    const ready = snaps.filter((s) => s.status === 'ready');
    const choices: Array<() => Promise<unknown>> = [];
    if (vms.length < maxVms + 1) choices.push(() => launch());
    if (ready.length && vms.length < maxVms + 1) choices.push(() => launch(pick(ready).id));
    if (running.length) {
      const vm = pick(running);
      choices.push(
        () => snapshot(vm.id),
        () => snapshot(vm.id),
        () => api.run(vm.id, `echo ${Date.now()} >> /root/log && sync`),
        () => api.call('POST', `/v1/vms/${vm.id}/pause`),
        () =>
          api.call('PATCH', `/v1/vms/${vm.id}/firewall`, {
            mode: pick(['open', 'restricted']),
          }),
        () => deleteVm(vm.id),
      );
      const mine = (vm.volumes ?? []).find((a) => a.volumeId === volumeId);
      if (!mine && holdersOf(vms).length === 0) choices.push(() => attachVolume(vm.id));
      if (mine?.mountStatus === 'mounted') {
        choices.push(
          () => writeVolume(vm.id),
          () => api.call('DELETE', `/v1/vms/${vm.id}/volumes/${volumeId}`),
        );
      }
    }
    if (paused.length) {
      const vm = pick(paused);
      choices.push(
        () => api.call('POST', `/v1/vms/${vm.id}/resume`),
        () => deleteVm(vm.id),
      );
    }
    if (ready.length) choices.push(() => deleteSnap(pick(ready).id));
    if (!choices.length) return launch();
    report.operations++;
    return pick(choices)();
  }

  /** After a restart: every invariant of the module comment. */
  async function check(): Promise<void> {
    let vms: Vm[];
    let snaps: Snap[];
    try {
      [vms, snaps] = [await listVms(), await listSnaps()];
    } catch (err) {
      flag('stuck', `listing after restart failed: ${String(err)}`);
      return;
    }
    const byId = new Map(vms.map((v) => [v.id, v]));
    const snapById = new Map(snaps.map((s) => [s.id, s]));
    for (const v of vms) {
      if (TRANSITIONAL_VM.includes(v.status)) flag('stuck', `VM ${v.name} is ${v.status}`);
    }
    for (const s of snaps) {
      if (s.status === 'creating') flag('stuck', `snapshot ${s.name} is creating`);
    }
    for (const id of model.mustLiveVms) {
      const v = byId.get(id);
      if (!v || !['running', 'paused'].includes(v.status)) {
        flag('lost', `VM ${id} is ${v ? `${v.status}` : 'gone'}`);
        model.mustLiveVms.delete(id);
      }
    }
    for (const id of model.mustLiveSnaps) {
      const s = snapById.get(id);
      if (!s || s.status !== 'ready') {
        flag('lost', `snapshot ${id} is ${s ? s.status : 'gone'}`);
        model.mustLiveSnaps.delete(id);
      }
    }
    for (const id of model.deletedVms) if (byId.has(id)) flag('lost', `deleted VM ${id} is back`);
    for (const id of model.deletedSnaps) {
      if (snapById.has(id)) flag('lost', `deleted snapshot ${id} is back`);
    }
    // Whatever is running or paused now is known to be (answered or not before the kill).
    for (const v of vms) {
      if (['running', 'paused'].includes(v.status)) model.mustLiveVms.add(v.id);
      if (!model.markers.has(v.id)) model.markers.set(v.id, undefined);
    }
    for (const s of snaps) if (s.status === 'ready') model.mustLiveSnaps.add(s.id);

    await checkVolume(vms);

    // Quota: usage is the sum over the rows that hold resources, and those are exactly the VMs
    // whose QEMU runs.
    try {
      const q = await api.call<{ usage: Record<string, number> }>(
        'GET',
        '/v1/org/quotas',
        undefined,
        30_000,
      );
      const holding = vms.filter((v) => MEMORY_VM.includes(v.status));
      const want: Record<string, number> = {
        vcpu: vms.filter((v) => QUOTA_VM.includes(v.status)).reduce((n, v) => n + v.cpu, 0),
        memoryMiB: holding.reduce((n, v) => n + v.memoryMiB, 0),
        diskGiB: holding.reduce((n, v) => n + v.diskGiB, 0),
        snapshotCount: snaps.filter((s) => ['creating', 'ready'].includes(s.status)).length,
        volumeCount: 1,
        volumeGiB: 1,
      };
      for (const [k, n] of Object.entries(want)) {
        if (q.body.usage[k] !== n)
          flag('quotaMismatches', `${k}: usage ${q.body.usage[k]} != ${n}`);
      }
      // (A VM handed out by the warm pool keeps its QEMU's pool-… name: match by pid.) The warm
      // pool refills meanwhile: a pool VM's QEMU runs a moment before its record names its pid,
      // and a discarded one a moment after its record is gone. Only what persists is a finding.
      const pidOf = (id: string) => vmRecordPid(path.join(runtimeDir, 'vms', id));
      const mismatches = () => {
        const qemus = qemuProcesses(runtimeDir);
        const found: string[] = [];
        const held = new Set<number>();
        for (const v of holding) {
          const pid = pidOf(v.id);
          if (pid === undefined || !qemus.has(pid)) {
            found.push(`VM ${v.name} is ${v.status} but has no QEMU`);
          } else held.add(pid);
        }
        for (const [pid, name] of qemus) {
          const waiting = name.startsWith('pool-') && pidOf(name) === pid;
          if (!held.has(pid) && !waiting) found.push(`QEMU ${pid} (${name}) has no VM`);
        }
        return found;
      };
      let found = mismatches();
      for (let i = 0; i < 4 && found.length > 0; i++) {
        await new Promise((r) => setTimeout(r, 500));
        found = mismatches();
      }
      for (const what of found) flag('quotaMismatches', what);
    } catch (err) {
      flag('stuck', `quota check failed: ${String(err)}`);
    }
    for (const [pid, name] of qemuProcesses(runtimeDir)) {
      const bad = deletedButOpen(pid, runtimeDir);
      if (bad.length) flag('brokenDisks', `QEMU of ${name} holds deleted ${bad.join(', ')}`);
    }

    // Every running VM answers, kept its marker, and snapshots again.
    for (const v of vms.filter((x) => x.status === 'running')) {
      try {
        const r = await api.run(v.id, 'cat /root/marker 2>/dev/null; echo .');
        const want = model.markers.get(v.id);
        if (want !== undefined && r.stdout !== `${want}.\n`) {
          flag('brokenDisks', `VM ${v.name}: marker ${JSON.stringify(r.stdout)} != ${want}`);
        }
        if (want === undefined && r.stdout.length > 2) {
          model.markers.set(v.id, r.stdout.slice(0, -2)); // learned now, checked from now on
        }
      } catch (err) {
        flag('lost', `VM ${v.name} does not answer: ${String(err)}`);
        continue;
      }
      const snap = await api
        .call<Snap>('POST', '/v1/snapshots', { vmId: v.id, name: newName('check') })
        .catch((err: unknown) => ({ status: 0, body: { id: '', error: String(err) } }));
      if (snap.status !== 201) {
        flag('brokenDisks', `VM ${v.name} cannot be snapshotted: ${JSON.stringify(snap.body)}`);
      } else {
        await api.call('DELETE', `/v1/snapshots/${snap.body.id}`).catch(() => {});
      }
    }
    // One ready snapshot restores, with its data.
    const ready = snaps.filter((s) => s.status === 'ready');
    if (ready.length) {
      const s = pick(ready);
      const r = await api
        .call<Vm>('POST', '/v1/vms', { snapshotId: s.id, name: newName('probe') })
        .catch((err: unknown) => ({ status: 0, body: { id: '', error: String(err) } as never }));
      if (r.status !== 201) {
        flag('lost', `snapshot ${s.name} does not restore: ${JSON.stringify(r.body)}`);
      } else {
        const want = model.snapMarkers.get(s.id);
        const out = await api.run(r.body.id, 'cat /root/marker 2>/dev/null; echo .').catch(() => {
          flag('lost', `restore of ${s.name} does not answer`);
          return undefined;
        });
        if (out && want !== undefined && out.stdout !== `${want}.\n`) {
          flag('brokenDisks', `restore of ${s.name}: marker ${JSON.stringify(out.stdout)}`);
        }
        await api.call('DELETE', `/v1/vms/${r.body.id}`).catch(() => {});
      }
    }
  }

  /** The volume survived, one writer at most, nothing half-attached, its data as confirmed. */
  async function checkVolume(vms: Vm[]): Promise<void> {
    const v = await api.call<{ status: string }>(
      'GET',
      `/v1/volumes/${volumeId}`,
      undefined,
      30_000,
    );
    if (v.status !== 200 || v.body.status !== 'ready') {
      flag('lost', `volume is ${v.status === 200 ? v.body.status : `gone (${v.status})`}`);
      return;
    }
    const holders = holdersOf(vms);
    if (holders.length > 1) flag('brokenDisks', `volume held by ${holders.length} VMs at once`);
    for (const h of holders) {
      const a = (h.volumes ?? []).find((x) => x.volumeId === volumeId)!;
      if (h.status === 'running' && a.mountStatus !== 'mounted' && a.mountStatus !== 'failed') {
        flag('stuck', `volume attachment of ${h.name} is ${a.mountStatus}`);
      }
    }
    // Read it where it is mounted, or attach it to a running VM to read it.
    let reader = holders.find((h) => h.status === 'running');
    if (!reader && holders.length === 0) {
      reader = vms.find((x) => x.status === 'running');
      if (reader) {
        const r = await api.call('POST', `/v1/vms/${reader.id}/volumes`, {
          volumeId,
          mountPath: VOL_PATH,
        });
        if (r.status !== 200) {
          flag('brokenDisks', `volume does not attach: ${JSON.stringify(r.body)}`);
          return;
        }
      }
    }
    if (!reader || volMarkers.size === 0) return;
    const out = await api
      .run(reader.id, `cat ${VOL_PATH}/marker 2>/dev/null; echo .`)
      .catch(() => undefined);
    if (!out) return;
    const got = out.stdout.slice(0, -2);
    if (!volMarkers.has(got)) {
      flag(
        'brokenDisks',
        `volume marker ${JSON.stringify(got)} not in ${JSON.stringify([...volMarkers])}`,
      );
    }
    volMarkers = new Set([got]);
  }

  /** Between rounds (no kill): bound the number of VMs and snapshots, keep one running VM. */
  async function housekeeping(): Promise<void> {
    const vms = await listVms();
    for (const v of vms.filter((x) => ['stopped', 'error'].includes(x.status)))
      await deleteVm(v.id);
    const alive = vms.filter((x) => ['running', 'paused'].includes(x.status));
    for (const v of alive.slice(0, Math.max(0, alive.length - maxVms))) await deleteVm(v.id);
    const snaps = (await listSnaps()).filter((s) => s.status === 'error');
    for (const s of snaps) await deleteSnap(s.id);
    const ready = (await listSnaps()).filter((s) => s.status === 'ready');
    for (const s of ready.slice(0, Math.max(0, ready.length - 3))) await deleteSnap(s.id);
    if (!(await listVms()).some((v) => v.status === 'running')) await launch();
  }

  try {
    await server.start();
    const vol = await api.call<{ id: string }>('POST', '/v1/volumes', {
      name: 'chaos',
      sizeGiB: 1,
      accessMode: 'rw',
    });
    if (vol.status !== 201)
      throw new Error(`creating the volume failed: ${JSON.stringify(vol.body)}`);
    volumeId = vol.body.id;
    await launch();
    for (let round = 1; round <= opts.rounds; round++) {
      report.rounds = round;
      const [vms, snaps] = [await listVms(), await listSnaps()];
      const n = 1 + Math.floor(rand() * 3);
      const inflight = Array.from({ length: n }, () => operation(vms, snaps).catch(() => {}));
      // Mostly within 80 ms, so that the kill lands in the middle of a request; otherwise later,
      // in the middle of a restore, snapshot or delete.
      const delay = rand() < 0.6 ? rand() * 80 : 80 + rand() * 1500;
      await new Promise((r) => setTimeout(r, delay));
      await server.kill9();
      report.kills++;
      await Promise.allSettled(inflight);
      log(`round ${round}: ${n} operations, kill -9 after ${delay.toFixed(0)} ms`);
      await server.start();
      countRecovery();
      await check();
      await housekeeping();
    }
    // Delete everything, stop, and look for anything left behind.
    for (const v of await listVms()) await deleteVm(v.id);
    for (const s of await listSnaps()) await deleteSnap(s.id);
    const volDel = await api.call('DELETE', `/v1/volumes/${volumeId}`);
    if (volDel.status !== 200) flag('leftovers', `volume delete: ${JSON.stringify(volDel.body)}`);
    await server.stop();
    for (const [pid, name] of qemuProcesses(runtimeDir)) flag('leftovers', `QEMU ${pid} (${name})`);
    for (const l of links()) {
      if (!linksBefore.has(l) && (l === bridge || /^fv/.test(l))) flag('leftovers', `link ${l}`);
    }
    for (const t of nftTables()) if (t.includes(bridge)) flag('leftovers', `nft ${t}`);
    for (const ns of netnsList()) if (!netnsBefore.has(ns)) flag('leftovers', `netns ${ns}`);
    for (const f of [
      ...filesUnder(path.join(runtimeDir, 'layers')),
      ...filesUnder(path.join(runtimeDir, 'vms')),
      ...filesUnder(path.join(runtimeDir, 'snapshots')),
      ...filesUnder(path.join(dataDir, 'volumes')),
    ]) {
      flag('leftovers', `file ${path.relative(dataDir, f)}`);
    }
  } finally {
    await server.kill9().catch(() => {});
    // Whatever a failed run left: stop its QEMUs, so nothing outlives the suite.
    for (const pid of qemuProcesses(runtimeDir).keys()) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    if (network) removeNetwork(bridge);
    report.seconds = (Date.now() - t0) / 1000;
    if (report.findings.length === 0 && !opts.keep)
      fs.rmSync(dataDir, { recursive: true, force: true });
    else log(`data dir kept for inspection: ${dataDir}`);
  }
  return report;
}
