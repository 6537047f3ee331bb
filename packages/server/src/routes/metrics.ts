/**
 * `GET /metrics` (Prometheus text format) and the hook that counts API requests. Served on the
 * API listener but answered only for requests from loopback or carrying `Authorization: Bearer
 * <FASTVM_METRICS_TOKEN>`; anyone else gets the 404 of an unknown route, so the endpoint does not
 * advertise itself. Loopback by default because a scraper on the host (or an SSH tunnel) needs no
 * secret and the numbers (org ids, quota use, request mix) are operator data, not tenant data; the
 * token is for a remote Prometheus. A reverse proxy on the same host makes every caller loopback:
 * set a token and have the proxy refuse `/metrics`.
 * @module
 */
import { timingSafeEqual } from 'node:crypto';
import type { App, AppServices } from '../app.js';
import { ApiError } from '../errors.js';

/** Whether `address` is a loopback address (IPv4 127/8, ::1, or IPv4-mapped 127/8). */
export function isLoopback(address: string | undefined): boolean {
  if (!address) return false;
  const v4 = address.startsWith('::ffff:') ? address.slice(7) : address;
  return address === '::1' || /^127\.\d+\.\d+\.\d+$/.test(v4);
}

function tokenMatches(header: string | undefined, token: string | undefined): boolean {
  if (!token || !header?.startsWith('Bearer ')) return false;
  const given = Buffer.from(header.slice(7).trim());
  const want = Buffer.from(token);
  return given.length === want.length && timingSafeEqual(given, want);
}

/**
 * Adds the request hook and `/metrics` to the root context (not as an encapsulated plugin: the
 * hook must see every route). Nothing when the app has no `metrics`.
 */
export function installMetrics(app: App, services: AppServices): void {
  const { metrics, metricsToken } = services;
  if (!metrics) return;
  app.addHook('onResponse', (request, reply, done) => {
    const route = request.routeOptions.url ?? 'unmatched';
    metrics.request(request.method, route, reply.statusCode, reply.elapsedTime / 1000);
    done();
  });
  app.get('/metrics', { config: { public: true, hidden: true } }, async (request, reply) => {
    const allowed =
      isLoopback(request.socket.remoteAddress) ||
      tokenMatches(request.headers.authorization, metricsToken);
    if (!allowed) throw new ApiError('not_found', 'no route for GET /metrics');
    const { contentType, text } = await metrics.scrape();
    return reply.type(contentType).send(text);
  });
}
