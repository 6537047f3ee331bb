/**
 * API keys: generation, hashing, the bootstrap key and the request authentication hook.
 * Keys look like `fvm_<32 base64url chars>` and are stored only as SHA-256 hashes.
 * @module
 */
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import type { FastifyRequest } from 'fastify';
import { nowIso, type ApiKeyRecord, type OrgRecord } from './domain/index.js';
import { ApiError } from './errors.js';
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

/** Every generated key starts with this. */
export const API_KEY_PREFIX = 'fvm_';
const SHOWN_PREFIX_CHARS = 12;

/** A new random API key. */
export function generateApiKey(): string {
  return API_KEY_PREFIX + randomBytes(24).toString('base64url');
}

/** Hex SHA-256 of a key: what the database stores and looks up. */
export function hashApiKey(key: string): string {
  return createHash('sha256').update(key, 'utf8').digest('hex');
}

/** Creates an API key for `orgId` (random unless `key` is given). Returns the plaintext once. */
export async function createApiKey(
  store: Store,
  orgId: string,
  opts: { name?: string; key?: string } = {},
): Promise<{ key: string; record: ApiKeyRecord }> {
  const key = opts.key ?? generateApiKey();
  const record: ApiKeyRecord = {
    id: randomUUID(),
    orgId,
    name: opts.name ?? 'default',
    prefix: key.slice(0, SHOWN_PREFIX_CHARS),
    createdAt: nowIso(),
    revokedAt: null,
  };
  await store.insertApiKey(record, hashApiKey(key));
  return { key, record };
}

/** Creates an org (name must be unique). */
export async function createOrg(store: Store, name: string): Promise<OrgRecord> {
  const org: OrgRecord = { id: randomUUID(), name, createdAt: nowIso() };
  await store.createOrg(org);
  return org;
}

/** Outcome of `ensureBootstrapKey`. */
export interface BootstrapResult {
  /** The bootstrap key if known (created now, given, or read back from the key file). */
  key: string;
  /** True when this call generated a key (the caller prints it once). */
  generated: boolean;
  keyFile: string;
}

/**
 * On first start (no active key at all): creates org `default` with `bootstrapKey` if given,
 * otherwise with a generated key that is written to `<dataDir>/bootstrap-key` (mode 0600).
 */
export async function ensureBootstrapKey(
  store: Store,
  dataDir: string,
  bootstrapKey?: string,
): Promise<BootstrapResult> {
  const keyFile = path.join(dataDir, 'bootstrap-key');
  if ((await store.countActiveApiKeys()) === 0) {
    const org = (await store.findOrg('default')) ?? (await createOrg(store, 'default'));
    const given = bootstrapKey !== undefined && bootstrapKey !== '';
    const { key } = await createApiKey(store, org.id, {
      name: 'bootstrap',
      ...(given ? { key: bootstrapKey } : {}),
    });
    if (!given) {
      await fs.writeFile(keyFile, key + '\n', { mode: 0o600 });
      await fs.chmod(keyFile, 0o600);
    }
    return { key, generated: !given, keyFile };
  }
  if (bootstrapKey) return { key: bootstrapKey, generated: false, keyFile };
  const saved = await fs.readFile(keyFile, 'utf8').catch(() => '');
  return { key: saved.trim(), generated: false, keyFile };
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
