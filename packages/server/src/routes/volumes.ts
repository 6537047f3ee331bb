/**
 * Volumes: `/v1/volumes` (contract §4.10) and a VM's attachments, `POST /v1/vms/{id}/volumes`
 * and `DELETE /v1/vms/{id}/volumes/{volumeId}` (§4.5). Rules in `services/volume-service.ts`.
 * @module
 */
import type { App, AppServices } from '../app.js';
import {
  CreateVolumeBody,
  DeleteResponse,
  DetachResponse,
  ErrorBody,
  IdParams,
  UpdateVolumeBody,
  Volume,
  VolumeAttachBody,
  VolumeAttachmentItem,
  VolumeAttachmentWithVm,
  VolumeParams,
} from '../schemas.js';
import { presentAttachment, presentVolume } from './present.js';
import { requireAuth } from './util.js';

export default async function volumeRoutes(
  app: App,
  opts: { services: AppServices },
): Promise<void> {
  const { vms } = opts.services;
  const { volumes } = opts.services;
  const tags = ['volumes'];

  app.post(
    '/v1/volumes',
    {
      config: { summary: 'Create a volume', operationId: 'createVolume', tags },
      schema: { body: CreateVolumeBody, response: { 201: Volume, default: ErrorBody } },
    },
    async (request, reply) => {
      const { orgId } = requireAuth(request);
      return reply.code(201).send(presentVolume(await volumes.create(orgId, request.body)));
    },
  );

  app.get(
    '/v1/volumes',
    {
      config: { summary: 'List volumes', operationId: 'listVolumes', tags },
      schema: { response: { 200: Volume.array(), default: ErrorBody } },
    },
    async (request) => {
      const { orgId } = requireAuth(request);
      return (await volumes.list(orgId)).map(presentVolume);
    },
  );

  app.get(
    '/v1/volumes/:id',
    {
      config: { summary: 'Get a volume', operationId: 'getVolume', tags },
      schema: { params: IdParams, response: { 200: Volume, default: ErrorBody } },
    },
    async (request) => {
      const { orgId } = requireAuth(request);
      return presentVolume(await volumes.get(orgId, request.params.id));
    },
  );

  app.patch(
    '/v1/volumes/:id',
    {
      config: {
        summary: 'Rename, resize or change the access mode',
        operationId: 'updateVolume',
        tags,
      },
      schema: {
        params: IdParams,
        body: UpdateVolumeBody,
        response: { 200: Volume, default: ErrorBody },
      },
    },
    async (request) => {
      const { orgId } = requireAuth(request);
      return presentVolume(await volumes.update(orgId, request.params.id, request.body));
    },
  );

  app.delete(
    '/v1/volumes/:id',
    {
      config: { summary: 'Delete a detached volume', operationId: 'deleteVolume', tags },
      schema: { params: IdParams, response: { 200: DeleteResponse, default: ErrorBody } },
    },
    async (request) => {
      const { orgId } = requireAuth(request);
      const { id } = await volumes.delete(orgId, request.params.id);
      return { id, deleted: true };
    },
  );

  app.get(
    '/v1/volumes/:id/attachments',
    {
      config: { summary: "A volume's attachments", operationId: 'listVolumeAttachments', tags },
      schema: {
        params: IdParams,
        response: { 200: VolumeAttachmentWithVm.array(), default: ErrorBody },
      },
    },
    async (request) => {
      const { orgId } = requireAuth(request);
      const list = await volumes.attachments(orgId, request.params.id);
      return list.map((a) => ({ ...presentAttachment(a), vmId: a.vmId }));
    },
  );

  app.post(
    '/v1/vms/:id/volumes',
    {
      config: { summary: 'Attach a volume (hot)', operationId: 'attachVolume', tags },
      schema: {
        params: IdParams,
        body: VolumeAttachBody,
        response: { 200: VolumeAttachmentItem, default: ErrorBody },
      },
    },
    async (request) => {
      const { orgId } = requireAuth(request);
      const vm = await vms.get(orgId, request.params.id);
      const { volumeId, mountPath, readOnly } = request.body;
      const att = await volumes.attach(orgId, vm, {
        volumeId,
        mountPath,
        ...(readOnly !== undefined && readOnly !== null ? { readOnly } : {}),
      });
      return presentAttachment(att);
    },
  );

  app.delete(
    '/v1/vms/:id/volumes/:volumeId',
    {
      config: {
        summary: 'Detach a volume (unmounts it in the guest)',
        operationId: 'detachVolume',
        tags,
      },
      schema: { params: VolumeParams, response: { 200: DetachResponse, default: ErrorBody } },
    },
    async (request) => {
      const { orgId } = requireAuth(request);
      const vm = await vms.get(orgId, request.params.id);
      await volumes.detach(orgId, vm, request.params.volumeId);
      return { detached: true };
    },
  );
}
