// fastvm vm get <vm>
import type { Command } from 'commander';
import { newCommand, onRun, withRef, type CommandBase, type RunF } from '../../cmdutil.js';
import type { Factory } from '../../factory.js';
import { printVm } from '../../views.js';

export interface VmGetOptions extends CommandBase {
  /** Id, name or unique id prefix. */
  vm: string;
}

export function newVmGetCommand(f: Factory, runF: RunF<VmGetOptions> = vmGetRun): Command {
  const cmd = newCommand(f, 'get <vm>', 'Show a VM (by id or name)');
  return onRun(f, cmd, (c, base) => runF({ ...base, vm: c.args[0]! }));
}

export async function vmGetRun(o: VmGetOptions): Promise<number> {
  const client = await o.client();
  printVm(o, await withRef(o, 'vm', o.vm, (id) => client.get(id)));
  return 0;
}
