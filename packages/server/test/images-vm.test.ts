/**
 * An imported image boots (real QEMU): an image made here (Debian's static busybox, a layer
 * that whites a file out and adds one, ENV/CMD config) is pushed to a registry on 127.0.0.1,
 * resolved by `OciImageSource`, and launched with `runtime.launch({ baseImage })`. The guest runs
 * our agent as init on a root with no Debian in it; the top layer's file is there, the whited-out
 * one is not; its resolver is the gateway; a larger `diskGiB` grows its filesystem (our bundled
 * resize2fs); snapshot → restore keeps what was written and the base under it.
 *
 * The base image's goldens go to a private golden directory (removed at the end), not the shared
 * guest cache.
 */
import fs from 'node:fs';
import path from 'node:path';
import { type QemuRuntime, defaultCacheDir, helperArgv, loadGuestImage } from '@fastvm/runtime';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { disposeRuntime, tempDataDir, testRuntime, uid } from '../../runtime/test/helpers.js';
import { OciImageSource } from '../src/images/oci-image-source.js';
import type { ResolvedImage } from '../src/services/image-source.js';
import {
  busyboxLayer,
  haveRegistry,
  pushImage,
  startRegistry,
  tarOf,
  type TestRegistry,
} from './registry-helpers.js';

const busybox = busyboxLayer();

let registry: TestRegistry;
let rt: QemuRuntime;
let source: OciImageSource;
let goldenDir: string;
let imagesDir: string;
const ready = haveRegistry() && Boolean(busybox);

beforeAll(async () => {
  if (!ready) return;
  registry = await startRegistry();
  const cache = defaultCacheDir();
  // (short: QEMU's socket paths under it must fit a sockaddr_un)
  goldenDir = fs.mkdtempSync(path.join(cache, 'test', 'og-'));
  // The host's accelerator and TSC answers, so the private directory probes nothing again.
  for (const f of ['accel.json', 'tsc.json']) {
    const from = path.join(cache, 'golden', f);
    if (fs.existsSync(from)) fs.copyFileSync(from, path.join(goldenDir, f));
  }
  imagesDir = tempDataDir();
  source = new OciImageSource({ dataDir: imagesDir, agent: loadGuestImage().agent });
  rt = await testRuntime(tempDataDir(), { goldenDir, pool: 0, prewarm: [] });
}, 120_000);

afterAll(async () => {
  if (rt) await disposeRuntime(rt);
  await registry?.stop();
  for (const d of [goldenDir, imagesDir]) if (d) fs.rmSync(d, { recursive: true, force: true });
});

const run = async (id: string, argv: string[]) => {
  const r = await rt.exec(id, { argv, timeoutMs: 60_000 });
  return { out: r.stdout.toString(), err: r.stderr.toString(), code: r.exitCode };
};

