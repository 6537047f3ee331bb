// fastvm snapshot rm <snapshot...> [-y]
import type { Command } from 'commander';
import type { Snapshot } from 'fastvm';
import {
  newCommand,
  onRun,
  removeAll,
  withRef,
  type CommandBase,
  type RunF,
} from '../../cmdutil.js';
import type { Factory } from '../../factory.js';

export interface SnapshotRmOptions extends CommandBase {
  snapshots: string[];
  /** `-y`: do not ask. */
  yes: boolean;
}

export function newSnapshotRmCommand(
  f: Factory,
  runF: RunF<SnapshotRmOptions> = snapshotRmRun,
): Command {
  const cmd = newCommand(f, 'rm <snapshot...>', 'Delete one or more snapshots').option(
    '-y, --yes',
    'do not ask for confirmation',
  );
  return onRun(f, cmd, (c, base) =>
    runF({
      ...base,
      snapshots: c.processedArgs[0] as string[],
      yes: c.opts<{ yes?: boolean }>().yes === true,
    }),
  );
}

export async function snapshotRmRun(o: SnapshotRmOptions): Promise<number> {
  const client = await o.client();
  const snaps: Snapshot[] = [];
  for (const ref of o.snapshots)
    snaps.push(await withRef(o, 'snapshot', ref, (id) => client.getSnapshot(id)));
  await removeAll(o, snaps, { one: 'snapshot', many: 'snapshots' }, o.yes, (id) =>
    client.removeSnapshot(id),
  );
  return 0;
}
