// fastvm firewall patch <vm> [--mode M] [-r RULE]... [--clear-rules]
import type { Command } from 'commander';
import type { PatchFirewallPolicy } from 'fastvm';
import { collect, newCommand, onRun, withRef, type CommandBase, type RunF } from '../../cmdutil.js';
import { CliError } from '../../errors.js';
import type { Factory } from '../../factory.js';
import { parseRule } from '../../rules.js';
import { printFirewall } from '../../views.js';

export interface FirewallPatchOptions extends CommandBase {
  vm: string;
  /** Only the parts to change; `ingress: []` clears the rules. */
  patch: PatchFirewallPolicy;
}

export function newFirewallPatchCommand(
  f: Factory,
  runF: RunF<FirewallPatchOptions> = firewallPatchRun,
): Command {
  const cmd = newCommand(f, 'patch <vm>', "Change only the given parts of a VM's firewall policy")
    .option('--mode <mode>', 'new mode: open or restricted')
    .option('-r, --rule <rule>', 'replace the ingress rules with these (repeatable)', collect)
    .option('--clear-rules', 'remove all ingress rules');
  return onRun(f, cmd, (c, base) => {
    const o = c.opts<{ mode?: string; rule?: string[]; clearRules?: boolean }>();
    if (o.mode === undefined && o.rule === undefined && !o.clearRules) {
      throw new CliError('nothing to change: give --mode, -r/--rule or --clear-rules');
    }
    if (o.rule !== undefined && o.clearRules)
      throw new CliError('--rule and --clear-rules exclude each other');
    if (o.mode !== undefined && o.mode !== 'open' && o.mode !== 'restricted') {
      throw new CliError(`--mode must be 'open' or 'restricted', got '${o.mode}'`);
    }
    const patch: PatchFirewallPolicy = {};
    if (o.mode !== undefined) patch.mode = o.mode;
    if (o.rule !== undefined) patch.ingress = o.rule.map(parseRule);
    if (o.clearRules) patch.ingress = [];
    return runF({ ...base, vm: c.args[0]!, patch });
  });
}

export async function firewallPatchRun(o: FirewallPatchOptions): Promise<number> {
  const client = await o.client();
  printFirewall(o, await withRef(o, 'vm', o.vm, (id) => client.patchFirewall(id, o.patch)));
  return 0;
}
