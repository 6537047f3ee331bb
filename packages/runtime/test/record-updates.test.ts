/**
 * A snapshot's record is rewritten by two background jobs, each after seconds of work: the
 * flatten (its memory) and the digest job (its digests). Each must keep what the other wrote
 * meanwhile. A flatten that wrote back the record it read before flattening once dropped the
 * digests the job had written, and the next restore of a corrupted layer was not refused (CI).
 * No QEMU: the flatten's tool is replaced by a gate the test opens; hashing is real.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { SnapshotDigester, type DigestRecord } from '../src/digests.js';
import { LayerStore } from '../src/layers.js';
import type { SnapshotRecord } from '../src/records.js';

const gate = vi.hoisted(() => {
  let open: () => void = () => {};
  let opened = Promise.resolve();
  return {
    close(): void {
      opened = new Promise((resolve) => (open = resolve));
    },
    open: () => open(),
    wait: () => opened,
  };
});

vi.mock('../src/memory.js', async (importOriginal) => ({
  ...(await importOriginal<typeof import('../src/memory.js')>()),
  // The flattened file: the base's bytes, written once the test opens the gate.
  flattenDeltas: async (_tool: string, base: string, _deltas: string[], out: string) => {
    await gate.wait();
    await fs.copyFile(base, out);
  },
}));

const sha256 = async (file: string) =>
  createHash('sha256')
    .update(await fs.readFile(file))
    .digest('hex');

describe('snapshot record updates (flatten and digests at once)', () => {
  let dir: string;
  let layers: LayerStore;
  let snap: SnapshotRecord;

  beforeEach(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'fastvm-records-'));
    layers = new LayerStore(path.join(dir, 'data'), 'memdelta-unused', () => {});
    await layers.init();
    // The base memory lies outside the data dir, like a golden's.
    const file = async (p: string, text: string) => {
      await fs.mkdir(path.dirname(p), { recursive: true });
      await fs.writeFile(p, text);
      return p;
    };
    const data = layers.dataDir;
    snap = {
      id: 's1',
      vmId: 'v1',
      machine: 'c1m2',
      diskGiB: 4,
      accel: 'tcg',
      imageId: 'img',
      cmdline: '',
      memBase: await file(path.join(dir, 'golden.mem'), 'golden memory'),
      delta: { path: await file(path.join(data, 'layers/mem/d1.delta'), 'delta'), bytes: 5 },
      disk: [await file(path.join(data, 'layers/disk/d1.qcow2'), 'disk layer')],
      state: await file(path.join(data, 'snapshots/s1/state'), 'device state'),
      paused: false,
      createdAt: new Date().toISOString(),
    };
    await layers.writeSnapshot(snap);
  });

  afterEach(async () => {
    gate.open();
    await layers.drainFlattens();
    await fs.rm(dir, { recursive: true, force: true });
  });

  it('a flatten keeps digests written while it ran', async () => {
    gate.close();
    layers.restored(snap);
    layers.restored(snap); // the second restore makes it a fork source: flattened
    const flattening = layers.flattening('s1');
    expect(flattening).toBeDefined();
    const digests: DigestRecord = {
      algorithm: 'sha256',
      computedAt: new Date().toISOString(),
      layers: { state: { file: snap.state, bytes: 12, sha256: await sha256(snap.state) } },
    };
    // The digest job writes while the flatten works.
    await layers.updateSnapshot('s1', (r) => ({ ...r, digests }));
    gate.open();
    await flattening;
    const rec = await layers.readSnapshot('s1');
    expect(rec?.delta).toBeUndefined();
    expect(rec?.memBase).toMatch(/\/layers\/mem\/.*\.mem$/);
    expect(rec?.digests).toEqual(digests);
  });

  it('updates of one record run one at a time, each on the one before', async () => {
    const marks = await Promise.all(
      [1, 2, 3, 4, 5].map((n) =>
        layers.updateSnapshot('s1', (r) => ({ ...r, cmdline: `${r.cmdline}${n}` })),
      ),
    );
    expect(marks.map((r) => r?.cmdline)).toEqual(['1', '12', '123', '1234', '12345']);
    expect((await layers.readSnapshot('s1'))?.cmdline).toBe('12345');
    expect(await layers.updateSnapshot('gone', (r) => r)).toBeUndefined();
  });

  it('a digest job started while one runs runs again, and ends with the new files hashed', async () => {
    const digester = new SnapshotDigester(layers, () => {});
    const flat = path.join(layers.dataDir, 'layers/mem/flat.mem');
    await fs.writeFile(flat, 'flattened memory');
    // Right after the running job has read the record, a flatten switches it to a new memory
    // file and starts the job again (what the runtime's `onConsolidated` does).
    const read = layers.readSnapshot.bind(layers);
    let switched = false;
    layers.readSnapshot = async (id) => {
      const rec = await read(id);
      if (!switched) {
        switched = true;
        await layers.updateSnapshot(id, ({ delta: _d, ...r }) => ({ ...r, memBase: flat }));
        digester.start(id);
      }
      return rec;
    };
    digester.start('s1');
    await digester.pending('s1');
    expect(switched).toBe(true);
    const rec = await read('s1');
    expect(rec?.digests?.layers).toEqual({
      memory: { file: flat, bytes: 16, sha256: await sha256(flat) },
      disk: { file: snap.disk[0], bytes: 10, sha256: await sha256(snap.disk[0]!) },
      state: { file: snap.state, bytes: 12, sha256: await sha256(snap.state) },
    });
    expect(await digester.get('s1')).toEqual({
      memory: `sha256:${await sha256(flat)}`,
      disk: `sha256:${await sha256(snap.disk[0]!)}`,
      state: `sha256:${await sha256(snap.state)}`,
    });
    digester.close();
  });
});
