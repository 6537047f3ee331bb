/**
 * The golden-image cache: one snapshot per machine type, cold-booted once with its RAM in a
 * shared file, warmed up and frozen; every launch is a restore of it. Goldens are an immutable
 * cache shared by every runtime on the host (`~/.cache/fastvm/golden/golden-<machine>-<key>/`),
 * keyed by format, image, machine type, accelerator, kernel command line and QEMU version (and,
 * for an imported root filesystem, `BaseImage`: its id and file; booted without warm-up). Built
 * in a private directory and renamed into place; never swept by a runtime (unused ones are pruned by
 * `prune.ts`: `fastvm-server prune`). The accelerator probe and the TSC
 * frequency are cached next to them (they depend on the host, not on a data dir).
 * See docs/ARCHITECTURE.md ("Every VM is a restore").
 * @module
 */
import crypto from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { AgentClient } from './agent-client.js';
import { GUEST_NET, GUEST_NET_VERSION, guestNetIdentity, pinGatewayMac } from './guest-net.js';
import { qemuImgCreate } from './layers.js';
import { migrateToFile, stateUri } from './migration.js';
import { alive, spawnQemu, stopProcess, waitExit } from './process.js';
import { type Accel, type GuestImage, hostTscKhz, probeKvm, qemuArgs, qemuBinary } from './qemu.js';
import { QmpClient } from './qmp.js';
import { helperNeighArgvs } from './base-image.js';
import { readJson, writeJson, type SnapshotRecord } from './records.js';
import { type BaseImage, MACHINES, type MachineType, RuntimeError } from './types.js';

/**
 * Bump when the on-disk golden snapshot format, the QEMU device set or what the golden sets up
 * in the guest changes (7: the virtio-scsi controller; 8: `/etc/resolv.conf` points at the
 * gateway, the DNS forwarder).
 */
export const GOLDEN_FORMAT = 8;

export interface GoldenContext {
  readonly goldenDir: string;
  readonly image: GuestImage;
  readonly accel: Accel;
  readonly cmdline: string;
  /** `qemu --version`. */
  readonly qemu: string;
  readonly log: (msg: string) => void;
}

export class GoldenCache {
  readonly #byMachine = new Map<string, Promise<SnapshotRecord>>();

  constructor(private readonly ctx: GoldenContext) {}

