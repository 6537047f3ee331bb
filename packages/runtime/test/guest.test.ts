/**
 * The real guest under QEMU: a launched VM answers through its agent as issue #2 requires.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { QemuRuntime } from '../src/runtime.js';
import { disposeRuntime, testRuntime, text, uid } from './helpers.js';

describe('guest (real QEMU VM)', () => {
  let rt: QemuRuntime;
  const id = uid('guest');

  beforeAll(async () => {
    rt = await testRuntime();
    await rt.launch({ id, machine: 'c1m2' });
  });

  afterAll(async () => {
    await disposeRuntime(rt);
  });

  const run = async (argv: string[], extra: Record<string, unknown> = {}) =>
    rt.exec(id, { argv, timeoutMs: 30_000, capBytes: 4 << 20, ...extra });

  it('runs python3 and echo', async () => {
    const py = text(await run(['python3', '--version']));
    expect(py.code).toBe(0);
    expect(py.out).toMatch(/^Python 3\.11\.\d+\n$/);
    const echo = text(await run(['echo', 'hello']));
    expect(echo).toEqual({ out: 'hello\n', err: '', code: 0 });
  });

  it('reports non-zero exit codes and stderr', async () => {
    const r = text(await run(['sh', '-c', 'echo oops >&2; exit 42']));
    expect(r.code).toBe(42);
    expect(r.err).toBe('oops\n');
    expect(r.out).toBe('');
  });

  it('round-trips stdin', async () => {
    const input = Buffer.from('héllo wörld\n'.repeat(1000));
    const r = await run(['cat'], { stdin: input });
    expect(r.exitCode).toBe(0);
    expect(r.stdout.equals(input)).toBe(true);
  });

  it('caps a 5 MiB output at 4 MiB and flags it', async () => {
    const r = await run(['sh', '-c', 'head -c 5242880 /dev/zero | tr "\\0" x']);
    expect(r.exitCode).toBe(0);
    expect(r.stdout.length).toBe(4 << 20);
    expect(r.stdoutTruncated).toBe(true);
    expect(r.stderrTruncated).toBe(false);
    expect(r.stdout.subarray(0, 10).toString()).toBe('xxxxxxxxxx');
  });

  it('kills a timed-out command and its children', async () => {
    const t0 = Date.now();
    const r = await run(['sh', '-c', 'sleep 60 & sleep 60; echo never'], { timeoutMs: 1000 });
    expect(r.timedOut).toBe(true);
    expect(r.stdout.toString()).toBe('');
    expect(Date.now() - t0).toBeLessThan(15_000);
    const ps = text(await run(['sh', '-c', 'ps -eo args | grep -c "^sleep 60$" || true']));
    expect(ps.out.trim()).toBe('0');
  });

  it('keeps nohup background processes alive after the request', async () => {
    const start = text(await run(['sh', '-c', 'nohup sleep 300 >/dev/null 2>&1 & echo $!']));
    expect(start.code).toBe(0);
    const pid = start.out.trim();
    expect(pid).toMatch(/^\d+$/);
    // Alive after the request ended; `nohup` becomes `sleep` once it has exec'd (it may not
    // have yet when the request returns), so wait up to 5 s for that.
    const check = text(
      await run([
        'sh',
        '-c',
        `for i in $(seq 50); do c=$(tr "\\0" " " < /proc/${pid}/cmdline); ` +
          `[ "$c" = "sleep 300 " ] && break; sleep 0.1; done; kill -0 ${pid} && echo "$c"`,
      ]),
    );
    expect(check.code).toBe(0);
    expect(check.out).toBe('sleep 300 \n');
    // A background job holding the output pipe does not hold up the request either.
    const t0 = Date.now();
    const held = text(await run(['sh', '-c', 'sleep 300 & echo started']));
    expect(held.out).toBe('started\n');
    expect(Date.now() - t0).toBeLessThan(10_000);
  });

  it('reports a command that does not exist and keeps serving', async () => {
    const r = text(await run(['no-such-command-xyz', 'arg']));
    expect(r.code).toBe(127);
    expect(r.err).toMatch(/no-such-command-xyz/);
    expect(r.err).toMatch(/No such file or directory/);
    const after = text(await run(['echo', 'still here']));
    expect(after.out).toBe('still here\n');
  });

  it('has the tools users expect', async () => {
    const r = text(
      await run([
        'sh',
        '-c',
        'for t in bash curl tar gzip tmux ps ip nohup resize2fs; do command -v $t >/dev/null || echo missing $t; done; df -h / | tail -1',
      ]),
    );
    expect(r.out).not.toMatch(/missing/);
    expect(r.code).toBe(0);
  });

  it('gets its own identity: hostname, machine-id and a current clock', async () => {
    const r = text(await run(['sh', '-c', 'hostname; cat /etc/machine-id; date +%s']));
    const [host, mid, clock] = r.out.trim().split('\n');
    expect(host).toBe(`vm-${id.slice(0, 8)}`);
    expect(mid).toMatch(/^[0-9a-f]{32}$/);
    expect(Math.abs(Number(clock) - Date.now() / 1000)).toBeLessThan(30);
  });
});
