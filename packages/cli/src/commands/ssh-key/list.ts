// fastvm ssh-key list (ls)
import type { Command } from 'commander';
import type { SshKey } from 'fastvm';
import { newCommand, onRun, type CommandBase, type RunF } from '../../cmdutil.js';
import type { Factory } from '../../factory.js';
import { age, json, table } from '../../output.js';

export type SshKeyListOptions = CommandBase;

export function newSshKeyListCommand(
  f: Factory,
  runF: RunF<SshKeyListOptions> = sshKeyListRun,
): Command {
  const cmd = newCommand(f, 'list', 'List SSH public keys').alias('ls');
  return onRun(f, cmd, (_c, base) => runF(base));
}

/** The API's SSHKey object (contract §4.11). */
export function sshKeyToJson(k: SshKey): Record<string, unknown> {
  return {
    fingerprint: k.fingerprint,
    publicKey: k.publicKey,
    createdAt: k.createdAt,
    ...(k.name !== null ? { name: k.name } : {}),
  };
}

export async function sshKeyListRun(o: SshKeyListOptions): Promise<number> {
  const client = await o.client();
  const keys = await client.listSshKeys();
  if (o.json) o.io.stdout.write(json(keys.map(sshKeyToJson)));
  else if (keys.length === 0)
    o.io.stdout.write('No SSH keys. Add one: fastvm ssh-key add ~/.ssh/id_ed25519.pub\n');
  else
    o.io.stdout.write(
      table(
        ['FINGERPRINT', 'NAME', 'TYPE', 'CREATED'],
        keys.map((k) => [
          k.fingerprint,
          k.name ?? '-',
          k.publicKey.split(' ')[0]!,
          age(k.createdAt),
        ]),
      ),
    );
  return 0;
}
