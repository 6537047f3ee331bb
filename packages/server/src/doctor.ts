/**
 * `fastvm-server doctor` (and `npm run doctor`): checks what this host needs to run VMs and says
 * how to fix what is missing. `fail` is something the server cannot run VMs without (exit status
 * 1); `warn` is a feature that will be off or slow (VM networking, KVM, cgroup limits).
 * Nothing here changes the host.
 * @module
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import {
  QEMU_USER,
  loadGuestImage,
  lookupUser,
  probeCgroups,
  probeNetworking,
} from '@fastvm/runtime';

const execFileP = promisify(execFile);

export type CheckStatus = 'ok' | 'warn' | 'fail';

export interface Check {
  readonly name: string;
  readonly status: CheckStatus;
  readonly detail: string;
  /** What to do about a warn/fail. */
  readonly fix?: string;
}

export interface DoctorOptions {
  /** The server's data dir (disk space is checked where it lives). */
  readonly dataDir: string;
  /** The guest image cache (`~/.cache/fastvm`). */
  readonly cacheDir: string;
  readonly env?: Record<string, string | undefined>;
}

const GIB = 2 ** 30;
const SETUP_DEPS = 'bash guest/setup.sh --deps-only (as root)';

/** Runs every check; never throws. */
export async function runDoctor(opts: DoctorOptions): Promise<Check[]> {
  const env = opts.env ?? process.env;
  const checks: Check[] = [];
  const add = (c: Check) => checks.push(c);

  // QEMU and qemu-img
  const qemu = findBinary('qemu-system-x86_64', env);
  if (!qemu) {
    add({ name: 'qemu', status: 'fail', detail: 'qemu-system-x86_64 not found', fix: SETUP_DEPS });
  } else {
    const line = await firstLine(qemu, ['--version']);
    const [major = 0, minor = 0] = (/version (\d+)\.(\d+)/.exec(line) ?? []).slice(1).map(Number);
    add(
      major > 8 || (major === 8 && minor >= 2)
        ? { name: 'qemu', status: 'ok', detail: line }
        : {
            name: 'qemu',
            status: 'warn',
            detail: `${line || 'unknown version'}: before 8.2, snapshots and restores fork QEMU (exec: migrations) and TCG re-translates shared libraries per process`,
            fix: `${SETUP_DEPS} installs QEMU 10.0 from bookworm-backports`,
          },
    );
  }
  add(
    findBinary('qemu-img', env)
      ? { name: 'qemu-img', status: 'ok', detail: 'found' }
      : { name: 'qemu-img', status: 'fail', detail: 'qemu-img not found', fix: SETUP_DEPS },
  );

  // Accelerator
  add(kvmCheck(opts.cacheDir));

  // Networking: tun, nftables, and the runtime's own probe (root, ip, netdev egress)
  add(
    canOpen('/dev/net/tun')
      ? { name: 'tun', status: 'ok', detail: '/dev/net/tun' }
      : {
          name: 'tun',
          status: 'warn',
          detail: '/dev/net/tun is missing or not accessible: VMs get no network',
          fix: 'modprobe tun (and run the server as root)',
        },
  );
  const nft = findBinary('nft', env);
  add(
    nft
      ? { name: 'nftables', status: 'ok', detail: await firstLine(nft, ['--version']) }
      : {
          name: 'nftables',
          status: 'warn',
          detail: 'nft not found: VMs get no network (no firewall, no translation)',
          fix: 'apt-get install nftables',
        },
  );
  const net = await probeNetworking().catch((err: unknown) => ({
    available: false,
    reason: String(err),
  }));
  add(
    net.available
      ? {
          name: 'networking',
          status: 'ok',
          detail: 'taps, routes and nftables netdev egress usable',
        }
      : {
          name: 'networking',
          status: 'warn',
          detail: `VM networking off: ${'reason' in net ? net.reason : ''}`,
          fix: 'run as root on Linux ≥ 5.16 with iproute2 and nftables, or set FASTVM_NETWORK=off',
        },
  );

  // Confinement: cgroups and the unprivileged user
  const cg = probeCgroups();
  add(
    typeof cg === 'string'
      ? {
          name: 'cgroups',
          status: 'warn',
          detail: `no per-VM CPU/memory/pids limits: ${cg}`,
          fix: 'mount cgroup v2 with the cpu, memory and pids controllers (or cgroup v1 cpu, memory, pids)',
        }
      : { name: 'cgroups', status: 'ok', detail: `v${cg.version}: ${cg.where}` },
  );
  add(userCheck(env));

  // Guest image, goldens
  checks.push(...imageChecks(opts.cacheDir));

  // Disk space where VMs and the image cache live
  for (const [what, dir] of [
    ['data dir', opts.dataDir],
    ['image cache', opts.cacheDir],
  ] as const) {
    add(diskCheck(what, dir));
  }
  return checks;
}

/** The report: one line per check, a `fix:` line under each warn/fail. */
export function formatChecks(checks: readonly Check[]): string[] {
  const width = Math.max(...checks.map((c) => c.name.length));
  const out: string[] = [];
  for (const c of checks) {
    const tag = c.status === 'fail' ? 'FAIL' : c.status;
    out.push(`${tag.padEnd(5)} ${c.name.padEnd(width)}  ${c.detail}`);
    if (c.fix && c.status !== 'ok') out.push(`${' '.repeat(6 + width)}  fix: ${c.fix}`);
  }
  const fails = checks.filter((c) => c.status === 'fail').length;
  const warns = checks.filter((c) => c.status === 'warn').length;
  out.push(
    fails
      ? `\n${fails} required thing${fails > 1 ? 's' : ''} missing: VMs cannot run until fixed.`
      : `\nready${warns ? ` (${warns} warning${warns > 1 ? 's' : ''})` : ''}.`,
  );
  return out;
}

