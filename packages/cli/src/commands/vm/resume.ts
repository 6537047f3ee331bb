// fastvm vm resume <vm>
import type { Command } from 'commander';
import { newCommand, onRun, withRef, type CommandBase, type RunF } from '../../cmdutil.js';
import type { Factory } from '../../factory.js';
import { printVm } from '../../views.js';

export interface VmResumeOptions extends CommandBase {
  vm: string;
}

export function newVmResumeCommand(f: Factory, runF: RunF<VmResumeOptions> = vmResumeRun): Command {
  const cmd = newCommand(f, 'resume <vm>', 'Resume a paused VM');
  return onRun(f, cmd, (c, base) => runF({ ...base, vm: c.args[0]! }));
}

export async function vmResumeRun(o: VmResumeOptions): Promise<number> {
  const client = await o.client();
  printVm(o, await withRef(o, 'vm', o.vm, (id) => client.resume(id)));
  return 0;
}
