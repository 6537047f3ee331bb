// fastvm snapshot restore <snapshot>: restore a new VM and wait until it is running.
import type { Command } from 'commander';
import type { FirewallPolicy } from 'fastvm';
import {
  collect,
  newCommand,
  onRun,
  policyFrom,
  positiveInt,
  withRef,
  type CommandBase,
  type RunF,
} from '../../cmdutil.js';
import type { Factory } from '../../factory.js';
import { printVm, spinner } from '../../views.js';

export interface SnapshotRestoreOptions extends CommandBase {
  snapshot: string;
  name: string | undefined;
  /** Overrides the snapshot's firewall policy when given. */
  firewall: FirewallPolicy | undefined;
  /** Seconds to wait for `running` (the SDK's default when undefined). */
  waitSec: number | undefined;
}

export function newSnapshotRestoreCommand(
  f: Factory,
  runF: RunF<SnapshotRestoreOptions> = snapshotRestoreRun,
): Command {
  const cmd = newCommand(
    f,
    'restore <snapshot>',
    'Restore a new VM from a snapshot and wait until it is running',
  )
    .option('-n, --name <name>', 'VM name (generated when omitted)')
    .option('--mode <mode>', "override the snapshot's firewall mode: open or restricted")
    .option(
      '-r, --rule <rule>',
      'firewall ingress rule PROTO:PORT[-END][@CIDR,...] (repeatable)',
      collect,
    )
    .option('--timeout <sec>', 'seconds to wait for the VM to be running (default 300)');
  return onRun(f, cmd, (c, base) => {
    const o = c.opts<{ name?: string; mode?: string; rule?: string[]; timeout?: string }>();
    return runF({
      ...base,
      snapshot: c.args[0]!,
      name: o.name,
      waitSec: positiveInt(o.timeout, '--timeout'),
      firewall: policyFrom(o.mode, o.rule),
    });
  });
}

export async function snapshotRestoreRun(o: SnapshotRestoreOptions): Promise<number> {
  const client = await o.client();
  const spin = spinner(o).start(`Restoring ${o.snapshot}…`);
  try {
    const vm = await withRef(o, 'snapshot', o.snapshot, (id) =>
      client.restore(id, {
        name: o.name,
        firewall: o.firewall,
        timeout: o.waitSec === undefined ? undefined : o.waitSec * 1000,
      }),
    );
    spin.stop(`✓ VM ${vm.name} is running (${spin.elapsed})`);
    printVm(o, vm);
  } finally {
    spin.stop();
  }
  return 0;
}
