/**
 * Firewall v1/v2 on the wire (issue 20), with the fake runtime: which shape each client reads,
 * how writes of one generation treat the other's blocks, 400s naming the field, the network
 * manager getting the whole policy, and the Python SDK (a v1 client) reading a VM whose policy
 * was set in v2. Enforcement with real VMs is in firewall-v2-vm.test.ts.
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FirewallPolicy } from '../src/domain/index.js';
import { hostResolvers, upstreamsFromEnv } from '../src/services/dns-forwarder.js';
import { networkSettingsFromEnv } from '../src/services/host-network.js';
import type { NetworkManager, VmNetworkAttachment } from '../src/services/network.js';
import { startTestServer, TestClient, type TestServer } from './helpers.js';

const PY = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../python');
const PYTHON = path.join(PY, '.venv', 'bin', 'python');

const TS7 = { headers: { 'x-stainless-lang': 'js', 'x-stainless-package-version': '0.7.0' } };
const TS6 = { headers: { 'x-stainless-lang': 'js', 'x-stainless-package-version': '0.6.0' } };
const PYGEN = { headers: { 'x-stainless-lang': 'python', 'x-stainless-package-version': '0.4.0' } };
const V2HDR = { headers: { 'x-fastvm-firewall-version': '2' } };

const V2_POLICY = {
  ingress: {
    default: 'deny',
    rules: [
      {
        action: 'allow',
        kind: 'cidr',
        protocol: 'tcp',
        ports: '8080-8090',
        value: '2001:db8::/32',
      },
      { action: 'allow', kind: 'cidr', protocol: 'udp', ports: '53', value: '10.0.0.0/8' },
      { action: 'deny', kind: 'cidr', protocol: 'any', ports: 'any', value: 'fd00::/8' },
    ],
  },
  egress: {
    default: 'deny',
    rules: [
      { action: 'allow', kind: 'fqdn', protocol: 'tcp', ports: '443', value: '*.Example.com' },
      { action: 'allow', kind: 'cidr', protocol: 'any', ports: 'any', value: '192.0.2.0/24' },
    ],
  },
  dns: { mode: 'deny', domains: ['ads.example.net'], blockBypass: true },
};

/** Records the policies the server hands the network manager. */
class RecordingNetwork implements NetworkManager {
  readonly applied: Array<[string, FirewallPolicy]> = [];
  async attach(): Promise<VmNetworkAttachment> {
    return { publicIpv6: null };
  }
  async onFirewallChange(vmId: string, policy: FirewallPolicy): Promise<void> {
    this.applied.push([vmId, policy]);
  }
  async release(): Promise<void> {}
  async reconcile(): Promise<void> {}
  async close(): Promise<void> {}
}

