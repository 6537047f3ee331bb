/**
 * Branching: `POST /v1/snapshots/{id}/fork` (N VMs from one snapshot in one call) and
 * `GET /v1/snapshots/{id}/lineage` (the path above and the tree below a snapshot). Extensions
 * beyond the contract (issue 18).
 * @module
 */
import type { App, AppServices } from '../app.js';
import { ErrorBody, ForkResponse, ForkSnapshotBody, IdParams, Lineage } from '../schemas.js';
import { firewallWriteOf } from './inputs.js';
import { presentLineage, presentVm } from './present.js';
import { firewallShape } from './firewall-shape.js';
import { writeShape } from '../domain/index.js';
import { requireAuth } from './util.js';

export default async function branchingRoutes(
  app: App,
  opts: { services: AppServices },
): Promise<void> {
  const tags = ['snapshots'];

  app.post(
    '/v1/snapshots/:id/fork',
    {
      config: {
        summary: 'Restore count VMs from a snapshot in one call (all running when it answers)',
        operationId: 'forkSnapshot',
        tags,
      },
      schema: {
        params: IdParams,
        body: ForkSnapshotBody,
        response: { 201: ForkResponse, default: ErrorBody },
      },
    },
    async (request, reply) => {
      const { orgId } = requireAuth(request);
      const body = request.body;
      const firewall = body.firewall ? firewallWriteOf(body.firewall) : undefined;
      const vms = await opts.services.forks.fork(orgId, request.params.id, {
        count: body.count,
        namePrefix: body.namePrefix,
        firewall,
        envVars: body.envVars,
        metadata: body.metadata,
      });
      const shape = firewallShape(request, firewall ? writeShape(firewall) : undefined);
      return reply.code(201).send({ vms: vms.map((vm) => presentVm(vm, shape)) });
    },
  );

  app.get(
    '/v1/snapshots/:id/lineage',
    {
      config: {
        summary: "A snapshot's lineage: the path from its root and the tree below it",
        operationId: 'getSnapshotLineage',
        tags,
      },
      schema: { params: IdParams, response: { 200: Lineage, default: ErrorBody } },
    },
    async (request) => {
      const { orgId } = requireAuth(request);
      return presentLineage(await opts.services.lineage.get(orgId, request.params.id));
    },
  );
}
