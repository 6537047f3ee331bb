// Firewall rule syntax of `-r/--rule`: PROTO:PORT[-END][@CIDR[,CIDR...]]
//   tcp:22                     TCP port 22 from anywhere
//   udp:8000-8010              UDP ports 8000..8010 (inclusive)
//   tcp:443@2001:db8::/32      TCP 443 from one IPv6 prefix
//   tcp:22@2001:db8::/32,fd00::/8
// PROTO defaults to tcp when omitted (`-r 22`).
import type { FirewallRule, FirewallRuleV2 } from 'fastvm';
import { CliError } from './errors.js';

/** Parses one `-r` value into a firewall rule. */
export function parseRule(spec: string): FirewallRule {
  const fail = (why: string): never => {
    throw new CliError(
      `invalid rule '${spec}': ${why} (expected PROTO:PORT[-END][@CIDR,...], e.g. tcp:22 or udp:8000-8010)`,
    );
  };
  const at = spec.indexOf('@');
  const head = at === -1 ? spec : spec.slice(0, at);
  const cidrs =
    at === -1
      ? []
      : spec
          .slice(at + 1)
          .split(',')
          .map((c) => c.trim())
          .filter((c) => c !== '');
  const colon = head.indexOf(':');
  const protocol = (colon === -1 ? 'tcp' : head.slice(0, colon)).toLowerCase();
  const ports = colon === -1 ? head : head.slice(colon + 1);
  if (protocol !== 'tcp' && protocol !== 'udp')
    fail(`protocol must be tcp or udp, not '${protocol}'`);
  const m = /^(\d+)(?:-(\d+))?$/.exec(ports);
  if (!m) fail(`bad port '${ports}'`);
  const portStart = Number(m![1]);
  const portEnd = m![2] === undefined ? undefined : Number(m![2]);
  for (const p of [portStart, portEnd])
    if (p !== undefined && (p < 1 || p > 65535)) fail(`port ${p} is out of range 1-65535`);
  if (portEnd !== undefined && portEnd < portStart) fail('the range end is below its start');
  if (at !== -1 && cidrs.length === 0) fail('no source CIDR after @');
  for (const c of cidrs)
    if (!c.includes('/')) fail(`'${c}' is not a CIDR (use an IPv6 prefix such as 2001:db8::/32)`);
  const rule: FirewallRule = { protocol, portStart };
  if (portEnd !== undefined && portEnd !== portStart) rule.portEnd = portEnd;
  if (cidrs.length > 0) rule.sourceCidrs = cidrs;
  return rule;
}

// Egress rule syntax of `firewall egress --allow/--deny` (v2): PROTO[:PORTS]@TARGET
//   tcp:443@*.github.com       TCP 443 to github.com's subdomains (by the VM's DNS answers)
//   tcp:80-90@example.com      a port range to one name
//   udp:123@192.0.2.0/24       UDP 123 to an IPv4 prefix
//   any@2001:db8::/32          everything to an IPv6 prefix
// PROTO is tcp, udp or any (any takes no ports); PORTS is N, N-M or any (default any).
/** Parses one egress rule spec (the action comes from the flag). */
export function parseEgressRule(spec: string, action: 'allow' | 'deny'): FirewallRuleV2 {
  const fail = (why: string): never => {
    throw new CliError(
      `invalid egress rule '${spec}': ${why} (expected PROTO[:PORTS]@CIDR-or-NAME, e.g. tcp:443@*.github.com or any@10.0.0.0/8)`,
    );
  };
  const at = spec.indexOf('@');
  if (at === -1) fail('no @TARGET');
  const head = spec.slice(0, at);
  const value = spec.slice(at + 1).trim();
  if (value === '') fail('empty target');
  const colon = head.indexOf(':');
  const protocol = (colon === -1 ? head : head.slice(0, colon)).toLowerCase();
  const ports = colon === -1 ? 'any' : head.slice(colon + 1);
  if (protocol !== 'tcp' && protocol !== 'udp' && protocol !== 'any')
    fail(`protocol must be tcp, udp or any, not '${protocol}'`);
  if (protocol === 'any' && ports !== 'any') fail('protocol any takes no ports');
  if (ports !== 'any') {
    const m = /^(\d+)(?:-(\d+))?$/.exec(ports);
    if (!m) fail(`bad ports '${ports}'`);
    const a = Number(m![1]);
    const b = m![2] === undefined ? a : Number(m![2]);
    if (a < 1 || b > 65535 || b < a) fail(`ports '${ports}' out of range 1-65535`);
  }
  const isCidr = value.includes('/') || /^[\d.]+$/.test(value) || value.includes(':');
  return {
    action,
    kind: isCidr ? 'cidr' : 'fqdn',
    protocol: protocol as FirewallRuleV2['protocol'],
    ports,
    value,
  };
}
