/**
 * Egress firewall cost (issue 20, group `egress`): connection setup and name resolution from a
 * VM with egress rules on against off, alternating in the same run. An in-process server with
 * host networking (its own bridge and subnet) and a network namespace of the bench's own as
 * "the internet": the tests' DNS fixture (a DNS server and a TCP echo on 9100).
 *
 * - `egress_connect`: one TCP connect + close to the echo service from the guest (Python,
 *   `time.perf_counter` around `create_connection`), with the policy *on*: egress default deny,
 *   16 CIDR rules that do not match, then an FQDN rule whose learned address matches.
 *   `egress_connect_off`: the same with no egress policy.
 * - `egress_resolve`: one `getaddrinfo` of the FQDN rule's name (the forwarder asks upstream,
 *   then puts the answer into the rule's nft set before answering); `_off`: the same name with
 *   no FQDN rule (the forwarder answers without touching nft).
 * Not available without host networking (root, /dev/net/tun, nft): skipped with the reason.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createQemuRuntime, probeNetworking, type QemuRuntime } from '@fastvm/runtime';
import { createNetworkManager, startServer, type ServerHandle } from '@fastvm/server';
import { FastVM } from 'fastvm';
import { pino } from 'pino';
import type { Recorder } from './stats.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const FIXTURE = path.resolve(here, '../packages/server/test/fixtures/fake-internet-dns.mjs');

export const EGRESS_SCENARIOS = ['egress_connect', 'egress_resolve'] as const;

const BRIDGE = process.env.FASTVM_BENCH_EGRESS_BRIDGE ?? 'fvbe0';
const SUBNET = process.env.FASTVM_BENCH_EGRESS_SUBNET ?? '10.228.0.0/24';
const OUTER = '10.229.0';

function ip(args: string[]): void {
  const r = spawnSync('ip', args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`ip ${args.join(' ')}: ${r.stderr}`);
}

export async function benchEgress(
  rec: Recorder,
  log: (s: string) => void,
  opts: { quick: boolean; root: string },
): Promise<string | undefined> {
  const probe = await probeNetworking();
  if (!probe.available) return `egress: skipped, needs host networking: ${probe.reason}`;
  const tag = crypto.randomBytes(2).toString('hex');
  const ns = `fvbe-${tag}`;
  const veth = `fvbe${tag}`;
  let fixture: ChildProcess | undefined;
  let runtime: QemuRuntime | undefined;
  let server: ServerHandle | undefined;
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'fvbe-'));
  try {
    ip(['netns', 'add', ns]);
    ip(['link', 'add', veth, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns]);
    ip(['addr', 'add', `${OUTER}.1/24`, 'dev', veth]);
    ip(['link', 'set', veth, 'up']);
    ip(['-n', ns, 'addr', 'add', `${OUTER}.2/24`, 'dev', 'eth0']);
    ip(['-n', ns, 'link', 'set', 'eth0', 'up']);
    ip(['-n', ns, 'link', 'set', 'lo', 'up']);
    ip(['-n', ns, 'route', 'add', 'default', 'via', `${OUTER}.1`]);
    const records = { 'on.bench': `${OUTER}.2`, 'off.bench': `${OUTER}.2` };
    fixture = spawn(
      'ip',
      [
        'netns',
        'exec',
        ns,
        process.execPath,
        FIXTURE,
        JSON.stringify({ records, addrs: [`${OUTER}.2`], ttl: 300 }),
      ],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    );
    await new Promise<void>((resolve, reject) => {
      fixture!.stdout!.once('data', () => resolve());
      fixture!.once('exit', (code) => reject(new Error(`DNS fixture exited (${code})`)));
    });
    runtime = await createQemuRuntime({ dataDir: path.join(opts.root, 'egress-rt') });
    const { network } = await createNetworkManager({
      dataDir,
      logger: pino({ level: 'silent' }),
      settings: {
        enabled: true,
        bridge: BRIDGE,
        ipv4Subnet: SUBNET,
        dnsUpstreams: [{ host: `${OUTER}.2`, port: 53 }],
      },
    });
    server = await startServer({ port: 0, dataDir, runtime, network, logLevel: 'silent' });
    const client = new FastVM({
      apiKey: server.bootstrapKey,
      baseUrl: server.url,
      firewallVersion: 2,
    });
    try {
      const vm = await client.launch({ name: 'egress-bench' });
      const off = { egress: { default: 'allow' as const } };
      const on = {
        egress: {
          default: 'deny' as const,
          rules: [
            ...Array.from({ length: 16 }, (_, i) => ({
              action: 'allow' as const,
              kind: 'cidr' as const,
              protocol: 'tcp' as const,
              ports: '443',
              value: `198.18.${i}.0/24`,
            })),
            {
              action: 'allow' as const,
              kind: 'fqdn' as const,
              protocol: 'tcp' as const,
              ports: '9100',
              value: 'on.bench',
            },
          ],
        },
      };
      const n = opts.quick ? 50 : 200;
      const script = (name: string): string => `python3 - <<'EOF'
import socket, time, json
con, res = [], []
for _ in range(${n}):
    t = time.perf_counter(); socket.getaddrinfo('${name}', 9100, socket.AF_INET, socket.SOCK_STREAM); res.append((time.perf_counter() - t) * 1000)
addr = socket.getaddrinfo('${name}', 9100, socket.AF_INET)[0][4][0]
for _ in range(${n}):
    t = time.perf_counter(); s = socket.create_connection((addr, 9100), timeout=5); con.append((time.perf_counter() - t) * 1000); s.close()
print(json.dumps({'con': con, 'res': res}))
EOF`;
      const order = opts.quick ? [false, true] : [false, true, true, false];
      for (const enabled of order) {
        await client.patchFirewall(vm, enabled ? on : off);
        const r = await client.run(vm, script(enabled ? 'on.bench' : 'off.bench'), {
          timeoutSec: 600,
        });
        if (r.exitCode !== 0) throw new Error(`egress bench in the guest failed: ${r.stderr}`);
        const { con, res } = JSON.parse(r.stdout) as { con: number[]; res: number[] };
        const sfx = enabled ? '' : '_off';
        for (const v of con) rec.add(`egress_connect${sfx}`, 'ms', v);
        for (const v of res) rec.add(`egress_resolve${sfx}`, 'ms', v);
        log(`  egress ${enabled ? 'on' : 'off'}: ${con.length} connects, ${res.length} lookups`);
      }
      rec.note(
        'egress_connect',
        'TCP connect+close from the guest, egress default deny, 16 non-matching CIDR rules, then the FQDN rule matching',
      );
      rec.note('egress_connect_off', 'the same with no egress policy');
      rec.note(
        'egress_resolve',
        "getaddrinfo in the guest of an FQDN rule's name (forwarder + nft set update)",
      );
      rec.note('egress_resolve_off', 'the same name with no FQDN rule (forwarder only)');
      await client.remove(vm);
    } finally {
      await client.close();
    }
    return undefined;
  } finally {
    await server?.close().catch(() => {});
    await runtime?.destroyAll().catch(() => {});
    if (fixture?.pid) {
      try {
        process.kill(fixture.pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    spawnSync('ip', ['link', 'del', veth]);
    spawnSync('ip', ['netns', 'del', ns]);
    fs.rmSync(dataDir, { recursive: true, force: true });
  }
}
