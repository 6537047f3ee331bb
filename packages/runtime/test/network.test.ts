/**
 * VM networking with real QEMU VMs (issue #7): taps on a bridge, IPv6 + NATed IPv4, the per-tap
 * nftables firewall, isolation and anti-spoofing. A network namespace, routed by the host,
 * stands in for the internet; nothing else is ever sent traffic.
 */
import { execFile, spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import net, { type AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  NetworkManager,
  formatIpv6,
  parseIpv6,
  publicIpv6,
  validatePolicy,
  type FirewallPolicy,
} from '../src/network.js';
import { GUEST_NET } from '../src/guest-net.js';
import type { QemuRuntime } from '../src/runtime.js';
import type { VmNetwork } from '../src/types.js';
import { disposeRuntime, testRuntime, text, uid } from './helpers.js';
import {
  createInternet,
  networkSkipReason,
  otherInPrefix,
  sh,
  shAny,
  url,
  type Internet,
} from './netns.js';

const SKIP = networkSkipReason();

/** The IPv6 link-local address the kernel derives from a MAC (modified EUI-64), as ip(8) prints it. */
function linkLocalOf(mac: string): string {
  const b = mac.split(':').map((h) => parseInt(h, 16));
  b[0]! ^= 2;
  const hex = (x: number, y: number) => ((x << 8) | y).toString(16);
  return `fe80::${hex(b[0]!, b[1]!)}:${hex(b[2]!, 0xff)}:${hex(0xfe, b[3]!)}:${hex(b[4]!, b[5]!)}`;
}

/** Taps a process holds open: the `iff:` line the kernel shows for a tun descriptor. */
function tapsHeldBy(pid: number): string[] {
  const taps: string[] = [];
  for (const fd of fs.readdirSync(`/proc/${pid}/fdinfo`)) {
    const m = /^iff:\s*(\S+)$/m.exec(fs.readFileSync(`/proc/${pid}/fdinfo/${fd}`, 'utf8'));
    if (m) taps.push(m[1]!);
  }
  return taps;
}

/** Attaches to tap `name` as uid:gid (TUNSETIFF, IFF_TAP | IFF_NO_PI); null when it could. */
function attachAs(name: string, uid: number, gid: number): string | null {
  const script =
    'import fcntl, os, struct, sys\n' +
    'fd = os.open("/dev/net/tun", os.O_RDWR)\n' +
    'fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH", sys.argv[1].encode(), 0x1002))\n';
  const r = spawnSync('/usr/bin/python3', ['-c', script, name], { uid, gid, encoding: 'utf8' });
  return r.status === 0 ? null : r.stderr.trim().split('\n').pop()!;
}

const TAG = crypto.randomBytes(2).toString('hex');
const V4_THIRD = crypto.randomBytes(1)[0]!;
const PREFIX = uid('net');

const restricted = (...ports: number[]): FirewallPolicy => ({
  mode: 'restricted',
  ingress: ports.map((p) => ({ protocol: 'tcp', portStart: p })),
});

describe.skipIf(SKIP)(`VM networking (real QEMU VMs)${SKIP ? ` — skipped: ${SKIP}` : ''}`, () => {
  let rt: QemuRuntime;
  let nm: NetworkManager;
  let inet: Internet;
  let stateDir: string;
  let hostServer: http.Server;
  let hostPort = 0;
  const logs: string[] = [];
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
  const vms = new Map<string, VmNetwork>();
  const A = `${PREFIX}-a`;
  const B = `${PREFIX}-b`;

  const guest = async (vm: string, script: string, timeoutMs = 30_000) =>
    text(await rt.exec(vm, { argv: ['sh', '-c', script], timeoutMs }));
  const ip6 = (vm: string) => publicIpv6(vms.get(vm))!;
  const ip4 = (vm: string) => vms.get(vm)!.ipv4!.split('/')[0]!;

  /**
   * `promised`: hand the runtime a promise of the network, as the server does, one that is still
   * pending when QEMU starts (so the tap is plugged in late; one already there is on the NIC's hub
   * from the start, which the server's networking tests see).
   */
  async function start(id: string, snapshotId?: string, promised = false): Promise<void> {
    const allocating = nm.allocate(id);
    const network = promised
      ? allocating.then(async (n) => {
          await sleep(300);
          return n;
        })
      : await allocating;
    if (snapshotId) await rt.restore({ id, snapshotId, network });
    else await rt.launch({ id, machine: 'c1m2', network });
    vms.set(id, await allocating);
  }

  /** A launch that lets the runtime claim its network, as the server does (`NetworkClaim`). */
  async function launchClaiming(id: string): Promise<void> {
    await rt.launch({
      id,
      machine: 'c1m2',
      network: async (pooledFrom) =>
        (pooledFrom ? nm.rebind(pooledFrom, id) : undefined) ?? nm.allocate(id),
    });
    vms.set(id, nm.get(id)!);
  }

  async function stop(id: string): Promise<void> {
    await rt.destroy(id);
    await nm.release(id);
    vms.delete(id);
  }

  beforeAll(async () => {
    stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'fvnet-'));
    // A comes from the warm pool (its NIC is plugged into its tap after the restore); B is a
    // plain restore of the golden given its network as a promise (the tap is plugged in while
    // it starts); forks get their tap at QEMU start: the tests below cover all three ways.
    rt = await testRuntime(undefined, { pool: 1, prewarm: ['c1m2'], log: (m) => logs.push(m) });
    nm = await NetworkManager.create({
      stateDir,
      bridge: `fvbt${TAG}`,
      tapPrefix: `ft${TAG}`,
      ipv4Subnet: `10.213.${V4_THIRD}.0/24`,
    });
    expect(nm.reason).toBeUndefined();
    inet = await createInternet(TAG, V4_THIRD);
    hostServer = http.createServer((_req, res) => res.end('host-ok'));
    await new Promise<void>((resolve) => hostServer.listen(0, '::', resolve));
    hostPort = (hostServer.address() as AddressInfo).port;

    for (let i = 0; i < 1200 && rt.poolReady('c1m2') < 1; i++) await sleep(50);
    await start(A);
    expect(logs.some((m) => m.includes(`launched ${A} from the pool`))).toBe(true);
    await start(B, undefined, true);
    expect(logs.some((m) => m.includes(`launched ${B} from the pool`))).toBe(false);
    expect(logs.some((m) => m.includes(`restored ${B} from`) && m.includes('network'))).toBe(true);
    const up = await guest(
      A,
      'cd /tmp && for p in 8080 8081; do nohup python3 -m http.server --bind :: $p >/tmp/http-$p.log 2>&1 & done; ' +
        'for i in $(seq 150); do curl -s -o /dev/null localhost:8080 && curl -s -o /dev/null localhost:8081 && echo up && exit 0; sleep 0.1; done; exit 1',
    );
    expect(up.out).toBe('up\n');
  });

  afterAll(async () => {
    for (const id of vms.keys()) await rt?.destroy(id).catch(() => {});
    await disposeRuntime(rt).catch(() => {});
    await nm?.shutdown().catch(() => {});
    await inet?.destroy().catch(() => {});
    await new Promise((resolve) => hostServer?.close(resolve));
    if (stateDir) fs.rmSync(stateDir, { recursive: true, force: true });
  });

  it("every guest keeps the golden's fixed MAC and private addresses; the host translates", async () => {
    for (const vm of [A, B]) {
      const r = await guest(vm, 'cat /sys/class/net/eth0/address; ip -br addr show dev eth0');
      expect(r.out.split('\n')[0]).toBe(GUEST_NET.mac);
      expect(r.out).toContain(`${GUEST_NET.ipv6}/64`);
      expect(r.out).toContain(`${GUEST_NET.ipv4}/32`);
      // The public address is the host's business only.
      expect(r.out).not.toContain(ip6(vm));
    }
    expect(ip6(A)).not.toBe(ip6(B));
    expect(ip4(A)).not.toBe(ip4(B));
    expect(vms.get(A)!.ipv6Gateway).toBe(nm.ipv6Gateway);
  });

  it('restricted admits only the listed ports; a change applies within a second; open admits all', async () => {
    await nm.applyFirewall(A, restricted(8080));
    const [a1, b1] = await Promise.all([
      inet.httpStatus(url(ip6(A), 8080)),
      inet.httpStatus(url(ip6(A), 8081)),
    ]);
    expect([a1, b1]).toEqual(['200', '000']);
    expect((await nm.dropCounters(A)).firewall).toBeGreaterThan(0);

    const t0 = performance.now();
    await nm.applyFirewall(A, restricted(8080, 8081));
    const applyMs = performance.now() - t0;
    let answered = '000';
    while (performance.now() - t0 < 1000 && answered !== '200') {
      answered = await inet.httpStatus(url(ip6(A), 8081), { timeoutS: 0.3 });
    }
    const effectMs = performance.now() - t0;
    console.log(
      `firewall change: nft applied in ${applyMs.toFixed(1)} ms, port answered after ${effectMs.toFixed(1)} ms`,
    );
    expect(answered).toBe('200');
    expect(effectMs).toBeLessThan(1000);

    await nm.applyFirewall(A, { mode: 'open', ingress: [] });
    const open = await Promise.all([8080, 8081].map((p) => inet.httpStatus(url(ip6(A), p))));
    expect(open).toEqual(['200', '200']);

    // Back to the default (restricted, no rules): nothing answers.
    await nm.applyFirewall(A, restricted());
    expect(await inet.httpStatus(url(ip6(A), 8080))).toBe('000');
  });

  it('a source-CIDR rule admits one address and not another', async () => {
    await nm.applyFirewall(A, {
      mode: 'restricted',
      ingress: [{ protocol: 'tcp', portStart: 8080, sourceCidrs: [`${inet.v6a}/128`] }],
    });
    const [fromA, fromB] = await Promise.all([
      inet.httpStatus(url(ip6(A), 8080), { from: inet.v6a }),
      inet.httpStatus(url(ip6(A), 8080), { from: inet.v6b }),
    ]);
    expect([fromA, fromB]).toEqual(['200', '000']);
    // A port range with a prefix that covers both addresses.
    await nm.applyFirewall(A, {
      mode: 'restricted',
      ingress: [
        { protocol: 'tcp', portStart: 8000, portEnd: 8100, sourceCidrs: [`${inet.v6a}/64`] },
      ],
    });
    const both = await Promise.all([
      inet.httpStatus(url(ip6(A), 8081), { from: inet.v6a }),
      inet.httpStatus(url(ip6(A), 8081), { from: inet.v6b }),
    ]);
    expect(both).toEqual(['200', '200']);
  });

  it('guests reach the internet over IPv6 and NATed IPv4; replies pass a closed firewall', async () => {
    await nm.applyFirewall(A, restricted());
    const r = await guest(
      A,
      `curl -s -m 5 ${url(inet.v6a, 9000, 'hello.txt')} && curl -s -m 5 ${url(inet.v4, 9000, 'hello.txt')}`,
    );
    expect(r.out).toBe(inet.hello + inet.hello);
    const log = inet.serverLog();
    expect(log).toContain(ip6(A)); // IPv6 is not translated
    expect(log).toContain(inet.hostV4); // IPv4 leaves through the host's address
    expect(log).not.toContain(ip4(A));
  });

  it('VMs cannot reach each other, even with the target open', async () => {
    await nm.applyFirewall(A, { mode: 'open', ingress: [] });
    expect(await inet.httpStatus(url(ip6(A), 8080))).toBe('200');
    const probe = `for u in ${url(ip6(A), 8080)} ${url(ip4(A), 8080)}; do curl -s -o /dev/null -w '%{http_code} ' --connect-timeout 1 $u; done`;
    // No shared segment: B's packets reach A only routed through the host, which drops them.
    const r = await guest(
      B,
      `${probe}; curl -s -o /dev/null -w '%{http_code}' -m 5 ${url(inet.v6a, 9000)}`,
    );
    // Blocked both ways; the internet still works.
    expect(r.out).toBe('000 000 200');
  });

  it('VMs cannot reach host ports unless they are allow-listed', async () => {
    const targets = [nm.ipv6Gateway, nm.ipv4Gateway, inet.hostV6].map((a) => url(a, hostPort));
    const probe = `for u in ${targets.join(' ')}; do curl -s -o /dev/null -w '%{http_code} ' --connect-timeout 1 $u; done`;
    expect((await guest(A, probe)).out).toBe('000 000 000 ');
    await nm.setHostTcpPorts([hostPort]);
    expect((await guest(A, probe)).out).toBe('200 200 200 ');
    await nm.setHostTcpPorts([]);
    expect((await guest(A, probe)).out).toBe('000 000 000 ');
  });

  it('a TCP connection from outside to a VM survives a snapshot and a fork of it', async () => {
    await nm.applyFirewall(A, restricted(8080, 9100));
    const up = await guest(
      A,
      'cat > /tmp/echo.py <<"EOF"\n' +
        'import socket\n' +
        's = socket.socket(socket.AF_INET6); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n' +
        's.bind(("::", 9100)); s.listen(1); c, _ = s.accept()\n' +
        'for line in c.makefile("rb"):\n' +
        '    c.sendall(b"echo " + line)\n' +
        'EOF\n' +
        'nohup python3 /tmp/echo.py >/dev/null 2>&1 & ' +
        'for i in $(seq 100); do ss -ltn | grep -q :9100 && echo up && exit 0; sleep 0.1; done; exit 1',
    );
    expect(up.out).toBe('up\n');
    const sock = net.connect({ host: ip6(A), port: 9100 });
    await new Promise<void>((resolve, reject) =>
      sock.once('connect', resolve).once('error', reject),
    );
    let got = '';
    sock.on('data', (b: Buffer) => (got += b.toString()));
    const say = async (word: string) => {
      sock.write(`${word}\n`);
      for (let i = 0; i < 100 && !got.includes(`echo ${word}\n`); i++) await sleep(50);
      expect(got).toContain(`echo ${word}\n`);
    };
    const snap = `${PREFIX}-tcp`;
    const fork = `${PREFIX}-tcpfork`;
    try {
      await say('before');
      await rt.snapshot(A, snap);
      await say('after-snapshot');
      await start(fork, snap);
      await say('after-fork');
      // The fork has its own public address; the source's connection is the source's alone.
      expect(ip6(fork)).not.toBe(ip6(A));
      expect(got).toBe('echo before\necho after-snapshot\necho after-fork\n');
    } finally {
      sock.destroy();
      if (vms.has(fork)) await stop(fork);
      await rt.deleteSnapshot(snap).catch(() => {});
    }
  });

  it('a guest cannot send from another address', async () => {
    const fake6 = otherInPrefix(ip6(B), 0xdeadn);
    const fake4 = `10.213.${V4_THIRD}.250`;
    const before = await nm.dropCounters(B);
    const both = `${url(inet.v6a, 9000)} ${url(inet.v4, 9000)}`;
    const r = await guest(
      B,
      `c() { for u in ${both}; do curl -s -o /dev/null -w '%{http_code} ' --connect-timeout 1 -m 5 "$@" $u; done; }; ` +
        // Real sources first, so the gateway's neighbour entries are resolved and spoofed
        // packets really leave the guest.
        `c; ip addr add ${fake6}/128 dev eth0 nodad; ip addr add ${fake4}/32 dev eth0; ` +
        `c --interface ${fake6}; c --interface ${fake4}; ` +
        `ip addr del ${fake6}/128 dev eth0; ip addr del ${fake4}/32 dev eth0; c`,
    );
    // Each spoofed source fails (for the other family it is not even usable).
    expect(r.out).toBe('200 200 000 000 000 000 200 200 ');
    expect(inet.serverLog()).not.toContain(fake6);
    // They were dropped on the tap, as they left the guest.
    expect((await nm.dropCounters(B)).spoofed).toBeGreaterThan(before.spoofed);
  });

  it('two forks of one snapshot keep its guest addresses, get their own public ones, and both answer', async () => {
    const snap = `${PREFIX}-snap`;
    await rt.snapshot(A, snap);
    const forks = [`${PREFIX}-f1`, `${PREFIX}-f2`];
    const t0 = performance.now();
    await Promise.all(forks.map((f) => start(f, snap)));
    console.log(`two forks restored with networking in ${(performance.now() - t0).toFixed(0)} ms`);
    try {
      const addrs = new Set([A, ...forks].map(ip6));
      expect(addrs.size).toBe(3);
      expect(new Set([A, ...forks].map(ip4)).size).toBe(3);
      for (const f of forks) {
        const r = await guest(
          f,
          'cat /sys/class/net/eth0/address; ip -6 -br addr show dev eth0 scope global; ip -6 -br addr show dev eth0 scope link; ' +
            `curl -s -m 5 ${url(inet.v6a, 9000, 'hello.txt')}`,
        );
        // The snapshot's network configuration, untouched (no two forks share a segment).
        expect(r.out.split('\n')[0]).toBe(GUEST_NET.mac);
        expect(r.out).toContain(`${GUEST_NET.ipv6}/64`);
        expect(r.out).toContain(`${linkLocalOf(GUEST_NET.mac)}/64`);
        expect(r.out).toContain(inet.hello);
        // ...and the internet saw the fork's own public address.
        expect(inet.serverLog()).toContain(ip6(f));
        await nm.applyFirewall(f, restricted(8080));
      }
      const codes = await Promise.all(forks.map((f) => inet.httpStatus(url(ip6(f), 8080))));
      expect(codes).toEqual(['200', '200']);
      // A fork's firewall is its own: the second one closed, the first still open.
      await nm.applyFirewall(forks[1]!, restricted());
      const after = await Promise.all(forks.map((f) => inet.httpStatus(url(ip6(f), 8080))));
      expect(after).toEqual(['200', '000']);
    } finally {
      for (const f of forks) await stop(f);
      await rt.deleteSnapshot(snap);
    }
  });

  it('every way a VM starts carries traffic both ways: pool (tap plugged in, or its own port), cold launch, restore', async () => {
    // A pooled VM used to wait on an empty QEMU hub: the first frame its guest sent there was
    // queued forever and its NIC never transmitted again, even after the tap was plugged in.
    const waitPool = async () => {
      for (let i = 0; i < 1200 && rt.poolReady('c1m2') < 1; i++) await sleep(50);
      expect(rt.poolReady('c1m2')).toBe(1);
    };
    const launched = (id: string) => logs.some((m) => m.includes(`launched ${id} from the pool`));
    const ids = [
      `${PREFIX}-p1`,
      `${PREFIX}-p2`,
      `${PREFIX}-cold`,
      `${PREFIX}-fork`,
      `${PREFIX}-p3`,
    ];
    const snap = `${PREFIX}-psnap`;
    await nm.setHostTcpPorts([hostPort]);
    try {
      await waitPool();
      // Pool VMs made from now on wait with a port of their own (the one waiting has none).
      rt.setPoolNetwork({ reserve: (n) => nm.reserve(n), release: (n) => nm.release(n) });
      await start(ids[0]!); // a VM the pool refilled after A was taken: its tap plugged in now
      await waitPool();
      await start(ids[1]!); // from the pool, given a port of the launch's: it is discarded
      await start(ids[2]!, undefined, true); // cold: the pool is still refilling
      expect([launched(ids[0]!), launched(ids[1]!), launched(ids[2]!)]).toEqual([
        true,
        false,
        false,
      ]);
      await rt.snapshot(ids[0]!, snap);
      await start(ids[3]!, snap); // tap at QEMU start
      await waitPool();
      await launchClaiming(ids[4]!); // from the pool, taking its port along: nothing plugged
      expect(launched(ids[4]!)).toBe(true);
      const cmdline = (id: string) => fs.readFileSync(`/proc/${rt.get(id)!.pid}/cmdline`, 'utf8');
      expect(cmdline(ids[4]!)).toContain('tap,id=tap0'); // on the hub since the VM was restored
      expect(cmdline(ids[0]!)).not.toContain('tap,id=tap0');
      for (const id of ids) {
        // Confined, QEMU was handed its tap's descriptor (tap-handover.ts): it holds it open and
        // never named it; all three ways (plugged into a pool VM, plugged late, at start).
        if (rt.confinement) {
          const pid = rt.get(id)!.pid;
          expect(tapsHeldBy(pid), id).toEqual([vms.get(id)!.tap]);
          expect(fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8'), id).not.toContain('ifname=');
        }
        await nm.applyFirewall(id, { mode: 'open', ingress: [] });
        // Out: the internet (IPv6, NATed IPv4) and the gateway's host listener (both families).
        const targets = [
          url(inet.v6a, 9000, 'hello.txt'),
          url(inet.v4, 9000, 'hello.txt'),
          url(nm.ipv6Gateway, hostPort),
          url(nm.ipv4Gateway, hostPort),
        ];
        const out = await guest(
          id,
          `for u in ${targets.join(' ')}; do echo "$(curl -s -m 5 $u)"; done; cat /sys/class/net/eth0/statistics/tx_packets`,
        );
        const lines = out.out.trim().split('\n');
        expect(lines.slice(0, 4), `${id}: ${out.out}${out.err}`).toEqual([
          inet.hello.trim(),
          inet.hello.trim(),
          'host-ok',
          'host-ok',
        ]);
        expect(Number(lines[4])).toBeGreaterThan(0);
        // In: from the internet namespace over IPv6, from the host over IPv4. Port 1 is closed,
        // so the guest answers the SYN with a reset: curl's exit code 7 (refused) needs traffic
        // both ways, a guest that cannot transmit gives 28 (timeout).
        const probe = (addr: string) => ['-s', '--connect-timeout', '3', url(addr, 1)];
        const in6 = await shAny('ip', ['netns', 'exec', inet.ns, 'curl', ...probe(ip6(id))]);
        const in4 = await shAny('curl', probe(ip4(id)));
        expect([in6.code, in4.code], id).toEqual([7, 7]);
      }
    } finally {
      await nm.setHostTcpPorts([]);
      for (const id of ids) if (vms.has(id)) await stop(id);
      await rt.deleteSnapshot(snap).catch(() => {});
    }
  });

  it("taps are root's: QEMU's user cannot attach to one, root can", async (ctx) => {
    const user = rt.confinement?.user;
    if (!user) return ctx.skip();
    const id = `${PREFIX}-tapowner`;
    const { tap } = await nm.allocate(id); // a tap no QEMU holds
    try {
      expect(attachAs(tap, user.uid, user.gid)).toMatch(
        /Operation not permitted|Permission denied/,
      );
      expect(attachAs(tap, 0, 0)).toBeNull();
    } finally {
      await nm.release(id);
    }
  });

  it('per-VM setup and teardown are fast, and release/shutdown remove everything', async () => {
    // A spare port is handed out without host work; one made on demand takes a few processes.
    for (let i = 0; i < 100 && nm.spareReady() < 1; i++) await sleep(50);
    expect(nm.spareReady()).toBeGreaterThan(0);
    const t0 = performance.now();
    await nm.allocate(`${PREFIX}-timing`);
    const allocMs = performance.now() - t0;
    const t1 = performance.now();
    await nm.release(`${PREFIX}-timing`);
    const releaseMs = performance.now() - t1;
    console.log(`per VM: allocate ${allocMs.toFixed(0)} ms, release ${releaseMs.toFixed(0)} ms`);

    const tapOf = (id: string) => vms.get(id)!.tap;
    const taps = [tapOf(A), tapOf(B)];
    await stop(A);
    let links = await sh('ip', ['-br', 'link']);
    expect(links).not.toContain(taps[0]);
    expect(links).toContain(taps[1]);
    await stop(B);

    await nm.shutdown();
    links = await sh('ip', ['-br', 'link']);
    expect(links).not.toContain(`ft${TAG}`);
    expect(links).not.toContain(`fvbt${TAG}`);
    const tables = await sh('nft', ['list', 'tables']);
    expect(tables).not.toContain(`fvbt${TAG}`);
  });
});

