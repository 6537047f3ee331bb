/**
 * `pause`/`resume` on a real VM: exec is refused while paused, a new owner of the data dir adopts
 * the VM still paused (vm.json records it), and resume brings it back with its processes.
 */
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { createQemuRuntime, type QemuRuntime } from '../src/runtime.js';
import { RuntimeError } from '../src/types.js';
import { disposeRuntime, testRuntime, text, uid } from './helpers.js';

describe('pause and resume (real QEMU VM)', () => {
  let rt: QemuRuntime | undefined;
  afterAll(async () => {
    await disposeRuntime(rt);
  });

  it('pauses, survives adoption by a new runtime still paused, and resumes', async () => {
    rt = await testRuntime();
    const id = uid('p');
    await rt.launch({ id, machine: 'c1m2' });
    const bg = await rt.exec(id, {
      argv: ['sh', '-c', 'nohup sleep 600 >/dev/null 2>&1 & echo $!'],
    });
    const sleepPid = text(bg).out.trim();

    await rt.pause(id);
    await rt.pause(id); // idempotent
    expect(rt.get(id)?.state).toBe('paused');
    await expect(rt.exec(id, { argv: ['true'] })).rejects.toMatchObject({
      name: 'RuntimeError',
      code: 'not_running',
    });
    const record = JSON.parse(fs.readFileSync(path.join(rt.dataDir, 'vms', id, 'vm.json'), 'utf8'));
    expect(record.paused).toBe(true);

    // A restarted server: the old runtime lets go, a new one adopts the VM.
    const dataDir = rt.dataDir;
    await rt.detach();
    rt = await createQemuRuntime({ dataDir });
    expect((await rt.adopt([id])).adopted).toEqual([id]);
    expect(rt.get(id)?.state).toBe('paused');
    await expect(rt.exec(id, { argv: ['true'] })).rejects.toBeInstanceOf(RuntimeError);

    await rt.resume(id);
    await rt.resume(id); // idempotent
    expect(rt.get(id)?.state).toBe('running');
    const alive = await rt.exec(id, { argv: ['sh', '-c', `kill -0 ${sleepPid} && echo alive`] });
    expect(text(alive).out).toBe('alive\n');
    // The guest clock was set again on resume.
    const now = Number(text(await rt.exec(id, { argv: ['date', '+%s'] })).out);
    expect(Math.abs(now - Date.now() / 1000)).toBeLessThan(3);
    await rt.destroy(id);
    await expect(rt.pause(id)).rejects.toMatchObject({ code: 'not_found' });
  });
});
