/**
 * Who may use a service (`auth`, an extension of the contract): `public` lets everyone in;
 * `token` wants `Authorization: Bearer <the service's token>` (or `X-FastVM-Token`); `api_key`
 * wants an active API key of the VM's org (`Authorization: Bearer` or `X-API-Key`). The
 * credential is removed before the request reaches the VM, so a service never sees an API key.
 * @module
 */
import { timingSafeEqual } from 'node:crypto';
import type { IncomingHttpHeaders } from 'node:http';
import { hashApiKey } from '../services/orgs.js';
import type { Store } from '../store/index.js';
import type { ProxyError } from './pages.js';
import type { Backend } from './resolver.js';

/** Headers that carry proxy credentials (removed before forwarding on protected services). */
export const CREDENTIAL_HEADERS = ['authorization', 'x-api-key', 'x-fastvm-token'] as const;

/** How long an accepted API key is remembered (revocations take effect within this). */
const KEY_CACHE_MS = 5000;

function header(headers: IncomingHttpHeaders, name: string): string | undefined {
  const v = headers[name];
  return Array.isArray(v) ? v[0] : v;
}

function bearer(headers: IncomingHttpHeaders): string | undefined {
  const m = /^Bearer\s+(\S+)\s*$/i.exec(header(headers, 'authorization') ?? '');
  return m?.[1];
}

function sameSecret(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

/** Checks requests against their service's `auth`. */
export class AccessCheck {
  /** API key hash → { org, when checked }. */
  readonly #keys = new Map<string, { orgId: string; at: number }>();

  constructor(private readonly store: Pick<Store, 'findActiveApiKey'>) {}

  /** Undefined when the request may pass; the 401 to answer otherwise. */
  async check(backend: Backend, headers: IncomingHttpHeaders): Promise<ProxyError | undefined> {
    if (backend.auth === 'public') return undefined;
    if (backend.auth === 'token') {
      const given = bearer(headers) ?? header(headers, 'x-fastvm-token');
      if (given && backend.token && sameSecret(given, backend.token)) return undefined;
      return refusal(
        given ? "the token is not this service's token" : 'no token was sent',
        'This service requires its bearer token: send "Authorization: Bearer <token>" ' +
          '(the token is in GET /v1/vms/{id}/services).',
      );
    }
    const key = header(headers, 'x-api-key')?.trim() || bearer(headers);
    if (key && (await this.orgOfKey(key)) === backend.orgId) return undefined;
    return refusal(
      key ? "the API key is not valid for this VM's org" : 'no API key was sent',
      'This service requires an API key of the VM\'s organisation: send "Authorization: Bearer <key>" or "X-API-Key: <key>".',
    );
  }

  private async orgOfKey(key: string): Promise<string | undefined> {
    const hash = hashApiKey(key);
    const hit = this.#keys.get(hash);
    if (hit && Date.now() - hit.at < KEY_CACHE_MS) return hit.orgId;
    const record = await this.store.findActiveApiKey(hash);
    if (!record) return undefined;
    if (this.#keys.size > 1000) this.#keys.clear();
    this.#keys.set(hash, { orgId: record.orgId, at: Date.now() });
    return record.orgId;
  }
}

function refusal(why: string, how: string): ProxyError {
  return {
    status: 401,
    code: 'unauthorized',
    message: `${how} (${why}.)`,
    headers: { 'www-authenticate': 'Bearer realm="fastvm-service"' },
  };
}
