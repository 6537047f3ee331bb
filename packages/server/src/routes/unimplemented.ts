/**
 * The rest of the contract's endpoint catalogue (§2), answered with 501 `not_implemented` until
 * the issue that brings each feature lands. VM-scoped routes resolve the VM first, so another
 * org's (or an unknown) VM is still a 404, exactly as on the implemented routes.
 * @module
 */
import type { HTTPMethods } from 'fastify';
import type { App, AppServices } from '../app.js';
import { notImplemented } from '../errors.js';
import { ErrorBody, IdParams } from '../schemas.js';
import { requireAuth } from './util.js';

/** [method, path, feature] of VM-scoped endpoints not implemented yet. */
export const VM_SCOPED: ReadonlyArray<readonly [HTTPMethods, string, string]> = [
  ['GET', '/v1/vms/:id/bucket-mounts', 'bucket mounts'],
  ['POST', '/v1/vms/:id/bucket-mounts', 'bucket mounts'],
  ['GET', '/v1/vms/:id/bucket-mounts/:bucketMountId', 'bucket mounts'],
  ['PATCH', '/v1/vms/:id/bucket-mounts/:bucketMountId', 'bucket mounts'],
  ['DELETE', '/v1/vms/:id/bucket-mounts/:bucketMountId', 'bucket mounts'],
];

/** [method, path, feature] of org-level endpoints not implemented yet. */
export const ORG_SCOPED: ReadonlyArray<readonly [HTTPMethods, string, string]> = [];

const respond501 = { response: { 501: ErrorBody } };

export default async function unimplementedRoutes(
  app: App,
  opts: { services: AppServices },
): Promise<void> {
  const { vms } = opts.services;

  for (const [method, url, feature] of VM_SCOPED) {
    app.route({
      method,
      url,
      config: { summary: `${feature} (not implemented yet)`, tags: ['not implemented'] },
      schema: { params: IdParams.loose(), ...respond501 },
      handler: async (request) => {
        const { orgId } = requireAuth(request);
        await vms.get(orgId, request.params.id);
        throw notImplemented(feature);
      },
    });
  }

  for (const [method, url, feature] of ORG_SCOPED) {
    app.route({
      method,
      url,
      config: { summary: `${feature} (not implemented yet)`, tags: ['not implemented'] },
      schema: respond501,
      handler: async (request) => {
        requireAuth(request);
        throw notImplemented(feature);
      },
    });
  }
}
