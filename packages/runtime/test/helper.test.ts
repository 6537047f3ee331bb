/**
 * The root helper `fastvm-tapfd serve` through TapfdHelper (the real binary from the guest
 * cache): starting a process as another user in a session of its own, running a tool to its
 * end, and the errors of both.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { TapfdHelper } from '../src/helper.js';
import { alive } from '../src/process.js';
import { loadGuestImage } from '../src/qemu.js';

const tapfd = loadGuestImage().tapfd;
const root = process.getuid?.() === 0;

describe.skipIf(!tapfd || !root)('fastvm-tapfd serve (TapfdHelper)', () => {
  let helper: TapfdHelper;
  let dir = '';
  beforeAll(() => {
    helper = new TapfdHelper(tapfd!);
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fastvm-helper-'));
    fs.chmodSync(dir, 0o777);
  });
  afterAll(() => {
    helper.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  const waitFor = async (f: () => boolean) => {
    const deadline = Date.now() + 5000;
    while (!f() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    return f();
  };

  it('spawn: its pid, its user, a session of its own, exactly the given environment, output in the log', async () => {
    const log = path.join(dir, 'spawn.log');
    const pid = await helper.spawn({
      binary: 'sh',
      args: [
        '-c',
        'echo "pid=$$ uid=$(id -u) sid=$(cut -d" " -f6 /proc/$$/stat) foo=$FOO home=${HOME-unset}"',
      ],
      env: { FOO: 'a b', PATH: '/usr/bin:/bin', SKIPPED: 'tab\there' },
      log,
      user: { uid: 65534, gid: 65534 },
    });
    expect(
      await waitFor(() => !alive(pid) && fs.existsSync(log) && fs.statSync(log).size > 0),
    ).toBe(true);
    const line = fs.readFileSync(log, 'utf8').trim();
    expect(line).toMatch(new RegExp(`^pid=${pid} uid=65534 sid=\\s*${pid} foo=a b home=unset$`));
  });

  it('spawn: a binary that is not there, or a tap that is not, is an error', async () => {
    const log = path.join(dir, 'bad.log');
    await expect(
      helper.spawn({ binary: 'fastvm-no-such-binary', args: [], env: { PATH: '/usr/bin' }, log }),
    ).rejects.toThrow(/fastvm-no-such-binary: No such file or directory/);
    await expect(
      helper.spawn({
        binary: 'true',
        args: [],
        env: { PATH: '/usr/bin:/bin' },
        log,
        tap: 'fvnosuch0',
      }),
    ).rejects.toThrow(/fvnosuch0: no such device/);
    await expect(helper.spawn({ binary: 'true', args: ['a\tb'], env: {}, log })).rejects.toThrow(
      /a tab or newline/,
    );
  });

  it('run: resolves on exit 0; otherwise rejects with the exit status and the end of its output', async () => {
    await helper.run(['/bin/true']);
    await expect(
      helper.run(['/bin/sh', '-c', 'echo out; echo failed here >&2; exit 3']),
    ).rejects.toThrow(/exit 3: out failed here/);
    await expect(helper.run(['/no/such/tool'])).rejects.toThrow(/exit 127: \/no\/such\/tool/);
  });
});
