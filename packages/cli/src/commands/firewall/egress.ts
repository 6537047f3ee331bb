// fastvm firewall egress <vm> [--default allow|deny] [--allow RULE]... [--deny RULE]...
//                             [--dns-allow NAME]... [--dns-deny NAME]... [--block-bypass]
import type { Command } from 'commander';
import type { FirewallPolicyV2, VM } from 'fastvm';
import { collect, newCommand, onRun, withRef, type CommandBase, type RunF } from '../../cmdutil.js';
import { CliError } from '../../errors.js';
import type { Factory } from '../../factory.js';
import { parseEgressRule } from '../../rules.js';
import { json, table } from '../../output.js';

export interface FirewallEgressOptions extends CommandBase {
  vm: string;
  /** A v2 PATCH: the blocks given replace the VM's. */
  patch: FirewallPolicyV2;
}

export function newFirewallEgressCommand(
  f: Factory,
  runF: RunF<FirewallEgressOptions> = firewallEgressRun,
): Command {
  const cmd = newCommand(
    f,
    'egress <vm>',
    "Replace a VM's egress rules and/or DNS policy (firewall v2; ingress is kept)",
  )
    .option('--default <action>', 'allow or deny what no rule matches (needed with rules)')
    .option(
      '--allow <rule>',
      'allow PROTO[:PORTS]@CIDR-or-NAME, e.g. tcp:443@*.github.com',
      collect,
    )
    .option(
      '--deny <rule>',
      'deny PROTO[:PORTS]@CIDR-or-NAME (deny rules are tried first)',
      collect,
    )
    .option('--dns-allow <name>', 'only these names resolve (allowlist; repeatable)', collect)
    .option('--dns-deny <name>', 'these names do not resolve (blocklist; repeatable)', collect)
    .option('--block-bypass', 'block other resolvers, DNS over TLS and known DoH endpoints')
    .addHelpText(
      'after',
      '\nNames match exactly, or *.name for any subdomain (not name itself). A VM reaches a name\n' +
        "only through its resolver: the answer's addresses are allowed for the record's TTL.\n" +
        'Example: fastvm firewall egress dev --default deny --allow tcp:443@*.github.com --block-bypass\n',
    );
  return onRun(f, cmd, (c, base) => {
    const o = c.opts<{
      default?: string;
      allow?: string[];
      deny?: string[];
      dnsAllow?: string[];
      dnsDeny?: string[];
      blockBypass?: boolean;
    }>();
    if (o.default !== undefined && o.default !== 'allow' && o.default !== 'deny') {
      throw new CliError(`--default must be 'allow' or 'deny', got '${o.default}'`);
    }
    const rules = [
      ...(o.deny ?? []).map((r) => parseEgressRule(r, 'deny')),
      ...(o.allow ?? []).map((r) => parseEgressRule(r, 'allow')),
    ];
    if (rules.length > 0 && o.default === undefined) {
      throw new CliError('give --default allow or --default deny with egress rules');
    }
    if (o.dnsAllow && o.dnsDeny)
      throw new CliError('--dns-allow and --dns-deny exclude each other');
    const patch: FirewallPolicyV2 = {};
    if (o.default !== undefined) patch.egress = { default: o.default as 'allow' | 'deny', rules };
    if (o.dnsAllow || o.dnsDeny || o.blockBypass) {
      patch.dns = {
        mode: o.dnsAllow ? 'allow' : 'deny',
        domains: o.dnsAllow ?? o.dnsDeny ?? [],
        blockBypass: o.blockBypass === true,
      };
    }
    if (!patch.egress && !patch.dns) {
      throw new CliError(
        'nothing to change: give --default (with rules), --dns-allow/--dns-deny or --block-bypass',
      );
    }
    return runF({ ...base, vm: c.args[0]!, patch });
  });
}

export async function firewallEgressRun(o: FirewallEgressOptions): Promise<number> {
  const client = await o.client();
  const vm = await withRef(o, 'vm', o.vm, (id) => client.patchFirewall(id, o.patch));
  printEgress(o, vm);
  return 0;
}

/** Prints the egress and DNS blocks of a VM's v2 policy. */
function printEgress(o: CommandBase, vm: VM): void {
  const out = (s: string): unknown => o.io.stdout.write(s);
  const f = vm.firewallV2;
  if (o.json) {
    out(json({ egress: f?.egress ?? null, dns: f?.dns ?? null }));
    return;
  }
  const egress = f?.egress ?? { default: 'allow', rules: [] };
  const dns = f?.dns ?? {};
  out(`EGRESS DEFAULT  ${egress.default}\n`);
  const domains = dns.domains ?? [];
  out(
    `DNS             ${dns.mode === 'allow' ? 'only ' : 'all but '}${domains.length ? domains.join(', ') : dns.mode === 'allow' ? '(none)' : '(none blocked)'}` +
      `${dns.blockBypass ? '; bypass blocked' : ''}\n`,
  );
  const rules = egress.rules ?? [];
  if (rules.length === 0) return;
  out('\n');
  out(
    table(
      ['ACTION', 'PROTOCOL', 'PORTS', 'TO'],
      rules.map((r) => [r.action, r.protocol, r.ports, r.value]),
    ),
  );
}
