/**
 * SSH public keys of an org (`/v1/me/ssh-keys`, contract §4.11): parsing OpenSSH public keys,
 * their fingerprints, and the per-org list. The org is the "user" of the contract: each org's
 * keys are its own, and one key (fingerprint) belongs to at most one org.
 * @module
 */
import { createHash, randomUUID } from 'node:crypto';
import {
  InvalidInputError,
  NotFoundError,
  QuotaExceededError,
  StateConflictError,
  nowIso,
  type SshKeyRecord,
} from '../domain/index.js';
import type { Store } from '../store/index.js';

/** Most keys one org may hold. */
export const MAX_SSH_KEYS = 32;

/** Longest accepted `publicKey` text (an 8192-bit RSA key is about 1.4 KB). */
const MAX_PUBLIC_KEY_CHARS = 16 * 1024;

/** ECDSA curves: identifier in the blob → uncompressed point length. */
const ECDSA_POINT_BYTES: Readonly<Record<string, number>> = {
  nistp256: 65,
  nistp384: 97,
  nistp521: 133,
};

/** Accepted key types (contract §4.11). */
export const SSH_KEY_TYPES: readonly string[] = [
  'ssh-ed25519',
  'ssh-rsa',
  'ecdsa-sha2-nistp256',
  'ecdsa-sha2-nistp384',
  'ecdsa-sha2-nistp521',
  'sk-ssh-ed25519@openssh.com',
  'sk-ecdsa-sha2-nistp256@openssh.com',
];

/** A parsed public key. */
export interface ParsedSshKey {
  type: string;
  /** The decoded key blob. */
  blob: Buffer;
  /** `<type> <base64>` (no comment). */
  publicKey: string;
  /** `SHA256:<unpadded base64 of sha256(blob)>`, as `ssh-keygen -l` prints it. */
  fingerprint: string;
}

/** OpenSSH's SHA256 fingerprint of a key blob. */
export function sshFingerprint(blob: Buffer): string {
  return 'SHA256:' + createHash('sha256').update(blob).digest('base64').replace(/=+$/, '');
}

/** Reads the SSH wire encoding (RFC 4251 `string`s) of a key blob. */
class BlobReader {
  private pos = 0;
  constructor(private readonly buf: Buffer) {}

  bytes(): Buffer {
    if (this.pos + 4 > this.buf.length) throw new Error('truncated key blob');
    const len = this.buf.readUInt32BE(this.pos);
    this.pos += 4;
    if (len > this.buf.length - this.pos) throw new Error('truncated key blob');
    const out = this.buf.subarray(this.pos, this.pos + len);
    this.pos += len;
    return out;
  }

  text(): string {
    return this.bytes().toString('latin1');
  }

  end(): void {
    if (this.pos !== this.buf.length) throw new Error('trailing bytes after the key');
  }
}

/** Checks the fields after the type name; throws with a short reason. */
function checkKeyBody(type: string, r: BlobReader): void {
  const ecdsaCurve = /^(?:sk-)?ecdsa-sha2-(nistp\d+)(?:@openssh\.com)?$/.exec(type)?.[1];
  if (type === 'ssh-ed25519' || type === 'sk-ssh-ed25519@openssh.com') {
    if (r.bytes().length !== 32) throw new Error('an ed25519 key is 32 bytes');
  } else if (type === 'ssh-rsa') {
    const e = r.bytes();
    const n = r.bytes();
    if (e.length === 0 || n.length === 0 || (e[0]! & 0x80) !== 0 || (n[0]! & 0x80) !== 0) {
      throw new Error('bad RSA key');
    }
    const bits = (n.length - (n[0] === 0 ? 1 : 0)) * 8;
    if (bits < 1024) throw new Error('RSA keys must have at least 1024 bits');
  } else if (ecdsaCurve !== undefined) {
    const curve = r.text();
    if (curve !== ecdsaCurve) throw new Error(`curve ${curve} does not match the key type`);
    const point = r.bytes();
    if (point.length !== ECDSA_POINT_BYTES[curve] || point[0] !== 0x04) {
      throw new Error('bad ECDSA point');
    }
  } else {
    throw new Error('unsupported key type');
  }
  if (type.startsWith('sk-')) r.text(); // application (e.g. "ssh:")
  r.end();
}

/**
 * Parses an OpenSSH public key line (`<type> <base64> [comment]`). Throws `InvalidInputError`
 * (field `publicKey`) for anything else: newlines, unknown types, bad base64, a blob whose
 * embedded type differs or whose fields do not fit the type.
 */
export function parseSshPublicKey(text: string): ParsedSshKey {
  const bad = (why: string): InvalidInputError =>
    new InvalidInputError(`invalid SSH public key: ${why}`, 'publicKey');
  if (text.length > MAX_PUBLIC_KEY_CHARS) throw bad('too long');
  if (/[\r\n\0]/.test(text)) throw bad('newlines are not allowed (one key per request)');
  const parts = text.trim().split(/[ \t]+/);
  const [type, b64] = parts;
  if (!type || !b64) throw bad('expected "<type> <base64> [comment]"');
  if (!SSH_KEY_TYPES.includes(type)) {
    throw bad(`unsupported key type ${JSON.stringify(type.slice(0, 64))}`);
  }
  if (!/^[A-Za-z0-9+/]+={0,2}$/.test(b64) || b64.length % 4 !== 0) throw bad('bad base64');
  const blob = Buffer.from(b64, 'base64');
  if (blob.toString('base64') !== b64) throw bad('bad base64');
  const r = new BlobReader(blob);
  try {
    const embedded = r.text();
    if (embedded !== type) throw new Error(`the key data is a ${embedded.slice(0, 64)} key`);
    checkKeyBody(type, r);
  } catch (err) {
    throw bad(`${type}: ${(err as Error).message}`);
  }
  return { type, blob, publicKey: `${type} ${b64}`, fingerprint: sshFingerprint(blob) };
}

/** The org's SSH keys. */
export class SshKeyService {
  constructor(private readonly store: Store) {}

  list(orgId: string): Promise<SshKeyRecord[]> {
    return this.store.listSshKeys(orgId);
  }

  /** Adds a key: 409 if it is stored already (for any org), quota error past `MAX_SSH_KEYS`. */
  async add(orgId: string, input: { publicKey: string; name?: string }): Promise<SshKeyRecord> {
    const parsed = parseSshPublicKey(input.publicKey);
    const record: SshKeyRecord = {
      id: randomUUID(),
      orgId,
      fingerprint: parsed.fingerprint,
      publicKey: parsed.publicKey,
      name: input.name ?? null,
      createdAt: nowIso(),
    };
    const outcome = await this.store.insertSshKey(record, MAX_SSH_KEYS);
    if (outcome === 'duplicate') {
      throw new StateConflictError(`an SSH key with fingerprint ${parsed.fingerprint} exists`, {
        fingerprint: parsed.fingerprint,
      });
    }
    if (outcome === 'limit') {
      const usage = (await this.store.listSshKeys(orgId)).length;
      throw new QuotaExceededError(
        'sshKeyCount',
        MAX_SSH_KEYS,
        usage,
        1,
        `at most ${MAX_SSH_KEYS} SSH keys per user; delete one first`,
      );
    }
    return record;
  }

  /** Deletes the org's key with this fingerprint (404 if the org has none). */
  async remove(orgId: string, fingerprint: string): Promise<SshKeyRecord> {
    const removed = await this.store.deleteSshKey(orgId, fingerprint);
    if (!removed) throw new NotFoundError('SSH key', { field: 'fingerprint' });
    return removed;
  }
}
