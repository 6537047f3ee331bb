// fastvm firewall set <vm> --mode open|restricted [-r RULE]...
import type { Command } from 'commander';
import type { FirewallPolicy } from 'fastvm';
import {
  collect,
  newCommand,
  onRun,
  policyFrom,
  withRef,
  type CommandBase,
  type RunF,
} from '../../cmdutil.js';
import type { Factory } from '../../factory.js';
import { printFirewall } from '../../views.js';

export interface FirewallSetOptions extends CommandBase {
  vm: string;
  policy: FirewallPolicy;
}

export function newFirewallSetCommand(
  f: Factory,
  runF: RunF<FirewallSetOptions> = firewallSetRun,
): Command {
  const cmd = newCommand(f, 'set <vm>', "Replace a VM's firewall policy")
    .requiredOption('--mode <mode>', 'open (allow all inbound) or restricted (only the rules)')
    .option('-r, --rule <rule>', 'ingress rule PROTO:PORT[-END][@CIDR,...] (repeatable)', collect);
  return onRun(f, cmd, (c, base) => {
    const o = c.opts<{ mode: string; rule?: string[] }>();
    return runF({ ...base, vm: c.args[0]!, policy: policyFrom(o.mode, o.rule ?? [])! });
  });
}

export async function firewallSetRun(o: FirewallSetOptions): Promise<number> {
  const client = await o.client();
  printFirewall(o, await withRef(o, 'vm', o.vm, (id) => client.setFirewall(id, o.policy)));
  return 0;
}
