/** Domain patterns of firewall v2 (`fqdn.ts`): validation, matching, the DNS gate, dead rules. */
import { describe, expect, it } from 'vitest';
import {
  dnsGateAllows,
  fqdnCovers,
  fqdnMatches,
  fqdnPatternProblem,
  fqdnRuleIsDead,
} from '../src/fqdn.js';

describe('FQDN patterns', () => {
  it('accepts names and one leading wildcard label; refuses the rest', () => {
    for (const ok of ['example.com', 'A.Example.COM.', '*.example.com', '*.com', 'x_y.example']) {
      expect(fqdnPatternProblem(ok), ok).toBeUndefined();
    }
    for (const bad of [
      '',
      '*',
      '*.',
      'a.*.com',
      '*.*.com',
      'ex*.com',
      '-a.com',
      'a..com',
      'a b.com',
    ]) {
      expect(fqdnPatternProblem(bad), bad).toBeDefined();
    }
  });

  it('a wildcard matches one or more labels, not the apex; names compare case-blind', () => {
    expect(fqdnMatches('*.example.com', 'a.example.com')).toBe(true);
    expect(fqdnMatches('*.example.com', 'a.b.Example.com.')).toBe(true);
    expect(fqdnMatches('*.example.com', 'example.com')).toBe(false);
    expect(fqdnMatches('*.example.com', 'badexample.com')).toBe(false);
    expect(fqdnMatches('example.com', 'EXAMPLE.com.')).toBe(true);
    expect(fqdnMatches('example.com', 'a.example.com')).toBe(false);
    expect(fqdnCovers('*.example.com', '*.a.example.com')).toBe(true);
    expect(fqdnCovers('*.a.example.com', '*.example.com')).toBe(false);
  });

  it('the DNS gate and dead rules', () => {
    const allow = { mode: 'allow' as const, domains: ['api.example.com', '*.cdn.net'] };
    const deny = { mode: 'deny' as const, domains: ['*.ads.net'] };
    expect(dnsGateAllows(allow, 'api.example.com')).toBe(true);
    expect(dnsGateAllows(allow, 'x.cdn.net')).toBe(true);
    expect(dnsGateAllows(allow, 'example.com')).toBe(false);
    expect(dnsGateAllows(deny, 'x.ads.net')).toBe(false);
    expect(dnsGateAllows(deny, 'ads.net')).toBe(true);
    expect(fqdnRuleIsDead(allow, '*.example.com')).toBe(false); // api.example.com resolves
    expect(fqdnRuleIsDead(allow, 'www.example.com')).toBe(true);
    expect(fqdnRuleIsDead(deny, 'x.ads.net')).toBe(true);
    expect(fqdnRuleIsDead(deny, 'ads.net')).toBe(false);
  });
});
