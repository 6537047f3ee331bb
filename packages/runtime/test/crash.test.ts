/**
 * kill -9 at each step of the runtime's on-disk state changes (real QEMU VMs). A separate process
 * owns the runtime and dies by SIGKILL at a named crash point (`FASTVM_CRASH_AT`); a new runtime
 * on the same data dir must then adopt the survivors with working disks, stop whatever the dead
 * process left half-made, and never delete a layer file a live QEMU still has open.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { QemuRuntime, QemuRuntimeOptions } from '../src/runtime.js';
import { createQemuRuntime } from '../src/runtime.js';
import { deletedButOpen } from '../../../chaos/host.js';
import { qemusOf } from '../src/process.js';
import { disposeRuntime, strayFiles, tempDataDir, text } from './helpers.js';

const STEP = path.join(import.meta.dirname, 'fixtures', 'crash-step.ts');

/** Runs one step in a child process; resolves with how it ended. */
function step(
  dataDir: string,
  args: string[],
  opts: { crashAt?: string; adopt?: string[] } = {},
): Promise<{ signal: NodeJS.Signals | null; code: number | null; out: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', STEP, dataDir, ...args], {
      cwd: path.resolve(import.meta.dirname, '..'),
      env: {
        ...process.env,
        ADOPT: JSON.stringify(opts.adopt ?? []),
        ...(opts.crashAt ? { FASTVM_CRASH_AT: opts.crashAt } : {}),
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 90_000);
    child.on('error', reject);
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, out });
    });
  });
}

