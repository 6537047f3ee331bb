/**
 * Internal routes of the host registry's side (under `/internal/v1`, behind the cluster token,
 * registered by `app.ts` in cluster mode): the share of a fork another host reserved for this
 * one (`fork-spread.ts`). Bodies carry the org, which the coordinating host took from the
 * caller's API key.
 * @module
 */
import type { App, AppServices } from '../app.js';
import { ApiError } from '../errors.js';

function parseIds(body: unknown): { orgId: string; vmIds: string[] } {
  const b = body as { orgId?: unknown; vmIds?: unknown } | undefined;
  if (
    typeof b?.orgId !== 'string' ||
    !Array.isArray(b.vmIds) ||
    b.vmIds.length === 0 ||
    !b.vmIds.every((x) => typeof x === 'string')
  ) {
    throw new ApiError('bad_request', 'expected {orgId, vmIds: [string, …]}');
  }
  return { orgId: b.orgId, vmIds: b.vmIds as string[] };
}

/** `POST /internal/v1/forks/boot` and `/forks/remove`. */
export default async function clusterInternalRoutes(
  app: App,
  opts: { services: AppServices },
): Promise<void> {
  const { forks } = opts.services;
  app.post('/forks/boot', { config: { hidden: true } }, async (request) => {
    const { orgId, vmIds } = parseIds(request.body);
    return { vms: await forks.bootHere(orgId, vmIds) };
  });
  app.post('/forks/remove', { config: { hidden: true } }, async (request) => {
    const { orgId, vmIds } = parseIds(request.body);
    await forks.removeHere(orgId, vmIds);
    return { removed: vmIds.length };
  });
}
