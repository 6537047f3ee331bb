/**
 * The runtime contract: what every `Runtime` must do, as one vitest suite run against the real
 * `QemuRuntime` (packages/runtime/test/contract.test.ts) and the server's `FakeRuntime`
 * (packages/server/test/fake-runtime-contract.test.ts). A fake that passes it behaves like the
 * real runtime for everything the server relies on: exec semantics, pause/resume, snapshot and
 * restore isolation, adoption after a restart, and errors for unknown ids.
 * Imported as `@fastvm/runtime/testing`.
 * @module
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BaseImage, ExecRequest, Runtime } from '../src/types.js';
import { createVolumeFile } from '../src/volumes.js';

export interface ContractTarget {
  /** A runtime on fresh, empty state. */
  start(): Promise<Runtime>;
  /** A new runtime instance on the same state, as after a server restart (`rt` is let go). */
  restart(rt: Runtime): Promise<Runtime>;
  /** Stops every VM and removes the state. */
  dispose(rt: Runtime): Promise<void>;
  /**
   * A bootable base image (an ext4 root with the agent, see `installGuestSupport`), for the
   * `launch({ baseImage })` case; without it that case is skipped (it costs the real runtime a
   * cold boot, so the QEMU suite leaves it to `base-image-vm.test.ts`).
   */
  baseImage?(): Promise<BaseImage>;
}