  /**
   * The golden of a machine type (on the platform's image, or on `base`): loaded from the cache,
   * or built once (concurrent calls share).
   */
  get(machine: MachineType, base?: BaseImage): Promise<SnapshotRecord> {
    const k = base ? `${machine}/${base.id}/${base.rootfsPath}` : machine;
    let p = this.#byMachine.get(k);
    if (!p) {
      p = this.#loadOrBuild(machine, base);
      this.#byMachine.set(k, p);
      p.catch(() => this.#byMachine.delete(k));
    }
    return p;
  }

  /** Waits for builds in progress (close, detach). */
  async drain(): Promise<void> {
    await Promise.allSettled([...this.#byMachine.values()]);
  }

  async #loadOrBuild(machine: MachineType, base?: BaseImage): Promise<SnapshotRecord> {
    const { image, accel, cmdline, qemu, goldenDir, log } = this.ctx;
    const parts: unknown[] = [GOLDEN_FORMAT, image.imageId, machine, accel, cmdline, qemu];
    // A base image's golden: keyed by its id and file too (the platform's keys stay as they were).
    if (base) parts.push(base.id, base.rootfsPath, BASE_GOLDEN_FORMAT);
    const key = crypto
      .createHash('sha256')
      .update(JSON.stringify(parts))
      .digest('hex')
      .slice(0, 16);
    // (The same shape for base images: the build directory's socket paths must stay short.)
    const id = `golden-${machine}-${key}`;
    const existing = await readJson<SnapshotRecord>(path.join(goldenDir, id, 'snapshot.json'));
    if (existing) {
      // Marks it as in use for the cache pruning (prune.ts): its mtime is when a runtime last
      // loaded it.
      const t = new Date();
      await fs.utimes(path.join(goldenDir, id), t, t).catch(() => {});
      return existing;
    }
    const t0 = Date.now();
    log(
      `runtime: building golden snapshot for ${machine}${base ? ` on ${base.id}` : ''} (cold boot)`,
    );
    const rec = await this.#boot(id, machine, base);
    log(`runtime: golden ${machine} ready in ${Date.now() - t0} ms`);
    return rec;
  }

  /** Cold-boot the guest with RAM in a shared file, warm it up, and freeze it. */
  async #boot(id: string, machine: MachineType, base?: BaseImage): Promise<SnapshotRecord> {
    const { image, accel, cmdline, qemu, goldenDir } = this.ctx;
    const rootfs = base ? base.rootfsPath : image.rootfs;
    const rootfsGiB = base ? await baseGiB(base) : image.rootfsGiB;
    const final = path.join(goldenDir, id);
    const work = path.join(
      goldenDir,
      `.build-${id}-${process.pid}-${crypto.randomUUID().slice(0, 8)}`,
    );
    await fs.mkdir(work, { recursive: true });
    const at = (dir: string) => ({
      mem: path.join(dir, 'mem'),
      disk: path.join(dir, 'disk.qcow2'),
      state: path.join(dir, 'state.bin'),
    });
    let pid = 0;
    let qmp: QmpClient | undefined;
    let agent: AgentClient | undefined;
    try {
      await qemuImgCreate(at(work).disk, rootfs, 'raw', rootfsGiB);
      const args = qemuArgs({
        accel,
        machine: MACHINES[machine],
        image,
        cmdline,
        memPath: at(work).mem,
        diskPath: at(work).disk,
        qmpPath: path.join(work, 'qmp.sock'),
        agentPath: path.join(work, 'agent.sock'),
        serialPath: path.join(work, 'serial.log'),
        mac: GUEST_NET.mac,
        incoming: false,
        scsi: true,
      });
      pid = await spawnQemu(qemuBinary(accel), work, args, {});
      qmp = await QmpClient.connect(path.join(work, 'qmp.sock'), {
        timeoutMs: 10_000,
        alive: () => alive(pid),
      });
      agent = await AgentClient.connect(path.join(work, 'agent.sock'), { timeoutMs: 120_000 });
      // The network configuration every VM keeps (guest-net.ts): set once, here.
      await agent.setIdentity(guestNetIdentity());
      if (base) {
        // A base image may have no shell or ip(8): its own copies (base-image.ts) pin the
        // gateway; its resolv.conf was written when it was made. Nothing to warm up.
        for (const argv of helperNeighArgvs()) {
          const r = await agent.exec({ argv, timeoutMs: 30_000 });
          if (r.exitCode !== 0) {
            throw new RuntimeError(
              'qemu_failed',
              `pinning the gateway's MAC in ${base.id} failed: ${r.stderr.toString().trim()}`,
            );
          }
        }
      } else {
        await pinGatewayMac(agent);
        // Warm the guest's page cache with what users run first; forks share these pages.
        const warm = await agent.exec({
          argv: [
            'sh',
            '-c',
            'python3 -c pass; curl --version >/dev/null; tmux -V >/dev/null; sync',
          ],
          timeoutMs: 60_000,
        });
        if (warm.exitCode !== 0) {
          throw new RuntimeError('qemu_failed', `golden warm-up failed: ${warm.stderr.toString()}`);
        }
      }
      await qmp.execute('migrate-set-capabilities', {
        capabilities: [
          { capability: 'x-ignore-shared', state: true },
          { capability: 'events', state: true },
        ],
      });
      await migrateToFile(qmp, stateUri(qemu, at(work).state, 'out'));
      await qmp.execute('quit').catch(() => {});
      await waitExit(pid, 5000);
      for (const f of ['qmp.sock', 'agent.sock']) await fs.rm(path.join(work, f), { force: true });
      const rec: SnapshotRecord = {
        id,
        vmId: id,
        machine,
        diskGiB: rootfsGiB,
        accel,
        qemu,
        imageId: image.imageId,
        cmdline,
        memBase: at(final).mem,
        disk: [at(final).disk, rootfs],
        ...(base ? { baseImage: base.id } : {}),
        state: at(final).state,
        paused: false,
        guestNet: GUEST_NET_VERSION,
        scsi: true,
        createdAt: new Date().toISOString(),
      };
      await writeJson(path.join(work, 'snapshot.json'), rec);
      try {
        await fs.rename(work, final);
      } catch {
        // Another runtime finished the same golden first; use that one.
        await fs.rm(work, { recursive: true, force: true });
        const other = await readJson<SnapshotRecord>(path.join(final, 'snapshot.json'));
        if (!other) throw new RuntimeError('qemu_failed', `golden ${id} is unreadable`);
        return other;
      }
      return rec;
    } catch (err) {
      await fs.rm(work, { recursive: true, force: true });
      throw err;
    } finally {
      agent?.close();
      qmp?.close();
      await stopProcess(pid);
    }
  }
}

/** Bumped when what a base image's golden sets up in the guest changes. */
const BASE_GOLDEN_FORMAT = 1;

/** Size of a base image's file in whole GiB (its filesystem spans it). */
async function baseGiB(base: BaseImage): Promise<number> {
  const st = await fs.stat(base.rootfsPath).catch(() => undefined);
  if (!st?.isFile()) {
    throw new RuntimeError('image_missing', `base image ${base.id}: ${base.rootfsPath} is missing`);
  }
  return Math.max(1, Math.floor(st.size / 2 ** 30));
}

/**
 * The host TSC frequency for the kernel command line, read once and kept next to the goldens:
 * the command line is part of a golden's key, and `cpu MHz` can drift on hosts that scale their
 * clock, which would otherwise trigger needless golden rebuilds.
 */
export async function cachedTscKhz(goldenDir: string): Promise<number> {
  const file = path.join(goldenDir, 'tsc.json');
  const cached = await readJson<{ khz: number }>(file);
  if (cached && cached.khz > 0) return cached.khz;
  const khz = hostTscKhz();
  await writeJson(file, { khz });
  return khz;
}

/**
 * KVM or TCG: a short real boot under KVM decides (see `probeKvm`); cached next to the goldens,
 * since the answer depends on the host and kernel, not on the data dir.
 */
export async function cachedAccel(goldenDir: string, image: GuestImage): Promise<Accel> {
  const cache = path.join(goldenDir, 'accel.json');
  const c = await readJson<{ kernel: string; accel: Accel }>(cache);
  if (c && c.kernel === image.kernel && !process.env.FASTVM_ACCEL) return c.accel;
  const accel: Accel = (await probeKvm(image, path.join(goldenDir, 'probe'))) ? 'kvm' : 'tcg';
  await writeJson(cache, { kernel: image.kernel, accel });
  return accel;
}
