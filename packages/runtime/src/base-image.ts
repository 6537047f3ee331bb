/**
 * Root filesystems other than the platform's guest image (`BaseImage`: an imported OCI image).
 * `installGuestSupport` adds to an unpacked root what our kernel and agent need to boot it and run
 * commands in it, whatever the image holds (no shell, no systemd, no iproute2 is fine):
 *
 * - the static agent at `/usr/local/sbin/fastvm-agent` (the kernel's `init=`);
 * - the identity seeds under `/usr/local/share/fastvm` and `/etc/{hostname,hosts,machine-id}` as
 *   symlinks into `/run/fastvm` (tmpfs, as in `guest/rootfs/make-image.sh`);
 * - `/etc/resolv.conf` naming the gateway (the host's DNS forwarder), `/etc/mtab`;
 * - the mount points the agent mounts on, and `/root` (its default working directory);
 * - the host's `ip` and `resize2fs` with their shared libraries and loader under
 *   `/usr/local/lib/fastvm` (`helperArgv`): the runtime pins the gateway's MAC and grows the
 *   root filesystem with them, run through that loader, so they work on a musl or distroless
 *   image too. The host is Debian 12 like the platform guest.
 *
 * `makeExt4` then makes the sparse ext4 file (`mke2fs -d`, as make-image.sh does).
 * See docs/ARCHITECTURE.md ("Images").
 * @module
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { GUEST_NET } from './guest-net.js';
import { type BaseImage, DEFAULT_DISK_GIB, RuntimeError } from './types.js';

const run = promisify(execFile);

/** Where the helper tools live in a base image. */
export const HELPER_DIR = '/usr/local/lib/fastvm';
const LOADER = 'ld-linux-x86-64.so.2';

/** Host tools copied into every base image (with their libraries). */
const HELPER_TOOLS = ['/usr/sbin/ip', '/usr/sbin/resize2fs'] as const;

/** argv running a helper tool (`ip`, `resize2fs`) of a base image through its own loader. */
export function helperArgv(tool: 'ip' | 'resize2fs', args: readonly string[]): string[] {
  return [
    `${HELPER_DIR}/${LOADER}`,
    '--library-path',
    `${HELPER_DIR}/lib`,
    `${HELPER_DIR}/bin/${tool}`,
    ...args,
  ];
}

/** The commands that pin the gateway's MAC (`GUEST_NEIGH_SCRIPT` without a shell). */
export function helperNeighArgvs(): string[][] {
  const g = GUEST_NET;
  return [
    helperArgv('ip', [
      'neigh',
      'replace',
      g.ipv4Gateway,
      'lladdr',
      g.gatewayMac,
      'dev',
      'eth0',
      'nud',
      'permanent',
    ]),
    helperArgv('ip', [
      '-6',
      'neigh',
      'replace',
      g.ipv6Gateway,
      'lladdr',
      g.gatewayMac,
      'dev',
      'eth0',
      'nud',
      'permanent',
    ]),
  ];
}

/** `path` inside `root`, refusing anything that would leave it. */
function inside(root: string, p: string): string {
  const out = path.join(root, p);
  if (out !== root && !out.startsWith(root + path.sep)) {
    throw new RuntimeError('invalid_argument', `${p} is outside the root`);
  }
  return out;
}

/**
 * Replaces whatever is at `p` (a file, a symlink, even one pointing outside the root: it is
 * removed, never followed) with the parent directories made real directories.
 */
async function place(root: string, p: string): Promise<string> {
  const target = inside(root, p);
  await realDirs(root, path.dirname(p));
  await fs.rm(target, { recursive: true, force: true });
  return target;
}

/**
 * Makes every component of `dir` (relative to root) a real directory: a symlink on the way (an
 * image's `/usr/local -> /opt`, or one pointing out of the root) is replaced, so writes never
 * follow a link.
 */
async function realDirs(root: string, dir: string): Promise<void> {
  let cur = root;
  for (const part of dir.split('/').filter(Boolean)) {
    cur = path.join(cur, part);
    const st = await fs.lstat(cur).catch(() => undefined);
    if (st?.isDirectory()) continue;
    if (st) await fs.rm(cur, { recursive: true, force: true });
    await fs.mkdir(cur, { mode: 0o755 });
  }
}

async function writeIn(
  root: string,
  p: string,
  data: string | Buffer,
  mode = 0o644,
): Promise<void> {
  const target = await place(root, p);
  await fs.writeFile(target, data, { mode });
  await fs.chmod(target, mode);
}

async function linkIn(root: string, p: string, to: string): Promise<void> {
  await fs.symlink(to, await place(root, p));
}

/** The shared libraries `file` loads, as `ldd` resolves them on the host. */
async function sharedLibs(file: string): Promise<string[]> {
  const { stdout } = await run('ldd', [file]);
  const libs: string[] = [];
  for (const line of stdout.split('\n')) {
    const m = /=>\s*(\/\S+)/.exec(line);
    if (m) libs.push(m[1]!);
  }
  return libs;
}