describe('network helpers (no privileges needed)', () => {
  it('parses and formats IPv6 addresses canonically', () => {
    for (const [text, canon] of [
      ['fd00::1', 'fd00::1'],
      ['FD00:0:0:0:0:0:0:1', 'fd00::1'],
      ['2001:db8:0:0:1:0:0:1', '2001:db8::1:0:0:1'],
      ['::ffff:10.1.2.3', '::ffff:a01:203'],
      ['::', '::'],
    ] as const) {
      expect(formatIpv6(parseIpv6(text))).toBe(canon);
    }
    expect(() => parseIpv6('10.0.0.1')).toThrow();
  });

  it('rejects policies nft could not express safely', () => {
    const rule = (r: object): FirewallPolicy => ({
      mode: 'restricted',
      ingress: [{ protocol: 'tcp', portStart: 80, ...r }],
    });
    expect(() => validatePolicy(rule({}))).not.toThrow();
    expect(() => validatePolicy(rule({ sourceCidrs: ['2001:db8::/32', 'fd00::5'] }))).not.toThrow();
    expect(() => validatePolicy(rule({ sourceCidrs: ['10.0.0.0/8'] }))).toThrow(/IPv4/);
    expect(() => validatePolicy(rule({ sourceCidrs: ['fd00::/129'] }))).toThrow();
    expect(() => validatePolicy(rule({ sourceCidrs: ['fd00::1 } accept; drop'] }))).toThrow();
    expect(() => validatePolicy(rule({ portStart: 0 }))).toThrow();
    expect(() => validatePolicy(rule({ portEnd: 79 }))).toThrow();
    expect(() => validatePolicy(rule({ protocol: 'icmp' }))).toThrow();
    expect(() => validatePolicy({ mode: 'closed' } as never)).toThrow();
  });
});

