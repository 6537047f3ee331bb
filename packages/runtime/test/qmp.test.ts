/**
 * QmpClient.connect against a QEMU that never comes up: it fails as soon as the process is gone
 * (with `alive`), not after its whole timeout.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { afterAll, beforeAll, expect, it } from 'vitest';

import { alive, spawnQemu } from '../src/process.js';
import { QmpClient } from '../src/qmp.js';

let dir = '';
beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fastvm-qmp-'));
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

it('a QEMU that exits before listening fails the connect at once, with why in its log', async () => {
  const qmpPath = path.join(dir, 'qmp.sock');
  const pid = await spawnQemu(
    'qemu-system-x86_64',
    dir,
    ['-qmp', `unix:${qmpPath},server=on,wait=off`, '-no-such-option'],
    {},
  );
  const t0 = Date.now();
  await expect(
    QmpClient.connect(qmpPath, { timeoutMs: 10_000, alive: () => alive(pid) }),
  ).rejects.toThrow(/QEMU exited/);
  expect(Date.now() - t0).toBeLessThan(5000);
  expect(fs.readFileSync(path.join(dir, 'qemu.log'), 'utf8')).toMatch(/no-such-option/);
});

it('without a process to watch, it waits for the socket until its timeout', async () => {
  const t0 = Date.now();
  await expect(QmpClient.connect(path.join(dir, 'never.sock'), { timeoutMs: 300 })).rejects.toThrow(
    /ENOENT/,
  );
  expect(Date.now() - t0).toBeGreaterThanOrEqual(300);
});
