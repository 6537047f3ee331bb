/**
 * `GET /v1/org/quotas`: the caller org's limits and usage in all six dimensions.
 * @module
 */
import type { App, AppServices } from '../app.js';
import { ErrorBody, OrgQuotas } from '../schemas.js';
import { requireAuth } from './util.js';

export default async function orgRoutes(app: App, opts: { services: AppServices }): Promise<void> {
  const { quotas } = opts.services;
  app.get(
    '/v1/org/quotas',
    {
      config: { summary: 'Quota limits and usage', operationId: 'getOrgQuotas', tags: ['org'] },
      schema: { response: { 200: OrgQuotas, default: ErrorBody } },
    },
    async (request) => {
      const { orgId } = requireAuth(request);
      const { limits, usage } = await quotas.get(orgId);
      return { orgId, limits, usage };
    },
  );
}