describe.skipIf(SKIP)(`host network state (no VMs)${SKIP ? ` — skipped: ${SKIP}` : ''}`, () => {
  const tag = crypto.randomBytes(2).toString('hex');
  const bridge = `fvbr${tag}`;
  let stateDir: string;

  beforeAll(() => {
    stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'fvnet-'));
  });

  afterAll(async () => {
    // Whatever a failed test left: a manager over the same state removes it all.
    const nm = await NetworkManager.create({ stateDir, bridge, tapPrefix: `fr${tag}` }).catch(
      () => undefined,
    );
    await nm?.shutdown();
    await sh('ip', ['link', 'del', `fr${tag}00000fade`]).catch(() => {});
    fs.rmSync(stateDir, { recursive: true, force: true });
  });

  it('reconciles after a crash: frees dead VMs and strays, keeps live ones with their firewall', async () => {
    const opts = { stateDir, bridge, tapPrefix: `fr${tag}`, ipv4Subnet: '10.216.0.0/24' };
    // (No spare ports: this one "crashes" and must not go on making them.)
    const first = await NetworkManager.create({ ...opts, sparePorts: 0 });
    const live = await first.allocate('live');
    const dead = await first.allocate('dead');
    const deadPool = await first.reserve('pool-dead'); // a pool VM's port, of a run that crashed
    await first.applyFirewall('live', restricted(8080));
    expect(live.tap).not.toBe(dead.tap);
    expect(live.ipv6).not.toBe(dead.ipv6);
    expect(live.ipv4).not.toBe(dead.ipv4);
    // Leftovers nothing owns: a tap named like ours and a per-VM table.
    const stray = `fr${tag}00000fade`;
    await sh('ip', ['tuntap', 'add', 'dev', stray, 'mode', 'tap']);
    await sh('nft', ['add', 'table', 'netdev', `fastvm_${bridge}_${stray}`]);

    // "Crash": a new manager over the same state, without any shutdown.
    const second = await NetworkManager.create({ ...opts, sparePorts: 2 });
    expect(second.ipv6Prefix).toBe(first.ipv6Prefix); // the generated prefix is kept
    expect(second.get('live')).toEqual(live);
    // Reserved by this run for a pool VM (reconcile may run while the pool fills): kept.
    const pool = await second.reserve('pool-live');
    const r = await second.reconcile(['live']);
    expect(r.released.sort()).toEqual(['dead', 'pool-dead']);
    expect(second.get('pool-live')).toEqual(pool);
    expect(second.get('pool-dead')).toBeUndefined();
    expect(deadPool.tap).not.toBe(pool.tap);
    // A launch from that pool VM takes its port along, as is; only once.
    expect(second.rebind('pool-live', 'launched')).toEqual(pool);
    expect(second.get('launched')).toEqual(pool);
    expect(second.get('pool-live')).toBeUndefined();
    expect(second.rebind('pool-live', 'other')).toBeUndefined();
    expect(r.removedTaps).toEqual([stray]);
    expect(r.removedTables).toEqual([`fastvm_${bridge}_${stray}`]);
    const links = await sh('ip', ['-br', 'link']);
    expect(links).toContain(live.tap);
    expect(links).not.toContain(dead.tap);
    const table = await sh('nft', ['list', 'table', 'netdev', `fastvm_${bridge}_${live.tap}`]);
    expect(table).toContain('tcp dport 8080 accept');
    // A new VM never gets a live VM's addresses.
    const next = await second.allocate('next');
    expect(next.tap).not.toBe(live.tap);
    expect(next.ipv6).not.toBe(live.ipv6);
    expect(next.ipv4).not.toBe(live.ipv4);
    // Spare ports are made in the background.
    for (let i = 0; i < 100 && second.spareReady() < 2; i++) {
      await new Promise((r) => setTimeout(r, 50));
    }
    expect(second.spareReady()).toBe(2);

    // close() with live VMs keeps theirs (spares go); shutdown() removes it all.
    await second.close();
    expect(await sh('ip', ['-br', 'link'])).toContain(live.tap);
    expect(second.spareReady()).toBe(0);
    await second.shutdown();
    const after = await sh('ip', ['-br', 'link']);
    expect(after).not.toContain(bridge);
    expect(after).not.toContain(`fr${tag}`);
    expect(await sh('nft', ['list', 'tables'])).not.toContain(bridge);
  });

  it('without CAP_NET_ADMIN it reports unavailable with a reason', async () => {
    const script =
      "import('./src/network.ts').then(async (m) => { const nm = await m.NetworkManager.create(" +
      `{ stateDir: ${JSON.stringify(stateDir)}, bridge: 'fvnever${tag}' }); ` +
      'console.log(JSON.stringify({ available: nm.available, reason: nm.reason })); })';
    const out = await new Promise<string>((resolve, reject) =>
      execFile(
        'setpriv',
        ['--bounding-set', '-net_admin', process.execPath, '--import', 'tsx', '-e', script],
        { cwd: path.resolve(import.meta.dirname, '..'), encoding: 'utf8', timeout: 60_000 },
        (err, stdout, stderr) => (err ? reject(new Error(stderr || err.message)) : resolve(stdout)),
      ),
    );
    const res = JSON.parse(out.trim().split('\n').pop()!) as { available: boolean; reason: string };
    expect(res.available).toBe(false);
    expect(res.reason).toMatch(/CAP_NET_ADMIN/);
    expect(await sh('ip', ['-br', 'link'])).not.toContain(`fvnever${tag}`);
  });
});
