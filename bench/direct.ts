/**
 * QEMU started by the benchmark itself, without the runtime: the baselines that FastVM's numbers
 * are compared with.
 *
 * - a cold boot of the same guest (same command line as the runtime's golden boot: `qemuArgs`);
 * - the plain QEMU way of saving and restoring a VM: RAM as ordinary private memory
 *   (`memory-backend-ram`), `migrate` of the whole RAM to a file, `-incoming 'exec:cat file'`.
 */
import { execFile, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import {
  AgentClient,
  QmpClient,
  type Accel,
  type GuestImage,
  type MachineSpec,
} from '@fastvm/runtime';
import { qemuArgs } from '@fastvm/runtime/qemu';
import { killHard, now, processMemMiB, waitExit } from './sys.js';

const execFileP = promisify(execFile);

export interface DirectEnv {
  readonly image: GuestImage;
  readonly accel: Accel;
  readonly cmdline: string;
  /** Directory for the VMs' files (removed by the caller). */
  readonly root: string;
  /** Called with every spawned QEMU pid (true) and when it is gone (false). */
  readonly track: (pid: number, live: boolean) => void;
}

interface Paths {
  dir: string;
  mem: string;
  disk: string;
  qmp: string;
  agent: string;
  serial: string;
}

function paths(dir: string): Paths {
  return {
    dir,
    mem: path.join(dir, 'mem'),
    disk: path.join(dir, 'disk.qcow2'),
    qmp: path.join(dir, 'qmp.sock'),
    agent: path.join(dir, 'agent.sock'),
    serial: path.join(dir, 'serial.log'),
  };
}

async function overlay(file: string, backing: string, fmt: 'raw' | 'qcow2', gib: number) {
  await execFileP('qemu-img', [
    'create',
    '-q',
    '-f',
    'qcow2',
    '-u',
    '-F',
    fmt,
    '-b',
    backing,
    file,
    `${gib}G`,
  ]);
}

/**
 * The runtime's command line for `p`; with `plainRam`, guest RAM is an anonymous
 * `memory-backend-ram` (ordinary private memory) instead of the memory file.
 */
function args(env: DirectEnv, machine: MachineSpec, p: Paths, plainRam: boolean): string[] {
  const a = qemuArgs({
    accel: env.accel,
    machine,
    image: env.image,
    cmdline: env.cmdline,
    memPath: p.mem,
    diskPath: p.disk,
    qmpPath: p.qmp,
    agentPath: p.agent,
    serialPath: p.serial,
    mac: '02:00:00:be:4c:01',
    incoming: false,
  });
  if (plainRam) {
    const i = a.findIndex((x) => x.startsWith('memory-backend-file,'));
    if (i < 0) throw new Error('qemuArgs has no memory-backend-file to replace');
    a[i] = `memory-backend-ram,id=mem,size=${machine.memoryMiB}M`;
  }
  return a;
}

function spawnQemu(env: DirectEnv, p: Paths, argv: string[]): number {
  const log = fs.openSync(path.join(p.dir, 'qemu.log'), 'a');
  try {
    const child = spawn('qemu-system-x86_64', argv, { stdio: ['ignore', log, log] });
    child.on('error', () => {});
    if (!child.pid) throw new Error('cannot start qemu-system-x86_64');
    env.track(child.pid, true);
    return child.pid;
  } finally {
    fs.closeSync(log);
  }
}

async function stop(env: DirectEnv, pid: number): Promise<void> {
  killHard(pid);
  await waitExit(pid, 5000);
  env.track(pid, false);
}

function qemuLogTail(dir: string): string {
  try {
    return fs.readFileSync(path.join(dir, 'qemu.log'), 'utf8').slice(-400);
  } catch {
    return '';
  }
}

/**
 * Cold boot of the guest to a ready agent (the HELLO answered), then the first command. The
 * overlay is created before the clock starts; the clock starts when QEMU is spawned.
 */
export async function coldBoot(
  env: DirectEnv,
  machine: MachineSpec,
  name: string,
): Promise<{ readyMs: number; firstCmdMs: number }> {
  const p = paths(fs.mkdtempSync(path.join(env.root, `${name}-`)));
  await overlay(p.disk, env.image.rootfs, 'raw', env.image.rootfsGiB);
  const argv = args(env, machine, p, false);
  let pid = 0;
  let agent: AgentClient | undefined;
  try {
    const t0 = now();
    pid = spawnQemu(env, p, argv);
    agent = await AgentClient.connect(p.agent, { timeoutMs: 180_000 });
    const t1 = now();
    const r = await agent.exec({ argv: ['true'], timeoutMs: 60_000 });
    const t2 = now();
    if (r.exitCode !== 0) throw new Error(`cold boot: true exited ${r.exitCode}`);
    return { readyMs: t1 - t0, firstCmdMs: t2 - t0 };
  } catch (err) {
    throw new Error(`cold boot failed: ${String(err)} ${qemuLogTail(p.dir)}`, { cause: err });
  } finally {
    agent?.close();
    if (pid) await stop(env, pid);
    fs.rmSync(p.dir, { recursive: true, force: true });
  }
}

/** A plain QEMU snapshot: the whole RAM plus device state in one migration stream file. */
export interface PlainSnapshot {
  readonly dir: string;
  /** Frozen disk of the source (restores put an overlay on it). */
  readonly disk: string;
  readonly state: string;
  readonly stateBytes: number;
  /** Time of the outgoing migration (the source runs until it completes). */
  readonly saveMs: number;
  readonly machine: MachineSpec;
}

/**
 * Cold-boot a VM whose RAM is ordinary private memory, run `prepare` in it (e.g. dirty 256 MiB),
 * and migrate all of it to a file, the plain way.
 */
export async function plainSnapshot(
  env: DirectEnv,
  machine: MachineSpec,
  prepare: string,
): Promise<PlainSnapshot> {
  const p = paths(fs.mkdtempSync(path.join(env.root, 'plain-')));
  await overlay(p.disk, env.image.rootfs, 'raw', env.image.rootfsGiB);
  const pid = spawnQemu(env, p, args(env, machine, p, true));
  let agent: AgentClient | undefined;
  let qmp: QmpClient | undefined;
  try {
    qmp = await QmpClient.connect(p.qmp, { timeoutMs: 30_000 });
    agent = await AgentClient.connect(p.agent, { timeoutMs: 180_000 });
    const r = await agent.exec({ argv: ['sh', '-c', prepare], timeoutMs: 300_000 });
    if (r.exitCode !== 0) throw new Error(`prepare exited ${r.exitCode}: ${r.stderr.toString()}`);
    await qmp.execute('migrate-set-capabilities', {
      capabilities: [{ capability: 'events', state: true }],
    });
    // QEMU's default migration bandwidth limit is 32 MiB/s; a local file has no such limit.
    await qmp.execute('migrate-set-parameters', { 'max-bandwidth': 100 * 2 ** 30 });
    const state = path.join(p.dir, 'state.bin');
    const done = qmp.waitEvent('MIGRATION', {
      timeoutMs: 600_000,
      match: (e) => ['completed', 'failed', 'cancelled'].includes(String(e.data?.status)),
    });
    const t0 = now();
    await qmp.execute('migrate', { uri: `exec:cat > '${state}'` });
    const ev = await done;
    const saveMs = now() - t0;
    if (ev.data?.status !== 'completed') {
      throw new Error(`plain migration ${String(ev.data?.status)}`);
    }
    await qmp.execute('quit').catch(() => {});
    return {
      dir: p.dir,
      disk: p.disk,
      state,
      stateBytes: fs.statSync(state).size,
      saveMs,
      machine,
    };
  } catch (err) {
    throw new Error(`plain snapshot failed: ${String(err)} ${qemuLogTail(p.dir)}`, {
      cause: err,
    });
  } finally {
    agent?.close();
    qmp?.close();
    await stop(env, pid);
    for (const f of [p.qmp, p.agent, p.mem]) fs.rmSync(f, { force: true });
  }
}

/**
 * Restore a plain snapshot into a new QEMU (`-incoming 'exec:cat state'`, its own overlay on the
 * frozen disk) and run the first command. The clock covers the overlay, as the runtime's does.
 */
export async function plainRestore(
  env: DirectEnv,
  snap: PlainSnapshot,
  name: string,
): Promise<{ readyMs: number; firstCmdMs: number; pssMiB: number; rssMiB: number }> {
  const p = paths(path.join(snap.dir, name));
  fs.mkdirSync(p.dir);
  let pid = 0;
  let agent: AgentClient | undefined;
  try {
    const t0 = now();
    await overlay(p.disk, snap.disk, 'qcow2', env.image.rootfsGiB);
    const argv = args(env, snap.machine, p, true);
    argv.push('-incoming', `exec:cat '${snap.state}'`);
    pid = spawnQemu(env, p, argv);
    agent = await AgentClient.connect(p.agent, { timeoutMs: 120_000 });
    const t1 = now();
    const r = await agent.exec({ argv: ['true'], timeoutMs: 60_000 });
    const t2 = now();
    if (r.exitCode !== 0) throw new Error(`true exited ${r.exitCode}`);
    const mem = processMemMiB(pid);
    return { readyMs: t1 - t0, firstCmdMs: t2 - t0, pssMiB: mem.pss, rssMiB: mem.rss };
  } catch (err) {
    throw new Error(`plain restore failed: ${String(err)} ${qemuLogTail(p.dir)}`, {
      cause: err,
    });
  } finally {
    agent?.close();
    if (pid) await stop(env, pid);
    fs.rmSync(p.dir, { recursive: true, force: true });
  }
}
