// fastvm firewall get|set|patch
import type { Command } from 'commander';
import type { Context } from '../context.js';
import { CliError } from '../errors.js';
import { firewallToJson, formatRule, table } from '../output.js';
import { leaf, policyFrom } from './common.js';
import { collect, parseRule } from '../rules.js';
import type { FirewallPolicy, PatchFirewallPolicy, VM } from 'fastvm';

function printFirewall(ctx: Context, vm: VM): void {
  const f: FirewallPolicy | null = vm.firewall;
  if (ctx.json) {
    ctx.out(`${JSON.stringify(firewallToJson(f), null, 2)}\n`);
    return;
  }
  if (!f) {
    ctx.out(`VM ${vm.name}: no firewall policy (server default)\n`);
    return;
  }
  ctx.out(`MODE  ${f.mode}\n`);
  const rules = f.ingress ?? [];
  if (rules.length === 0) {
    ctx.out(
      f.mode === 'open'
        ? 'All inbound traffic is allowed.\n'
        : 'No ingress rules: inbound traffic is blocked.\n',
    );
    return;
  }
  ctx.out('\n');
  ctx.out(
    table(
      ['RULE', 'PROTOCOL', 'PORTS', 'SOURCES', 'DESCRIPTION'],
      rules.map((r) => [
        formatRule(r),
        r.protocol,
        r.portEnd !== undefined && r.portEnd !== r.portStart
          ? `${r.portStart}-${r.portEnd}`
          : String(r.portStart),
        r.sourceCidrs && r.sourceCidrs.length > 0 ? r.sourceCidrs.join(', ') : 'any',
        r.description ?? '',
      ]),
    ),
  );
}

/** Registers the `firewall` subcommands on `group`. */
export function firewallCommands(group: Command, ctx: Context, done: (code: number) => void): void {
  group.description("Show and change a VM's public IPv6 ingress firewall");

  leaf(group, 'get <vm>', "Show a VM's firewall policy").action(async (ref: string) => {
    printFirewall(ctx, await ctx.withRef('vm', ref, (id) => ctx.client().get(id)));
    done(0);
  });

  leaf(group, 'set <vm>', "Replace a VM's firewall policy")
    .requiredOption('--mode <mode>', 'open (allow all inbound) or restricted (only the rules)')
    .option('-r, --rule <rule>', 'ingress rule PROTO:PORT[-END][@CIDR,...] (repeatable)', collect)
    .action(async (ref: string, o: { mode: string; rule?: string[] }) => {
      const policy = policyFrom(o.mode, o.rule ?? [])!;
      printFirewall(
        ctx,
        await ctx.withRef('vm', ref, (id) => ctx.client().setFirewall(id, policy)),
      );
      done(0);
    });

  leaf(group, 'patch <vm>', "Change only the given parts of a VM's firewall policy")
    .option('--mode <mode>', 'new mode: open or restricted')
    .option('-r, --rule <rule>', 'replace the ingress rules with these (repeatable)', collect)
    .option('--clear-rules', 'remove all ingress rules')
    .action(async (ref: string, o: { mode?: string; rule?: string[]; clearRules?: boolean }) => {
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
      printFirewall(
        ctx,
        await ctx.withRef('vm', ref, (id) => ctx.client().patchFirewall(id, patch)),
      );
      done(0);
    });
}
