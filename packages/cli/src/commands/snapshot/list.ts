// fastvm snapshot list (ls)
import type { Command } from 'commander';
import { newCommand, onRun, type CommandBase, type RunF } from '../../cmdutil.js';
import type { Factory } from '../../factory.js';
import { printSnapshots } from '../../views.js';

export type SnapshotListOptions = CommandBase;

export function newSnapshotListCommand(
  f: Factory,
  runF: RunF<SnapshotListOptions> = snapshotListRun,
): Command {
  const cmd = newCommand(f, 'list', 'List snapshots').alias('ls');
  return onRun(f, cmd, (_c, base) => runF(base));
}

export async function snapshotListRun(o: SnapshotListOptions): Promise<number> {
  const client = await o.client();
  printSnapshots(o, await client.listSnapshots());
  return 0;
}
