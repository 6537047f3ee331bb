/**
 * Every fork is a fresh machine (issue 18, part 3): forks of one snapshot, compared pairwise and
 * with their source, have their own machine id, hostname, kernel random stream (/dev/urandom and
 * Python's os.urandom) and a wall clock set from the host, however long after the snapshot they
 * were restored. Real QEMU VMs.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { QemuRuntime } from '../src/runtime.js';
import { disposeRuntime, testRuntime, text, uid } from './helpers.js';

const TAG = uid('ff').slice(3);
/** How far the guest's wall clock may be from the host's (the bound). */
const CLOCK_BOUND_MS = 50;

interface Fingerprint {
  machineId: string;
  hostname: string;
  etcHostname: string;
  urandom: string;
  pyUrandom: string;
}

describe('fresh forks (real QEMU VMs)', () => {
  let rt: QemuRuntime;
  const sh = async (vm: string, script: string) =>
    text(await rt.exec(vm, { argv: ['sh', '-c', script], timeoutMs: 30_000 }));

  /** Identity and randomness as the guest sees them, read by one command. */
  async function fingerprint(vm: string): Promise<Fingerprint> {
    const r = await sh(
      vm,
      'cat /etc/machine-id; hostname; cat /etc/hostname; ' +
        "head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; " +
        "python3 -c 'import os;print(os.urandom(16).hex())'",
    );
    expect(r.code, r.err).toBe(0);
    const [machineId, hostname, etcHostname, urandom, pyUrandom] = r.out.trim().split('\n');
    return {
      machineId: machineId ?? '',
      hostname: hostname ?? '',
      etcHostname: etcHostname ?? '',
      urandom: urandom ?? '',
      pyUrandom: pyUrandom ?? '',
    };
  }

  /**
   * The guest's wall clock minus the host's, in ms, with the uncertainty the exec's round trip
   * leaves (the guest read its clock somewhere between the host's two readings).
   */
  async function clockOffset(vm: string): Promise<{ offsetMs: number; slackMs: number }> {
    // A warm-up run, so the measured one is not slowed by first-run translation.
    await sh(vm, 'date +%s.%N');
    let best = { offsetMs: Number.NaN, slackMs: Number.POSITIVE_INFINITY };
    for (let i = 0; i < 3; i++) {
      const t0 = performance.timeOrigin + performance.now();
      const r = await sh(vm, 'date +%s.%N');
      const t1 = performance.timeOrigin + performance.now();
      const guestMs = Number(r.out.trim()) * 1000;
      const slackMs = (t1 - t0) / 2;
      if (slackMs < best.slackMs) best = { offsetMs: guestMs - (t0 + t1) / 2, slackMs };
    }
    return best;
  }

  beforeAll(async () => {
    rt = await testRuntime();
  });

  afterAll(async () => {
    await disposeRuntime(rt);
  });

  it('gives each fork its own machine id, hostname, randomness and the host clock', async () => {
    const src = `src-${TAG}`;
    await rt.launch({ id: src, machine: 'c1m2', hostname: `src-${TAG}` });
    const snap = `snap-${TAG}`;
    await rt.snapshot(src, snap);
    // The gap between snapshot and restore: a fork that kept the snapshot's clock would be
    // this far behind.
    const gapMs = 3000;
    await new Promise((r) => setTimeout(r, gapMs));

    const forks = [0, 1, 2].map((i) => `f${i}-${TAG}`);
    await Promise.all(
      forks.map((id) => rt.restore({ id, snapshotId: snap, hostname: `host-${id}` })),
    );
    const [source, ...children] = await Promise.all([src, ...forks].map(fingerprint));
    const all = [source!, ...children];

    for (const [i, fp] of children.entries()) {
      expect(fp.hostname).toBe(`host-${forks[i]}`);
      expect(fp.etcHostname).toBe(`host-${forks[i]}`);
    }
    expect(source!.hostname).toBe(`src-${TAG}`);
    for (const key of ['machineId', 'hostname', 'urandom', 'pyUrandom'] as const) {
      const values = all.map((fp) => fp[key]);
      for (const v of values) expect(v, key).toMatch(/^[0-9a-z-]{8,}$/);
      expect(new Set(values).size, `${key}: ${values.join(' ')}`).toBe(all.length);
    }
    for (const fp of all) expect(fp.machineId).toMatch(/^[0-9a-f]{32}$/);

    for (const vm of [src, ...forks]) {
      const { offsetMs, slackMs } = await clockOffset(vm);
      console.log(
        `clock ${vm}: offset ${offsetMs.toFixed(1)} ms (±${slackMs.toFixed(1)} ms exec round trip)`,
      );
      expect(Math.abs(offsetMs), vm).toBeLessThan(CLOCK_BOUND_MS + slackMs);
    }
  });
});
