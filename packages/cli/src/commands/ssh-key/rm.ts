// fastvm ssh-key rm <fingerprint|name...>
import type { Command } from 'commander';
import { newCommand, onRun, type CommandBase, type RunF } from '../../cmdutil.js';
import { CliError } from '../../errors.js';
import type { Factory } from '../../factory.js';
import { json } from '../../output.js';

export interface SshKeyRmOptions extends CommandBase {
  /** Fingerprints (`SHA256:…`, as `ssh-key list` shows them) or key names. */
  keys: string[];
}

export function newSshKeyRmCommand(f: Factory, runF: RunF<SshKeyRmOptions> = sshKeyRmRun): Command {
  const cmd = newCommand(
    f,
    'rm <fingerprint...>',
    'Remove SSH public keys (by fingerprint or name)',
  );
  return onRun(f, cmd, (c, base) => runF({ ...base, keys: c.processedArgs[0] as string[] }));
}

export async function sshKeyRmRun(o: SshKeyRmOptions): Promise<number> {
  const client = await o.client();
  const fingerprints: string[] = [];
  const byName = o.keys.some((k) => !k.startsWith('SHA256:')) ? await client.listSshKeys() : [];
  for (const ref of o.keys) {
    if (ref.startsWith('SHA256:')) {
      fingerprints.push(ref);
      continue;
    }
    const named = byName.filter((k) => k.name === ref);
    if (named.length === 0) throw new CliError(`no SSH key with fingerprint or name '${ref}'`);
    if (named.length > 1) {
      throw new CliError(`${named.length} SSH keys are named '${ref}'; give the fingerprint`);
    }
    fingerprints.push(named[0]!.fingerprint);
  }
  const results: Array<{ id: string; deleted: boolean }> = [];
  for (const fp of fingerprints) {
    await client.removeSshKey(fp);
    results.push({ id: fp, deleted: true });
    if (!o.json) o.io.stdout.write(`Removed SSH key ${fp}\n`);
  }
  if (o.json) o.io.stdout.write(json(results.length === 1 ? results[0] : results));
  return 0;
}
