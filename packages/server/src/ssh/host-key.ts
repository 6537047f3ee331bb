/**
 * The SSH gateway's host key: an ed25519 key generated on first start and kept in the data dir
 * (`ssh_host_ed25519_key`, OpenSSH format, mode 0600), so the fingerprint in clients'
 * known_hosts stays valid across restarts. Two servers starting at once on one data dir agree
 * on one key: the file is created by a hard link, which fails if it exists.
 * @module
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import ssh2 from 'ssh2';
import { sshFingerprint } from '../services/ssh-keys.js';

export const HOST_KEY_FILE = 'ssh_host_ed25519_key';

export interface HostKey {
  /** The private key in OpenSSH format (what ssh2's `hostKeys` takes). */
  privateKey: Buffer;
  /** `ssh-ed25519 <base64>` (no comment). */
  publicKey: string;
  /** `SHA256:…`, as `ssh-keygen -lf` prints it. */
  fingerprint: string;
  /** Whether this call generated it. */
  created: boolean;
}

/** Loads `<dataDir>/ssh_host_ed25519_key`, generating it first if there is none. */
export async function loadOrCreateHostKey(dataDir: string): Promise<HostKey> {
  const file = path.join(dataDir, HOST_KEY_FILE);
  let created = false;
  let text = await readIfExists(file);
  if (text === undefined) {
    const pair = generateHostKey();
    const tmp = `${file}.${process.pid}.${Date.now()}.tmp`;
    await fs.writeFile(tmp, pair.private, { mode: 0o600, flag: 'wx' });
    try {
      await fs.link(tmp, file);
      created = true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    } finally {
      await fs.rm(tmp, { force: true });
    }
    text = await fs.readFile(file, 'utf8');
  }
  const parsed = ssh2.utils.parseKey(text);
  if (parsed instanceof Error || parsed.type !== 'ssh-ed25519' || !parsed.isPrivateKey()) {
    throw new Error(
      `${file} is not an unencrypted ed25519 private key${parsed instanceof Error ? `: ${parsed.message}` : ''}`,
    );
  }
  // Keep it private even if someone loosened the mode.
  await fs.chmod(file, 0o600);
  const blob = parsed.getPublicSSH();
  return {
    privateKey: Buffer.from(text, 'utf8'),
    publicKey: `${parsed.type} ${blob.toString('base64')}`,
    fingerprint: sshFingerprint(blob),
    created,
  };
}

/**
 * A new ed25519 key in OpenSSH format. ssh2's generator writes a key its own parser refuses
 * ("Malformed OpenSSH private key") about once in 500 (measured: 6 of 3,000), which made a
 * first start fail now and then: such a key is thrown away and another one made.
 */
function generateHostKey(): { private: string } {
  for (let i = 0; ; i++) {
    const pair = ssh2.utils.generateKeyPairSync('ed25519');
    if (!(ssh2.utils.parseKey(pair.private) instanceof Error) || i >= 20) return pair;
  }
}

async function readIfExists(file: string): Promise<string | undefined> {
  try {
    return await fs.readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
}
