/**
 * `POST /v1/vms/{id}/pause`, `/resume` and `/ttl/refresh` (contract §4.2.6–4.2.8). No bodies
 * (an empty body with a JSON content type is fine); each answers 200 with the VM.
 * @module
 */
import type { App, AppServices } from '../app.js';
import { ErrorBody, IdParams, Vm } from '../schemas.js';
import { presentVm } from './present.js';
import { firewallShape } from './firewall-shape.js';
import { requireAuth } from './util.js';

export default async function lifecycleRoutes(
  app: App,
  opts: { services: AppServices },
): Promise<void> {
  const { lifecycle } = opts.services;
  const tags = ['vms'];
  const schema = { params: IdParams, response: { 200: Vm, default: ErrorBody } };

  app.post(
    '/v1/vms/:id/pause',
    {
      config: {
        summary: 'Pause a VM: vCPUs stop, memory and processes are kept; vCPU quota is released',
        operationId: 'pauseVm',
        tags,
      },
      schema,
    },
    async (request) => {
      const { orgId } = requireAuth(request);
      return presentVm(await lifecycle.pause(orgId, request.params.id), firewallShape(request));
    },
  );

  app.post(
    '/v1/vms/:id/resume',
    {
      config: {
        summary: 'Resume a paused VM (429 when the vCPU quota is used up)',
        operationId: 'resumeVm',
        tags,
      },
      schema,
    },
    async (request) => {
      const { orgId } = requireAuth(request);
      return presentVm(await lifecycle.resume(orgId, request.params.id), firewallShape(request));
    },
  );

  app.post(
    '/v1/vms/:id/ttl/refresh',
    {
      config: {
        summary: "Restart the VM's TTL countdown (409 when it has no TTL)",
        operationId: 'refreshVmTtl',
        tags,
      },
      schema,
    },
    async (request) => {
      const { orgId } = requireAuth(request);
      return presentVm(
        await lifecycle.refreshTtl(orgId, request.params.id),
        firewallShape(request),
      );
    },
  );
}
