/**
 * The runtime contract (`@fastvm/runtime/testing`) against the FakeRuntime: the fake that most
 * HTTP-layer tests use must behave like the real runtime (packages/runtime/test/contract.test.ts).
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { runtimeContract } from '@fastvm/runtime/testing';
import { FakeRuntime } from '../src/testing/index.js';

const dirs = new Map<FakeRuntime, string>();

runtimeContract('FakeRuntime', {
  async start() {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fake-contract-'));
    const rt = new FakeRuntime({ stateFile: path.join(dir, 'state.json') });
    dirs.set(rt, dir);
    return rt;
  },
  async restart(rt) {
    const dir = dirs.get(rt as FakeRuntime)!;
    await rt.detach();
    const next = new FakeRuntime({ stateFile: path.join(dir, 'state.json') });
    dirs.set(next, dir);
    return next;
  },
  async dispose(rt) {
    await rt.destroyAll();
    fs.rmSync(dirs.get(rt as FakeRuntime)!, { recursive: true, force: true });
  },
  // The fake boots nothing: a path is all it records.
  async baseImage() {
    return { id: 'oci-0123456789abcdef', rootfsPath: '/nonexistent/rootfs.ext4' };
  },
});
