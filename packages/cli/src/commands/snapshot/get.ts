// fastvm snapshot get <snapshot>
import type { Command } from 'commander';
import { newCommand, onRun, withRef, type CommandBase, type RunF } from '../../cmdutil.js';
import type { Factory } from '../../factory.js';
import { printSnapshot } from '../../views.js';

export interface SnapshotGetOptions extends CommandBase {
  snapshot: string;
}

export function newSnapshotGetCommand(
  f: Factory,
  runF: RunF<SnapshotGetOptions> = snapshotGetRun,
): Command {
  const cmd = newCommand(f, 'get <snapshot>', 'Show a snapshot (by id or name)');
  return onRun(f, cmd, (c, base) => runF({ ...base, snapshot: c.args[0]! }));
}

export async function snapshotGetRun(o: SnapshotGetOptions): Promise<number> {
  const client = await o.client();
  printSnapshot(o, await withRef(o, 'snapshot', o.snapshot, (id) => client.getSnapshot(id)));
  return 0;
}
