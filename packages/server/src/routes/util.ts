/**
 * Small helpers shared by route modules.
 * @module
 */
import type { FastifyRequest } from 'fastify';
import type { AuthContext } from '../auth.js';
import { ApiError } from '../errors.js';

/** The authenticated caller (the auth hook guarantees it on non-public routes). */
export function requireAuth(request: FastifyRequest): AuthContext {
  if (!request.auth) throw new ApiError('unauthorized', 'missing API key');
  return request.auth;
}

/** Whether the client asked for NDJSON streaming (`Accept: application/x-ndjson`). */
export function wantsNdjson(request: FastifyRequest): boolean {
  const accept = request.headers.accept ?? '';
  return /application\/x-ndjson/i.test(accept);
}
