/**
 * Health probes. Unauthenticated; the SDKs send their API key anyway, which is ignored.
 * @module
 */
import type { App } from '../app.js';
import { Health } from '../schemas.js';

export default async function healthRoutes(app: App): Promise<void> {
  const ok = async () => ({ status: 'ok' });
  app.get(
    '/healthz',
    {
      config: { public: true, summary: 'Health check', operationId: 'health', tags: ['health'] },
      schema: { response: { 200: Health } },
    },
    ok,
  );
  // PRE-era probes kept for 0.0.x clients.
  app.get(
    '/livez',
    {
      config: { public: true, summary: 'Liveness probe', tags: ['health'] },
      schema: { response: { 200: Health } },
    },
    ok,
  );
  app.get(
    '/readyz',
    {
      config: { public: true, summary: 'Readiness probe', tags: ['health'] },
      schema: { response: { 200: Health } },
    },
    ok,
  );
}
