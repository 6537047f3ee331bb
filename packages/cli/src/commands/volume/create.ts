// fastvm volume create <name> --size <GiB> [--read-only]
import type { Command } from 'commander';
import { newCommand, onRun, positiveInt, type CommandBase, type RunF } from '../../cmdutil.js';
import { CliError } from '../../errors.js';
import type { Factory } from '../../factory.js';
import { json } from '../../output.js';
import { volumeTable, volumeToJson } from './list.js';

export interface VolumeCreateOptions extends CommandBase {
  name: string;
  sizeGib: number;
  accessMode: 'rw' | 'ro';
}

export function newVolumeCreateCommand(
  f: Factory,
  runF: RunF<VolumeCreateOptions> = volumeCreateRun,
): Command {
  const cmd = newCommand(f, 'create <name>', 'Create a volume (an ext4 disk)')
    .option('-s, --size <GiB>', 'size in GiB', '10')
    .option('--read-only', 'access mode ro: it can only be attached read-only');
  return onRun(f, cmd, (c, base) => {
    const o = c.opts<{ size: string; readOnly?: boolean }>();
    const sizeGib = positiveInt(o.size, '--size');
    if (sizeGib === undefined) throw new CliError('--size must be a positive integer');
    return runF({ ...base, name: c.args[0]!, sizeGib, accessMode: o.readOnly ? 'ro' : 'rw' });
  });
}

export async function volumeCreateRun(o: VolumeCreateOptions): Promise<number> {
  const client = await o.client();
  const v = await client.createVolume(o.name, o.sizeGib, { accessMode: o.accessMode });
  o.io.stdout.write(o.json ? json(volumeToJson(v)) : volumeTable([v]));
  return 0;
}
