/** The firewall editor's checks of a rule row before it is sent (no browser needed). */
import { describe, expect, it } from 'vitest';
import { parseRule, toRow, type RuleRow } from '../src/firewall-rules.js';

const row = (patch: Partial<RuleRow>): RuleRow => ({
  protocol: 'tcp',
  ports: '443',
  sources: '',
  description: '',
  ...patch,
});

describe('firewall rule rows', () => {
  it('turns valid rows into the wire shape', () => {
    expect(parseRule(row({}))).toEqual({ protocol: 'tcp', portStart: 443 });
    expect(
      parseRule(
        row({
          protocol: 'udp',
          ports: ' 8000 - 8080 ',
          sources: '2001:db8::/32, ::1 fd00::/8',
          description: ' dev ',
        }),
      ),
    ).toEqual({
      protocol: 'udp',
      portStart: 8000,
      portEnd: 8080,
      sourceCidrs: ['2001:db8::/32', '::1', 'fd00::/8'],
      description: 'dev',
    });
    // A one-port range is a single port.
    expect(parseRule(row({ ports: '22-22' }))).toEqual({ protocol: 'tcp', portStart: 22 });
  });

  it('names what is wrong', () => {
    expect(parseRule(row({ ports: '' }))).toBe('ports: a port (443) or a range (8000-8080)');
    expect(parseRule(row({ ports: 'http' }))).toBe('ports: a port (443) or a range (8000-8080)');
    expect(parseRule(row({ ports: '0' }))).toBe('ports: 1-65535');
    expect(parseRule(row({ ports: '70000' }))).toBe('ports: 1-65535');
    expect(parseRule(row({ ports: '90-80' }))).toBe(
      'ports: the end of a range must not be below its start',
    );
    expect(parseRule(row({ sources: '10.0.0.0/8' }))).toBe(
      'sources: 10.0.0.0/8 is not an IPv6 CIDR (the firewall filters public IPv6 ingress)',
    );
    expect(parseRule(row({ sources: '2001:db8::/129' }))).toMatch(/^sources: 2001:db8::\/129 /);
  });

  it('shows the server’s rules as rows and back', () => {
    const rule = { protocol: 'tcp' as const, portStart: 80, portEnd: 90, sourceCidrs: ['::/0'] };
    expect(toRow(rule)).toEqual({
      protocol: 'tcp',
      ports: '80-90',
      sources: '::/0',
      description: '',
    });
    expect(parseRule(toRow(rule))).toEqual(rule);
  });
});