/** Defines the contract suite for one runtime. */
export function runtimeContract(name: string, target: ContractTarget): void {
  describe(`runtime contract: ${name}`, () => {
    let rt: Runtime;
    const tag = Math.random().toString(16).slice(2, 8);
    const A = `ct-${tag}-a`;
    const B = `ct-${tag}-b`;
    const SNAP = `ct-${tag}-s`;
    const run = async (vm: string, argv: string[], extra: Partial<ExecRequest> = {}) => {
      const r = await rt.exec(vm, { argv, timeoutMs: 30_000, ...extra });
      return { ...r, out: r.stdout.toString(), err: r.stderr.toString() };
    };
    const sh = (vm: string, script: string, extra: Partial<ExecRequest> = {}) =>
      run(vm, ['sh', '-c', script], extra);

    beforeAll(async () => {
      rt = await target.start();
      const info = await rt.launch({ id: A, machine: 'c1m2' });
      expect(info).toMatchObject({ id: A, machine: 'c1m2', vcpus: 1, memoryMiB: 2048 });
      expect(info.state).toBe('running');
    });

    afterAll(async () => {
      if (rt) await target.dispose(rt);
      fs.rmSync(volDir, { recursive: true, force: true });
    });
    const volDir = fs.mkdtempSync(path.join(os.tmpdir(), 'fastvm-contract-vol-'));

    it('runs argv literally and strings through sh -c', async () => {
      const literal = await run(A, ['echo', 'a;b', '$HOME', '*']);
      expect(literal.out).toBe('a;b $HOME *\n');
      const shell = await sh(A, 'echo one; echo two');
      expect(shell.out).toBe('one\ntwo\n');
    });

    it('reports exit codes, stderr, and 127 for a program that does not exist', async () => {
      expect((await sh(A, 'exit 7')).exitCode).toBe(7);
      expect((await run(A, ['false'])).exitCode).toBe(1);
      const err = await sh(A, 'echo oops >&2; exit 3');
      expect([err.out, err.err, err.exitCode]).toEqual(['', 'oops\n', 3]);
      const missing = await run(A, [`no-such-program-${tag}`]);
      expect(missing.exitCode).toBe(127);
    });

    it('feeds stdin and closes it', async () => {
      const r = await run(A, ['cat'], { stdin: Buffer.from('hello\nworld') });
      expect(r.out).toBe('hello\nworld');
      expect(r.exitCode).toBe(0);
    });

    it('openProcess: stdin open until end(), stdout and stderr apart, exit code, kill', async () => {
      const out: Buffer[] = [];
      const err: Buffer[] = [];
      const p = await rt.openProcess(A, {
        argv: ['sh', '-c', 'cat; echo done >&2; exit 4'],
        onStdout: (c) => out.push(c),
        onStderr: (c) => err.push(c),
      });
      expect(p.write('one\n')).toBe(true);
      p.write(Buffer.from('two\n'));
      p.end();
      expect((await p.exited).exitCode).toBe(4);
      expect(Buffer.concat(out).toString()).toBe('one\ntwo\n');
      expect(Buffer.concat(err).toString()).toBe('done\n');
      const q = await rt.openProcess(A, { argv: ['cat'], onStdout: () => {}, onStderr: () => {} });
      q.kill(15);
      expect(await q.exited).toMatchObject({ exitCode: 143, signal: 15 });
      await expect(
        rt.openProcess(`nope-${tag}`, { argv: ['true'], onStdout: () => {}, onStderr: () => {} }),
      ).rejects.toMatchObject({ code: 'not_found' });
    });

    it('caps each output stream and flags the truncation', async () => {
      const big = await sh(A, 'head -c 100000 /dev/zero', { capBytes: 1000 });
      expect([big.stdout.length, big.stdoutTruncated, big.stderrTruncated]).toEqual([
        1000,
        true,
        false,
      ]);
      const small = await sh(A, 'echo fits', { capBytes: 1000 });
      expect([small.out, small.stdoutTruncated]).toEqual(['fits\n', false]);
      const err = await sh(A, 'head -c 5000 /dev/zero >&2', { capBytes: 100 });
      expect([err.stderr.length, err.stderrTruncated, err.stdout.length]).toEqual([100, true, 0]);
    });

    it('streams output as it comes (onStdout sees what the result holds)', async () => {
      const chunks: Buffer[] = [];
      const r = await sh(A, 'echo first; sleep 0.2; echo second', {
        onStdout: (c) => chunks.push(c),
      });
      expect(Buffer.concat(chunks).toString()).toBe(r.out);
      expect(r.out).toBe('first\nsecond\n');
    });

    it('kills a command that runs past its timeout: timedOut, exit 137, nothing after', async () => {
      const t0 = Date.now();
      const r = await sh(A, 'echo before; sleep 30; echo after', { timeoutMs: 500 });
      expect([r.timedOut, r.exitCode, r.out]).toEqual([true, 137, 'before\n']);
      expect(Date.now() - t0).toBeLessThan(10_000);
      const ok = await sh(A, 'echo quick', { timeoutMs: 5000 });
      expect([ok.timedOut, ok.exitCode]).toEqual([false, 0]);
    });

    it('kills a command when its signal aborts', async () => {
      const ac = new AbortController();
      const running = rt.exec(A, { argv: ['sh', '-c', 'sleep 30'], signal: ac.signal });
      setTimeout(() => ac.abort(), 200);
      await expect(running).rejects.toBeDefined();
      expect((await sh(A, 'echo still-here')).out).toBe('still-here\n');
    });

    it('pauses and resumes: a paused VM refuses exec and snapshot, then runs on', async () => {
      await sh(A, 'cat > /root/kept', { stdin: Buffer.from('before-pause') });
      await rt.pause(A);
      expect(rt.get(A)?.state).toBe('paused');
      await expect(run(A, ['true'])).rejects.toMatchObject({ code: 'not_running' });
      await expect(rt.snapshot(A, `${SNAP}-paused`)).rejects.toMatchObject({
        code: 'not_running',
      });
      await rt.pause(A); // idempotent
      await rt.resume(A);
      await rt.resume(A); // idempotent
      expect(rt.get(A)?.state).toBe('running');
      expect((await run(A, ['cat', '/root/kept'])).out).toBe('before-pause');
    });

    it('snapshots and restores: the fork starts with the source state, then each is its own', async () => {
      await sh(A, 'cat > /root/f', { stdin: Buffer.from('from-a') });
      const info = await rt.snapshot(A, SNAP);
      expect(info).toMatchObject({ id: SNAP, vmId: A, machine: 'c1m2' });
      expect(await rt.hasSnapshot(SNAP)).toBe(true);
      await expect(rt.snapshot(A, SNAP)).rejects.toMatchObject({ code: 'invalid_argument' });
      const fork = await rt.restore({ id: B, snapshotId: SNAP });
      expect(fork).toMatchObject({ id: B, machine: 'c1m2', state: 'running', snapshotId: SNAP });
      expect((await run(B, ['cat', '/root/f'])).out).toBe('from-a');
      await sh(B, 'cat > /root/f', { stdin: Buffer.from('from-b') });
      await sh(A, 'cat > /root/g', { stdin: Buffer.from('only-a') });
      expect((await run(A, ['cat', '/root/f'])).out).toBe('from-a');
      expect((await run(B, ['cat', '/root/f'])).out).toBe('from-b');
      expect((await sh(B, 'cat /root/g || echo missing')).out).toContain('missing');
      await expect(rt.restore({ id: B, snapshotId: SNAP })).rejects.toMatchObject({
        code: 'invalid_argument',
      });
    });

    it('reports the content digests of a snapshot once computed (sha256 per layer)', async () => {
      let digests = await rt.snapshotDigests(SNAP);
      for (let i = 0; i < 240 && !digests; i++) {
        await new Promise((r) => setTimeout(r, 250));
        digests = await rt.snapshotDigests(SNAP);
      }
      const sha = expect.stringMatching(/^sha256:[0-9a-f]{64}$/);
      expect(digests).toEqual({ memory: sha, disk: sha, state: sha });
    }, 90_000);

    it.skipIf(!target.baseImage)(
      'launches from a base image; its snapshots restore on it; a bad base id is refused',
      async () => {
        const base = await target.baseImage!();
        const C = `ct-${tag}-c`;
        const D = `ct-${tag}-d`;
        const bad = { ...base, id: 'Not/An-Id' };
        await expect(rt.launch({ id: C, machine: 'c1m2', baseImage: bad })).rejects.toMatchObject({
          code: 'invalid_argument',
        });
        const info = await rt.launch({ id: C, machine: 'c1m2', baseImage: base });
        expect(info).toMatchObject({ id: C, state: 'running', baseImage: base.id });
        expect((await run(C, ['echo', 'on-base'])).out).toBe('on-base\n');
        await rt.snapshot(C, `${SNAP}-base`);
        const fork = await rt.restore({ id: D, snapshotId: `${SNAP}-base` });
        expect(fork).toMatchObject({ id: D, baseImage: base.id, snapshotId: `${SNAP}-base` });
        expect((await run(D, ['echo', 'fork'])).out).toBe('fork\n');
        await rt.destroy(C);
        await rt.destroy(D);
        await rt.deleteSnapshot(`${SNAP}-base`);
      },
      600_000,
    );
    it('mobility: exports a snapshot, imports it back verified by digest, refuses a flipped byte', async () => {
      if (!rt.exportSnapshot || !rt.openSnapshotFile || !rt.importSnapshot || !rt.goldenIds) {
        return; // optional part of the contract (multi-host)
      }
      const id = `${SNAP}-mob`;
      const vm = `${B}-mob`;
      await sh(A, 'cat > /root/mob', { stdin: Buffer.from('moved') });
      await rt.snapshot(A, id);
      const manifest = await rt.exportSnapshot(id, { haveGoldens: await rt.goldenIds() });
      expect(manifest).toMatchObject({ format: 1, snapshotId: id, machine: 'c1m2' });
      expect(manifest.files.length).toBeGreaterThan(0);
      expect(manifest.files.some((f) => f.kind === 'golden')).toBe(false);
      // The bytes as served, then the snapshot gone from this host.
      const bytes = new Map<string, Buffer>();
      for (const f of manifest.files) {
        const chunks: Buffer[] = [];
        for await (const c of await rt.openSnapshotFile(id, f.name)) chunks.push(c as Buffer);
        const buf = Buffer.concat(chunks);
        expect(buf.length).toBe(f.bytes);
        expect(createHash('sha256').update(buf).digest('hex')).toBe(f.sha256);
        bytes.set(f.name, buf);
      }
      await expect(rt.openSnapshotFile(id, 'no-such-file')).rejects.toMatchObject({
        code: 'not_found',
      });
      await rt.deleteSnapshot(id);
      expect(await rt.hasSnapshot(id)).toBe(false);
      // (Every file flipped: a runtime may skip files it still has, never all of them.)
      const serve =
        (flip = false) =>
        async (f: { name: string }) => {
          const buf = Buffer.from(bytes.get(f.name)!);
          if (flip && buf.length > 0) buf[buf.length >> 1]! ^= 0x01;
          return Readable.from([buf]);
        };
      await expect(rt.importSnapshot(manifest, serve(true))).rejects.toMatchObject({
        code: 'snapshot_corrupt',
      });
      expect(await rt.hasSnapshot(id)).toBe(false);
      const res = await rt.importSnapshot(manifest, serve());
      expect(res.present).toBe(false);
      expect(await rt.hasSnapshot(id)).toBe(true);
      expect((await rt.importSnapshot(manifest, serve())).present).toBe(true);
      await rt.restore({ id: vm, snapshotId: id });
      expect((await run(vm, ['cat', '/root/mob'])).out).toBe('moved');
      await rt.destroy(vm);
      await rt.deleteSnapshot(id);
    });

    it('answers unknown ids with not_found / snapshot_not_found; destroy is idempotent', async () => {
      const nope = `ct-${tag}-nope`;
      await expect(run(nope, ['true'])).rejects.toMatchObject({ code: 'not_found' });
      await expect(rt.snapshot(nope, `${SNAP}-x`)).rejects.toMatchObject({ code: 'not_found' });
      await expect(rt.pause(nope)).rejects.toMatchObject({ code: 'not_found' });
      await expect(rt.resume(nope)).rejects.toMatchObject({ code: 'not_found' });
      await expect(rt.restore({ id: `${nope}-r`, snapshotId: nope })).rejects.toMatchObject({
        code: 'snapshot_not_found',
      });
      expect(rt.get(nope)).toBeUndefined();
      expect(await rt.hasSnapshot(nope)).toBe(false);
      expect(await rt.snapshotDigests(nope)).toBeUndefined();
      await expect(rt.destroy(nope)).resolves.toBeUndefined();
    });

    it('volumes: hot attach, write, detach, attach read-only elsewhere, read back', async () => {
      const file = path.join(volDir, 'v1.ext4');
      await createVolumeFile(file, 1);
      const v = { volumeId: 'v1', file, mountPath: '/data/v' };
      await rt.attachVolume(A, { ...v, readOnly: false });
      await rt.attachVolume(A, { ...v, readOnly: false }); // idempotent
      expect(rt.get(A)?.volumes).toEqual([
        { volumeId: 'v1', mountPath: '/data/v', readOnly: false, mounted: true },
      ]);
      expect((await sh(A, 'cat > /data/v/f', { stdin: Buffer.from('on-volume') })).exitCode).toBe(
        0,
      );
      await rt.detachVolume(A, 'v1');
      await rt.detachVolume(A, 'v1'); // idempotent
      expect(rt.get(A)?.volumes ?? []).toEqual([]);
      expect((await run(A, ['cat', '/data/v/f'])).exitCode).not.toBe(0);
      await rt.attachVolume(B, { ...v, readOnly: true });
      expect((await run(B, ['cat', '/data/v/f'])).out).toBe('on-volume');
      const refused = await sh(B, 'cat > /data/v/g', { stdin: Buffer.from('x') });
      expect(refused.exitCode).not.toBe(0);
      await rt.detachVolume(B, 'v1');
      await rt.pause(A);
      await expect(rt.attachVolume(A, { ...v, readOnly: true })).rejects.toMatchObject({
        code: 'not_running',
      });
      await rt.resume(A);
      await expect(
        rt.attachVolume(`ct-${tag}-nope`, { ...v, readOnly: true }),
      ).rejects.toMatchObject({ code: 'not_found' });
    }, 120_000);

    it('after a restart adopts what it is asked for, reports the rest, keeps snapshots', async () => {
      const gone = `ct-${tag}-gone`;
      rt = await target.restart(rt);
      const res = await rt.adopt([A, gone]);
      expect(res.adopted).toEqual([A]);
      expect(res.lost).toEqual([gone]);
      expect(res.orphans).toEqual([B]); // not asked for: stopped
      expect(rt.get(B)).toBeUndefined();
      expect((await run(A, ['cat', '/root/g'])).out).toBe('only-a');
      expect(await rt.hasSnapshot(SNAP)).toBe(true);
      expect(rt.get(A)?.state).toBe('running');
      await rt.destroy(A);
      expect(rt.get(A)).toBeUndefined();
      await expect(run(A, ['true'])).rejects.toMatchObject({ code: 'not_found' });
      await rt.deleteSnapshot(SNAP);
      expect(await rt.hasSnapshot(SNAP)).toBe(false);
    });
  });
}
