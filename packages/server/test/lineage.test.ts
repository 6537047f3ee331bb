/**
 * Lineage with the FakeRuntime: `sourceSnapshotId` / `parentSnapshotId` on the wire (kept when
 * the parent is deleted), `digests`, and `GET /v1/snapshots/{id}/lineage` (shape, deleted
 * ancestors and links, org scoping).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  TRANSPORTS,
  TestClient,
  createOrgWithKey,
  startTestServer,
  type TestServer,
} from './helpers.js';

interface Node {
  type: 'snapshot' | 'vm';
  id: string;
  deleted: boolean;
  name?: string;
  status?: string;
  children: Node[];
}

describe.each(TRANSPORTS)('lineage over %s', (transport) => {
  let t: TestServer;
  let api: TestClient;
  // root VM → s1 → (a, b); a → s2 → c; b → s3
  const ids: Record<string, string> = {};

  beforeAll(async () => {
    t = await startTestServer();
    api = new TestClient(t.url, t.key, transport);
    const launch = async (name: string, body: Record<string, unknown>) =>
      (ids[name] = (await api.post('/v1/vms', { name, ...body })).body.id);
    const snapshot = async (name: string, vm: string) =>
      (ids[name] = (await api.post('/v1/snapshots', { vmId: ids[vm], name })).body.id);
    await launch('root', { machineType: 'c1m2' });
    await snapshot('s1', 'root');
    await launch('a', { snapshotId: ids.s1 });
    await launch('b', { snapshotId: ids.s1 });
    await snapshot('s2', 'a');
    await snapshot('s3', 'b');
    await launch('c', { snapshotId: ids.s2 });
  });
  afterAll(async () => {
    api.close();
    await t.cleanup();
  });

  it('VMs carry sourceSnapshotId, snapshots parentSnapshotId and digests', async () => {
    expect((await api.get(`/v1/vms/${ids.root}`)).body.sourceSnapshotId).toBeNull();
    expect((await api.get(`/v1/vms/${ids.c}`)).body.sourceSnapshotId).toBe(ids.s2);
    const s1 = (await api.get(`/v1/snapshots/${ids.s1}`)).body;
    expect(s1).toMatchObject({ vmId: ids.root, parentSnapshotId: null });
    expect(s1.digests).toEqual({
      memory: expect.stringMatching(/^sha256:[0-9a-f]{64}$/),
      disk: expect.stringMatching(/^sha256:[0-9a-f]{64}$/),
      state: expect.stringMatching(/^sha256:[0-9a-f]{64}$/),
    });
    const s2 = (await api.get(`/v1/snapshots/${ids.s2}`)).body;
    expect(s2).toMatchObject({ vmId: ids.a, parentSnapshotId: ids.s1 });
    const listed = (await api.get('/v1/snapshots')).body as { id: string; digests?: object }[];
    expect(listed.find((s) => s.id === ids.s3)).toMatchObject({
      parentSnapshotId: ids.s1,
      digests: expect.any(Object),
    });
  });

  it('answers the path from the root and the tree below', async () => {
    const res = await api.get(`/v1/snapshots/${ids.s1}/lineage`);
    expect(res.status).toBe(200);
    expect(res.body.ancestors).toEqual([
      expect.objectContaining({ type: 'vm', id: ids.root, name: 'root', deleted: false }),
      expect.objectContaining({ type: 'snapshot', id: ids.s1, name: 's1', status: 'ready' }),
    ]);
    const tree = res.body.descendants as Node[];
    expect(tree.map((n) => [n.type, n.name])).toEqual([
      ['vm', 'a'],
      ['vm', 'b'],
    ]);
    expect(tree[0]!.children.map((n) => n.name)).toEqual(['s2']);
    expect(tree[0]!.children[0]!.children.map((n) => [n.type, n.name, n.status])).toEqual([
      ['vm', 'c', 'running'],
    ]);
    expect(tree[1]!.children.map((n) => n.name)).toEqual(['s3']);
    expect(res.body.truncated).toBeUndefined();

    const deep = (await api.get('/v1/snapshots/s2/lineage')).body;
    expect(deep.ancestors.map((n: Node) => n.id)).toEqual([ids.root, ids.s1, ids.a, ids.s2]);
    expect(deep.descendants.map((n: Node) => n.id)).toEqual([ids.c]);
  });

  it('keeps the links when parents are deleted; deleted objects show as ids', async () => {
    // Delete s1 and VM a: s2 still names s1, c still names s2; a connects s1's tree to s2.
    await api.del(`/v1/snapshots/${ids.s1}`);
    await api.del(`/v1/vms/${ids.a}`);
    const s2 = (await api.get(`/v1/snapshots/${ids.s2}`)).body;
    expect(s2.parentSnapshotId).toBe(ids.s1);
    const res = await api.get(`/v1/snapshots/${ids.s2}/lineage`);
    expect(res.status).toBe(200);
    expect(res.body.ancestors).toEqual([
      expect.objectContaining({ type: 'vm', id: ids.root, deleted: false }),
      { type: 'snapshot', id: ids.s1, deleted: true, children: [] },
      { type: 'vm', id: ids.a, deleted: true, children: [] },
      expect.objectContaining({ type: 'snapshot', id: ids.s2, deleted: false, name: 's2' }),
    ]);
    // The deleted snapshot itself is gone from the API.
    expect((await api.get(`/v1/snapshots/${ids.s1}/lineage`)).status).toBe(404);
    // From s3's side the tree below is unchanged; the VM b is still there.
    const s3 = (await api.get(`/v1/snapshots/${ids.s3}/lineage`)).body;
    expect(s3.ancestors.map((n: Node) => [n.id, n.deleted])).toEqual([
      [ids.root, false],
      [ids.s1, true],
      [ids.b, false],
      [ids.s3, false],
    ]);
  });

  it('prunes deleted leaves below and keeps deleted links that lead somewhere', async () => {
    const base = (await api.post('/v1/snapshots', { vmId: ids.root, name: 'p' })).body.id;
    const v1 = (await api.post('/v1/vms', { snapshotId: base, name: 'v1' })).body.id;
    const v2 = (await api.post('/v1/vms', { snapshotId: base, name: 'v2' })).body.id;
    const leaf = (await api.post('/v1/snapshots', { vmId: v1, name: 'leaf' })).body.id;
    await api.post('/v1/vms', { snapshotId: leaf, name: 'grandchild' });
    await api.del(`/v1/vms/${v1}`); // deleted, but leads to leaf
    await api.del(`/v1/vms/${v2}`); // deleted leaf: pruned
    const tree = (await api.get(`/v1/snapshots/${base}/lineage`)).body.descendants as Node[];
    expect(tree).toEqual([
      {
        type: 'vm',
        id: v1,
        deleted: true,
        children: [
          expect.objectContaining({
            type: 'snapshot',
            id: leaf,
            children: [expect.objectContaining({ type: 'vm', name: 'grandchild' })],
          }),
        ],
      },
    ]);
  });

  it('is org-scoped: 404 for another org, which sees none of it', async () => {
    const other = new TestClient(
      t.url,
      await createOrgWithKey(t.server, `lin-${transport}`),
      transport,
    );
    const res = await other.get(`/v1/snapshots/${ids.s2}/lineage`);
    expect(res.status).toBe(404);
    expect(res.body.code).toBe('not_found');
    // Its own snapshot's tree does not reach into ours.
    const vm = (await other.post('/v1/vms', { machineType: 'c1m2' })).body.id;
    const s = (await other.post('/v1/snapshots', { vmId: vm })).body.id;
    const mine = (await other.get(`/v1/snapshots/${s}/lineage`)).body;
    expect(mine.ancestors.map((n: Node) => n.id)).toEqual([vm, s]);
    expect(mine.descendants).toEqual([]);
    other.close();
  });

  it('is in the OpenAPI document', async () => {
    const doc = (await api.get('/openapi.json', { noAuth: true })).body;
    expect(Object.keys(doc.paths)).toEqual(
      expect.arrayContaining(['/v1/snapshots/{id}/fork', '/v1/snapshots/{id}/lineage']),
    );
    expect(doc.components.schemas.LineageNode.properties.children.items.$ref).toBe(
      '#/components/schemas/LineageNode',
    );
  });
});
