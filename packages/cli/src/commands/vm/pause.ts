// fastvm vm pause <vm>
import type { Command } from 'commander';
import { newCommand, onRun, withRef, type CommandBase, type RunF } from '../../cmdutil.js';
import type { Factory } from '../../factory.js';
import { printVm } from '../../views.js';

export interface VmPauseOptions extends CommandBase {
  vm: string;
}

export function newVmPauseCommand(f: Factory, runF: RunF<VmPauseOptions> = vmPauseRun): Command {
  const cmd = newCommand(
    f,
    'pause <vm>',
    'Pause a VM (memory and processes kept; vCPU quota released)',
  );
  return onRun(f, cmd, (c, base) => runF({ ...base, vm: c.args[0]! }));
}

export async function vmPauseRun(o: VmPauseOptions): Promise<number> {
  const client = await o.client();
  printVm(o, await withRef(o, 'vm', o.vm, (id) => client.pause(id)));
  return 0;
}
