/**
 * Addressing by id or name. `{id}` path segments (and `vmId` / `snapshotId` in bodies) accept an
 * object's id or its name. Names are not unique: a name that matches several live objects of the
 * org is rejected with 409 `ambiguous_name` (use the id); no match is 404. Objects of other orgs
 * are never considered, so they are indistinguishable from unknown ids.
 * @module
 */
import type { SnapshotRecord, VmRecord } from '../domain/index.js';
import { ApiError, notFound } from '../errors.js';
import type { Store } from '../store/index.js';

/** A live VM of the org by id or unique name; 404 / 409 `ambiguous_name` otherwise. */
export async function resolveVm(store: Store, orgId: string, ref: string): Promise<VmRecord> {
  const byId = await store.getVm(orgId, ref);
  if (byId) return byId;
  return pickOne(await store.findVmsByName(orgId, ref), 'vm', ref);
}

/** A live snapshot of the org by id or unique name; 404 / 409 `ambiguous_name` otherwise. */
export async function resolveSnapshot(
  store: Store,
  orgId: string,
  ref: string,
): Promise<SnapshotRecord> {
  const byId = await store.getSnapshot(orgId, ref);
  if (byId) return byId;
  return pickOne(await store.findSnapshotsByName(orgId, ref), 'snapshot', ref);
}

function pickOne<T extends { id: string }>(matches: T[], kind: string, ref: string): T {
  const [first, second] = matches;
  if (!first) throw notFound(kind);
  if (second) {
    throw new ApiError(
      'ambiguous_name',
      `${matches.length} ${kind}s are named ${JSON.stringify(ref)}; address it by id`,
      { matches: matches.length },
      false,
    );
  }
  return first;
}
