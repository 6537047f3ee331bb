/**
 * `/v1/vms`: launch/restore, list, get, update, delete, exec (buffered JSON or NDJSON stream)
 * and the v1 firewall.
 * @module
 */
import type { App, AppServices } from '../app.js';
import type { ExecSessions } from '../services/exec-sessions.js';
import {
  DeleteResponse,
  ErrorBody,
  ExecBody,
  ExecResult,
  ExecSession,
  FirewallPatch,
  FirewallPolicy,
  IdParams,
  LaunchVmBody,
  ListVmsQuery,
  UpdateVmBody,
  Vm,
  VmLaunchResponse,
} from '../schemas.js';
import { execCommandOf, firewallPatchOf, firewallWriteOf, launchRequestOf } from './inputs.js';
import { presentExecSession, startExecStream } from './execs.js';
import { metadataFilters, presentExecResult, presentVm } from './present.js';
import { firewallShape } from './firewall-shape.js';
import { writeShape } from '../domain/index.js';
import { requireAuth, wantsNdjson } from './util.js';

export default async function vmRoutes(
  app: App,
  opts: { services: AppServices & { execs: ExecSessions }; execBodyLimit: number },
): Promise<void> {
  const { vms, execs } = opts.services;
  const tags = ['vms'];

  app.post(
    '/v1/vms',
    {
      config: {
        summary: 'Launch a VM, or restore one from a snapshot',
        operationId: 'launchVm',
        tags,
      },
      schema: {
        body: LaunchVmBody,
        response: { 201: VmLaunchResponse, 202: VmLaunchResponse, default: ErrorBody },
      },
    },
    async (request, reply) => {
      const { orgId } = requireAuth(request);
      const input = launchRequestOf(request.body);
      const { vm, ready, servicesWarning, attachmentWarnings } = await vms.launch(orgId, input);
      const shape = firewallShape(request, input.firewall ? writeShape(input.firewall) : undefined);
      return reply.code(ready && vm.status === 'running' ? 201 : 202).send({
        ...presentVm(vm, shape),
        ...(servicesWarning ? { snapshotRestoreWarnings: servicesWarning } : {}),
        ...(attachmentWarnings ? { attachmentWarnings } : {}),
      });
    },
  );

  app.get(
    '/v1/vms',
    {
      config: { summary: 'List VMs', operationId: 'listVms', tags },
      schema: { querystring: ListVmsQuery, response: { 200: Vm.array(), default: ErrorBody } },
    },
    async (request) => {
      const { orgId } = requireAuth(request);
      const q = request.query as Record<string, unknown>;
      const rawStatus = request.query.status;
      const statuses =
        rawStatus === undefined
          ? undefined
          : (Array.isArray(rawStatus) ? rawStatus : [rawStatus])
              .flatMap((s) => s.split(','))
              .map((s) => s.trim())
              .filter((s) => s !== '');
      const list = await vms.list(orgId, {
        ...(statuses ? { statuses } : {}),
        metadata: metadataFilters(q),
      });
      return list.map((vm) => presentVm(vm, firewallShape(request)));
    },
  );

  app.get(
    '/v1/vms/:id',
    {
      config: { summary: 'Get a VM', operationId: 'getVm', tags },
      schema: { params: IdParams, response: { 200: Vm, default: ErrorBody } },
    },
    async (request) => {
      const { orgId } = requireAuth(request);
      return presentVm(await vms.get(orgId, request.params.id), firewallShape(request));
    },
  );

  app.patch(
    '/v1/vms/:id',
    {
      config: { summary: 'Rename a VM or replace its metadata', operationId: 'updateVm', tags },
      schema: { params: IdParams, body: UpdateVmBody, response: { 200: Vm, default: ErrorBody } },
    },
    async (request) => {
      const { orgId } = requireAuth(request);
      const { name, metadata, ttl } = request.body;
      return presentVm(
        await vms.update(orgId, request.params.id, {
          ...(name !== undefined ? { name } : {}),
          ...(metadata !== undefined ? { metadata } : {}),
          ...(ttl !== undefined ? { ttl } : {}),
        }),
        firewallShape(request),
      );
    },
  );

  app.delete(
    '/v1/vms/:id',
    {
      config: { summary: 'Delete a VM', operationId: 'deleteVm', tags },
      schema: { params: IdParams, response: { 200: DeleteResponse, default: ErrorBody } },
    },
    async (request) => {
      const { orgId } = requireAuth(request);
      const { id } = await vms.delete(orgId, request.params.id);
      return { id, deleted: true };
    },
  );

  app.post(
    '/v1/vms/:id/exec',
    {
      bodyLimit: opts.execBodyLimit,
      config: {
        summary: 'Run a command (JSON result, or NDJSON stream with Accept: application/x-ndjson)',
        operationId: 'execVm',
        tags,
      },
      schema: {
        params: IdParams,
        body: ExecBody,
        response: { 200: ExecResult, 202: ExecSession, default: ErrorBody },
      },
    },
    async (request, reply) => {
      const { orgId } = requireAuth(request);
      const prepared = await vms.prepareExec(orgId, request.params.id, execCommandOf(request.body));
      if (request.body.detach) {
        // An exec session that no request holds: 202 with its id at once.
        const session = execs.start(prepared, { keepAlive: true });
        return reply.code(202).send(presentExecSession(session));
      }
      if (wantsNdjson(request)) {
        // An exec session followed from its start. Without keepAlive the command dies with the
        // request, as it always did.
        return startExecStream(reply, execs, prepared, {
          keepAlive: request.body.keepAlive === true,
        });
      }

      // The command dies with the request: a client that disconnects kills it.
      const abort = new AbortController();
      let running = true;
      reply.raw.once('close', () => {
        if (running) abort.abort(new Error('client disconnected'));
      });

      const res = await vms
        .runExec(prepared, { signal: abort.signal })
        .finally(() => (running = false));
      return presentExecResult(res);
    },
  );

  app.put(
    '/v1/vms/:id/firewall',
    {
      config: { summary: 'Replace the firewall policy', operationId: 'setFirewall', tags },
      schema: { params: IdParams, body: FirewallPolicy, response: { 200: Vm, default: ErrorBody } },
    },
    async (request) => {
      const { orgId } = requireAuth(request);
      const change = firewallWriteOf(request.body);
      const vm = await vms.setFirewall(orgId, request.params.id, change);
      return presentVm(vm, firewallShape(request, writeShape(change)));
    },
  );

  app.patch(
    '/v1/vms/:id/firewall',
    {
      config: {
        summary: 'Change the firewall mode and/or rules',
        operationId: 'patchFirewall',
        tags,
      },
      schema: { params: IdParams, body: FirewallPatch, response: { 200: Vm, default: ErrorBody } },
    },
    async (request) => {
      const { orgId } = requireAuth(request);
      const change = firewallPatchOf(request.body);
      const vm = await vms.setFirewall(orgId, request.params.id, change);
      return presentVm(vm, firewallShape(request, writeShape(change)));
    },
  );
}
