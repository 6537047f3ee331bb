/**
 * Firewall v2 with real QEMU VMs (issue 20): egress by FQDN (exact and wildcard), by CIDR,
 * default deny/allow, the DNS gate (blocklist, allowlist, dead rules), bypass attempts (direct
 * IP, another resolver, DoT) blocked, a live change while a connection is open, a restored
 * fork keeping the policy, and learned addresses surviving a server restart.
 *
 * Everything outside the VM is in a network namespace of the test's own (`createInternet`):
 * a DNS server (the forwarder's only upstream), an HTTP server on 9000 and a TCP echo on 9100
 * on several addresses, and a TCP listener on 853 standing in for DNS over TLS. One VM serves
 * every case but the fork.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { tapPrefixFor, type QemuRuntime } from '@fastvm/runtime';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startServer, type ServerHandle } from '../src/index.js';
import { createNetworkManager, type NetworkSettings } from '../src/services/host-network.js';
import { TestClient } from './helpers.js';
import {
  createInternet,
  networkSkipReason,
  sh,
  shAny,
  type Internet,
} from '../../runtime/test/netns.js';
import { disposeRuntime, testRuntime } from '../../runtime/test/helpers.js';

const SKIP = networkSkipReason();
const TAG = crypto.randomBytes(2).toString('hex');
const THIRD = 100 + (crypto.randomBytes(1)[0]! % 100);
const NET = `10.214.${THIRD}`;
const FIXTURE = path.join(
  path.dirname(fileURLToPath(import.meta.url)),
  'fixtures',
  'fake-internet-dns.mjs',
);
/** Name → address in the namespace (.2 also runs the DNS server; .7 is "another resolver"). */
const RECORDS = {
  'allowed.test': `${NET}.2`,
  'a.wild.test': `${NET}.3`,
  'b.c.wild.test': `${NET}.3`,
  'wild.test': `${NET}.4`,
  'other.test': `${NET}.4`,
  'blocked.test': `${NET}.2`,
};
/** The TS 0.7 client's headers: it reads v2. */
const V2 = { headers: { 'x-stainless-lang': 'js', 'x-stainless-package-version': '0.7.0' } };

const allowFqdn = (value: string, ports = '9000') => ({
  action: 'allow',
  kind: 'fqdn',
  protocol: 'tcp',
  ports,
  value,
});

