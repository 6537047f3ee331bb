/**
 * Networking through the API with real QEMU VMs (issue #7): `publicIpv6`, the firewall policy
 * enforced at launch, `PATCH /firewall` taking effect within a second, restores inheriting the
 * snapshot's policy with their own address, cleanup on delete, and a restart that keeps a live
 * VM's network and policy. A routed network namespace stands in for the internet.
 * (The full isolation/anti-spoofing matrix is in packages/runtime/test/network.test.ts.)
 */
import { execFile } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  createQemuRuntime,
  defaultCacheDir,
  tapPrefixFor,
  type QemuRuntime,
} from '@fastvm/runtime';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startServer, type ServerHandle } from '../src/index.js';
import {
  HostNetworkManager,
  createNetworkManager,
  networkSettingsFromEnv,
  type NetworkSettings,
} from '../src/services/host-network.js';
import type { FirewallPolicy } from '../src/domain/index.js';
import { TestClient } from './helpers.js';
import { networkSkipReason } from '../../runtime/test/netns.js';

const SKIP = networkSkipReason();
const TAG = crypto.randomBytes(2).toString('hex');
const NS = `fvsnet-${TAG}`;
const VETH = `fvsi${TAG}`;
// The namespace's prefix: a random ULA /64, routed through the host.
const NS_PREFIX = `fd${crypto
  .randomBytes(7)
  .toString('hex')
  .replace(/(..)(....)(....)(....)/, '$1:$2:$3:$4')}`;
const NS_HOST = `${NS_PREFIX}::1`;
const NS_ADDR = `${NS_PREFIX}::2`;
// A runtime data dir of its own: the server's recovery stops every VM in it that it does not
// own, so it must not share one with other test files. Kept across runs for the golden snapshot.
const RUNTIME_DIR = path.join(defaultCacheDir(), 'test-server-network');

function run(cmd: string, args: string[]): Promise<{ code: number; out: string }> {
  return new Promise((resolve) => {
    execFile(cmd, args, { encoding: 'utf8', timeout: 20_000 }, (err, stdout) => {
      resolve({ code: err ? 1 : 0, out: stdout });
    });
  });
}

/** HTTP status of `http://[addr]:port/` fetched from the namespace; `000` when nothing answers. */
async function fromInternet(addr: string, port: number, timeoutS = 1): Promise<string> {
  const r = await run('ip', [
    ...['netns', 'exec', NS, 'curl', '-s', '-o', '/dev/null', '-w', '%{http_code}'],
    ...['--connect-timeout', String(timeoutS), '-m', String(timeoutS + 2)],
    `http://[${addr}]:${port}/`,
  ]);
  return /^\d{3}$/.test(r.out) ? r.out : '000';
}