describe('kill -9 at every step (real QEMU VMs)', () => {
  const dataDir = tempDataDir();
  let rt: QemuRuntime | undefined;
  let generation = 0;

  /** After a crash: adopt `wanted` in a fresh runtime and check what every crash must leave. */
  async function recover(
    wanted: string[],
    extra: Partial<QemuRuntimeOptions> = {},
  ): Promise<QemuRuntime> {
    const r = await createQemuRuntime({ dataDir, ...extra });
    const res = await r.adopt(wanted);
    expect(res.adopted.sort()).toEqual([...wanted].sort());
    // A flatten a crash cut short runs again at start: judged once it is done.
    for (const s of fs.readdirSync(path.join(dataDir, 'snapshots'))) await r.memorySettled(s);
    // Only the adopted VMs still have a QEMU, and none of them writes to a deleted layer.
    const running = await qemusOf(dataDir);
    expect([...new Set(running.values())].sort()).toEqual([...wanted].sort());
    for (const pid of running.keys()) expect(deletedButOpen(pid, dataDir)).toEqual([]);
    expect(strayFiles(dataDir)).toEqual([]);
    // Every snapshot left is complete (a half-written one is removed).
    for (const s of fs.readdirSync(path.join(dataDir, 'snapshots'))) {
      expect(fs.existsSync(path.join(dataDir, 'snapshots', s, 'snapshot.json'))).toBe(true);
    }
    return r;
  }

  /** The VM answers, keeps what it wrote before, and snapshots and forks again. */
  async function healthy(r: QemuRuntime, id: string): Promise<void> {
    const sh = async (vm: string, s: string) =>
      text(await r.exec(vm, { argv: ['sh', '-c', s], timeoutMs: 30_000 }));
    expect((await sh(id, 'cat /root/marker')).out).toBe(`${id}\n`);
    generation++;
    await sh(id, `echo gen${generation} > /root/gen; sync`);
    const snap = `check-${generation}`;
    await r.snapshot(id, snap);
    await r.restore({ id: `fork-${generation}`, snapshotId: snap });
    expect((await sh(`fork-${generation}`, 'cat /root/marker /root/gen')).out).toBe(
      `${id}\ngen${generation}\n`,
    );
    await r.destroy(`fork-${generation}`);
    await r.deleteSnapshot(snap);
  }

  async function crash(args: string[], crashAt: string, adopt: string[]): Promise<void> {
    await rt?.detach();
    rt = undefined;
    const res = await step(dataDir, args, { crashAt, adopt });
    // The step must really have died at the crash point (not failed, not finished).
    expect(res.signal, res.out).toBe('SIGKILL');
  }

  beforeAll(async () => {
    const res = await step(dataDir, ['launch', 'v']);
    expect(res.out).toContain('DONE');
    const res2 = await step(dataDir, ['snapshot', 'v', 'base'], { adopt: ['v'] });
    expect(res2.out).toContain('DONE');
  });

  afterAll(async () => {
    rt ??= await createQemuRuntime({ dataDir });
    await rt.adopt([]);
    await rt.destroyAll();
    expect((await qemusOf(dataDir)).size).toBe(0);
    expect(strayFiles(dataDir)).toEqual([]);
    await disposeRuntime(rt).catch(() => {});
  });

  for (const point of [
    'snapshot:intent',
    'snapshot:switched',
    'snapshot:migrated',
    'snapshot:frozen',
    'snapshot:dumped',
    'snapshot:written',
  ]) {
    it(`snapshot, killed at ${point}: the VM keeps a working disk and snapshots again`, async () => {
      await crash(['snapshot', 'v', `s-${point.split(':')[1]}`], point, ['v']);
      rt = await recover(['v']);
      expect(rt.get('v')?.state).toBe('running');
      await healthy(rt, 'v');
    });
  }

  it('merge of a snapshot chain, killed before its record switch: redone at start', async () => {
    // Only `base` left, so that the merge that dies is the new snapshot's (not one at start).
    rt ??= await recover(['v']);
    for (const s of fs.readdirSync(path.join(dataDir, 'snapshots'))) {
      if (s !== 'base') await rt.deleteSnapshot(s);
    }
    await crash(['snapshot-merge', 'v', 'chain'], 'merge:written', ['v']);
    // recover() waits for the merge that starts again and finds nothing the crash left.
    rt = await recover(['v'], { memoryChain: { maxDeltas: 1 } });
    const rec = JSON.parse(
      fs.readFileSync(path.join(dataDir, 'snapshots', 'chain', 'snapshot.json'), 'utf8'),
    ) as { delta?: unknown; chain?: unknown };
    expect(rec.delta).toBeDefined();
    expect(rec.chain).toBeUndefined();
    const want = text(await rt.exec('v', { argv: ['md5sum', '/dev/shm/step'] })).out;
    await rt.restore({ id: 'chain-r', snapshotId: 'chain' });
    expect(text(await rt.exec('chain-r', { argv: ['md5sum', '/dev/shm/step'] })).out).toBe(want);
    await rt.destroy('chain-r');
    await rt.deleteSnapshot('chain');
    await healthy(rt, 'v');
  });

  for (const point of ['restore:spawned', 'restore:migrated']) {
    it(`restore, killed at ${point}: the half-made VM is stopped and removed`, async () => {
      await crash(['restore', 'r', 'base'], point, ['v']);
      rt = await recover(['v']);
      expect(fs.existsSync(path.join(dataDir, 'vms', 'r'))).toBe(false);
      await healthy(rt, 'v');
    });
  }

  it('launch from the warm pool, killed after the hand-out rename: nothing is left', async () => {
    await crash(['pool-launch', 'p'], 'pool:renamed', ['v']);
    rt = await recover(['v']);
    expect(fs.readdirSync(path.join(dataDir, 'vms'))).toEqual(['v']);
  });

  it('launch with a larger disk, killed after the resize: the half-made VM is removed', async () => {
    await crash(['grow', 'g', '12'], 'disk:resized', ['v']);
    rt = await recover(['v']);
    expect(fs.readdirSync(path.join(dataDir, 'vms'))).toEqual(['v']);
  });

  it('pause, killed after QMP stop: the VM runs again and answers', async () => {
    await crash(['pause', 'v'], 'pause:stopped', ['v']);
    rt = await recover(['v']);
    expect(rt.get('v')?.state).toBe('running');
    await healthy(rt, 'v');
  });

  it('killed while the guest streams output: the VM is adopted, answers and snapshots', async () => {
    await rt?.detach();
    rt = undefined;
    const res = await step(dataDir, ['flood', 'v', '300'], { adopt: ['v'] });
    expect(res.signal, res.out).toBe('SIGKILL');
    rt = await recover(['v']);
    await healthy(rt, 'v');
  });

  it('destroy, killed after QEMU stopped: finishing the delete leaves nothing', async () => {
    await rt?.detach();
    rt = undefined;
    expect((await step(dataDir, ['launch', 'd'], { adopt: ['v'] })).out).toContain('DONE');
    await crash(['destroy', 'd'], 'destroy:stopped', ['v', 'd']);
    rt = await recover(['v']);
    expect(fs.readdirSync(path.join(dataDir, 'vms'))).toEqual(['v']);
    await healthy(rt, 'v');
  });
});
