/**
 * Image import (issue 15, group `build_import`): `npm run bench -- --only build_import`. A
 * ~100 MiB image (the platform's own Debian root as one gzip layer, when the guest cache has its
 * `rootfs-base` tarball, else generated files; plus 24 MiB of incompressible data in a zstd
 * layer) is pushed to Debian's `docker-registry` on 127.0.0.1, then resolved by `OciImageSource`:
 *
 * - `build_import_cold`: pull (three layer downloads at a time, digests checked) + unpack +
 *   guest support + `mke2fs -d`, on an empty image cache; `build_import_mibps`: compressed MiB
 *   per second of that; `build_import_unpacked_mibps`: unpacked MiB per second.
 * - `build_import_download`: the same blobs fetched from the same registry to /dev/null
 *   (baseline, same run); `build_import_vs_download`: cold import / download, per pair.
 * - `build_import_cached`: the same reference again (manifest request, cache hit).
 *
 * Exported as `benchImport` so the builds group can call it too. No VM is booted.
 * @module
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { defaultCacheDir, loadGuestImage } from '@fastvm/runtime';
import { OciImageSource } from '@fastvm/server';
import {
  haveRegistry,
  pushImage,
  startRegistry,
  tarOf,
  tarOfDir,
} from '../packages/server/test/registry-helpers.js';
import type { Recorder } from './stats.js';
import { now } from './sys.js';

/** The bottom layer: the platform's rootfs tarball if built, else ~120 MiB of text files. */
async function baseLayer(work: string): Promise<Buffer> {
  const dir = path.join(defaultCacheDir(), 'rootfs-base');
  for (const d of fs.existsSync(dir) ? fs.readdirSync(dir) : []) {
    const tar = path.join(dir, d, 'rootfs.tar');
    if (fs.existsSync(tar)) return fs.readFileSync(tar);
  }
  const src = path.join(work, 'gen');
  fs.mkdirSync(src, { recursive: true });
  for (let i = 0; i < 120; i++) {
    const lines = Array.from({ length: 16_000 }, (_, j) => `line ${i}:${j} ${'x'.repeat(i % 40)}`);
    fs.writeFileSync(path.join(src, `f${i}.txt`), lines.join('\n'));
  }
  return tarOfDir(src);
}

export async function benchImport(
  rec: Recorder,
  log: (s: string) => void,
  opts: { quick: boolean; root: string },
): Promise<string | undefined> {
  if (!haveRegistry())
    return 'build_import: skipped, needs docker-registry (guest/setup.sh --deps-only)';
  let agent: string;
  try {
    agent = loadGuestImage().agent;
  } catch (err) {
    return `build_import: skipped, no guest image: ${String(err)}`;
  }
  const work = path.join(opts.root, 'build-import');
  fs.rmSync(work, { recursive: true, force: true });
  fs.mkdirSync(work, { recursive: true });
  const registry = await startRegistry();
  try {
    const random = crypto.randomBytes(24 << 20);
    const pushed = await pushImage(registry, 'bench/import', 'v1', {
      layers: [
        { tar: await baseLayer(work), compression: 'gzip' },
        {
          tar: await tarOf([{ type: 'file', path: 'opt/blob.bin', data: random }]),
          compression: 'zstd',
        },
      ],
      config: { Env: ['PATH=/usr/bin:/bin'], Cmd: ['/bin/sh'] },
    });
    const mib = pushed.bytes / 2 ** 20;
    log(`  build_import: image ${mib.toFixed(1)} MiB compressed (${pushed.digest.slice(0, 19)}…)`);
    const ref = `${registry.host}/bench/import:v1`;
    const manifest = JSON.parse(pushed.manifest.toString()) as {
      layers: Array<{ digest: string }>;
    };
    const rounds = opts.quick ? 2 : 4;
    for (let i = 0; i < rounds; i++) {
      // Baseline: the same bytes over the same HTTP path, to nowhere.
      const t0 = now();
      for (const l of manifest.layers) {
        const res = await fetch(`${registry.url}/v2/bench/import/blobs/${l.digest}`);
        for await (const _ of res.body as unknown as AsyncIterable<Uint8Array>) {
          /* discard */
        }
      }
      const download = now() - t0;
      const dataDir = path.join(work, `data-${i}`);
      const source = new OciImageSource({ dataDir, agent, log: (m) => log(`  ${m}`) });
      const t1 = now();
      const r = await source.resolve(ref);
      const cold = now() - t1;
      const unpacked = Number(
        (
          JSON.parse(
            fs.readFileSync(path.join(source.dir, r.baseImage.id, 'image.json'), 'utf8'),
          ) as {
            unpackedBytes: number;
          }
        ).unpackedBytes,
      );
      const t2 = now();
      const again = await source.resolve(ref);
      const cached = now() - t2;
      if (again.pulledBytes !== 0) throw new Error('the second resolve pulled again');
      rec.add('build_import_cold', 'ms', cold);
      rec.add('build_import_mibps', 'MiB/s', mib / (cold / 1000));
      rec.add('build_import_unpacked_mibps', 'MiB/s', unpacked / 2 ** 20 / (cold / 1000));
      rec.add('build_import_download', 'ms', download);
      rec.add('build_import_vs_download', 'ratio', cold / download);
      rec.add('build_import_cached', 'ms', cached);
      fs.rmSync(dataDir, { recursive: true, force: true });
    }
    rec.note(
      'build_import_cold',
      `${mib.toFixed(1)} MiB compressed (gzip + zstd layers) from docker-registry on 127.0.0.1: pull, unpack, mke2fs -d`,
    );
    rec.note(
      'build_import_cached',
      'same reference again: one manifest request, cache hit by digest',
    );
    return undefined;
  } finally {
    await registry.stop();
    fs.rmSync(work, { recursive: true, force: true });
  }
}
