/**
 * `fastvm-server doctor`: on this host (which runs the VM tests) everything VMs need is there;
 * without the guest image or QEMU it fails, says what to fix, and the command exits 1.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { defaultCacheDir } from '@fastvm/runtime';
import { afterAll, describe, expect, it } from 'vitest';
import { runCli } from '../src/cli.js';
import { formatChecks, runDoctor } from '../src/doctor.js';

const empty = fs.mkdtempSync(path.join(os.tmpdir(), 'fastvm-doctor-'));
afterAll(() => fs.rmSync(empty, { recursive: true, force: true }));

function io() {
  const out: string[] = [];
  return { out, io: { out: (l: string) => out.push(l), err: (l: string) => out.push(l) } };
}

describe('doctor', () => {
  it('finds what this host has: QEMU 10, qemu-img, the guest image, cgroups, disk space', async () => {
    const checks = await runDoctor({ dataDir: empty, cacheDir: defaultCacheDir() });
    const by = Object.fromEntries(checks.map((c) => [c.name, c]));
    expect(by.qemu).toMatchObject({
      status: 'ok',
      detail: expect.stringMatching(/QEMU emulator version/),
    });
    expect(by['qemu-img']?.status).toBe('ok');
    expect(by['guest image']?.status).toBe('ok');
    expect(by.cgroups?.status).toBe('ok');
    expect(by['disk (data dir)']?.status).toMatch(/ok|warn/);
    expect(['ok', 'warn']).toContain(by.kvm?.status); // TCG here: a warning, not a failure
    const c = io();
    expect(await runCli(['doctor', '--data-dir', empty], c.io)).toBe(0);
    expect(c.out.some((l) => /^ok\s+qemu\s+QEMU emulator version/.test(l))).toBe(true);
    expect(c.out.at(-1)).toMatch(/ready/);
  });

  it('fails without QEMU or a guest image, naming the fix, and exits 1', async () => {
    const checks = await runDoctor({ dataDir: empty, cacheDir: empty, env: { PATH: empty } });
    const by = Object.fromEntries(checks.map((c) => [c.name, c]));
    expect(by.qemu).toMatchObject({
      status: 'fail',
      fix: expect.stringMatching(/setup\.sh --deps-only/),
    });
    expect(by['qemu-img']?.status).toBe('fail');
    expect(by['guest image']).toMatchObject({
      status: 'fail',
      fix: expect.stringMatching(/npm run setup/),
    });
    const lines = formatChecks(checks);
    expect(lines).toContainEqual(expect.stringMatching(/^FAIL\s+guest image\s+no guest image/));
    expect(lines).toContainEqual(expect.stringMatching(/^\s+fix: npm run setup/));

    const before = process.env.FASTVM_CACHE_DIR;
    process.env.FASTVM_CACHE_DIR = empty;
    try {
      const c = io();
      expect(await runCli(['doctor', '--data-dir', empty], c.io)).toBe(1);
      expect(c.out.at(-1)).toMatch(/missing: VMs cannot run until fixed/);
    } finally {
      if (before === undefined) delete process.env.FASTVM_CACHE_DIR;
      else process.env.FASTVM_CACHE_DIR = before;
    }
  });
});
