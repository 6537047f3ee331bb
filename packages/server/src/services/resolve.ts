/**
 * Addressing by id or name. `{id}` path segments (and `vmId` / `snapshotId` in bodies) accept an
 * object's id or its name. Names are not unique: a name that matches several live objects of the
 * org is rejected with `AmbiguousNameError` (use the id); no match is `NotFoundError`. Objects of
 * other orgs are never considered, so they are indistinguishable from unknown ids.
 * @module
 */
import {
  AmbiguousNameError,
  NotFoundError,
  type SnapshotRecord,
  type VmRecord,
} from '../domain/index.js';
import type { Store } from '../store/index.js';

/** A live VM of the org by id or unique name; `NotFoundError` / `AmbiguousNameError` otherwise. */
export async function resolveVm(store: Store, orgId: string, ref: string): Promise<VmRecord> {
  const byId = await store.getVm(orgId, ref);
  if (byId) return byId;
  return pickOne(await store.findVmsByName(orgId, ref), 'vm', ref);
}

/** A live snapshot of the org by id or unique name (errors as `resolveVm`). */
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
  if (!first) throw new NotFoundError(kind);
  if (second) throw new AmbiguousNameError(kind, ref, matches.length);
  return first;
}
