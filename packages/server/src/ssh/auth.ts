/**
 * Who may open which VM through the SSH gateway. The SSH user name names the VM (its id, the id
 * without hyphens, or its name); the public key names the org (each stored key belongs to exactly
 * one org, `/v1/me/ssh-keys`). A login is accepted when the key is stored, the client proved it
 * holds the private key (the signature over the session id verifies with the *stored* key), and
 * the VM exists in that key's org. A key query without a signature is answered from the key
 * alone. Every refusal looks the same to the client ("Permission
 * denied"), so a key of one org learns nothing about another org's VMs, and an SSH client with
 * several keys goes on to try the next one.
 * @module
 */
import ssh2, { type ParsedKey } from 'ssh2';
import { AmbiguousNameError, NotFoundError } from '../domain/index.js';
import { resolveVm } from '../services/resolve.js';
import { sshFingerprint } from '../services/ssh-keys.js';
import type { Store } from '../store/index.js';

/** What the client offered: its public key, and for the real attempt the signature. */
export interface PublicKeyOffer {
  /** SSH user name: the VM's id, hex id or name. */
  username: string;
  /** Key algorithm (`ssh-ed25519`, `ssh-rsa` also for rsa-sha2-*, …) and key blob. */
  algo: string;
  data: Buffer;
  /** Absent when the client only asks whether the key would do. */
  signature?: Buffer | undefined;
  /** The signed data (session id + request). */
  blob?: Buffer | undefined;
  hashAlgo?: string | undefined;
}

/** An accepted login: the org, its VM, and the key used. */
export interface SshLogin {
  orgId: string;
  /** The VM the user name resolved to, or undefined when the name is ambiguous. */
  vmId: string | undefined;
  /** The user name as given (for messages). */
  vmRef: string;
  /** Why no VM is set: the name matches several VMs. */
  problem?: string;
  fingerprint: string;
  keyName: string | null;
}

export type AuthDecision =
  | { ok: true; login: SshLogin }
  /** A query without signature for a stored key: the client may go on and sign. */
  | { ok: true; login: undefined; fingerprint: string }
  /** `reason` is for the log only; the client just gets a refusal. */
  | { ok: false; reason: string; fingerprint?: string; orgId?: string };

const HEX_ID = /^[0-9a-f]{32}$/i;

/** The VM reference in an SSH user name: a hyphen-less hex id becomes the UUID form. */
export function vmRefFromUsername(username: string): string[] {
  const refs = [username];
  if (HEX_ID.test(username)) {
    const h = username.toLowerCase();
    refs.unshift(
      `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`,
    );
  }
  return refs;
}

/** Checks public-key logins against the stored keys. */
export class SshAuthenticator {
  /** Parsed stored keys by fingerprint (parsing RSA keys is not free). */
  readonly #parsed = new Map<string, ParsedKey>();

  constructor(private readonly store: Store) {}

  async check(offer: PublicKeyOffer): Promise<AuthDecision> {
    const fingerprint = sshFingerprint(offer.data);
    const record = await this.store.findSshKey(fingerprint);
    if (!record) return { ok: false, reason: 'unknown key', fingerprint };
    const stored = this.#parse(record.publicKey);
    if (!stored) return { ok: false, reason: 'unsupported key type', fingerprint };
    if (stored.type !== offer.algo || !stored.getPublicSSH().equals(offer.data)) {
      return { ok: false, reason: 'key algorithm or data mismatch', fingerprint };
    }
    const refused = (reason: string): AuthDecision => ({
      ok: false,
      reason,
      fingerprint,
      orgId: record.orgId,
    });
    // The VM is looked up only once the client proved it holds the key: knowing a public key
    // is not enough to learn which names exist in its org.
    if (offer.signature === undefined) return { ok: true, login: undefined, fingerprint };
    if (!offer.blob) return refused('signature without signed data');
    let valid: unknown;
    try {
      valid = stored.verify(offer.blob, offer.signature, offer.hashAlgo);
    } catch {
      valid = false;
    }
    if (valid !== true) return refused('bad signature');
    const base = { orgId: record.orgId, vmRef: offer.username, fingerprint, keyName: record.name };
    for (const ref of vmRefFromUsername(offer.username)) {
      try {
        const vm = await resolveVm(this.store, record.orgId, ref);
        return { ok: true, login: { ...base, vmId: vm.id } };
      } catch (err) {
        if (err instanceof AmbiguousNameError) {
          return { ok: true, login: { ...base, vmId: undefined, problem: err.message } };
        }
        if (!(err instanceof NotFoundError)) throw err;
      }
    }
    return refused("no such VM in the key owner's org");
  }

  #parse(publicKey: string): ParsedKey | undefined {
    let key = this.#parsed.get(publicKey);
    if (!key) {
      const parsed = ssh2.utils.parseKey(publicKey);
      if (parsed instanceof Error) return undefined;
      key = Array.isArray(parsed) ? parsed[0] : parsed;
      if (!key) return undefined;
      if (this.#parsed.size > 1024) this.#parsed.clear();
      this.#parsed.set(publicKey, key);
    }
    return key;
  }
}
