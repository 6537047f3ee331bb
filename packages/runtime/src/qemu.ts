/**
 * QEMU command lines, the guest image manifest, and accelerator selection.
 */
import { execFileSync, spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { MachineSpec } from './types.js';
import { RuntimeError } from './types.js';

/**
 * The hub a NIC without a tap of its own sits on, and the ids of the tap netdev and its hub
 * port: on the command line (a spare port at start) or plugged later (tap-handover.ts).
 */
export const HUB_NET = { hub: 0, tap: 'tap0', port: 'hp1' } as const;

export type Accel = 'kvm' | 'tcg';

/** What `guest/setup.sh` built: the files every VM boots from. */
export interface GuestImage {
  readonly imageId: string;
  readonly kernel: string;
  readonly rootfs: string;
  readonly rootfsGiB: number;
  readonly agent: string;
  readonly memshim: string;
  readonly memdelta: string;
  /** Opens taps for a confined QEMU (`tap-handover.ts`); absent in manifests from before it. */
  readonly tapfd?: string | undefined;
}

export function defaultCacheDir(): string {
  return process.env.FASTVM_CACHE_DIR || path.join(os.homedir(), '.cache', 'fastvm');
}

/** Load `guest.json` written by `guest/setup.sh`. */
export function loadGuestImage(cacheDir = defaultCacheDir()): GuestImage {
  const file = path.join(cacheDir, 'guest.json');
  let raw: string;
  try {
    raw = fs.readFileSync(file, 'utf8');
  } catch {
    throw new RuntimeError(
      'image_missing',
      `no guest image at ${file}: run \`npm run setup\` to build it`,
    );
  }
  const image = ownHelpers(JSON.parse(raw) as GuestImage, cacheDir);
  for (const f of [image.kernel, image.rootfs, image.memshim, image.memdelta]) {
    if (!f || !fs.existsSync(f)) {
      throw new RuntimeError('image_missing', `guest file ${f} is missing: run \`npm run setup\``);
    }
  }
  return image;
}

/**
 * The memshim and memdelta built from this checkout's sources (`guest/setup.sh` keys them by the
 * hash of `native/*.c`), when they are in the cache: `guest.json` is shared by every checkout on
 * the host and names the helpers of whichever ran setup last, which may lack what this runtime
 * needs (e.g. the memshim's read-only open for confinement).
 */
function ownHelpers(image: GuestImage, cacheDir: string): GuestImage {
  try {
    const dir = fileURLToPath(new URL('../native/', import.meta.url));
    const sources = fs
      .readdirSync(dir)
      .filter((f) => f.endsWith('.c'))
      .sort();
    const hash = crypto.createHash('sha256');
    for (const f of sources) hash.update(fs.readFileSync(path.join(dir, f)));
    const built = path.join(cacheDir, 'native', hash.digest('hex').slice(0, 16));
    const memshim = path.join(built, 'fastvm-memshim.so');
    const memdelta = path.join(built, 'fastvm-memdelta');
    const tapfd = path.join(built, 'fastvm-tapfd');
    if (fs.existsSync(memshim) && fs.existsSync(memdelta)) {
      return { ...image, memshim, memdelta, tapfd: fs.existsSync(tapfd) ? tapfd : undefined };
    }
    // Another checkout's helper may not speak this runtime's requests (helper.ts): without one
    // of its own, QEMU runs unconfined (the runtime says so) until setup builds it.
    return { ...image, tapfd: undefined };
  } catch {
    /* not a source checkout */
  }
  return image;
}

/** Host TSC frequency in kHz; the guest kernel needs it under TCG (`tsc_early_khz`). */
export function hostTscKhz(): number {
  const cpuinfo = fs.readFileSync('/proc/cpuinfo', 'utf8');
  const m = /cpu MHz\s*:\s*([\d.]+)/.exec(cpuinfo);
  return m ? Math.round(parseFloat(m[1]!) * 1000) : 2_000_000;
}

export function kernelCmdline(tscKhz: number): string {
  return [
    'console=ttyS0',
    'quiet',
    `tsc_early_khz=${tscKhz}`,
    // Keep the TSC as the clocksource: under TCG the watchdog compares it with jiffies, which
    // lose ticks when the host is busy, marks the TSC unstable and falls back to jiffies; the
    // guest's wall clock then drifts by up to a second in ten seconds of load.
    'tsc=reliable',
    'root=/dev/vda',
    'rw',
    'rootfstype=ext4',
    'rootflags=noinit_itable',
    'init=/usr/local/sbin/fastvm-agent',
    'panic=-1',
    'mitigations=off',
    'random.trust_cpu=on',
    // An idle guest's wake-ups cost host CPU under TCG: fold the per-CPU VM statistics every
    // 10 s instead of every second and write dirty pages back every 30 s instead of every 5
    // (measured on one idle c1m2: 3.0 -> 0.7 ms of host CPU per second).
    'sysctl.vm.stat_interval=10',
    'sysctl.vm.dirty_writeback_centisecs=3000',
  ].join(' ');
}

/**
 * The QEMU binary for an accelerator. Debian's `qemu-system-x86_64-microvm` links 10 libraries
 * instead of 51 and starts faster, but it is built for KVM only; TCG needs the full binary.
 */
export function qemuBinary(accel: Accel): string {
  const microvm = '/usr/bin/qemu-system-x86_64-microvm';
  return accel === 'kvm' && fs.existsSync(microvm) ? microvm : 'qemu-system-x86_64';
}

/**
 * The version line of a QEMU binary (`QEMU emulator version 10.0.2 (Debian ...)`). Goldens and
 * snapshots are keyed by it: a migration stream is only loaded by the QEMU that wrote it.
 */
export function qemuVersion(binary: string): string {
  const out = execFileSync(binary, ['--version'], { encoding: 'utf8', timeout: 10_000 });
  return out.split('\n')[0]!.trim();
}

export interface QemuArgs {
  readonly accel: Accel;
  readonly machine: MachineSpec;
  readonly image: GuestImage;
  readonly cmdline: string;
  /** Guest RAM file (mapped share=on; privately when the memshim is preloaded). */
  readonly memPath: string;
  readonly diskPath: string;
  readonly qmpPath: string;
  readonly agentPath: string;
  readonly serialPath: string;
  /** Tap device for virtio-net; without one the NIC sits on an empty hub. */
  readonly tap?: string;
  /**
   * A tap on the NIC's hub from the start (no `tap`): the same devices as a tap plugged in later
   * (`plugTap`), so whatever a snapshot was taken with restores either way.
   */
  readonly hubTap?: string | undefined;
  /**
   * The tap (`tap` or `hubTap`) is open on this descriptor, handed over by `fastvm-tapfd`
   * (`tap-handover.ts`): QEMU takes it instead of opening the device by name.
   */
  readonly tapFd?: number | undefined;
  /** A second QMP monitor, for `fastvm-tapfd plug` (`tap-handover.ts`). */
  readonly plugQmpPath?: string | undefined;
  readonly mac: string;
  readonly incoming: boolean;
  /** QEMU's seccomp sandbox (`-sandbox` value), when confined. */
  readonly sandbox?: string | undefined;
  /**
   * A virtio-scsi controller (`scsi0`) for hot-attached volumes (`volumes.ts`). Part of the
   * device set, so a restore passes what the snapshot's machine had (older ones: none).
   */
  readonly scsi?: boolean;
}

/**
 * The QEMU command line of a FastVM guest. Every VM (golden boot, launch, restore) gets the same
 * device set, so migration state always matches: virtio-serial (agent), virtio-blk (root disk),
 * virtio-net, virtio-rng, and (since volumes) virtio-scsi last, so the others keep their slots.
 */
export function qemuArgs(a: QemuArgs): string[] {
  const mem = `${a.machine.memoryMiB}M`;
  const accel =
    a.accel === 'kvm'
      ? ['-accel', 'kvm', '-cpu', 'host']
      : [
          '-accel',
          `tcg,thread=${a.machine.vcpus > 1 ? 'multi' : 'single'},tb-size=64`,
          '-cpu',
          'max',
        ];
  // Without a tap the NIC sits on hub HUB_NET.hub, where a tap is plugged in later (`netdev_add`). The hub
  // also gets a port with no peer, which takes every frame and drops it: a hub whose other ports
  // cannot receive queues the NIC's frames, and virtio-net then waits for that queue forever, so
  // the guest never transmits again, not even after a tap is plugged in.
  const opened = (name: string) =>
    a.tapFd !== undefined ? `fd=${a.tapFd}` : `ifname=${name},script=no,downscript=no`;
  const net = a.tap
    ? ['-netdev', `tap,id=n0,${opened(a.tap)},vhost=off`]
    : [
        '-netdev',
        `hubport,id=n0,hubid=${HUB_NET.hub}`,
        '-netdev',
        `hubport,id=sink0,hubid=${HUB_NET.hub}`,
        ...(a.hubTap
          ? [
              '-netdev',
              `tap,id=${HUB_NET.tap},${opened(a.hubTap)}`,
              '-netdev',
              `hubport,id=${HUB_NET.port},hubid=${HUB_NET.hub},netdev=${HUB_NET.tap}`,
            ]
          : []),
      ];
  const args = [
    '-name',
    path.basename(path.dirname(a.qmpPath)),
    '-M',
    'microvm,acpi=off,memory-backend=mem',
    ...accel,
    '-m',
    mem,
    '-smp',
    String(a.machine.vcpus),
    '-nodefaults',
    '-no-user-config',
    '-display',
    'none',
    '-no-reboot',
    '-object',
    `memory-backend-file,id=mem,size=${mem},mem-path=${a.memPath},share=on`,
    '-chardev',
    `file,id=ser0,path=${a.serialPath},append=on`,
    '-serial',
    'chardev:ser0',
    '-qmp',
    `unix:${a.qmpPath},server=on,wait=off`,
    '-device',
    'virtio-serial-device',
    '-chardev',
    `socket,id=agent,path=${a.agentPath},server=on,wait=off`,
    '-device',
    'virtserialport,chardev=agent,name=fastvm.agent',
    '-blockdev',
    `driver=file,filename=${a.diskPath},node-name=file0,cache.direct=off`,
    '-blockdev',
    'driver=qcow2,file=file0,node-name=disk0',
    '-device',
    'virtio-blk-device,drive=disk0,id=vda',
    ...net,
    '-device',
    // No guest announce: after a restore the guest would broadcast its (source's) addresses,
    // and the agent gives it new ones right away; the announce only costs guest work.
    `virtio-net-device,netdev=n0,mac=${a.mac},guest_announce=off`,
    '-object',
    'rng-random,id=rng0,filename=/dev/urandom',
    '-device',
    'virtio-rng-device,rng=rng0',
    '-kernel',
    a.image.kernel,
    '-append',
    a.cmdline,
  ];
  if (a.scsi) args.push('-device', 'virtio-scsi-device,id=scsi0');
  if (a.plugQmpPath) args.push('-qmp', `unix:${a.plugQmpPath},server=on,wait=off`);
  if (a.incoming) args.push('-incoming', 'defer');
  if (a.sandbox) args.push('-sandbox', a.sandbox);
  return args;
}

/**
 * Whether /dev/kvm really runs guests: boot the guest kernel under KVM with a short timeout and
 * look for the kernel's first console output. Some hosts expose a /dev/kvm that hangs on an
 * ordinary guest; those fall back to TCG.
 */
export async function probeKvm(
  image: GuestImage,
  workDir: string,
  timeoutMs = 4000,
): Promise<boolean> {
  if (process.env.FASTVM_ACCEL === 'tcg') return false;
  if (process.env.FASTVM_ACCEL === 'kvm') return true;
  try {
    fs.accessSync('/dev/kvm', fs.constants.R_OK | fs.constants.W_OK);
  } catch {
    return false;
  }
  fs.mkdirSync(workDir, { recursive: true });
  const serial = path.join(workDir, 'kvm-probe.log');
  fs.rmSync(serial, { force: true });
  const child = spawn(
    'qemu-system-x86_64',
    [
      '-M',
      'microvm,acpi=off',
      '-accel',
      'kvm',
      '-cpu',
      'host',
      '-m',
      '256M',
      '-smp',
      '1',
      '-nodefaults',
      '-no-user-config',
      '-display',
      'none',
      '-no-reboot',
      '-serial',
      `file:${serial}`,
      '-kernel',
      image.kernel,
      '-append',
      'console=ttyS0 panic=-1 root=/dev/nonexistent',
    ],
    { stdio: 'ignore' },
  );
  const deadline = Date.now() + timeoutMs;
  let ok = false;
  while (Date.now() < deadline && child.exitCode === null) {
    await new Promise((r) => setTimeout(r, 50));
    try {
      // "VFS: Cannot open root device" (or any panic) means the kernel booted to the end.
      const out = fs.readFileSync(serial, 'utf8');
      if (/Kernel panic|VFS:/.test(out)) {
        ok = true;
        break;
      }
    } catch {
      /* not created yet */
    }
  }
  child.kill('SIGKILL');
  return ok;
}