export interface GuestSupportOptions {
  /** The static agent binary (`GuestImage.agent`). */
  readonly agent: string;
}

/** Adds what our kernel and agent need to `root` (an unpacked image); see the module comment. */
export async function installGuestSupport(root: string, opts: GuestSupportOptions): Promise<void> {
  await writeIn(root, '/usr/local/sbin/fastvm-agent', await fs.readFile(opts.agent), 0o755);
  // The identity files: seeds (read by the agent at boot) and symlinks into /run/fastvm.
  await writeIn(root, '/usr/local/share/fastvm/hostname', 'fastvm\n');
  await writeIn(
    root,
    '/usr/local/share/fastvm/hosts',
    '127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n127.0.1.1 fastvm\n',
  );
  await writeIn(root, '/usr/local/share/fastvm/machine-id', '');
  for (const f of ['hostname', 'hosts', 'machine-id'])
    await linkIn(root, `/etc/${f}`, `/run/fastvm/${f}`);
  await linkIn(root, '/etc/mtab', '/proc/self/mounts');
  await writeIn(
    root,
    '/etc/resolv.conf',
    `nameserver ${GUEST_NET.ipv4Gateway}\noptions timeout:2 attempts:2\n`,
  );
  for (const d of ['/proc', '/sys', '/dev', '/run', '/tmp', '/root']) {
    await realDirs(root, d);
  }
  await fs.chmod(inside(root, '/tmp'), 0o1777);
  await fs.chmod(inside(root, '/root'), 0o700);
  // Helper tools with their loader and libraries.
  const libs = new Set<string>();
  for (const tool of HELPER_TOOLS) {
    await writeIn(root, `${HELPER_DIR}/bin/${path.basename(tool)}`, await fs.readFile(tool), 0o755);
    for (const lib of await sharedLibs(tool)) libs.add(lib);
  }
  for (const lib of libs) {
    await writeIn(root, `${HELPER_DIR}/lib/${path.basename(lib)}`, await fs.readFile(lib), 0o755);
  }
  await writeIn(root, `${HELPER_DIR}/${LOADER}`, await fs.readFile(`/lib64/${LOADER}`), 0o755);
}

/** Bytes used under `dir` (du's apparent sizes rounded to blocks). */
async function usedBytes(dir: string): Promise<number> {
  const { stdout } = await run('du', ['-s', '-B1', '-x', dir], { maxBuffer: 1 << 20 });
  return parseInt(stdout.split(/\s/)[0]!, 10) || 0;
}

/**
 * Makes a sparse ext4 file of `root` at `out` (written to `out.tmp`, then renamed): it spans at
 * least `DEFAULT_DISK_GIB` (a default launch needs no resize) and twice the content. Returns its
 * size in GiB.
 */
export async function makeExt4(root: string, out: string, signal?: AbortSignal): Promise<number> {
  const used = await usedBytes(root);
  const gib = Math.max(DEFAULT_DISK_GIB, Math.ceil((used * 2) / 2 ** 30) + 1);
  const tmp = `${out}.tmp`;
  await fs.rm(tmp, { force: true });
  const fh = await fs.open(tmp, 'w', 0o644);
  await fh.truncate(gib * 2 ** 30);
  await fh.close();
  try {
    await run(
      'mke2fs',
      [
        '-q',
        '-F',
        '-t',
        'ext4',
        '-L',
        'fastvm-root',
        '-i',
        '32768',
        '-m',
        '0',
        '-E',
        'lazy_itable_init=1,lazy_journal_init=1,root_owner=0:0',
        '-d',
        root,
        tmp,
      ],
      { timeout: 600_000, maxBuffer: 4 << 20, ...(signal ? { signal } : {}) },
    );
  } catch (err) {
    await fs.rm(tmp, { force: true });
    const e = err as { stderr?: string; message?: string };
    throw new RuntimeError(
      'qemu_failed',
      `mke2fs failed: ${(e.stderr || e.message || '').trim()}`,
      {
        cause: err,
      },
    );
  }
  await fs.chmod(tmp, 0o644);
  await fs.rename(tmp, out);
  return gib;
}

/** Refuses a malformed `BaseImage` (its id names golden directories; its file must exist as a path). */
export function checkBaseImage(base: BaseImage): void {
  if (!/^[a-z0-9-]{1,64}$/.test(base.id)) {
    throw new RuntimeError(
      'invalid_argument',
      `base image id ${JSON.stringify(base.id)} is invalid`,
    );
  }
  if (!path.isAbsolute(base.rootfsPath)) {
    throw new RuntimeError(
      'invalid_argument',
      `base image ${base.id}: rootfsPath must be absolute`,
    );
  }
}
