/**
 * This host's id in a cluster when `FASTVM_HOST_ID` is not set: generated once and kept in
 * `<dataDir>/host-id`, so a restart is the same host (and reconciles its VMs) and a new data
 * dir is a new host.
 * @module
 */
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';

/** Host ids: what a hostname label allows, 1–63 characters. */
export const HOST_ID_RE = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

/** Reads `<dataDir>/host-id`, creating it (`h-<12 hex>`) on first use. */
export async function loadHostId(dataDir: string): Promise<string> {
  const file = path.join(dataDir, 'host-id');
  try {
    const id = (await fs.readFile(file, 'utf8')).trim();
    if (HOST_ID_RE.test(id)) return id;
    throw new Error(`${file} does not hold a valid host id: ${JSON.stringify(id)}`);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  const id = `h-${randomBytes(6).toString('hex')}`;
  await fs.writeFile(file, `${id}\n`, { mode: 0o600, flag: 'wx' }).catch(async (err: unknown) => {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
  });
  return (await fs.readFile(file, 'utf8')).trim();
}