describe('firewall v1 and v2 on the wire', () => {
  let t: TestServer;
  let api: TestClient;
  const network = new RecordingNetwork();

  beforeAll(async () => {
    t = await startTestServer({ network });
    api = new TestClient(t.url, t.key);
  });
  afterAll(async () => {
    api.close();
    await t.cleanup();
  });

  const launch = async (firewall?: unknown): Promise<string> => {
    const r = await api.post('/v1/vms', { machineType: 'c1m2', ...(firewall ? { firewall } : {}) });
    expect(r.status, JSON.stringify(r.body)).toBe(201);
    return (r.body as { id: string }).id;
  };

  it('answers each client in its shape; a v1 client never gets v2', async () => {
    const id = await launch();
    const put = await api.put(`/v1/vms/${id}/firewall`, V2_POLICY);
    expect(put.status, JSON.stringify(put.body)).toBe(200);
    // A v2 write is answered in v2 (the client just spoke it); names are stored lower-case.
    expect(put.body.firewall.egress.rules[0].value).toBe('*.example.com');
    expect(put.body.firewall.dns).toEqual(V2_POLICY.dns);
    expect(put.body.firewall.ingress.rules).toEqual(V2_POLICY.ingress.rules);

    const v1View = {
      mode: 'restricted',
      // IPv6 allow rules only: the IPv4 one and the deny rule are not expressible in v1.
      ingress: [
        { protocol: 'tcp', portStart: 8080, portEnd: 8090, sourceCidrs: ['2001:db8::/32'] },
      ],
    };
    for (const opts of [undefined, PYGEN, TS6, { headers: { 'x-fastvm-firewall-version': '1' } }]) {
      const got = await api.get(`/v1/vms/${id}`, opts);
      expect(got.body.firewall, JSON.stringify(opts)).toEqual(v1View);
      expect(got.body.effectiveFirewall.mode).toBe('restricted');
      const listed = (await api.get('/v1/vms', opts)).body as Array<{ firewall: unknown }>;
      expect(listed[listed.length - 1]!.firewall).toEqual(v1View);
    }
    for (const opts of [TS7, V2HDR]) {
      const got = await api.get(`/v1/vms/${id}`, opts);
      expect(got.body.firewall.egress.default).toBe('deny');
      expect(got.body.firewall.ingress.default).toBe('deny');
    }
    // A Python-generated client that PUTs v2 (it cannot) would still read v1: the client wins.
    const py = await api.put(`/v1/vms/${id}/firewall`, V2_POLICY, PYGEN);
    expect(py.body.firewall).toEqual(v1View);
    // Snapshots follow the same rule.
    const snap = await api.post('/v1/snapshots', { vmId: id });
    expect(snap.status).toBe(201);
    const sid = (snap.body as { id: string }).id;
    expect((await api.get(`/v1/snapshots/${sid}`)).body.firewall).toEqual(v1View);
    expect((await api.get(`/v1/snapshots/${sid}`, TS7)).body.firewall.dns.blockBypass).toBe(true);
  });

  it('v1 writes change ingress only; v2 PATCH replaces the blocks it names', async () => {
    const id = await launch(V2_POLICY);
    const v1put = await api.put(`/v1/vms/${id}/firewall`, {
      mode: 'open',
      ingress: [{ protocol: 'tcp', portStart: 22 }],
    });
    expect(v1put.body.firewall).toEqual({
      mode: 'open',
      ingress: [{ protocol: 'tcp', portStart: 22 }],
    });
    const after = (await api.get(`/v1/vms/${id}`, TS7)).body.firewall;
    expect(after.ingress).toEqual({
      default: 'allow',
      rules: [
        { action: 'allow', kind: 'cidr', protocol: 'tcp', ports: '22', value: '::/0' },
        { action: 'allow', kind: 'cidr', protocol: 'tcp', ports: '22', value: '0.0.0.0/0' },
      ],
    });
    expect(after.egress.rules).toHaveLength(2); // kept
    expect(after.dns.blockBypass).toBe(true);
    const last = network.applied[network.applied.length - 1]!;
    expect(last[0]).toBe(id);
    expect(last[1].egress?.default).toBe('deny');

    const v2patch = await api.patch(`/v1/vms/${id}/firewall`, {
      dns: { mode: 'allow', domains: ['x.example.com'] },
    });
    expect(v2patch.status, JSON.stringify(v2patch.body)).toBe(200);
    expect(v2patch.body.firewall.dns).toEqual({
      mode: 'allow',
      domains: ['x.example.com'],
      blockBypass: false,
    });
    expect(v2patch.body.firewall.egress.rules).toHaveLength(2);
    expect(v2patch.body.firewall.ingress.default).toBe('allow');
    const noop = await api.patch(`/v1/vms/${id}/firewall`, {});
    expect(noop.body.firewall.mode).toBe('open'); // `{}` is a v1 no-op, answered in v1

    // A restore inherits everything unless overridden; a v1 override keeps egress and DNS.
    const snap = await api.post('/v1/snapshots', { vmId: id });
    const sid = (snap.body as { id: string }).id;
    const inherit = await api.post('/v1/vms', { snapshotId: sid }, TS7);
    expect(inherit.body.firewall).toEqual((await api.get(`/v1/vms/${id}`, TS7)).body.firewall);
    const v1over = await api.post(
      '/v1/vms',
      { snapshotId: sid, firewall: { mode: 'restricted' } },
      TS7,
    );
    expect(v1over.body.firewall.ingress).toEqual({ default: 'deny', rules: [] });
    expect(v1over.body.firewall.egress.rules).toHaveLength(2);
    const v2over = await api.post('/v1/vms', {
      snapshotId: sid,
      firewall: { egress: { default: 'allow' } },
    });
    expect(v2over.body.firewall.egress).toEqual({ default: 'allow', rules: [] });
    expect(v2over.body.firewall.dns).toEqual({ mode: 'deny', domains: [], blockBypass: false });
  });

  it('refuses bad input with 400 naming the field', async () => {
    const id = await launch();
    const egress = (rule: Record<string, unknown>) => ({
      egress: {
        default: 'deny',
        rules: [
          {
            action: 'allow',
            kind: 'cidr',
            protocol: 'tcp',
            ports: '443',
            value: '192.0.2.0/24',
            ...rule,
          },
        ],
      },
    });
    const cases: Array<[unknown, string]> = [
      [egress({ value: '10.0.0.0/33' }), 'egress.rules[0].value'],
      [egress({ value: '10.0.0.300/8' }), 'egress.rules[0].value'],
      [egress({ value: 'fd00::/129' }), 'egress.rules[0].value'],
      [egress({ kind: 'fqdn', value: '*' }), 'egress.rules[0].value'],
      [egress({ kind: 'fqdn', value: 'api.*.example.com' }), 'egress.rules[0].value'],
      [egress({ kind: 'fqdn', value: '*.*.example.com' }), 'egress.rules[0].value'],
      [egress({ kind: 'fqdn', value: 'exa mple.com' }), 'egress.rules[0].value'],
      [egress({ protocol: 'any', ports: '443' }), 'egress.rules[0].ports'],
      [egress({ ports: '80-70' }), 'egress.rules[0].ports'],
      [egress({ ports: '0' }), 'egress.rules[0].ports'],
      [egress({ action: 'maybe' }), 'egress.rules[0].action'],
      [
        {
          ingress: {
            default: 'deny',
            rules: [
              { action: 'allow', kind: 'fqdn', protocol: 'tcp', ports: '22', value: 'a.com' },
            ],
          },
        },
        'ingress.rules[0].kind',
      ],
      [{ dns: { mode: 'allow', domains: ['*'] } }, 'dns.domains[0]'],
      [
        {
          mode: 'restricted',
          ingress: [{ protocol: 'tcp', portStart: 22, sourceCidrs: ['10.0.0.0/8'] }],
        },
        'ingress[0].sourceCidrs[0]',
      ],
      // Dead rules: the DNS gate would never let the name resolve.
      [
        {
          ...egress({ kind: 'fqdn', value: 'api.example.com' }),
          dns: { mode: 'allow', domains: ['other.example.com'] },
        },
        'egress.rules[0].value',
      ],
      [
        {
          ...egress({ kind: 'fqdn', value: 'api.example.com' }),
          dns: { mode: 'deny', domains: ['*.example.com'] },
        },
        'egress.rules[0].value',
      ],
    ];
    for (const [body, field] of cases) {
      const r = await api.put(`/v1/vms/${id}/firewall`, body);
      expect(r.status, JSON.stringify(body)).toBe(400);
      expect(r.body.code).toBe('bad_request');
      expect(r.body.field, JSON.stringify(body)).toBe(field);
    }
    // Alive: the allowlist covers part of the wildcard; the apex is not under *.example.com.
    for (const dns of [
      { mode: 'allow', domains: ['api.example.com'] },
      { mode: 'deny', domains: ['example.com'] },
    ]) {
      const ok = await api.put(`/v1/vms/${id}/firewall`, {
        ...egress({ kind: 'fqdn', value: '*.example.com' }),
        dns,
      });
      expect(ok.status, JSON.stringify(dns)).toBe(200);
    }
    const launchBad = await api.post('/v1/vms', {
      machineType: 'c1m2',
      firewall: egress({ value: 'nope' }),
    });
    expect(launchBad.status).toBe(400);
    expect(launchBad.body.field).toBe('firewall.egress.rules[0].value');
    const launchDead = await api.post('/v1/vms', {
      machineType: 'c1m2',
      firewall: {
        ...egress({ kind: 'fqdn', value: 'a.example.com' }),
        dns: { mode: 'allow', domains: ['b.example.com'] },
      },
    });
    expect(launchDead.status).toBe(400);
    expect(launchDead.body.field).toBe('firewall.egress.rules[0].value');
  });

  it.skipIf(!fs.existsSync(PYTHON))('the Python SDK reads a VM set in v2 as v1', async () => {
    const id = await launch(V2_POLICY);
    const script = `
import asyncio, json, sys
sys.path.insert(0, ${JSON.stringify(path.join(PY, 'src'))})
from fastvm import FastVM
async def main():
    async with FastVM(api_key=sys.argv[1], base_url=sys.argv[2]) as c:
        vm = await c.get(sys.argv[3])
        fw = vm.firewall
        print(json.dumps({"mode": fw.mode, "ingress": [[r.protocol, r.port_start, r.port_end, r.source_cidrs] for r in fw.ingress]}))
asyncio.run(main())
`;
    // Asynchronously: the server answering it runs in this process.
    const r = await new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => {
      execFile(
        PYTHON,
        ['-c', script, t.key, t.url, id],
        { timeout: 60_000 },
        (err, stdout, stderr) => resolve({ code: err ? 1 : 0, stdout, stderr }),
      );
    });
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toEqual({
      mode: 'restricted',
      ingress: [['tcp', 8080, 8090, ['2001:db8::/32']]],
    });
  });
});

