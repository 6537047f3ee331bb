/**
 * `POST /v1/vms/{id}/files/presign` and `POST /v1/vms/{id}/files/fetch` (contract §4.3). The
 * storage URLs themselves are served by `storage.ts`; the design is in `services/files.ts`.
 * @module
 */
import type { App, AppServices } from '../app.js';
import {
  ErrorBody,
  ExecResult,
  FileFetchBody,
  FilePresignBody,
  FilePresignResponse,
  IdParams,
} from '../schemas.js';
import { requireAuth } from './util.js';

export default async function fileRoutes(app: App, opts: { services: AppServices }): Promise<void> {
  const { vms, files } = opts.services;
  const tags = ['files'];

  app.post(
    '/v1/vms/:id/files/presign',
    {
      config: {
        summary: 'Presigned upload/download URLs for one staging object of this VM',
        operationId: 'presignVmFile',
        tags,
      },
      schema: {
        params: IdParams,
        body: FilePresignBody,
        response: { 200: FilePresignResponse, default: ErrorBody },
      },
    },
    async (request) => {
      const { orgId } = requireAuth(request);
      const vm = await vms.get(orgId, request.params.id);
      // Without a configured or guest-facing base, the URLs point where this client called us.
      return files.presign(vm, `${request.protocol}://${request.host}`);
    },
  );

  app.post(
    '/v1/vms/:id/files/fetch',
    {
      config: {
        summary: "Write a presigned object (this VM's downloadUrl) to a path in the guest",
        operationId: 'fetchVmFile',
        tags,
      },
      schema: {
        params: IdParams,
        body: FileFetchBody,
        response: { 200: ExecResult, default: ErrorBody },
      },
    },
    async (request, reply) => {
      const { orgId } = requireAuth(request);
      const vm = await vms.get(orgId, request.params.id);
      // Like exec, the transfer dies with the request.
      const abort = new AbortController();
      let running = true;
      reply.raw.once('close', () => {
        if (running) abort.abort(new Error('client disconnected'));
      });
      try {
        return await files.fetch(vm, request.body, abort.signal);
      } finally {
        running = false;
      }
    },
  );
}
