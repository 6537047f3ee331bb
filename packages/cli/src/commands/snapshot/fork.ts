// fastvm snapshot fork <snapshot> -n N: restore N VMs from a snapshot in one call.
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
import { CliError } from '../../errors.js';
import type { Factory } from '../../factory.js';
import { printVms, spinner } from '../../views.js';

export interface SnapshotForkOptions extends CommandBase {
  snapshot: string;
  /** How many VMs (1–100). */
  count: number;
  /** VM names are `<prefix>-1` … `<prefix>-<count>` (the server's default: the snapshot name). */
  prefix: string | undefined;
  /** Every fork's firewall policy instead of the snapshot's, when given. */
  firewall: FirewallPolicy | undefined;
  /** Seconds to wait for all of them (the SDK's default when undefined). */
  waitSec: number | undefined;
}

export function newSnapshotForkCommand(
  f: Factory,
  runF: RunF<SnapshotForkOptions> = snapshotForkRun,
): Command {
  const cmd = newCommand(
    f,
    'fork <snapshot>',
    'Restore N VMs from a snapshot in one call; all or none are started',
  )
    .requiredOption('-n, --count <n>', 'how many VMs (1-100)')
    .option('-p, --prefix <prefix>', 'VM names are <prefix>-1..N (default: the snapshot name)')
    .option('--mode <mode>', "override the snapshot's firewall mode: open or restricted")
    .option(
      '-r, --rule <rule>',
      'firewall ingress rule PROTO:PORT[-END][@CIDR,...] (repeatable)',
      collect,
    )
    .option('--timeout <sec>', 'seconds to wait for all VMs to be running (default 300)');
  return onRun(f, cmd, (c, base) => {
    const o = c.opts<{
      count: string;
      prefix?: string;
      mode?: string;
      rule?: string[];
      timeout?: string;
    }>();
    const count = positiveInt(o.count, '--count')!;
    if (count > 100) throw new CliError(`--count must be at most 100, got '${o.count}'`);
    return runF({
      ...base,
      snapshot: c.args[0]!,
      count,
      prefix: o.prefix,
      firewall: policyFrom(o.mode, o.rule),
      waitSec: positiveInt(o.timeout, '--timeout'),
    });
  });
}

export async function snapshotForkRun(o: SnapshotForkOptions): Promise<number> {
  const client = await o.client();
  const spin = spinner(o).start(`Forking ${o.snapshot} ×${o.count}…`);
  try {
    const vms = await withRef(o, 'snapshot', o.snapshot, (id) =>
      client.fork(id, o.count, {
        namePrefix: o.prefix,
        firewall: o.firewall,
        timeout: o.waitSec === undefined ? undefined : o.waitSec * 1000,
      }),
    );
    spin.stop(`✓ ${vms.length} VM${vms.length === 1 ? '' : 's'} running (${spin.elapsed})`);
    printVms(o, vms);
  } finally {
    spin.stop();
  }
  return 0;
}