describe.skipIf(SKIP)(`firewall v2 (real QEMU VMs)${SKIP ? ` — skipped: ${SKIP}` : ''}`, () => {
  let inet: Internet;
  let fixture: ChildProcess | undefined;
  let runtime: QemuRuntime;
  let dataDir: string;
  let server: ServerHandle | undefined;
  let api: TestClient;
  let vmId: string;
  const settings: NetworkSettings = {
    enabled: true,
    bridge: `fvbf${TAG}`,
    ipv4Subnet: `10.216.${crypto.randomBytes(1)[0]!}.0/24`,
    dnsUpstreams: [{ host: `${NET}.2`, port: 53 }],
  };

  async function start(): Promise<void> {
    const { network } = await createNetworkManager({
      dataDir,
      logger: pino({ level: 'silent' }),
      settings,
    });
    server = await startServer({
      port: 0,
      dataDir,
      runtime,
      network,
      logLevel: 'silent',
      shutdownGraceMs: 2000,
      launchWaitMs: 60_000,
    });
    api = new TestClient(server.url, server.bootstrapKey);
  }

  /** Runs a shell script in a VM; its stdout. */
  const sh_ = async (vm: string, script: string): Promise<string> => {
    const r = await api.post(`/v1/vms/${vm}/exec`, { command: script, timeoutSec: 60 });
    expect(r.status).toBe(200);
    return (r.body as { stdout: string }).stdout;
  };

  /** `name=<http code>` for each URL fetched from the VM (000: no connection). */
  const fetchAll = async (
    vm: string,
    urls: Record<string, string>,
  ): Promise<Record<string, string>> => {
    const script = Object.entries(urls)
      .map(
        ([k, u]) =>
          `printf '%s=' ${k}; curl -s -o /dev/null -w '%{http_code}\\n' --connect-timeout 3 -m 6 ${u}`,
      )
      .join('; ');
    const out = await sh_(vm, script);
    return Object.fromEntries(
      out
        .trim()
        .split('\n')
        .map((l) => l.split('=') as [string, string]),
    );
  };

  /** Exit status of `getent hosts <name>` in the VM (0: resolves, 2: NXDOMAIN). */
  const resolves = async (vm: string, names: string[]): Promise<Record<string, boolean>> => {
    const out = await sh_(
      vm,
      names.map((n) => `getent hosts ${n} >/dev/null; echo ${n}=$?`).join('; '),
    );
    return Object.fromEntries(
      out
        .trim()
        .split('\n')
        .map((l) => l.split('='))
        .map(([n, code]) => [n!, code === '0']),
    );
  };

  /** A DNS query straight to another resolver (UDP 53) and a DoT connection (TCP 853) from the VM. */
  const bypass = async (vm: string): Promise<string> =>
    (
      await sh_(
        vm,
        `python3 - <<'EOF'
import socket, struct
q = struct.pack('>HHHHHH', 0x1234, 0x0100, 1, 0, 0, 0) + b'\\x07allowed\\x04test\\x00' + struct.pack('>HH', 1, 1)
out = []
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
try:
    s.connect(('${NET}.7', 53)); s.send(q); s.recv(512); out.append('dns53=open')
except OSError:
    out.append('dns53=blocked')
try:
    c = socket.create_connection(('${NET}.7', 853), timeout=3); out.append('dot=' + ('open' if c.recv(16) == b'dot\\n' else 'blocked'))
except OSError:
    out.append('dot=blocked')
print(' '.join(out))
EOF`,
      )
    ).trim();

  beforeAll(async () => {
    inet = await createInternet(TAG, THIRD);
    for (const last of [3, 4, 6, 7]) {
      await sh('ip', ['-n', inet.ns, 'addr', 'add', `${NET}.${last}/24`, 'dev', 'eth0']);
    }
    fixture = spawn(
      'ip',
      [
        'netns',
        'exec',
        inet.ns,
        process.execPath,
        FIXTURE,
        JSON.stringify({ records: RECORDS, addrs: [2, 3, 4, 6, 7].map((n) => `${NET}.${n}`) }),
      ],
      {
        stdio: ['ignore', 'pipe', 'inherit'],
      },
    );
    await new Promise<void>((resolve, reject) => {
      fixture!.stdout!.once('data', () => resolve());
      fixture!.once('exit', (code) => reject(new Error(`DNS fixture exited (${code})`)));
    });
    dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'fvsfw-'));
    // Build (or load) the golden snapshot before the clock of any test starts.
    const warm = await testRuntime();
    await warm.launch({ id: `warm-${TAG}`, machine: 'c1m2' });
    await disposeRuntime(warm);
    runtime = await testRuntime();
    await start();
  });

  afterAll(async () => {
    if (server) {
      for (const vm of (await api.get('/v1/vms')).body ?? []) {
        await api.del(`/v1/vms/${(vm as { id: string }).id}`).catch(() => {});
      }
      await server.close().catch(() => {});
    }
    if (runtime) await disposeRuntime(runtime).catch(() => {});
    if (fixture?.pid) {
      try {
        process.kill(fixture.pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    await inet?.destroy();
    // Leftovers if a test failed midway: everything below is named after this run's tag.
    const links = await shAny('ip', ['-j', 'link', 'show']);
    for (const l of JSON.parse(links.stdout || '[]') as Array<{ ifname: string }>) {
      if (l.ifname.startsWith(tapPrefixFor(settings.bridge!)))
        await shAny('ip', ['link', 'del', l.ifname]);
    }
    const tables = await shAny('nft', ['-j', 'list', 'tables']);
    for (const t of (
      JSON.parse(tables.stdout || '{"nftables":[]}') as {
        nftables: Array<{ table?: { family: string; name: string } }>;
      }
    ).nftables) {
      if (t.table?.name.startsWith(`fastvm_${settings.bridge}`)) {
        await shAny('nft', ['delete', 'table', t.table.family, t.table.name]);
      }
    }
    await shAny('ip', ['link', 'del', settings.bridge!]);
    if (dataDir) fs.rmSync(dataDir, { recursive: true, force: true });
  });

  it('egress by FQDN (exact, wildcard), CIDR and default deny; DNS blocklist; bypasses blocked', async () => {
    const launched = await api.post(
      '/v1/vms',
      {
        machineType: 'c1m2',
        name: `fw2-${TAG}`,
        firewall: {
          egress: {
            default: 'deny',
            rules: [
              allowFqdn('allowed.test', '9000-9100'),
              allowFqdn('*.wild.test'),
              {
                action: 'allow',
                kind: 'cidr',
                protocol: 'tcp',
                ports: '9000',
                value: `${NET}.6/32`,
              },
              {
                action: 'allow',
                kind: 'cidr',
                protocol: 'any',
                ports: 'any',
                value: `${NET}.7/32`,
              },
            ],
          },
          dns: { mode: 'deny', domains: ['blocked.test'], blockBypass: true },
        },
      },
      V2,
    );
    expect(launched.status, JSON.stringify(launched.body)).toBe(201);
    vmId = (launched.body as { id: string }).id;
    expect(launched.body.firewall.egress.default).toBe('deny');
    expect(launched.body.firewall.ingress).toEqual({ default: 'deny', rules: [] });

    const url = (host: string) => `http://${host}:9000/hello.txt`;
    expect(
      await fetchAll(vmId, {
        allowed: url('allowed.test'),
        wild1: url('a.wild.test'),
        wild2: url('b.c.wild.test'),
        apex: url('wild.test'),
        other: url('other.test'),
        direct: url(`${NET}.4`),
        cidr: url(`${NET}.6`),
      }),
    ).toEqual({
      allowed: '200',
      wild1: '200',
      wild2: '200',
      apex: '000', // *.wild.test does not match the apex
      other: '000', // resolved, but no rule allows it
      direct: '000', // an address no allowed name resolved to
      cidr: '200',
    });
    expect(await resolves(vmId, ['blocked.test', 'other.test'])).toEqual({
      'blocked.test': false,
      'other.test': true,
    });
    // Another resolver and DoT are reachable by the CIDR rule, but blockBypass stops them…
    expect(await bypass(vmId)).toBe('dns53=blocked dot=blocked');
    // …which is what stopped them: without it they answer.
    const patched = await api.patch(
      `/v1/vms/${vmId}/firewall`,
      { dns: { mode: 'deny', domains: [] } },
      V2,
    );
    expect(patched.status).toBe(200);
    expect(patched.body.firewall.egress.rules).toHaveLength(4); // a v2 PATCH keeps other blocks
    expect(await bypass(vmId)).toBe('dns53=open dot=open');

    // DNS allowlist: other names get NXDOMAIN.
    const allowlist = await api.patch(
      `/v1/vms/${vmId}/firewall`,
      { dns: { mode: 'allow', domains: ['allowed.test', '*.wild.test'] } },
      V2,
    );
    expect(allowlist.status).toBe(200);
    expect(await resolves(vmId, ['allowed.test', 'a.wild.test', 'other.test'])).toEqual({
      'allowed.test': true,
      'a.wild.test': true,
      'other.test': false,
    });
    // An FQDN rule the gate would block is dead: 400 naming it.
    const dead = await api.patch(
      `/v1/vms/${vmId}/firewall`,
      { dns: { mode: 'allow', domains: ['other.test'] } },
      V2,
    );
    expect(dead.status).toBe(400);
    expect(dead.body.field).toBe('egress.rules[0].value');

    // Default allow with a deny rule by name.
    const allow = await api.patch(
      `/v1/vms/${vmId}/firewall`,
      {
        egress: {
          default: 'allow',
          rules: [{ ...allowFqdn('other.test', 'any'), action: 'deny', protocol: 'any' }],
        },
        dns: { mode: 'deny', domains: [] },
      },
      V2,
    );
    expect(allow.status, JSON.stringify(allow.body)).toBe(200);
    expect(
      await fetchAll(vmId, {
        other: url('other.test'),
        apex: url('wild.test'),
        cidr: url(`${NET}.6`),
      }),
    ).toEqual({
      other: '000',
      apex: '000', // same address as other.test, learned into the deny rule's set
      cidr: '200',
    });
  });

  it('a live change applies at once and keeps an open connection', async () => {
    const set = await api.put(
      `/v1/vms/${vmId}/firewall`,
      { egress: { default: 'deny', rules: [allowFqdn('allowed.test', '9000-9100')] } },
      V2,
    );
    expect(set.status).toBe(200);
    // A connection through the echo service, one round trip every 100 ms for 5 s.
    await sh_(
      vmId,
      `cat > /tmp/echo.py <<'EOF'
import socket, time
s = socket.create_connection(('allowed.test', 9100), timeout=2)
ok = fail = 0
end = time.time() + 5
while time.time() < end:
    try:
        s.sendall(b'x'); ok += s.recv(1) == b'x'
    except OSError:
        fail += 1
    time.sleep(0.1)
open('/tmp/echo.out', 'w').write('ok=%d fail=%d' % (ok, fail))
EOF
rm -f /tmp/echo.out; nohup python3 /tmp/echo.py >/dev/null 2>&1 &
for i in $(seq 50); do sleep 0.1; done; echo started`,
    );
    const t0 = performance.now();
    const removed = await api.patch(
      `/v1/vms/${vmId}/firewall`,
      { egress: { default: 'deny', rules: [] } },
      V2,
    );
    const patchMs = performance.now() - t0;
    expect(removed.status).toBe(200);
    console.log(`egress PATCH (nft applied when it returns): ${patchMs.toFixed(0)} ms`);
    expect(patchMs).toBeLessThan(2000);
    // New connections are refused at once; the open one goes on.
    expect(await fetchAll(vmId, { allowed: 'http://allowed.test:9000/hello.txt' })).toEqual({
      allowed: '000',
    });
    const out = await sh_(
      vmId,
      'for i in $(seq 100); do [ -s /tmp/echo.out ] && break; sleep 0.1; done; cat /tmp/echo.out',
    );
    const [, ok, fail] = /ok=(\d+) fail=(\d+)/.exec(out) ?? [];
    expect(Number(fail), out).toBe(0);
    expect(Number(ok), out).toBeGreaterThan(20);
  });

  it('a restored fork keeps the policy; learned addresses survive a server restart', async () => {
    await api.put(
      `/v1/vms/${vmId}/firewall`,
      { egress: { default: 'deny', rules: [allowFqdn('allowed.test')] } },
      V2,
    );
    expect(await fetchAll(vmId, { allowed: 'http://allowed.test:9000/hello.txt' })).toEqual({
      allowed: '200',
    });
    const snap = await api.post('/v1/snapshots', { vmId, name: `fw2-${TAG}` });
    expect(snap.status).toBe(201);
    const fork = await api.post('/v1/vms', { snapshotId: (snap.body as { id: string }).id }, V2);
    expect(fork.status).toBe(201);
    expect(fork.body.firewall).toEqual((await api.get(`/v1/vms/${vmId}`, V2)).body.firewall);
    const forkId = (fork.body as { id: string }).id;
    expect(
      await fetchAll(forkId, {
        allowed: 'http://allowed.test:9000/hello.txt',
        other: 'http://other.test:9000/hello.txt',
      }),
    ).toEqual({ allowed: '200', other: '000' });
    expect((await api.del(`/v1/vms/${forkId}`)).status).toBe(200);

    // Restart: the VM keeps running; the address learned for allowed.test is still allowed
    // (by address, so no new DNS answer is involved), others are not.
    await server!.close();
    server = undefined;
    await start();
    expect((await api.get(`/v1/vms/${vmId}`)).body.status).toBe('running');
    expect(
      await fetchAll(vmId, {
        learned: `http://${NET}.2:9000/hello.txt`,
        other: `http://${NET}.4:9000/hello.txt`,
      }),
    ).toEqual({ learned: '200', other: '000' });
    await api.del(`/v1/snapshots/${(snap.body as { id: string }).id}`);
  });
});
