// fastvm vm rm <vm...> [-y]
import type { Command } from 'commander';
import type { VM } from 'fastvm';
import {
  newCommand,
  onRun,
  removeAll,
  withRef,
  type CommandBase,
  type RunF,
} from '../../cmdutil.js';
import type { Factory } from '../../factory.js';

export interface VmRmOptions extends CommandBase {
  vms: string[];
  /** `-y`: do not ask. */
  yes: boolean;
}

export function newVmRmCommand(f: Factory, runF: RunF<VmRmOptions> = vmRmRun): Command {
  const cmd = newCommand(f, 'rm <vm...>', 'Delete one or more VMs').option(
    '-y, --yes',
    'do not ask for confirmation',
  );
  return onRun(f, cmd, (c, base) =>
    runF({
      ...base,
      vms: c.processedArgs[0] as string[],
      yes: c.opts<{ yes?: boolean }>().yes === true,
    }),
  );
}

export async function vmRmRun(o: VmRmOptions): Promise<number> {
  const client = await o.client();
  const vms: VM[] = [];
  for (const ref of o.vms) vms.push(await withRef(o, 'vm', ref, (id) => client.get(id)));
  await removeAll(o, vms, { one: 'VM', many: 'VMs' }, o.yes, (id) => client.remove(id));
  return 0;
}
