/**
 * The two wire generations of the firewall (contract §3.8) and the one policy the server
 * stores. The stored `FirewallPolicy` is the runtime's: v1's `mode` + `ingress` rules (with
 * v2's `action`, protocol `any` and IPv4 sources as extensions) and v2's optional `egress` and
 * `dns` blocks. Writes in either shape become that policy; each reader gets it in its shape:
 *
 * - **v1 writes touch ingress only.** A v1 client cannot see egress or DNS policy, so its PUT
 *   replaces `mode` and the rules and keeps `egress`/`dns`; its PATCH works as before.
 * - **v2 writes** replace the blocks they name (PUT: missing blocks take the defaults: ingress
 *   deny, egress allow, dns deny-list with no domains and no bypass blocking; PATCH: missing
 *   blocks are kept).
 * - **The v1 view** of a v2 policy is what v1 can say without widening anything: `mode` from
 *   the ingress default, the allow rules with their IPv6 sources (a rule whose sources are all
 *   IPv4 is left out, protocol `any` becomes a tcp and a udp rule over all ports). Deny rules,
 *   egress and DNS are not shown to v1 clients.
 * - **The v2 view** of a v1 policy: a v1 rule without sources becomes one rule per family
 *   (`::/0` and `0.0.0.0/0`), since the host applies it to both.
 * @module
 */
import { fqdnRuleIsDead, normalizeName } from '@fastvm/runtime';
import type { DnsPolicy, EgressPolicy, EgressRule, FirewallPolicy, FirewallRule } from './model.js';
import { InvalidInputError } from './errors.js';

/** Which generation a request or response speaks. */
export type FirewallShape = 1 | 2;

export interface V2Rule {
  action: 'allow' | 'deny';
  kind: 'cidr' | 'fqdn';
  protocol: 'tcp' | 'udp' | 'any';
  ports: string;
  value: string;
  description?: string;
}

export interface V2Policy {
  ingress: { default: 'allow' | 'deny'; rules: V2Rule[] };
  egress: { default: 'allow' | 'deny'; rules: V2Rule[] };
  dns: { mode: 'allow' | 'deny'; domains: string[]; blockBypass: boolean };
}

/** A v2 write: each block optional (absent or null: the default on PUT, kept on PATCH). */
export interface V2Write {
  ingress?: { default: 'allow' | 'deny'; rules?: readonly V2Rule[] | null } | null;
  egress?: { default: 'allow' | 'deny'; rules?: readonly V2Rule[] | null } | null;
  dns?: {
    mode?: 'allow' | 'deny' | null;
    domains?: readonly string[] | null;
    blockBypass?: boolean | null;
  } | null;
}

/** A firewall write in the shape the client sent it. */
export type FirewallWrite =
  | { v1: { mode: FirewallPolicy['mode']; ingress: readonly FirewallRule[] } }
  | { v1Patch: { mode?: FirewallPolicy['mode']; ingress?: readonly FirewallRule[] } }
  | { v2: V2Write }
  | { v2Patch: V2Write };

export const DEFAULT_DNS: DnsPolicy = { mode: 'deny', domains: [], blockBypass: false };

/** The shape a write was sent in. */
export function writeShape(w: FirewallWrite): FirewallShape {
  return 'v1' in w || 'v1Patch' in w ? 1 : 2;
}

/**
 * The policy after `write` on `base` (the VM's or snapshot's current policy; undefined for a
 * new VM). Throws `InvalidInputError` for an FQDN rule the DNS gate makes dead (`field` names
 * the rule, under `prefix`).
 */
export function applyFirewallWrite(
  base: FirewallPolicy | undefined,
  write: FirewallWrite,
  prefix = '',
): FirewallPolicy {
  let next: FirewallPolicy;
  if ('v1' in write) {
    next = withBlocks({ mode: write.v1.mode, ingress: [...write.v1.ingress] }, base);
  } else if ('v1Patch' in write) {
    const b = base ?? { mode: 'restricted', ingress: [] };
    next = withBlocks(
      { mode: write.v1Patch.mode ?? b.mode, ingress: [...(write.v1Patch.ingress ?? b.ingress)] },
      base,
    );
  } else {
    const w = 'v2' in write ? write.v2 : write.v2Patch;
    const patch = 'v2Patch' in write;
    const b = base ?? { mode: 'restricted', ingress: [] };
    const ingress =
      w.ingress != null
        ? { mode: modeOf(w.ingress.default), ingress: (w.ingress.rules ?? []).map(ingressRuleOf) }
        : patch
          ? { mode: b.mode, ingress: [...b.ingress] }
          : { mode: 'restricted' as const, ingress: [] };
    const egress: EgressPolicy =
      w.egress != null
        ? { default: w.egress.default, rules: (w.egress.rules ?? []).map(egressRuleOf) }
        : patch && b.egress
          ? b.egress
          : { default: 'allow', rules: [] };
    const dns: DnsPolicy =
      w.dns != null
        ? {
            mode: w.dns.mode ?? 'deny',
            domains: (w.dns.domains ?? []).map(normalizeName),
            blockBypass: w.dns.blockBypass ?? false,
          }
        : patch && b.dns
          ? b.dns
          : DEFAULT_DNS;
    next = { ...ingress, egress, dns };
  }
  checkDeadRules(next, prefix);
  return next;
}

