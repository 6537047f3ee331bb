/**
 * Domain-name patterns of the v2 firewall (egress `fqdn` rules and the DNS gate's `domains`):
 * an exact name (`api.example.com`) or one leading wildcard label (`*.example.com`), which
 * matches one or more labels in front of the apex but not the apex itself. Names compare
 * case-insensitively and without a trailing dot. Pure functions, shared by the runtime (which
 * fills the nft sets of FQDN rules), the server's DNS forwarder (the gate) and its validation.
 * @module
 */

const LABEL = /^(?!-)[a-z0-9_-]{1,63}(?<!-)$/;

/** Lower case, without a trailing dot. */
export function normalizeName(name: string): string {
  return name.toLowerCase().replace(/\.$/, '');
}

/** Why `value` is not a valid pattern (`undefined` when it is one). */
export function fqdnPatternProblem(value: string): string | undefined {
  if (typeof value !== 'string' || value.length === 0) return 'must be a domain name';
  const name = normalizeName(value);
  if (name.length > 253) return 'is longer than 253 characters';
  const wild = name.startsWith('*.');
  const rest = wild ? name.slice(2) : name;
  if (rest.includes('*')) {
    return 'may only have one wildcard, as its whole first label (*.example.com)';
  }
  if (name === '*' || rest.length === 0) return 'a bare wildcard matches everything: use a CIDR';
  const labels = rest.split('.');
  if (!labels.every((l) => LABEL.test(l))) return 'is not a valid domain name';
  return undefined;
}

/** Whether `name` (a queried name) matches `pattern`. */
export function fqdnMatches(pattern: string, name: string): boolean {
  const p = normalizeName(pattern);
  const n = normalizeName(name);
  if (!p.startsWith('*.')) return n === p;
  const apex = p.slice(2);
  return n.endsWith(`.${apex}`) && n.length > apex.length + 1;
}

/** Whether every name matched by `inner` is matched by `outer`. */
export function fqdnCovers(outer: string, inner: string): boolean {
  const o = normalizeName(outer);
  const i = normalizeName(inner);
  if (!i.startsWith('*.')) return fqdnMatches(o, i);
  if (!o.startsWith('*.')) return false;
  // *.a.b covers *.x.a.b and *.a.b.
  const apex = o.slice(2);
  const innerApex = i.slice(2);
  return innerApex === apex || innerApex.endsWith(`.${apex}`);
}

/** Whether some name is matched by both patterns. */
export function fqdnIntersects(a: string, b: string): boolean {
  return fqdnCovers(a, b) || fqdnCovers(b, a);
}

/**
 * Whether the DNS gate lets a name through: `allow` lists the only names that resolve, `deny`
 * the names that do not.
 */
export function dnsGateAllows(
  gate: { readonly mode: 'allow' | 'deny'; readonly domains: readonly string[] },
  name: string,
): boolean {
  const listed = gate.domains.some((d) => fqdnMatches(d, name));
  return gate.mode === 'allow' ? listed : !listed;
}

/**
 * Whether an FQDN rule's pattern is dead under the DNS gate: no name it matches can resolve
 * (an allowlist with no overlapping entry, or a blocklist entry that covers it).
 */
export function fqdnRuleIsDead(
  gate: { readonly mode: 'allow' | 'deny'; readonly domains: readonly string[] },
  pattern: string,
): boolean {
  if (gate.mode === 'allow') return !gate.domains.some((d) => fqdnIntersects(d, pattern));
  return gate.domains.some((d) => fqdnCovers(d, pattern));
}