describe.skipIf(!ready)('an imported busybox image boots in a VM', () => {
  let resolved: ResolvedImage;
  const vm = uid('oci');
  const big = uid('oci');
  const fork = uid('oci');
  const snap = uid('oci');

  beforeAll(async () => {
    await pushImage(registry, 'test/busy', 'v1', {
      layers: [
        { tar: (await busybox)!, compression: 'gzip' },
        {
          tar: await tarOf([
            { type: 'dir', path: 'etc' },
            { type: 'file', path: 'etc/old.txt', data: 'old\n' },
          ]),
          compression: 'zstd',
        },
        {
          tar: await tarOf([
            { type: 'whiteout', path: 'etc/old.txt' },
            { type: 'dir', path: 'srv' },
            { type: 'file', path: 'srv/top.txt', data: 'from the top layer\n' },
          ]),
        },
      ],
      config: { Env: ['GREETING=hi'], Cmd: ['/bin/sh'] },
    });
    resolved = await source.resolve(`${registry.host}/test/busy:v1`);
  }, 120_000);

  it('launches: the top layer is there, the whiteout took effect, the guest is set up', async () => {
    expect(resolved.config).toMatchObject({ env: { GREETING: 'hi' }, cmd: ['/bin/sh'] });
    const info = await rt.launch({
      id: vm,
      machine: 'c1m2',
      hostname: 'imported',
      baseImage: resolved.baseImage,
    });
    expect(info).toMatchObject({ id: vm, state: 'running', baseImage: resolved.baseImage.id });
    expect(await run(vm, ['cat', '/srv/top.txt'])).toMatchObject({
      out: 'from the top layer\n',
      code: 0,
    });
    expect(
      (await run(vm, ['sh', '-c', 'test -e /etc/old.txt && echo present || echo absent'])).out,
    ).toBe('absent\n');
    // No Debian here: busybox is the only userland.
    expect(
      (await run(vm, ['sh', '-c', 'test -e /usr/bin/apt && echo debian || echo none'])).out,
    ).toBe('none\n');
    expect((await run(vm, ['cat', '/etc/hostname'])).out.trim()).toBe('imported');
    expect((await run(vm, ['cat', '/etc/resolv.conf'])).out).toContain('nameserver 10.0.2.2');
    expect((await run(vm, ['cat', '/proc/1/comm'])).out.trim()).toBe('fastvm-agent');
    const nope = await run(vm, ['python3', '-c', 'pass']);
    expect(nope.code).toBe(127);
  }, 600_000);

  it('honours diskGiB: the root filesystem grows (bundled resize2fs)', async () => {
    await rt.launch({ id: big, machine: 'c1m2', diskGiB: 12, baseImage: resolved.baseImage });
    const df = await run(big, ['df', '-k', '/']);
    const totalKiB = Number(df.out.trim().split('\n')[1]!.trim().split(/\s+/)[1]);
    expect(totalKiB).toBeGreaterThan(11 * 2 ** 20);
    await rt.destroy(big);
    await expect(
      rt.launch({ id: uid('oci'), machine: 'c1m2', diskGiB: 5, baseImage: resolved.baseImage }),
    ).rejects.toMatchObject({ code: 'invalid_argument' });
  }, 600_000);

  it('snapshot → restore: the fork runs on the same base with what was written', async () => {
    expect((await run(vm, ['sh', '-c', 'echo written > /srv/mine.txt && sync'])).code).toBe(0);
    await rt.snapshot(vm, snap);
    const info = await rt.restore({ id: fork, snapshotId: snap });
    expect(info).toMatchObject({ id: fork, baseImage: resolved.baseImage.id, snapshotId: snap });
    expect((await run(fork, ['cat', '/srv/mine.txt'])).out).toBe('written\n');
    expect((await run(fork, ['cat', '/srv/top.txt'])).out).toBe('from the top layer\n');
    // The snapshot's disk chain ends in the image's file (never a runtime layer to sweep).
    const rec = JSON.parse(
      fs.readFileSync(path.join(rt.dataDir, 'snapshots', snap, 'snapshot.json'), 'utf8'),
    ) as { disk: string[]; baseImage?: string };
    expect(rec.baseImage).toBe(resolved.baseImage.id);
    expect(rec.disk[rec.disk.length - 1]).toBe(resolved.baseImage.rootfsPath);
    await rt.destroy(vm);
    await rt.destroy(fork);
    await rt.deleteSnapshot(snap);
    expect(fs.existsSync(resolved.baseImage.rootfsPath)).toBe(true);
  }, 600_000);
});

describe.skipIf(!ready)('images without a userland, and Debian-like ones, boot too', () => {
  it('an image with no shell and no ip(8): the agent and the bundled tools are enough', async () => {
    await pushImage(registry, 'test/bare', 'v1', {
      layers: [{ tar: await tarOf([{ type: 'file', path: 'hello.txt', data: 'bare\n' }]) }],
    });
    const r = await source.resolve(`${registry.host}/test/bare:v1`);
    const id = uid('oci');
    await rt.launch({ id, machine: 'c1m2', baseImage: r.baseImage });
    const addr = await run(id, helperArgv('ip', ['-o', '-4', 'addr', 'show', 'dev', 'eth0']));
    expect(addr.out).toContain('10.0.2.15');
    expect((await run(id, ['cat', '/hello.txt'])).code).toBe(127);
    await rt.destroy(id);
  }, 600_000);

  const rootfsTar = (() => {
    const dir = path.join(defaultCacheDir(), 'rootfs-base');
    for (const d of fs.existsSync(dir) ? fs.readdirSync(dir) : []) {
      const f = path.join(dir, d, 'rootfs.tar');
      if (fs.existsSync(f)) return f;
    }
    return undefined;
  })();

  it.skipIf(!rootfsTar)(
    "a Debian root (the platform's rootfs-base as one layer) runs bash and python3",
    async () => {
      await pushImage(registry, 'test/debian', 'v1', {
        layers: [
          { tar: fs.readFileSync(rootfsTar!), compression: 'gzip' },
          { tar: await tarOf([{ type: 'whiteout', path: 'usr/bin/tmux' }]), compression: 'zstd' },
        ],
      });
      const r = await source.resolve(`${registry.host}/test/debian:v1`);
      const id = uid('oci');
      await rt.launch({ id, machine: 'c1m2', baseImage: r.baseImage });
      expect((await run(id, ['python3', '-c', 'print(6*7)'])).out).toBe('42\n');
      expect(
        (await run(id, ['bash', '-c', 'test -e /usr/bin/tmux && echo yes || echo no'])).out,
      ).toBe('no\n');
      expect((await run(id, ['cat', '/etc/debian_version'])).out).toMatch(/^12\./);
      await rt.destroy(id);
    },
    900_000,
  );
});