/** Keeps `base`'s egress and DNS blocks on a new ingress policy (v1 writes). */
function withBlocks(
  ingress: { mode: FirewallPolicy['mode']; ingress: FirewallRule[] },
  base: FirewallPolicy | undefined,
): FirewallPolicy {
  return {
    ...ingress,
    ...(base?.egress ? { egress: base.egress } : {}),
    ...(base?.dns ? { dns: base.dns } : {}),
  };
}

function checkDeadRules(p: FirewallPolicy, prefix: string): void {
  const dns = p.dns;
  if (!dns) return;
  (p.egress?.rules ?? []).forEach((r, i) => {
    if (r.kind === 'fqdn' && fqdnRuleIsDead(dns, r.value)) {
      throw new InvalidInputError(
        `${r.value} can never resolve under the DNS ${dns.mode === 'allow' ? 'allowlist' : 'blocklist'}, so this rule would be dead`,
        `${prefix}egress.rules[${i}].value`,
      );
    }
  });
}

const modeOf = (d: 'allow' | 'deny'): FirewallPolicy['mode'] =>
  d === 'allow' ? 'open' : 'restricted';

/** `"443"` / `"8080-8090"` / `"any"` → the inclusive range (all ports for `any`). */
function portRange(ports: string): [number, number] {
  if (ports === 'any') return [1, 65535];
  const [a, b] = ports.split('-').map(Number);
  return [a!, b ?? a!];
}

function ingressRuleOf(r: V2Rule): FirewallRule {
  const [portStart, portEnd] = portRange(r.ports);
  return {
    action: r.action,
    protocol: r.protocol,
    portStart,
    ...(portEnd !== portStart ? { portEnd } : {}),
    sourceCidrs: [r.value],
    ...(r.description != null ? { description: r.description } : {}),
  };
}

function egressRuleOf(r: V2Rule): EgressRule {
  return {
    action: r.action,
    kind: r.kind,
    protocol: r.protocol,
    ports: r.ports,
    value: r.kind === 'fqdn' ? normalizeName(r.value) : r.value,
    ...(r.description != null ? { description: r.description } : {}),
  };
}

function portsText(r: FirewallRule): string {
  const end = r.portEnd ?? r.portStart;
  if (r.protocol === 'any' || (r.portStart === 1 && end === 65535 && r.action)) return 'any';
  return end === r.portStart ? `${r.portStart}` : `${r.portStart}-${end}`;
}

/** The v2 view of the stored policy. */
export function toV2(p: FirewallPolicy): V2Policy {
  const ingress: V2Rule[] = [];
  for (const r of p.ingress) {
    const sources = r.sourceCidrs?.length ? r.sourceCidrs : ['::/0', '0.0.0.0/0'];
    for (const value of sources) {
      ingress.push({
        action: r.action ?? 'allow',
        kind: 'cidr',
        protocol: r.protocol,
        ports: portsText(r),
        value,
        ...(r.description !== undefined ? { description: r.description } : {}),
      });
    }
  }
  return {
    ingress: { default: p.mode === 'open' ? 'allow' : 'deny', rules: ingress },
    egress: {
      default: p.egress?.default ?? 'allow',
      rules: (p.egress?.rules ?? []).map((r) => ({
        action: r.action,
        kind: r.kind,
        protocol: r.protocol,
        ports: r.ports,
        value: r.value,
        ...(r.description !== undefined ? { description: r.description } : {}),
      })),
    },
    dns: {
      mode: p.dns?.mode ?? DEFAULT_DNS.mode,
      domains: [...(p.dns?.domains ?? [])],
      blockBypass: p.dns?.blockBypass ?? false,
    },
  };
}

export interface V1Rule {
  protocol: 'tcp' | 'udp';
  portStart: number;
  portEnd?: number;
  sourceCidrs?: string[];
  description?: string;
}

/** The v1 view of the stored policy: what v1 can express without widening it. */
export function toV1(p: FirewallPolicy): { mode: FirewallPolicy['mode']; ingress: V1Rule[] } {
  const ingress: V1Rule[] = [];
  for (const r of p.ingress) {
    if ((r.action ?? 'allow') !== 'allow') continue;
    let sources: string[] | undefined;
    if (r.sourceCidrs?.length) {
      sources = r.sourceCidrs.filter((c) => c.includes(':'));
      if (sources.length === 0) continue; // IPv4-only: not expressible in v1
    }
    const any = r.protocol === 'any';
    for (const protocol of any ? (['tcp', 'udp'] as const) : [r.protocol]) {
      const end = any ? 65535 : r.portEnd;
      ingress.push({
        protocol,
        portStart: any ? 1 : r.portStart,
        ...(end !== undefined ? { portEnd: end } : {}),
        ...(sources ? { sourceCidrs: [...sources] } : {}),
        ...(r.description !== undefined ? { description: r.description } : {}),
      });
    }
  }
  return { mode: p.mode, ingress };
}
