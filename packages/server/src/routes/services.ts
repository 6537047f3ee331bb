/**
 * `/v1/vms/{id}/services` (contract §4.4): list, register (POST, 201 also for an identical
 * repeat), register-or-update (PUT) and remove (DELETE, 204, idempotent) published services.
 * The logic is `services/published-services.ts`; the proxy that serves them is `proxy/`.
 * @module
 */
import type { FastifyRequest } from 'fastify';
import type { App, AppServices } from '../app.js';
import type { PublishedService } from '../domain/index.js';
import { serviceUrl, type ProxyAddress } from '../proxy/hostnames.js';
import {
  CreateServiceBody,
  ErrorBody,
  IdParams,
  PutServiceBody,
  Service,
  ServiceParams,
} from '../schemas.js';
import { NoopNetworkManager } from '../services/network.js';
import { PublishedServices } from '../services/published-services.js';
import { VmEvents } from '../services/vm-events.js';
import { presentService } from './present.js';
import { requireAuth } from './util.js';

/** Where service URLs point when the server runs no proxy (`buildApp` without one). */
const NO_PROXY: ProxyAddress = { scheme: 'http', domain: 'localhost', port: 8081 };

export default async function serviceRoutes(
  app: App,
  opts: { services: AppServices },
): Promise<void> {
  const published =
    opts.services.published ??
    new PublishedServices({
      store: opts.services.store,
      network: new NoopNetworkManager(),
      events: new VmEvents(),
    });
  const address = opts.services.proxyAddress ?? (() => NO_PROXY);
  const present = (vmId: string, s: PublishedService) =>
    presentService(s, serviceUrl(address(), vmId, s.name));
  const tags = ['services'];
  // Another org's (or an unknown) VM is a 404 before the body is looked at, as on every
  // VM-scoped route.
  const vmFirst = async (request: FastifyRequest): Promise<void> => {
    const { orgId } = requireAuth(request);
    await published.list(orgId, (request.params as { id: string }).id);
  };

  app.get(
    '/v1/vms/:id/services',
    {
      config: { summary: "List a VM's published services", operationId: 'listServices', tags },
      schema: { params: IdParams, response: { 200: Service.array(), default: ErrorBody } },
    },
    async (request) => {
      const { orgId } = requireAuth(request);
      const { vm, services } = await published.list(orgId, request.params.id);
      return services.map((s) => present(vm.id, s));
    },
  );

  app.post(
    '/v1/vms/:id/services',
    {
      config: { summary: 'Publish a service of a VM', operationId: 'createService', tags },
      preValidation: vmFirst,
      schema: {
        params: IdParams,
        body: CreateServiceBody,
        response: { 201: Service, default: ErrorBody },
      },
    },
    async (request, reply) => {
      const { orgId } = requireAuth(request);
      const { name, port, h2c, auth } = request.body;
      const { vm, service } = await published.add(orgId, request.params.id, name, {
        port,
        h2c: h2c ?? undefined,
        auth: auth ?? undefined,
      });
      return reply.code(201).send(present(vm.id, service));
    },
  );

  app.put(
    '/v1/vms/:id/services/:serviceName',
    {
      config: { summary: 'Publish or change a service', operationId: 'putService', tags },
      preValidation: vmFirst,
      schema: {
        params: ServiceParams,
        body: PutServiceBody,
        response: { 200: Service, default: ErrorBody },
      },
    },
    async (request) => {
      const { orgId } = requireAuth(request);
      const { port, h2c, auth } = request.body;
      const { vm, service } = await published.put(
        orgId,
        request.params.id,
        request.params.serviceName,
        { port, h2c: h2c ?? undefined, auth: auth ?? undefined },
      );
      return present(vm.id, service);
    },
  );

  app.delete(
    '/v1/vms/:id/services/:serviceName',
    {
      config: { summary: 'Unpublish a service (idempotent)', operationId: 'deleteService', tags },
      schema: { params: ServiceParams, response: { default: ErrorBody } },
    },
    async (request, reply) => {
      const { orgId } = requireAuth(request);
      await published.remove(orgId, request.params.id, request.params.serviceName);
      return reply.code(204).send(undefined as never); // 204: no body
    },
  );
}
