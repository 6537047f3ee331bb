// fastvm vm list (ls)
import type { Command } from 'commander';
import { newCommand, onRun, type CommandBase, type RunF } from '../../cmdutil.js';
import type { Factory } from '../../factory.js';
import { printVms } from '../../views.js';

export type VmListOptions = CommandBase;

export function newVmListCommand(f: Factory, runF: RunF<VmListOptions> = vmListRun): Command {
  const cmd = newCommand(f, 'list', 'List VMs').alias('ls');
  return onRun(f, cmd, (_c, base) => runF(base));
}

export async function vmListRun(o: VmListOptions): Promise<number> {
  const client = await o.client();
  printVms(o, await client.list());
  return 0;
}
