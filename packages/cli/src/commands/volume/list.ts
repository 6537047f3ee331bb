// fastvm volume list (ls)
import type { Command } from 'commander';
import type { Volume } from 'fastvm';
import { newCommand, onRun, type CommandBase, type RunF } from '../../cmdutil.js';
import type { Factory } from '../../factory.js';
import { age, json, table } from '../../output.js';

export type VolumeListOptions = CommandBase;

export function newVolumeListCommand(
  f: Factory,
  runF: RunF<VolumeListOptions> = volumeListRun,
): Command {
  const cmd = newCommand(f, 'list', 'List volumes').alias('ls');
  return onRun(f, cmd, (_c, base) => runF(base));
}

/** The API's Volume object (contract §4.10). */
export function volumeToJson(v: Volume): Record<string, unknown> {
  return {
    id: v.id,
    name: v.name,
    orgId: v.orgId,
    sizeGiB: v.sizeGib,
    accessMode: v.accessMode,
    status: v.status,
    mountedCount: v.mountedCount,
    createdAt: v.createdAt,
    ...(v.usedGib !== null ? { usedGiB: v.usedGib } : {}),
  };
}

export function volumeTable(volumes: Volume[]): string {
  return table(
    ['ID', 'NAME', 'SIZE', 'USED', 'MODE', 'STATUS', 'MOUNTED', 'CREATED'],
    volumes.map((v) => [
      v.id,
      v.name,
      `${v.sizeGib} GiB`,
      v.usedGib === null ? '-' : `${v.usedGib} GiB`,
      v.accessMode,
      v.status,
      String(v.mountedCount),
      age(v.createdAt),
    ]),
  );
}

export async function volumeListRun(o: VolumeListOptions): Promise<number> {
  const client = await o.client();
  const volumes = await client.listVolumes();
  if (o.json) o.io.stdout.write(json(volumes.map(volumeToJson)));
  else if (volumes.length === 0)
    o.io.stdout.write('No volumes. Create one: fastvm volume create data --size 10\n');
  else o.io.stdout.write(volumeTable(volumes));
  return 0;
}
