// fastvm firewall get <vm>
import type { Command } from 'commander';
import { newCommand, onRun, withRef, type CommandBase, type RunF } from '../../cmdutil.js';
import type { Factory } from '../../factory.js';
import { printFirewall } from '../../views.js';

export interface FirewallGetOptions extends CommandBase {
  vm: string;
}

export function newFirewallGetCommand(
  f: Factory,
  runF: RunF<FirewallGetOptions> = firewallGetRun,
): Command {
  const cmd = newCommand(f, 'get <vm>', "Show a VM's firewall policy");
  return onRun(f, cmd, (c, base) => runF({ ...base, vm: c.args[0]! }));
}

export async function firewallGetRun(o: FirewallGetOptions): Promise<number> {
  const client = await o.client();
  printFirewall(o, await withRef(o, 'vm', o.vm, (id) => client.get(id)));
  return 0;
}
