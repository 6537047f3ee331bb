/**
 * `GET/POST/DELETE /v1/me/ssh-keys` (the caller org's SSH public keys, contract §4.11) and
 * `GET /v1/pricing` (unauthenticated, §4.12).
 * @module
 */
import type { App, AppServices } from '../app.js';
import {
  CreateSshKeyBody,
  DeleteResponse,
  ErrorBody,
  FingerprintParams,
  Pricing,
  SshKey,
  SshKeyList,
} from '../schemas.js';
import { DEFAULT_PRICING } from '../pricing.js';
import { SshKeyService } from '../services/ssh-keys.js';
import { sshKeyInputOf } from './inputs.js';
import { presentSshKey } from './present.js';
import { requireAuth } from './util.js';

export default async function sshKeyRoutes(
  app: App,
  opts: { services: AppServices },
): Promise<void> {
  const keys = opts.services.sshKeys ?? new SshKeyService(opts.services.store);
  const pricing = opts.services.pricing ?? DEFAULT_PRICING;

  app.get(
    '/v1/me/ssh-keys',
    {
      config: { summary: 'List SSH keys', operationId: 'listSshKeys', tags: ['ssh keys'] },
      schema: { response: { 200: SshKeyList, default: ErrorBody } },
    },
    async (request) => {
      const { orgId } = requireAuth(request);
      return { keys: (await keys.list(orgId)).map(presentSshKey) };
    },
  );

  app.post(
    '/v1/me/ssh-keys',
    {
      config: { summary: 'Add an SSH key', operationId: 'createSshKey', tags: ['ssh keys'] },
      schema: { body: CreateSshKeyBody, response: { 200: SshKey, default: ErrorBody } },
    },
    async (request) => {
      const { orgId } = requireAuth(request);
      return presentSshKey(await keys.add(orgId, sshKeyInputOf(request.body)));
    },
  );

  app.delete(
    '/v1/me/ssh-keys/:fingerprint',
    {
      config: { summary: 'Delete an SSH key', operationId: 'deleteSshKey', tags: ['ssh keys'] },
      schema: { params: FingerprintParams, response: { 200: DeleteResponse, default: ErrorBody } },
    },
    async (request) => {
      const { orgId } = requireAuth(request);
      const removed = await keys.remove(orgId, request.params.fingerprint);
      return { id: removed.fingerprint, deleted: true };
    },
  );

  app.get(
    '/v1/pricing',
    {
      config: { public: true, summary: 'Prices', operationId: 'getPricing', tags: ['pricing'] },
      schema: { response: { 200: Pricing, default: ErrorBody } },
    },
    async () => pricing,
  );
}