describe('DNS forwarder settings', () => {
  it('reads FASTVM_DNS_UPSTREAM and the host resolv.conf', () => {
    expect(upstreamsFromEnv(undefined)).toBeUndefined();
    expect(upstreamsFromEnv('192.0.2.1, 192.0.2.2:5353,[2001:db8::1]:53')).toEqual([
      { host: '192.0.2.1', port: 53 },
      { host: '192.0.2.2', port: 5353 },
      { host: '2001:db8::1', port: 53 },
    ]);
    expect(() => upstreamsFromEnv('dns.example.com')).toThrow(/FASTVM_DNS_UPSTREAM/);
    expect(networkSettingsFromEnv({ FASTVM_DNS_UPSTREAM: '192.0.2.9' }).dnsUpstreams).toEqual([
      { host: '192.0.2.9', port: 53 },
    ]);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fvresolv-'));
    fs.writeFileSync(
      path.join(dir, 'r'),
      '# x\nnameserver 127.0.0.53\nnameserver fe80::1%eth0\nsearch a\n',
    );
    expect(hostResolvers(path.join(dir, 'r'))).toEqual([
      { host: '127.0.0.53', port: 53 },
      { host: 'fe80::1%eth0', port: 53 },
    ]);
    fs.rmSync(dir, { recursive: true });
  });
});
