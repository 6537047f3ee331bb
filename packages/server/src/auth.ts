/**
 * Request authentication: the API key of a request (`X-API-Key` or `Authorization: Bearer`)
 * → the caller's org. Keys are created, hashed and revoked in `services/orgs.ts`.
 * @module
 */
import type { FastifyRequest } from 'fastify';
import { ApiError } from './errors.js';
import { hashApiKey } from './services/orgs.js';
import type { Store } from './store/index.js';

/** The caller's identity, set on every authenticated request. */
export interface AuthContext {
  orgId: string;
  keyId: string;
}

declare module 'fastify' {
  interface FastifyRequest {
    /** Set by the auth hook on authenticated routes; null on public ones. */
    auth: AuthContext | null;
  }
}

/** The key from `X-API-Key` or `Authorization: Bearer`, if any. */
export function extractApiKey(request: FastifyRequest): string | undefined {
  const header = request.headers['x-api-key'];
  const xKey = Array.isArray(header) ? header[0] : header;
  if (xKey && xKey.trim() !== '') return xKey.trim();
  const authz = request.headers.authorization;
  const m = authz ? /^Bearer\s+(\S+)\s*$/i.exec(authz) : null;
  return m?.[1];
}

/** Resolves the caller's org or throws 401. */
export async function authenticate(store: Store, request: FastifyRequest): Promise<AuthContext> {
  const key = extractApiKey(request);
  if (!key) {
    throw new ApiError('unauthorized', 'missing API key: send X-API-Key or Authorization: Bearer');
  }
  const record = await store.findActiveApiKey(hashApiKey(key));
  if (!record) throw new ApiError('unauthorized', 'invalid or revoked API key');
  return { orgId: record.orgId, keyId: record.id };
}
