/**
 * Request authentication: the API key of a request (`X-API-Key` or `Authorization: Bearer`)
 * → the caller's org. Keys are created, hashed and revoked in `services/orgs.ts`.
 * @module
 */
import type { IncomingHttpHeaders } from 'node:http';
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
export function extractApiKey(request: { headers: IncomingHttpHeaders }): string | undefined {
  const header = request.headers['x-api-key'];
  const xKey = Array.isArray(header) ? header[0] : header;
  if (xKey && xKey.trim() !== '') return xKey.trim();
  const authz = request.headers.authorization;
  const m = authz ? /^Bearer\s+(\S+)\s*$/i.exec(authz) : null;
  return m?.[1];
}

/** How long a key → org answer is reused: a revoked key stops working within this time. */
export const API_KEY_CACHE_MS = 1000;
const API_KEY_CACHE_MAX = 10_000;

/**
 * Resolves API keys to orgs, reusing each answer for `API_KEY_CACHE_MS` so that a busy client
 * costs one store lookup per second, not one per request. Keys are revoked by the admin CLI in
 * another process, so the bound on staleness is the cache's lifetime; unknown keys are never
 * cached (each costs a lookup, as before). Entries are keyed by the key itself (hashing it cost
 * more than the rest of authentication) and live for at most the cache's lifetime.
 */
export class ApiKeyResolver {
  readonly #store: Store;
  readonly #ttlMs: number;
  readonly #cache = new Map<string, { auth: AuthContext; until: number }>();

  constructor(store: Store, ttlMs = API_KEY_CACHE_MS) {
    this.#store = store;
    this.#ttlMs = ttlMs;
  }

  /**
   * The caller's org when its key's answer is cached and fresh, else undefined (without a store
   * lookup: `authenticate` does that, and answers the refusals).
   */
  peek(request: { headers: IncomingHttpHeaders }): AuthContext | undefined {
    const key = extractApiKey(request);
    const hit = key === undefined ? undefined : this.#cache.get(key);
    return hit && hit.until > Date.now() ? hit.auth : undefined;
  }

  /** The caller's org, or throws 401. */
  async authenticate(request: { headers: IncomingHttpHeaders }): Promise<AuthContext> {
    const key = extractApiKey(request);
    if (!key) {
      throw new ApiError(
        'unauthorized',
        'missing API key: send X-API-Key or Authorization: Bearer',
      );
    }
    const now = Date.now();
    const hit = this.#cache.get(key);
    if (hit && hit.until > now) return hit.auth;
    const record = await this.#store.findActiveApiKey(hashApiKey(key));
    if (!record) {
      this.#cache.delete(key);
      throw new ApiError('unauthorized', 'invalid or revoked API key');
    }
    const auth = { orgId: record.orgId, keyId: record.id };
    if (this.#cache.size >= API_KEY_CACHE_MAX) this.#evictExpired(now);
    this.#cache.set(key, { auth, until: now + this.#ttlMs });
    return auth;
  }

  #evictExpired(now: number): void {
    for (const [key, entry] of this.#cache) if (entry.until <= now) this.#cache.delete(key);
    // Still full of live keys: start over rather than grow without bound.
    if (this.#cache.size >= API_KEY_CACHE_MAX) this.#cache.clear();
  }
}
