/**
 * The firewall editor's rows (text as typed) and their checks before a save: the server has the
 * last word and names the field, but a typo should not need a round trip.
 * @module
 */
import type { FirewallRule } from './api.js';

export interface RuleRow {
  protocol: 'tcp' | 'udp';
  ports: string;
  sources: string;
  description: string;
}

export function toRow(r: FirewallRule): RuleRow {
  return {
    protocol: r.protocol,
    ports:
      r.portEnd !== undefined && r.portEnd !== r.portStart
        ? `${r.portStart}-${r.portEnd}`
        : `${r.portStart}`,
    sources: (r.sourceCidrs ?? []).join(', '),
    description: r.description ?? '',
  };
}

/** An IPv6 address or CIDR, loosely (the server has the last word and names the field). */
const IPV6_CIDR = /^[0-9a-fA-F:.]*:[0-9a-fA-F:.]*(?:\/(?:12[0-8]|1[01][0-9]|[1-9]?[0-9]))?$/;

/** Checks one row; returns the rule or a message naming what is wrong. */
export function parseRule(row: RuleRow): FirewallRule | string {
  const m = /^\s*(\d{1,5})\s*(?:-\s*(\d{1,5})\s*)?$/.exec(row.ports);
  if (!m) return 'ports: a port (443) or a range (8000-8080)';
  const start = Number(m[1]);
  const end = m[2] !== undefined ? Number(m[2]) : undefined;
  if (start < 1 || start > 65535 || (end !== undefined && (end < 1 || end > 65535))) {
    return 'ports: 1-65535';
  }
  if (end !== undefined && end < start)
    return 'ports: the end of a range must not be below its start';
  const sources = row.sources
    .split(/[\s,]+/)
    .map((s) => s.trim())
    .filter(Boolean);
  const bad = sources.find((s) => !IPV6_CIDR.test(s));
  if (bad) return `sources: ${bad} is not an IPv6 CIDR (the firewall filters public IPv6 ingress)`;
  return {
    protocol: row.protocol,
    portStart: start,
    ...(end !== undefined && end !== start ? { portEnd: end } : {}),
    ...(sources.length > 0 ? { sourceCidrs: sources } : {}),
    ...(row.description.trim() ? { description: row.description.trim() } : {}),
  };
}
