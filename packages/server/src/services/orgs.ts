/**
 * Orgs and API keys: creating orgs (each with a first key), keys (generated, hashed, revoked)
 * and the bootstrap key of the first start. The admin commands (`cli.ts`) and `startServer` go
 * through here; request authentication (`auth.ts`) looks keys up by `hashApiKey`.
 * Keys look like `fvm_<32 base64url chars>` and are stored only as SHA-256 hashes.
 * @module
 */
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import {
  InvalidInputError,
  NotFoundError,
  StateConflictError,
  nowIso,
  type ApiKeyRecord,
  type OrgRecord,
} from '../domain/index.js';
import type { Store } from '../store/index.js';

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

/** A new API key; `key` is the plaintext, shown once. */
export interface NewApiKey {
  org: OrgRecord;
  key: string;
  record: ApiKeyRecord;
}

/** Org and key administration (the `orgs` and `keys` admin commands). */
export class OrgService {
  constructor(private readonly store: Store) {}

  /** Creates an org and its first key (`default`); `StateConflictError` if the name is taken. */
  async create(name: string): Promise<NewApiKey> {
    if (name.trim() === '') throw new InvalidInputError('an org needs a name', 'name');
    if (await this.store.findOrg(name)) {
      throw new StateConflictError(`org ${JSON.stringify(name)} exists`);
    }
    const org = await createOrg(this.store, name);
    const { key, record } = await createApiKey(this.store, org.id, { name: 'default' });
    return { org, key, record };
  }

  /** Every org, oldest first. */
  list(): Promise<OrgRecord[]> {
    return this.store.listOrgs();
  }

  /** An org by id or name; `NotFoundError` otherwise. */
  async find(ref: string): Promise<OrgRecord> {
    const org = await this.store.findOrg(ref);
    if (!org) throw new NotFoundError('org', { message: `no org ${JSON.stringify(ref)}` });
    return org;
  }

  /** A new key for the org `orgRef` (id or name). */
  async createKey(orgRef: string, name = 'default'): Promise<NewApiKey> {
    const org = await this.find(orgRef);
    const { key, record } = await createApiKey(this.store, org.id, { name });
    return { org, key, record };
  }

  /** Keys of one org (id or name), or of every org. */
  async listKeys(orgRef?: string): Promise<ApiKeyRecord[]> {
    const orgId = orgRef === undefined ? undefined : (await this.find(orgRef)).id;
    return this.store.listApiKeys(orgId);
  }

  /** Revokes the active keys with this id or prefix; `NotFoundError` when there is none. */
  async revokeKey(idOrPrefix: string): Promise<number> {
    const n = await this.store.revokeApiKey(idOrPrefix, nowIso());
    if (n === 0) {
      throw new NotFoundError('key', { message: `no active key ${JSON.stringify(idOrPrefix)}` });
    }
    return n;
  }
}
