// fastvm volume rm <volume>... ; fastvm volume resize <volume> <GiB>
import type { Command } from 'commander';
import { newCommand, onRun, positiveInt, type CommandBase, type RunF } from '../../cmdutil.js';
import { CliError } from '../../errors.js';
import type { Factory } from '../../factory.js';
import { json } from '../../output.js';
import { volumeTable, volumeToJson } from './list.js';

export interface VolumeRmOptions extends CommandBase {
  volumes: string[];
}

export function newVolumeRmCommand(f: Factory, runF: RunF<VolumeRmOptions> = volumeRmRun): Command {
  const cmd = newCommand(f, 'rm <volume...>', 'Delete detached volumes and their data').alias(
    'delete',
  );
  return onRun(f, cmd, (c, base) => runF({ ...base, volumes: c.args }));
}

export async function volumeRmRun(o: VolumeRmOptions): Promise<number> {
  const client = await o.client();
  for (const v of o.volumes) {
    await client.removeVolume(v);
    if (!o.json) o.io.stdout.write(`Deleted volume ${v}\n`);
  }
  if (o.json) o.io.stdout.write(json(o.volumes.map((id) => ({ id, deleted: true }))));
  return 0;
}

export interface VolumeResizeOptions extends CommandBase {
  volume: string;
  sizeGib: number;
}

export function newVolumeResizeCommand(
  f: Factory,
  runF: RunF<VolumeResizeOptions> = volumeResizeRun,
): Command {
  const cmd = newCommand(
    f,
    'resize <volume> <GiB>',
    'Grow a volume (online when attached read-write), or shrink a detached one that fits',
  );
  return onRun(f, cmd, (c, base) => {
    const sizeGib = positiveInt(c.args[1], 'GiB');
    if (sizeGib === undefined) throw new CliError('the new size must be a positive integer');
    return runF({ ...base, volume: c.args[0]!, sizeGib });
  });
}

export async function volumeResizeRun(o: VolumeResizeOptions): Promise<number> {
  const client = await o.client();
  const v = await client.resizeVolume(o.volume, o.sizeGib);
  o.io.stdout.write(o.json ? json(volumeToJson(v)) : volumeTable([v]));
  return 0;
}
