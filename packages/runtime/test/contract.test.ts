/** The runtime contract (`@fastvm/runtime/testing`) against the real QemuRuntime (real VMs). */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { runtimeContract } from '../testing/contract.js';
import { installGuestSupport, makeExt4 } from '../src/base-image.js';
import { loadGuestImage } from '../src/qemu.js';
import { createQemuRuntime, type QemuRuntime } from '../src/runtime.js';
import type { BaseImage } from '../src/types.js';
import { disposeRuntime, tempDataDir, testRuntime } from './helpers.js';

/** Whether Debian's busybox-static is installed (a static busybox, `ldd` refuses it). */
function staticBusybox(): boolean {
  if (!fs.existsSync('/bin/busybox')) return false;
  try {
    execFileSync('ldd', ['/bin/busybox'], { stdio: 'ignore' });
    return false;
  } catch {
    return true;
  }
}

/**
 * A base image made here: a static busybox root with the guest support added (as the server's
 * image import does after unpacking), in a temporary directory removed at exit.
 */
async function busyboxBase(): Promise<BaseImage> {
  const dir = tempDataDir();
  process.once('exit', () => fs.rmSync(dir, { recursive: true, force: true }));
  const root = path.join(dir, 'root');
  fs.mkdirSync(path.join(root, 'bin'), { recursive: true });
  fs.chmodSync(root, 0o755);
  fs.copyFileSync('/bin/busybox', path.join(root, 'bin', 'busybox'));
  fs.chmodSync(path.join(root, 'bin', 'busybox'), 0o755);
  for (const applet of ['sh', 'echo', 'cat', 'true']) {
    fs.symlinkSync('busybox', path.join(root, 'bin', applet));
  }
  await installGuestSupport(root, { agent: loadGuestImage().agent });
  const rootfsPath = path.join(dir, 'rootfs.ext4');
  await makeExt4(root, rootfsPath);
  fs.rmSync(root, { recursive: true, force: true });
  fs.chmodSync(dir, 0o755);
  return {
    id: `busybox-${path
      .basename(dir)
      .toLowerCase()
      .replace(/[^a-z0-9]/g, '')}`,
    rootfsPath,
  };
}

const made: string[] = [];

runtimeContract('QemuRuntime', {
  start: () => testRuntime(),
  async restart(rt) {
    const { dataDir } = rt as QemuRuntime;
    await rt.detach();
    return createQemuRuntime({ dataDir });
  },
  async dispose(rt) {
    const { goldenDir } = rt as QemuRuntime;
    await disposeRuntime(rt as QemuRuntime);
    // The base image's goldens were made for this run only: not left in the shared cache.
    for (const id of made) {
      for (const d of fs.readdirSync(goldenDir)) {
        const rec = path.join(goldenDir, d, 'snapshot.json');
        if (fs.existsSync(rec) && JSON.parse(fs.readFileSync(rec, 'utf8')).baseImage === id) {
          fs.rmSync(path.join(goldenDir, d), { recursive: true, force: true });
        }
      }
    }
  },
  ...(staticBusybox()
    ? {
        async baseImage() {
          const base = await busyboxBase();
          made.push(base.id);
          return base;
        },
      }
    : {}),
});
