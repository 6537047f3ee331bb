// fastvm snapshot rename <snapshot> <new-name>
import type { Command } from 'commander';
import { newCommand, onRun, withRef, type CommandBase, type RunF } from '../../cmdutil.js';
import type { Factory } from '../../factory.js';
import { printSnapshot } from '../../views.js';

export interface SnapshotRenameOptions extends CommandBase {
  snapshot: string;
  name: string;
}

export function newSnapshotRenameCommand(
  f: Factory,
  runF: RunF<SnapshotRenameOptions> = snapshotRenameRun,
): Command {
  const cmd = newCommand(f, 'rename <snapshot> <new-name>', 'Rename a snapshot');
  return onRun(f, cmd, (c, base) => runF({ ...base, snapshot: c.args[0]!, name: c.args[1]! }));
}

export async function snapshotRenameRun(o: SnapshotRenameOptions): Promise<number> {
  const client = await o.client();
  printSnapshot(
    o,
    await withRef(o, 'snapshot', o.snapshot, (id) => client.renameSnapshot(id, o.name)),
  );
  return 0;
}
