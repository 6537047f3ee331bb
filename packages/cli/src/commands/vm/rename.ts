// fastvm vm rename <vm> <new-name>
import type { Command } from 'commander';
import { newCommand, onRun, withRef, type CommandBase, type RunF } from '../../cmdutil.js';
import type { Factory } from '../../factory.js';
import { printVm } from '../../views.js';

export interface VmRenameOptions extends CommandBase {
  vm: string;
  name: string;
}

export function newVmRenameCommand(f: Factory, runF: RunF<VmRenameOptions> = vmRenameRun): Command {
  const cmd = newCommand(f, 'rename <vm> <new-name>', 'Rename a VM');
  return onRun(f, cmd, (c, base) => runF({ ...base, vm: c.args[0]!, name: c.args[1]! }));
}

export async function vmRenameRun(o: VmRenameOptions): Promise<number> {
  const client = await o.client();
  printVm(o, await withRef(o, 'vm', o.vm, (id) => client.rename(id, o.name)));
  return 0;
}
