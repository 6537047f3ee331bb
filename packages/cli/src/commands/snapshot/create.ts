// fastvm snapshot create <vm>: snapshot a running VM and wait until the snapshot is ready.
import type { Command } from 'commander';
import {
  newCommand,
  onRun,
  positiveInt,
  withRef,
  type CommandBase,
  type RunF,
} from '../../cmdutil.js';
import type { Factory } from '../../factory.js';
import { printSnapshot, spinner } from '../../views.js';

export interface SnapshotCreateOptions extends CommandBase {
  vm: string;
  name: string | undefined;
  /** Seconds to wait for `ready` (the SDK's default when undefined). */
  waitSec: number | undefined;
}

export function newSnapshotCreateCommand(
  f: Factory,
  runF: RunF<SnapshotCreateOptions> = snapshotCreateRun,
): Command {
  const cmd = newCommand(
    f,
    'create <vm>',
    'Snapshot a running VM and wait until the snapshot is ready',
  )
    .option('-n, --name <name>', 'snapshot name (generated when omitted)')
    .option('--timeout <sec>', 'seconds to wait for the snapshot to be ready (default 300)');
  return onRun(f, cmd, (c, base) => {
    const o = c.opts<{ name?: string; timeout?: string }>();
    return runF({
      ...base,
      vm: c.args[0]!,
      name: o.name,
      waitSec: positiveInt(o.timeout, '--timeout'),
    });
  });
}

export async function snapshotCreateRun(o: SnapshotCreateOptions): Promise<number> {
  const client = await o.client();
  const spin = spinner(o).start(`Snapshotting ${o.vm}…`);
  try {
    const snap = await withRef(o, 'vm', o.vm, (id) =>
      client.snapshot(id, {
        name: o.name,
        timeout: o.waitSec === undefined ? undefined : o.waitSec * 1000,
      }),
    );
    spin.stop(`✓ snapshot ${snap.name} is ready (${spin.elapsed})`);
    printSnapshot(o, snap);
  } finally {
    spin.stop();
  }
  return 0;
}
