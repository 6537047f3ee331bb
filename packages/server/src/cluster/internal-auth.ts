/**
 * The guard of the internal channel (`/internal/v1/...`): routes there are registered only in
 * cluster mode, left out of the OpenAPI document, need no API key, and answer 401 unless the
 * request carries the cluster's shared secret in `CLUSTER_TOKEN_HEADER` (constant-time check).
 * Peers reach them at their advertise URL; keep that address off guests' networks and off the
 * internet (a private network between the hosts, or TLS).
 * @module
 */
import type { FastifyReply, FastifyRequest } from 'fastify';
import { ApiError } from '../errors.js';
import { CLUSTER_TOKEN_HEADER, clusterTokenMatches } from './seams.js';

/** Prefix of the internal routes. */
export const INTERNAL_PREFIX = '/internal/v1';

/**
 * An `onRequest` (or `preHandler`) hook refusing requests without the cluster token: register
 * it in the scope of the internal routes, e.g.
 * `scope.addHook('onRequest', requireClusterToken(secret))`.
 */
export function requireClusterToken(
  secret: string,
): (request: FastifyRequest, reply: FastifyReply) => Promise<void> {
  if (secret.length === 0) throw new Error('the cluster secret must not be empty');
  return async (request) => {
    const presented = request.headers[CLUSTER_TOKEN_HEADER];
    if (presented === undefined) {
      throw new ApiError('unauthorized', `internal route: missing ${CLUSTER_TOKEN_HEADER}`);
    }
    if (!clusterTokenMatches(secret, presented)) {
      throw new ApiError('forbidden', 'internal route: wrong cluster token');
    }
  };
}