function kvmCheck(cacheDir: string): Check {
  let cached: string | undefined;
  try {
    cached = (
      JSON.parse(fs.readFileSync(path.join(cacheDir, 'golden', 'accel.json'), 'utf8')) as {
        accel?: string;
      }
    ).accel;
  } catch {
    /* not probed yet */
  }
  if (!canOpen('/dev/kvm')) {
    return {
      name: 'kvm',
      status: 'warn',
      detail:
        '/dev/kvm is not usable: VMs run under TCG (software emulation, several times slower)',
      fix: 'enable virtualization (nested virtualization in a VM) and load kvm_intel/kvm_amd',
    };
  }
  if (cached === 'tcg') {
    return {
      name: 'kvm',
      status: 'warn',
      detail: '/dev/kvm opens but did not boot the guest in the start-up probe: VMs run under TCG',
      fix: 'check the host hypervisor (nested KVM); delete golden/accel.json in the cache to probe again',
    };
  }
  return {
    name: 'kvm',
    status: 'ok',
    detail: cached === 'kvm' ? 'KVM (probed)' : '/dev/kvm usable (probed at the first start)',
  };
}

function userCheck(env: Record<string, string | undefined>): Check {
  if (env.FASTVM_CONFINE === 'off') {
    return {
      name: 'confinement',
      status: 'warn',
      detail: 'FASTVM_CONFINE=off: QEMU runs as the server, without seccomp or cgroup limits',
      fix: 'unset FASTVM_CONFINE',
    };
  }
  if (process.getuid?.() !== 0) {
    return {
      name: 'confinement',
      status: 'warn',
      detail: `not root: QEMU runs as this user, unconfined, and VMs get no network`,
      fix: 'run the server as root (it confines each QEMU itself)',
    };
  }
  const user = lookupUser(QEMU_USER);
  return user
    ? { name: 'confinement', status: 'ok', detail: `QEMU runs as ${QEMU_USER} (uid ${user.uid})` }
    : {
        name: 'confinement',
        status: 'warn',
        detail: `user ${QEMU_USER} does not exist yet (the server creates it at start)`,
        fix: SETUP_DEPS,
      };
}

function imageChecks(cacheDir: string): Check[] {
  let image;
  try {
    image = loadGuestImage(cacheDir);
  } catch (err) {
    return [
      {
        name: 'guest image',
        status: 'fail',
        detail: (err as Error).message,
        fix: 'npm run setup (builds the kernel, root filesystem and agent; 6–8 min once)',
      },
    ];
  }
  const out: Check[] = [];
  const confinable = fs.readFileSync(image.memshim).includes('FASTVM_MEMSHIM_NODUMP');
  // A confined QEMU gets its tap from this helper (runtime tap-handover.ts).
  const tapfd = image.tapfd !== undefined && fs.existsSync(image.tapfd);
  out.push(
    confinable && tapfd
      ? { name: 'guest image', status: 'ok', detail: `${image.imageId} in ${cacheDir}` }
      : {
          name: 'guest image',
          status: 'warn',
          detail: confinable
            ? 'no fastvm-tapfd in the cache: QEMU would run unconfined'
            : `${image.memshim} predates confinement: QEMU would run unconfined`,
          fix: 'npm run setup',
        },
  );
  let goldens: string[] = [];
  try {
    goldens = fs.readdirSync(path.join(cacheDir, 'golden')).filter((d) => d.startsWith('golden-'));
  } catch {
    /* none yet */
  }
  out.push(
    goldens.length
      ? {
          name: 'goldens',
          status: 'ok',
          detail: `${goldens.length} golden snapshot(s) cached`,
        }
      : {
          name: 'goldens',
          status: 'warn',
          detail:
            'none cached: the first launch of each machine type cold-boots it (~1 min on TCG)',
          fix: 'start the server once (it builds c1m2 at start)',
        },
  );
  return out;
}

function diskCheck(what: string, dir: string): Check {
  let d = path.resolve(dir);
  while (!fs.existsSync(d) && path.dirname(d) !== d) d = path.dirname(d);
  let free: number;
  try {
    const st = fs.statfsSync(d);
    free = st.bavail * st.bsize;
  } catch (err) {
    return { name: `disk (${what})`, status: 'warn', detail: `${d}: ${(err as Error).message}` };
  }
  const detail = `${(free / GIB).toFixed(1)} GiB free at ${d}`;
  if (free < 2 * GIB) {
    return {
      name: `disk (${what})`,
      status: 'fail',
      detail,
      fix: 'free space: VM disks, snapshots and memory layers need at least a few GiB',
    };
  }
  if (free < 10 * GIB) {
    return {
      name: `disk (${what})`,
      status: 'warn',
      detail,
      fix: 'each snapshot keeps its changed memory and disk; 10 GiB or more is advised',
    };
  }
  return { name: `disk (${what})`, status: 'ok', detail };
}

function canOpen(file: string): boolean {
  try {
    fs.accessSync(file, fs.constants.R_OK | fs.constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

/** An executable `name` on `env.PATH`, or undefined. */
function findBinary(name: string, env: Record<string, string | undefined>): string | undefined {
  for (const dir of (env.PATH ?? '').split(':').filter(Boolean)) {
    const f = path.join(dir, name);
    try {
      fs.accessSync(f, fs.constants.X_OK);
      return f;
    } catch {
      /* next */
    }
  }
  return undefined;
}

async function firstLine(bin: string, args: string[]): Promise<string> {
  try {
    const { stdout } = await execFileP(bin, args, { timeout: 10_000 });
    return stdout.split('\n')[0]!.trim();
  } catch (err) {
    return `(${bin} ${args.join(' ')} failed: ${(err as Error).message})`;
  }
}