describe.skipIf(SKIP)(`API networking (real QEMU VMs)${SKIP ? ` — skipped: ${SKIP}` : ''}`, () => {
  let dataDir: string;
  let runtime: QemuRuntime;
  let server: ServerHandle | undefined;
  let api: TestClient;
  const settings: NetworkSettings = {
    enabled: true,
    bridge: `fvbs${TAG}`,
    ipv4Subnet: `10.215.${crypto.randomBytes(1)[0]!}.0/24`,
  };

  async function start(): Promise<void> {
    runtime = await createQemuRuntime({ dataDir: RUNTIME_DIR });
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

  const exec = async (vm: string, command: string) => {
    const r = await api.post(`/v1/vms/${vm}/exec`, { command, timeoutSec: 30 });
    expect(r.status).toBe(200);
    return r.body as { exitCode: number; stdout: string };
  };

  beforeAll(async () => {
    dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'fvsnet-'));
    await run('ip', ['netns', 'add', NS]);
    await run('ip', ['link', 'add', VETH, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', NS]);
    await run('ip', ['addr', 'add', `${NS_HOST}/64`, 'dev', VETH, 'nodad']);
    await run('ip', ['link', 'set', VETH, 'up']);
    await run('ip', ['-n', NS, 'addr', 'add', `${NS_ADDR}/64`, 'dev', 'eth0', 'nodad']);
    await run('ip', ['-n', NS, 'link', 'set', 'eth0', 'up']);
    await run('ip', ['-n', NS, 'link', 'set', 'lo', 'up']);
    const r = await run('ip', ['-n', NS, '-6', 'route', 'add', 'default', 'via', NS_HOST]);
    expect(r.code).toBe(0);
    // Build (or load) the golden snapshot before the clock of any test starts.
    const warm = await createQemuRuntime({ dataDir: RUNTIME_DIR });
    await warm.launch({ id: `warm-${TAG}`, machine: 'c1m2' });
    await warm.destroyAll();
    await start();
  });

  afterAll(async () => {
    if (server) {
      for (const vm of (await api.get('/v1/vms')).body ?? []) {
        await api.del(`/v1/vms/${(vm as { id: string }).id}`).catch(() => {});
      }
      await server.close().catch(() => {});
    }
    await runtime?.destroyAll().catch(() => {});
    // Leftovers if a test failed midway: everything below is named after this run's tag.
    const links = await run('ip', ['-j', 'link', 'show']);
    for (const l of JSON.parse(links.out || '[]') as Array<{ ifname: string }>) {
      if (l.ifname.startsWith(tapPrefixFor(settings.bridge!)))
        await run('ip', ['link', 'del', l.ifname]);
    }
    const tables = await run('nft', ['-j', 'list', 'tables']);
    for (const t of (
      JSON.parse(tables.out || '{"nftables":[]}') as {
        nftables: Array<{ table?: { family: string; name: string } }>;
      }
    ).nftables) {
      if (t.table?.name.startsWith(`fastvm_${settings.bridge}`)) {
        await run('nft', ['delete', 'table', t.table.family, t.table.name]);
      }
    }
    await run('ip', ['link', 'del', settings.bridge!]);
    await run('ip', ['link', 'del', VETH]);
    await run('ip', ['netns', 'del', NS]);
    if (dataDir) fs.rmSync(dataDir, { recursive: true, force: true });
  });

  it('enforces the launch policy, applies PATCH within a second, restores inherit the policy', async () => {
    const launched = await api.post('/v1/vms', {
      machineType: 'c1m2',
      name: `net-${TAG}`,
      firewall: { mode: 'restricted', ingress: [{ protocol: 'tcp', portStart: 8080 }] },
    });
    expect(launched.status).toBe(201);
    const vm = launched.body as { id: string; publicIpv6: string | null };
    expect(vm.publicIpv6).toMatch(/:/);
    expect(vm.publicIpv6).not.toContain('/');

    const up = await exec(
      vm.id,
      'cd /tmp && for p in 8080 8081; do nohup python3 -m http.server --bind :: $p >/dev/null 2>&1 & done; ' +
        'for i in $(seq 150); do curl -s -o /dev/null localhost:8080 && curl -s -o /dev/null localhost:8081 && exit 0; sleep 0.1; done; exit 1',
    );
    expect(up.exitCode).toBe(0);
    const ip = vm.publicIpv6!;
    expect(await Promise.all([fromInternet(ip, 8080), fromInternet(ip, 8081)])).toEqual([
      '200',
      '000',
    ]);

    const t0 = performance.now();
    const patched = await api.patch(`/v1/vms/${vm.id}/firewall`, {
      ingress: [
        { protocol: 'tcp', portStart: 8080 },
        { protocol: 'tcp', portStart: 8081 },
      ],
    });
    expect(patched.status).toBe(200);
    let code = '000';
    while (code !== '200' && performance.now() - t0 < 1000)
      code = await fromInternet(ip, 8081, 0.3);
    expect(code).toBe('200');
    console.log(`PATCH /firewall → port answering: ${(performance.now() - t0).toFixed(0)} ms`);

    // IPv4 source CIDRs are refused (the firewall filters public IPv6).
    const bad = await api.put(`/v1/vms/${vm.id}/firewall`, {
      mode: 'restricted',
      ingress: [{ protocol: 'tcp', portStart: 22, sourceCidrs: ['10.0.0.0/8'] }],
    });
    expect(bad.status).toBe(400);

    // Snapshot under "8080 only"; the restore inherits that, with its own address.
    await api.put(`/v1/vms/${vm.id}/firewall`, {
      mode: 'restricted',
      ingress: [{ protocol: 'tcp', portStart: 8080 }],
    });
    const snap = await api.post('/v1/snapshots', { vmId: vm.id, name: `snap-${TAG}` });
    expect(snap.status).toBe(201);
    const fork = await api.post('/v1/vms', { snapshotId: (snap.body as { id: string }).id });
    expect(fork.status).toBe(201);
    const f = fork.body as { id: string; publicIpv6: string; firewall: { ingress: unknown[] } };
    expect(f.publicIpv6).toMatch(/:/);
    expect(f.publicIpv6).not.toBe(ip);
    expect(f.firewall.ingress).toHaveLength(1);
    expect(
      await Promise.all([fromInternet(f.publicIpv6, 8080), fromInternet(f.publicIpv6, 8081)]),
    ).toEqual(['200', '000']);

    // Deleting a VM removes its tap.
    const ports = () =>
      Object.values(
        (
          JSON.parse(fs.readFileSync(path.join(dataDir, 'network', 'network.json'), 'utf8')) as {
            ports: Record<string, { tap: string; vmId?: string }>;
          }
        ).ports,
      ).filter((p) => p.vmId);
    const before = ports();
    expect(before.map((p) => p.vmId).sort()).toEqual([vm.id, f.id].sort());
    const forkTap = before.find((p) => p.vmId === f.id)!.tap;
    expect((await run('ip', ['link', 'show', forkTap])).code).toBe(0);
    expect((await api.del(`/v1/vms/${f.id}`)).status).toBe(200);
    expect(ports().map((p) => p.vmId)).toEqual([vm.id]);
    expect((await run('ip', ['link', 'show', forkTap])).code).not.toBe(0);
    expect(await fromInternet(f.publicIpv6, 8080)).toBe('000');
    await api.del(`/v1/snapshots/${(snap.body as { id: string }).id}`);
  });

  it('a restart keeps a live VM reachable under its policy; shutdown without VMs removes the bridge', async () => {
    const vm = ((await api.get('/v1/vms')).body as Array<{ id: string; publicIpv6: string }>)[0]!;
    await server!.close();
    server = undefined;
    await start();
    const again = (await api.get(`/v1/vms/${vm.id}`)).body as {
      status: string;
      publicIpv6: string;
    };
    expect(again.status).toBe('running');
    expect(again.publicIpv6).toBe(vm.publicIpv6);
    expect(
      await Promise.all([fromInternet(vm.publicIpv6, 8080), fromInternet(vm.publicIpv6, 8081)]),
    ).toEqual(['200', '000']);

    expect((await api.del(`/v1/vms/${vm.id}`)).status).toBe(200);
    await server!.close();
    server = undefined;
    expect((await run('ip', ['link', 'show', settings.bridge!])).code).not.toBe(0);
    const tables = (await run('nft', ['list', 'tables'])).out;
    expect(tables).not.toContain(settings.bridge!);
  });
});

describe('network adapter (no VMs)', () => {
  it('reads FASTVM_NETWORK* settings', () => {
    expect(networkSettingsFromEnv({})).toEqual({ enabled: true });
    expect(networkSettingsFromEnv({ FASTVM_NETWORK: 'off' }).enabled).toBe(false);
    expect(
      networkSettingsFromEnv({
        FASTVM_IPV6_PREFIX: '2001:db8:1::/64',
        FASTVM_IPV4_SUBNET: '10.9.0.0/16',
        FASTVM_BRIDGE: 'br9',
        FASTVM_HOST_TCP_PORTS: '9000, 9001',
      }),
    ).toEqual({
      enabled: true,
      ipv6Prefix: '2001:db8:1::/64',
      ipv4Subnet: '10.9.0.0/16',
      bridge: 'br9',
      hostTcpPorts: [9000, 9001],
    });
    expect(() => networkSettingsFromEnv({ FASTVM_HOST_TCP_PORTS: '80,x' })).toThrow(/invalid port/);
    expect(() => networkSettingsFromEnv({ FASTVM_NETWORK: 'maybe' })).toThrow();
  });

  it('FASTVM_NETWORK=off gives VMs no network and says so', async () => {
    const { network, summary } = await createNetworkManager({
      dataDir: os.tmpdir(),
      logger: pino({ level: 'silent' }),
      settings: { enabled: false },
    });
    expect(summary).toMatch(/networking off: FASTVM_NETWORK=off/);
    expect(await network.attach('x', { mode: 'restricted', ingress: [] })).toEqual({
      publicIpv6: null,
    });
  });

  it.skipIf(SKIP)(
    'a second server with another data dir on a bridge a running one owns is refused, naming FASTVM_BRIDGE',
    async () => {
      const settings: NetworkSettings = {
        enabled: true,
        bridge: `fvso${TAG}`,
        ipv4Subnet: `10.219.${crypto.randomBytes(1)[0]!}.0/24`,
      };
      const logger = pino({ level: 'silent' });
      const dirs = [0, 1].map(() => fs.mkdtempSync(path.join(os.tmpdir(), 'fvsown-')));
      const { network } = await createNetworkManager({ dataDir: dirs[0]!, logger, settings });
      try {
        const err = await createNetworkManager({ dataDir: dirs[1]!, logger, settings }).then(
          () => undefined,
          (e: unknown) => e as Error,
        );
        expect(err?.message).toMatch(
          new RegExp(
            `bridge fvso${TAG} belongs to another running FastVM server \\(data dir ${dirs[0]}, pid ${process.pid}\\).*FASTVM_BRIDGE.*FASTVM_IPV4_SUBNET`,
          ),
        );
      } finally {
        await (network as HostNetworkManager).host.shutdown();
        for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
      }
    },
  );

  it('a policy changed while the VM is still being attached is the one applied', async () => {
    const applied: FirewallPolicy[] = [];
    let allocated = false;
    let releaseAllocate!: () => void;
    const net = { tap: 't', mac: '02:00:00:00:00:02', ipv6: 'fd00::5/64' };
    const host = {
      allocate: () =>
        new Promise((resolve) => {
          releaseAllocate = () => {
            allocated = true;
            resolve(net);
          };
        }),
      applyFirewall: async (_id: string, p: FirewallPolicy) => void applied.push(p),
      get: () => (allocated ? net : undefined),
      release: async () => {},
    };
    const adapter = new HostNetworkManager(host as never, pino({ level: 'silent' }));
    const launchPolicy: FirewallPolicy = { mode: 'restricted', ingress: [] };
    const patched: FirewallPolicy = { mode: 'open', ingress: [] };
    const attaching = adapter.attach('vm', launchPolicy);
    await adapter.onFirewallChange('vm', patched); // no tap yet
    releaseAllocate();
    expect(await attaching).toEqual({ network: net, publicIpv6: 'fd00::5' });
    expect(applied).toEqual([patched]);
  });
});
