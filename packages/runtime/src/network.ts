/**
 * Host side of VM networking. Every guest keeps one fixed network configuration for life
 * (`guest-net.ts`: the same MAC and private addresses in every VM, set in the golden), and the
 * host makes each VM unique from the outside: each VM has a tap of its own, which is a routed
 * link of the host (no bridge: no two VMs share a layer-2 segment), and the tap's nftables table
 * translates statelessly between the guest's private addresses and the VM's public IPv6 and its
 * IPv4 from the host's NAT subnet.
 *
 * ```
 *   internet / host ── routes <public v6>/128 and <v4>/32 ── tap fvt… ── VM A  eth0 fd00:fc::2, 10.0.2.15
 *        (IPv4 NAT)  ── routes <public v6>/128 and <v4>/32 ── tap fvt… ── VM B  eth0 fd00:fc::2, 10.0.2.15
 *   host interface fvbr0 (a bridge without ports): <prefix>::1/64, 10.213.0.1/16 — the host as VMs reach it
 * ```
 *
 * nftables objects (all created and removed here):
 * - `inet fastvm_<bridge>`: VM → host input allow-list, VM ↔ VM drop, IPv4 masquerade, and the
 *   *reply mark*: conntrack runs in the inet hooks, which mark packets of established/related
 *   connections that leave through a tap.
 * - `netdev fastvm_<bridge>_<tap>` per port: an `ingress` chain (frames from the VM: only the
 *   guest's MAC and addresses, whose source is then rewritten to the VM's public ones) and an
 *   `egress` chain (frames into the VM: the destination rewritten back, then the firewall
 *   policy). Conntrack is not available in the netdev family, so replies to the VM's own
 *   connections are recognised by the reply mark.
 *
 * **Ports.** A port (tap, public IPv6, IPv4, routes, neighbours, table with a closed firewall)
 * does not depend on the VM that will use it, so spare ports are made ahead of time in the
 * background; `allocate` hands one out without any host work, and a VM whose policy is the
 * default one needs no nft call either. Ports are never reused: a released port is deleted.
 * Ports are persisted in `<stateDir>/network.json`, so no two live VMs ever share an address
 * across restarts; `reconcile` removes what crashed runs left behind.
 *
 * **Ownership.** A host interface and its tap prefix belong to one state dir (one server's data
 * dir) at a time, since `reconcile` treats every tap and per-VM table with its names that its
 * own state does not list as a leftover. The owner holds a lock that dies with its process: a
 * listening abstract Unix socket named after the interface (abstract sockets, like interfaces,
 * are per network namespace, and no file can go stale). `/run/fastvm/bridge-<name>.json` records
 * who owns it. A second live manager with another state dir is refused with `BridgeInUseError`;
 * a dead owner's claim is taken over.
 * @module
 */
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fqdnMatches, fqdnPatternProblem, normalizeName } from './fqdn.js';
import { GUEST_NET } from './guest-net.js';
import type { VmNetwork } from './types.js';

/**
 * One ingress rule of a VM's firewall: the API's v1 shape, plus what v2 adds (`action`,
 * protocol `any`, IPv4 sources). A rule without `action` is a v1 rule (allow, IPv6 sources).
 */
export interface FirewallRule {
  readonly protocol: 'tcp' | 'udp' | 'any';
  /** With protocol `any`: 1 (and `portEnd` 65535), i.e. every port. */
  readonly portStart: number;
  /** Inclusive end of a port range; absent for a single port. */
  readonly portEnd?: number;
  /** Source prefixes (IPv6; IPv4 too in v2 rules); absent or empty means any source. */
  readonly sourceCidrs?: readonly string[];
  /** v2: what a match does (absent: allow). Rules are tried in order; the first match decides. */
  readonly action?: 'allow' | 'deny';
  readonly description?: string;
}

/** One egress rule (v2): where the VM may (or may not) open connections to. */
export interface EgressRule {
  readonly action: 'allow' | 'deny';
  /** `cidr`: `value` is an IPv4 or IPv6 prefix; `fqdn`: a name or `*.name` (see `fqdn.ts`). */
  readonly kind: 'cidr' | 'fqdn';
  readonly protocol: 'tcp' | 'udp' | 'any';
  /** `443`, an inclusive range `8080-8090`, or `any` (the only choice with protocol `any`). */
  readonly ports: string;
  readonly value: string;
  readonly description?: string;
}

/** New connections from the VM: rules in order (first match decides), else `default`. */
export interface EgressPolicy {
  readonly default: 'allow' | 'deny';
  readonly rules: readonly EgressRule[];
}

/**
 * The DNS gate of the VM's resolver (the server's forwarder): `allow` = only `domains` resolve
 * (others get NXDOMAIN), `deny` = `domains` do not. `blockBypass` blocks other resolvers
 * (port 53), DNS over TLS/QUIC (853) and the DNS-over-HTTPS endpoints in `DOH_ENDPOINTS`.
 */
export interface DnsPolicy {
  readonly mode: 'allow' | 'deny';
  readonly domains: readonly string[];
  readonly blockBypass: boolean;
}

/**
 * A VM's firewall. `mode`/`ingress` are the ingress policy (`open` = v2 default allow,
 * `restricted` = default deny); `egress` and `dns` (v2) are absent for a v1 policy, which
 * means: every destination allowed, every name resolved.
 */
export interface FirewallPolicy {
  readonly mode: 'open' | 'restricted';
  readonly ingress: readonly FirewallRule[];
  readonly egress?: EgressPolicy;
  readonly dns?: DnsPolicy;
}

/**
 * Well-known public DNS-over-HTTPS (and DoT/DoQ) resolvers, blocked on ports 443 and 853 (TCP
 * and UDP) when a policy sets `blockBypass`: Cloudflare, Google, Quad9, OpenDNS, AdGuard,
 * CleanBrowsing, Mullvad and NextDNS anycast addresses. A bypass through any other HTTPS host
 * needs that host to be reachable, which egress rules decide.
 */
export const DOH_ENDPOINTS: readonly string[] = [
  '1.1.1.1',
  '1.0.0.1',
  '1.1.1.2',
  '1.0.0.2',
  '1.1.1.3',
  '1.0.0.3',
  '8.8.8.8',
  '8.8.4.4',
  '9.9.9.9',
  '149.112.112.112',
  '9.9.9.10',
  '149.112.112.10',
  '9.9.9.11',
  '149.112.112.11',
  '208.67.222.222',
  '208.67.220.220',
  '94.140.14.14',
  '94.140.15.15',
  '185.228.168.9',
  '185.228.169.9',
  '194.242.2.2',
  '45.90.28.0/24',
  '45.90.30.0/24',
  '2606:4700:4700::1111',
  '2606:4700:4700::1001',
  '2606:4700:4700::1112',
  '2606:4700:4700::1002',
  '2001:4860:4860::8888',
  '2001:4860:4860::8844',
  '2620:fe::fe',
  '2620:fe::9',
  '2620:fe::10',
  '2620:fe::11',
  '2620:119:35::35',
  '2620:119:53::53',
  '2a10:50c0::ad1:ff',
  '2a10:50c0::ad2:ff',
  '2a0d:2a00:1::2',
  '2a0d:2a00:2::2',
  '2a07:e340::2',
];

export interface NetworkManagerOptions {
  /** Directory for `network.json` (allocations, the chosen prefix, changed sysctls). */
  readonly stateDir: string;
  /**
   * Name of the host interface (a bridge without ports) that holds the host's addresses in the VMs' prefix and
   * subnet (default `fvbr0`; the name is kept from when it was a bridge).
   */
  readonly bridge?: string;
  /** The VMs' IPv6 /64, e.g. `2001:db8:1:2::/64`. Default: a random ULA /64, chosen once. */
  readonly ipv6Prefix?: string;
  /** Private IPv4 subnet, NATed on the way out (default `10.213.0.0/16`). */
  readonly ipv4Subnet?: string;
  /** Start of every tap name (default `fvt`, or a hash of `bridge`); the rest is random hex. */
  readonly tapPrefix?: string;
  /** Ports kept ready for the next VMs (default 16). */
  readonly sparePorts?: number;
  /** Host TCP ports VMs may connect to (default none). */
  readonly hostTcpPorts?: readonly number[];
  /** Packet-mark bit that flags replies to a VM's own connections (default `0x01000000`). */
  readonly replyMark?: number;
  /**
   * Packet-mark bit with which a VM's table flags connections its egress policy refuses; the
   * host's forward hook rejects new connections that carry it (default `0x02000000`).
   */
  readonly egressMark?: number;
  /**
   * Host port (on the IPv4 gateway, UDP and TCP) of the VMs' DNS forwarder: the guests' resolver
   * `10.0.2.2:53` is translated to it. Default: a free port chosen once and kept in the state.
   */
  readonly dnsPort?: number;
  /** Who claims the bridge, as shown to a manager that is refused it (default: `stateDir`). */
  readonly owner?: string;
  readonly log?: (msg: string) => void;
}

/** The owner of a bridge, as recorded in `/run/fastvm/bridge-<name>.json`. */
export interface BridgeOwner {
  /** Real path of the owner's state dir: the identity of a claim. */
  readonly stateDir: string;
  /** What the owner calls itself (a server's data dir). */
  readonly owner: string;
  readonly pid: number;
  /** ISO time of the claim. */
  readonly since: string;
}

/**
 * `NetworkManager.create` refused: another live manager with another state dir (another FastVM
 * server) owns the bridge, and taking it over would delete that server's taps and tables.
 */
export class BridgeInUseError extends Error {
  constructor(
    readonly bridge: string,
    /** The owner, when it could be asked. */
    readonly holder: BridgeOwner | undefined,
  ) {
    const who = holder ? `${holder.owner}, pid ${holder.pid}` : 'it did not say who it is';
    super(
      `bridge ${bridge} belongs to another running FastVM server (${who}); ` +
        'give this one a bridge and subnets of its own',
    );
    this.name = 'BridgeInUseError';
  }
}

export interface NetworkProbe {
  readonly available: boolean;
  /** Why networking is unavailable (absent when available). */
  readonly reason?: string;
}

export interface ReconcileResult {
  /** Allocations of VMs that are not live any more, now released. */
  readonly released: string[];
  /** Taps and nft tables found on the host that nothing owned, now removed. */
  readonly removedTaps: string[];
  readonly removedTables: string[];
}

const STATE_VERSION = 2;
const DEFAULT_BRIDGE = 'fvbr0';
const DEFAULT_IPV4_SUBNET = '10.213.0.0/16';
const DEFAULT_TAP_PREFIX = 'fvt';
const DEFAULT_REPLY_MARK = 0x01000000;
const DEFAULT_EGRESS_MARK = 0x02000000;
/** Bounds of a learned address's lifetime in an FQDN rule's set (the record's TTL, clamped). */
const LEARNED_TTL_MIN_S = 10;
const LEARNED_TTL_MAX_S = 24 * 3600;
/** Names remembered per VM to fill the sets of FQDN rules added later. */
const LEARNED_NAMES_MAX = 4096;
/** Enough for a fork of 10 with room to spare (a port made on demand costs `ip` and `nft` runs). */
const DEFAULT_SPARE_PORTS = 16;
/**
 * Spare ports are made once hand-outs have stopped for `REFILL_IDLE_MS`: they come in bursts (a
 * fork of 10), whose VMs want the CPU right then, and making a port costs two process starts
 * (each a fork of the server) and `ip`/`nft` work. With fewer than `SPARE_LOW` left, sooner.
 */
const REFILL_IDLE_MS = 3000;
const REFILL_DELAY_MS = 500;
const SPARE_LOW = 4;
const IFNAME_MAX = 15;
const CMD_TIMEOUT_MS = 15_000;
/** Owner records of bridges (a tmpfs: gone at reboot, like the bridges). */
const OWNER_DIR = '/run/fastvm';

/** A VM's tap with its public addresses; `vmId` absent: a spare. */
interface Port {
  tap: string;
  /** Bare addresses (no prefix length). */
  ipv6: string;
  ipv4: string;
  vmId?: string;
}

interface State {
  version: number;
  /** Set when the prefix was generated (not configured), so it stays the same across restarts. */
  generatedIpv6Prefix?: string;
  /** By tap name. */
  ports: Record<string, Port>;
  /** Where the search for a free IPv4 starts (host part). */
  nextIpv4?: number;
  /** The DNS forwarder's host port (kept, since every VM table translates to it). */
  dnsPort?: number;
  /** Original values of the global sysctls this manager changed (restored at teardown). */
  sysctls: Record<string, string>;
}

/**
 * Whether this host can give VMs networking: CAP_NET_ADMIN, `/dev/net/tun`, `ip`, `bridge` and
 * `nft`, and an nftables that accepts netdev egress chains (Linux ≥ 5.16).
 */
export async function probeNetworking(): Promise<NetworkProbe> {
  if (process.platform !== 'linux') return { available: false, reason: 'not Linux' };
  if (!hasNetAdmin()) {
    return { available: false, reason: 'needs root (CAP_NET_ADMIN) to create taps and bridges' };
  }
  try {
    fs.accessSync('/dev/net/tun', fs.constants.R_OK | fs.constants.W_OK);
  } catch {
    return { available: false, reason: '/dev/net/tun is missing or not accessible' };
  }
  for (const [tool, args] of [
    ['ip', ['-V']],
    ['nft', ['--version']],
  ] as const) {
    try {
      await run(tool, args);
    } catch (err) {
      return { available: false, reason: `${tool} is not usable: ${errText(err)}` };
    }
  }
  try {
    // A dry run (nothing is committed) of the kind of chain every VM gets.
    await run('nft', ['-c', '-f', '-'], {
      input:
        'table netdev fastvm_probe {\n' +
        '  chain e { type filter hook egress device "lo" priority filter; policy accept; }\n' +
        '}\n',
    });
  } catch (err) {
    return {
      available: false,
      reason: `nftables cannot filter on device egress (needs Linux >= 5.16): ${errText(err)}`,
    };
  }
  return { available: true };
}

function hasNetAdmin(): boolean {
  try {
    const status = fs.readFileSync('/proc/self/status', 'utf8');
    const eff = /^CapEff:\s*([0-9a-f]+)$/m.exec(status)?.[1];
    if (eff !== undefined) return (BigInt(`0x${eff}`) & (1n << 12n)) !== 0n;
  } catch {
    // fall through
  }
  return process.getuid?.() === 0;
}

/** The address a VM is reachable at, without prefix length (`publicIpv6` in the API). */
export function publicIpv6(n: VmNetwork | undefined): string | null {
  return n?.ipv6 ? (n.ipv6.split('/')[0] ?? null) : null;
}

/**
 * Bridge, taps and nftables for VMs. Create with `NetworkManager.create`; when the host cannot
 * do networking, `available` is false, `reason` says why, and the other methods throw.
 */
export class NetworkManager {
  /** The host interface (a bridge without ports) holding the VMs' gateway addresses; names the ownership lock. */
  readonly bridge: string;
  readonly ipv6Prefix: string;
  /** The host's address in the VMs' IPv6 prefix (on the host interface). */
  readonly ipv6Gateway: string;
  readonly ipv4Subnet: string;
  /** The host's address in the VMs' IPv4 subnet (on the host interface). */
  readonly ipv4Gateway: string;
  /** Start of every tap name this manager owns. */
  readonly tapPrefix: string;
  /**
   * Port of the VMs' DNS forwarder on `ipv4Gateway` (UDP and TCP): the guests ask `10.0.2.2:53`,
   * which their tables translate to it. The server listens there.
   */
  readonly dnsPort: number;

  readonly #statePath: string;
  readonly #hostTable: string;
  readonly #vmTablePrefix: string;
  readonly #mark: number;
  readonly #egressMark: number;
  /** The policy installed on each port (by tap), for `learn`. */
  readonly #policies = new Map<string, FirewallPolicy>();
  /** Names each port's VM resolved (by tap): addresses and expiry, to fill new FQDN rules. */
  readonly #learned = new Map<string, Map<string, Learned>>();
  readonly #spare: number;
  readonly #log: (msg: string) => void;
  readonly #v6: Cidr6;
  readonly #v4: Cidr4;
  #hostTcpPorts: number[];
  #state: State;
  #lock: Promise<unknown> = Promise.resolve();
  readonly #fwQueues = new Map<string, Promise<unknown>>();
  /** Free ports whose devices and tables exist (created by this process or checked by it). */
  readonly #ready = new Set<string>();
  /** Taps of ports this process reserved for pool VMs (`reserve`). */
  readonly #reserved = new Set<string>();
  /** The policy each port's firewall chain holds now (a key), to skip no-op applies. */
  readonly #installed = new Map<string, string>();
  #refilling: Promise<void> | undefined;
  #refillTimer: NodeJS.Timeout | undefined;
  /** When a spare port was last handed out (`performance.now()`). */
  #lastHandOut = -Infinity;
  #closed = false;
  /** This manager's hold on the bridge (see "Ownership" in the module comment). */
  #claim: Claim | undefined;

  private constructor(
    readonly available: boolean,
    readonly reason: string | undefined,
    opts: NetworkManagerOptions,
    state: State,
    v6: Cidr6,
    v4: Cidr4,
  ) {
    this.bridge = opts.bridge ?? DEFAULT_BRIDGE;
    this.tapPrefix = opts.tapPrefix ?? tapPrefixFor(this.bridge);
    this.#statePath = path.join(opts.stateDir, 'network.json');
    this.#hostTable = `fastvm_${this.bridge}`;
    this.#vmTablePrefix = `fastvm_${this.bridge}_`;
    this.#mark = opts.replyMark ?? DEFAULT_REPLY_MARK;
    this.#egressMark = opts.egressMark ?? DEFAULT_EGRESS_MARK;
    this.dnsPort = state.dnsPort ?? 0;
    this.#spare = opts.sparePorts ?? DEFAULT_SPARE_PORTS;
    this.#log = opts.log ?? (() => {});
    this.#hostTcpPorts = [...(opts.hostTcpPorts ?? [])];
    this.#state = state;
    this.#v6 = v6;
    this.#v4 = v4;
    this.ipv6Prefix = `${formatIpv6(v6.base)}/64`;
    this.ipv6Gateway = formatIpv6(v6.base + 1n);
    this.ipv4Subnet = `${formatIpv4(v4.base)}/${v4.len}`;
    this.ipv4Gateway = formatIpv4(v4.base + 1);
  }

  /**
   * Probes the host and, when it can, sets up the host interface, its addresses, forwarding and
   * the host nft table (idempotent: a restart with live VMs keeps their taps), then starts
   * making spare ports. Throws only for invalid options or a failed setup on a capable host.
   */
  static async create(opts: NetworkManagerOptions): Promise<NetworkManager> {
    validateOptions(opts);
    const statePath = path.join(opts.stateDir, 'network.json');
    const state = loadState(statePath);
    let prefix = opts.ipv6Prefix;
    if (!prefix) {
      state.generatedIpv6Prefix ??= randomUlaPrefix();
      prefix = state.generatedIpv6Prefix;
    }
    const v6 = parseCidr6(prefix, 'ipv6Prefix');
    if (v6.len !== 64) throw new Error(`ipv6Prefix must be a /64, got ${prefix}`);
    const v4 = parseCidr4(opts.ipv4Subnet ?? DEFAULT_IPV4_SUBNET, 'ipv4Subnet');
    if (v4.len > 29) throw new Error(`ipv4Subnet must be /29 or larger, got /${v4.len}`);

    const probe = await probeNetworking();
    if (probe.available) {
      if (opts.dnsPort !== undefined) state.dnsPort = opts.dnsPort;
      state.dnsPort ??= await freePort();
    }
    const nm = new NetworkManager(probe.available, probe.reason, opts, state, v6, v4);
    if (!probe.available) return nm;
    fs.mkdirSync(opts.stateDir, { recursive: true });
    // Before touching the host: another live server's taps and tables are not ours to change.
    nm.#claim = await claimBridge(
      nm.bridge,
      fs.realpathSync(opts.stateDir),
      opts.owner ?? opts.stateDir,
      nm.#log,
    );
    try {
      nm.#save();
      await nm.#exclusive(() => nm.#setupHost());
    } catch (err) {
      nm.#releaseClaim(false);
      throw err;
    }
    nm.#scheduleRefill(0);
    return nm;
  }

  /** The network of a VM that has one. */
  get(vmId: string): VmNetwork | undefined {
    const p = this.#portOf(vmId);
    return p ? this.#toVmNetwork(p) : undefined;
  }

  /** The VM whose public IPv6 or IPv4 is `addr` (how the DNS forwarder knows who asks). */
  vmForAddress(addr: string): string | undefined {
    const a = net.isIPv6(addr) ? formatIpv6(parseIpv6(addr)) : addr;
    for (const p of Object.values(this.#state.ports)) {
      if (p.vmId && (p.ipv4 === a || p.ipv6 === a)) return p.vmId;
    }
    return undefined;
  }

  /** Ids of the VMs that hold an allocation. */
  allocated(): string[] {
    return Object.values(this.#state.ports).flatMap((p) => (p.vmId ? [p.vmId] : []));
  }

  /** Free ports ready to be handed out at once. */
  spareReady(): number {
    return this.#ready.size;
  }

  /**
   * Gives a VM a port: a tap of its own, routed to its public IPv6 and its IPv4, with the address
   * translation to the guest's fixed addresses, anti-spoofing, and a closed firewall (`restricted`
   * with no rules) until `applyFirewall`. A spare port is handed out without any host work; only
   * when none is ready is one made now. Idempotent per VM id.
   */
  allocate(vmId: string): Promise<VmNetwork> {
    this.#requireAvailable();
    const existing = this.#portOf(vmId);
    if (existing) {
      // A retry after a failure, or a VM of an earlier run: make sure it is all there.
      return this.#exclusive(async () => {
        await this.#createPort(existing, { keepFirewall: true });
        return this.#toVmNetwork(existing);
      });
    }
    const tap = this.#ready.values().next().value as string | undefined;
    if (tap !== undefined) {
      this.#ready.delete(tap);
      const port = this.#state.ports[tap]!;
      port.vmId = vmId;
      this.#save(); // recorded before the VM uses it
      this.#lastHandOut = performance.now();
      this.#scheduleRefill();
      return Promise.resolve(this.#toVmNetwork(port));
    }
    this.#scheduleRefill();
    return this.#exclusive(async () => {
      const port = this.#newPort(vmId);
      try {
        await this.#createPort(port, { fresh: true });
      } catch (err) {
        await this.#removePort(port).catch(() => {});
        delete this.#state.ports[port.tap];
        this.#save();
        throw err;
      }
      return this.#toVmNetwork(port);
    });
  }

  /**
   * A port for warm-pool VM `name`, which waits with it plugged in; a launch from the pool then
   * takes it along (`rebind`), with no host work. `reconcile` keeps what this process reserved.
   */
  reserve(name: string): Promise<VmNetwork> {
    const allocated = this.allocate(name);
    const spare = this.#portOf(name); // a spare is handed out at once: reserved in this tick
    if (spare) this.#reserved.add(spare.tap);
    return allocated.then((n) => {
      this.#reserved.add(n.tap);
      return n;
    });
  }

  /**
   * Gives the port of `from` (a pool VM's, `reserve`) to VM `to`, with no host work; undefined
   * when `from` has none or `to` has one already.
   */
  rebind(from: string, to: string): VmNetwork | undefined {
    this.#requireAvailable();
    const p = this.#portOf(from);
    if (!p || this.#portOf(to)) return undefined;
    p.vmId = to;
    this.#reserved.delete(p.tap);
    this.#save(); // recorded before the VM uses it
    return this.#toVmNetwork(p);
  }

  /**
   * Replaces the VM's ingress firewall in one nft transaction (in effect when this resolves).
   * Calls for one VM are applied in order. A policy the port holds already costs nothing.
   */
  applyFirewall(vmId: string, policy: FirewallPolicy): Promise<void> {
    this.#requireAvailable();
    // Validate before queueing so a bad policy fails fast and never reaches nft.
    validatePolicy(policy);
    const key = policyKey(policy);
    return this.#queueFirewall(vmId, async () => {
      const p = this.#portOf(vmId);
      if (!p) throw new Error(`VM ${vmId} has no network allocation`);
      if (this.#installed.get(p.tap) === key) return;
      await nft(this.#firewallScript(p, policy) + this.#refillScript(p, policy));
      this.#installed.set(p.tap, key);
      this.#policies.set(p.tap, policy);
    });
  }

  /**
   * Records what the VM's resolver answered for `name`: its addresses go into the sets of the
   * VM's FQDN rules that match the name, for `ttlS` seconds (clamped to 10 s – 24 h). In effect
   * when this resolves, so the forwarder answers the guest only after the addresses are allowed.
   * Returns whether any rule matched. Queued with the VM's policy changes.
   */
  learn(
    vmId: string,
    name: string,
    addrs: { readonly v4: readonly string[]; readonly v6: readonly string[] },
    ttlS: number,
  ): Promise<boolean> {
    this.#requireAvailable();
    const v4 = addrs.v4.filter((a) => net.isIPv4(a));
    const v6 = addrs.v6.filter((a) => net.isIPv6(a)).map((a) => formatIpv6(parseIpv6(a)));
    const ttl = Math.min(LEARNED_TTL_MAX_S, Math.max(LEARNED_TTL_MIN_S, Math.floor(ttlS)));
    const key = normalizeName(name);
    return this.#queueFirewall(vmId, async () => {
      const p = this.#portOf(vmId);
      if (!p) return false;
      const known = this.#learned.get(p.tap) ?? new Map<string, Learned>();
      this.#learned.set(p.tap, known);
      const policy = this.#policies.get(p.tap);
      const sets = fqdnSetsFor(policy, key);
      // The same answer again while the sets hold it for more than half its TTL: nothing to do
      // (repeated lookups cost no nft run).
      const prior = known.get(key);
      if (
        prior &&
        prior.expiresAt - Date.now() > (ttl * 1000) / 2 &&
        sameAddrs(prior.v4, v4) &&
        sameAddrs(prior.v6, v6)
      ) {
        return sets.length > 0;
      }
      known.delete(key);
      known.set(key, { v4, v6, expiresAt: Date.now() + ttl * 1000 });
      if (known.size > LEARNED_NAMES_MAX) known.delete(known.keys().next().value as string);
      if (sets.length === 0 || v4.length + v6.length === 0) return sets.length > 0;
      try {
        await nft(this.#learnScript(p, sets, v4, v6, ttl));
      } catch (err) {
        known.delete(key); // not in the sets: the next answer tries again
        throw err;
      }
      return true;
    });
  }

  /** Runs `fn` after the VM's earlier firewall work (applies and learned addresses), in order. */
  #queueFirewall<T>(vmId: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.#fwQueues.get(vmId) ?? Promise.resolve();
    const next = prev.catch(() => {}).then(fn);
    this.#fwQueues.set(vmId, next);
    void next
      .finally(() => {
        if (this.#fwQueues.get(vmId) === next) this.#fwQueues.delete(vmId);
      })
      .catch(() => {});
    return next;
  }

  /** Removes the VM's tap (with its routes and neighbours) and nft table. Idempotent. */
  release(vmId: string): Promise<void> {
    if (!this.available) return Promise.resolve();
    return this.#exclusive(async () => {
      const p = this.#portOf(vmId);
      if (!p) return;
      await this.#fwQueues.get(vmId)?.catch(() => {});
      await this.#removePort(p);
      delete this.#state.ports[p.tap];
      this.#save();
    });
  }

  /**
   * Packets dropped so far for a VM: `spoofed` frames it sent with a foreign source (its ingress
   * chain), `firewall` packets its policy kept out since the last `applyFirewall` (its egress
   * chain). For diagnostics and tests.
   */
  async dropCounters(vmId: string): Promise<{ spoofed: number; firewall: number }> {
    this.#requireAvailable();
    const p = this.#portOf(vmId);
    if (!p) throw new Error(`VM ${vmId} has no network allocation`);
    const out = JSON.parse(
      await run('nft', ['-j', 'list', 'table', 'netdev', this.#vmTable(p)]),
    ) as {
      nftables: Array<{ rule?: { chain: string; expr: Array<Record<string, unknown>> } }>;
    };
    const sum = { spoofed: 0, firewall: 0 };
    for (const { rule } of out.nftables) {
      if (!rule || !rule.expr.some((e) => 'drop' in e)) continue;
      const c = rule.expr.find((e) => 'counter' in e)?.counter as { packets?: number } | undefined;
      if (rule.chain === 'ingress') sum.spoofed += c?.packets ?? 0;
      else if (rule.chain === 'egress') sum.firewall += c?.packets ?? 0;
    }
    return sum;
  }

  /** Replaces the set of host TCP ports VMs may connect to (e.g. a file-transfer endpoint). */
  setHostTcpPorts(ports: readonly number[]): Promise<void> {
    this.#requireAvailable();
    for (const p of ports) checkPort(p, 'host port');
    return this.#exclusive(async () => {
      this.#hostTcpPorts = [...new Set(ports)];
      const elems = this.#hostTcpPorts.length
        ? `add element inet ${this.#hostTable} host_tcp { ${this.#hostTcpPorts.join(', ')} }\n`
        : '';
      await nft(`flush set inet ${this.#hostTable} host_tcp\n${elems}`);
    });
  }

  /**
   * After a restart: releases the ports of VMs not in `liveVmIds` and spare ports of an earlier
   * run, removes taps and per-VM nft tables that no port owns, and re-creates what the live
   * VMs' ports miss (their firewall is left closed if it was missing; the caller re-applies
   * policies). Spare ports are made again in the background.
   */
  reconcile(liveVmIds: readonly string[]): Promise<ReconcileResult> {
    this.#requireAvailable();
    const live = new Set(liveVmIds);
    // (A refill in progress makes one port per exclusive section: none is half-made here.)
    return this.#exclusive(async () => {
      const released: string[] = [];
      for (const p of Object.values(this.#state.ports)) {
        if (p.vmId && live.has(p.vmId)) continue;
        if (!p.vmId && this.#ready.has(p.tap)) continue; // a spare this process made
        if (this.#reserved.has(p.tap)) continue; // a pool VM's, reserved by this process
        try {
          await this.#removePort(p);
        } catch (err) {
          // Kept on record (its addresses stay taken) and retried at the next reconcile.
          this.#log(`network: cannot release ${p.vmId ?? p.tap}: ${errText(err)}`);
          continue;
        }
        delete this.#state.ports[p.tap];
        if (p.vmId) released.push(p.vmId);
      }
      this.#save();
      const owned = new Set(Object.keys(this.#state.ports));

      const removedTaps: string[] = [];
      for (const tap of await this.#ourLinks()) {
        if (owned.has(tap)) continue;
        await run('ip', ['link', 'del', tap]).catch(() => {});
        removedTaps.push(tap);
      }
      const removedTables: string[] = [];
      for (const t of await listNftTables()) {
        if (t.family !== 'netdev' || !t.name.startsWith(this.#vmTablePrefix)) continue;
        if (owned.has(t.name.slice(this.#vmTablePrefix.length))) continue;
        await nft(`delete table netdev ${t.name}\n`).catch(() => {});
        removedTables.push(t.name);
      }
      for (const p of Object.values(this.#state.ports)) {
        if (p.vmId && live.has(p.vmId)) await this.#createPort(p, { keepFirewall: true });
      }
      if (released.length || removedTaps.length || removedTables.length) {
        this.#log(
          `network: reconciled: released ${released.length}, removed ${removedTaps.length} taps, ${removedTables.length} tables`,
        );
      }
      this.#scheduleRefill();
      return { released, removedTaps, removedTables };
    });
  }

  /**
   * Clean stop while VMs may keep running (their QEMU survives a server restart): keeps the host
   * interface and what live VMs use (spare ports go); when no VM holds a port, removes
   * everything like `shutdown`.
   */
  async close(): Promise<void> {
    if (!this.available) return;
    this.#stopRefill();
    await this.#refilling;
    if (this.allocated().length === 0) {
      await this.shutdown();
      return;
    }
    await this.#exclusive(async () => {
      for (const p of Object.values(this.#state.ports)) {
        if (p.vmId) continue;
        await this.#removePort(p).catch(() => {});
        delete this.#state.ports[p.tap];
        this.#ready.delete(p.tap);
      }
      this.#save();
    });
    // The record stays (it names the data dir whose VMs still use the host interface); once
    // this process is gone, the claim is a dead owner's, which the next manager takes over.
    this.#releaseClaim(false);
  }

  /**
   * Removes everything this manager created: every tap and per-VM table, the host interface,
   * the host table, and restores the forwarding sysctls it changed (unless another FastVM
   * network still uses them). Allocations are forgotten. Use when the VMs are stopped too.
   */
  async shutdown(): Promise<void> {
    if (!this.available) return;
    this.#stopRefill();
    await this.#refilling;
    return this.#exclusive(async () => {
      for (const p of Object.values(this.#state.ports)) await this.#removePort(p).catch(() => {});
      this.#state.ports = {};
      this.#ready.clear();
      for (const tap of await this.#ourLinks().catch(() => [])) {
        await run('ip', ['link', 'del', tap]).catch(() => {});
      }
      for (const t of await listNftTables().catch(() => [])) {
        if (t.family === 'netdev' && t.name.startsWith(this.#vmTablePrefix)) {
          await nft(`delete table netdev ${t.name}\n`).catch(() => {});
        }
      }
      await nft(`delete table inet ${this.#hostTable}\n`).catch(() => {});
      await run('ip', ['link', 'del', this.bridge]).catch(() => {});
      const others = (await listNftTables().catch(() => [])).some(
        (t) => t.family === 'inet' && t.name.startsWith('fastvm_'),
      );
      if (!others) {
        for (const [key, value] of Object.entries(this.#state.sysctls)) {
          writeSysctl(key, value);
        }
        this.#state.sysctls = {};
      }
      this.#save();
      this.#releaseClaim(true);
      this.#log(`network: removed ${this.bridge}, its taps and its nft tables`);
    });
  }

  /** Gives up this manager's hold on the bridge; `forget`: the bridge is gone, drop the record. */
  #releaseClaim(forget: boolean): void {
    const claim = this.#claim;
    this.#claim = undefined;
    if (claim) releaseClaim(claim, forget);
  }

  // ---------------------------------------------------------------------------------------------
  // Host setup

  async #setupHost(): Promise<void> {
    await this.#checkRouteOverlaps();
    const exists = await run('ip', ['-j', '-d', 'link', 'show', 'dev', this.bridge])
      .then((out) => JSON.parse(out) as Array<{ linkinfo?: { info_kind?: string } }>)
      .catch(() => []);
    // A bridge without ports: always there, and every kernel has bridges (not all have dummies).
    // (Taps of an earlier FastVM, whose VMs shared it as one segment, are let go.)
    if (exists.length === 0) {
      await run('ip', ['link', 'add', this.bridge, 'type', 'bridge', 'mcast_snooping', '0']);
    } else {
      for (const tap of await this.#ourLinks()) {
        await run('ip', ['link', 'set', 'dev', tap, 'nomaster']).catch(() => {});
      }
    }
    // The gateway addresses must be usable at once (no DAD), and the interface never takes RAs.
    for (const [k, v] of [
      ['accept_dad', '0'],
      ['accept_ra', '0'],
      ['autoconf', '0'],
    ] as const) {
      writeSysctl(`net/ipv6/conf/${this.bridge}/${k}`, v);
    }
    // The prefix and subnet routes on the host interface catch what no VM's /128 or /32 route
    // takes (addresses of no VM), instead of sending it out of the default route.
    await ipBatch([
      `addr replace ${this.ipv6Gateway}/64 dev ${this.bridge} nodad`,
      `addr replace ${this.ipv4Gateway}/${this.#v4.len} dev ${this.bridge}`,
      `link set ${this.bridge} up`,
    ]);
    await this.#enableForwarding();
    await nft(this.#hostTableScript());
    this.#log(
      `network: ${this.bridge} ${this.ipv6Prefix} (host ${this.ipv6Gateway}), ${this.ipv4Subnet} NAT; ` +
        `one routed tap per VM, guests at ${GUEST_NET.ipv6} / ${GUEST_NET.ipv4} translated`,
    );
  }

  /**
   * Refuses subnets another interface routes as specifically (they would shadow each other);
   * a broader route (say 10.0.0.0/8 on a VPN) only gets a warning, as ours carves out of it.
   */
  async #checkRouteOverlaps(): Promise<void> {
    const check = (
      r: RouteJson,
      c: { len: number },
      overlaps: boolean,
      ours: string,
      what: string,
    ): void => {
      if (!overlaps) return;
      const msg = `${what} ${ours} overlaps route ${r.dst} on ${r.dev ?? '?'}`;
      if (c.len >= (what === 'IPv6 prefix' ? 64 : this.#v4.len)) {
        throw new Error(`${msg}; configure another one`);
      }
      this.#log(`network: warning: ${msg}; VM addresses take precedence there`);
    };
    const mine = (dev: string | undefined): boolean =>
      dev === this.bridge || (dev !== undefined && this.#isOurTap(dev));
    const routes6 = JSON.parse(await run('ip', ['-j', '-6', 'route', 'show'])) as RouteJson[];
    for (const r of routes6) {
      if (mine(r.dev) || !r.dst || r.dst === 'default' || !r.dst.includes(':')) continue;
      const c = parseCidr6(r.dst.includes('/') ? r.dst : `${r.dst}/128`, 'route');
      if (c.len < 8) continue;
      check(r, c, cidr6Overlap(c, this.#v6), this.ipv6Prefix, 'IPv6 prefix');
    }
    const routes4 = JSON.parse(await run('ip', ['-j', '-4', 'route', 'show'])) as RouteJson[];
    for (const r of routes4) {
      if (mine(r.dev) || !r.dst || r.dst === 'default') continue;
      const c = parseCidr4(r.dst.includes('/') ? r.dst : `${r.dst}/32`, 'route');
      check(r, c, cidr4Overlap(c, this.#v4), this.ipv4Subnet, 'IPv4 subnet');
    }
  }

  async #enableForwarding(): Promise<void> {
    const set = (key: string, value: string): void => {
      const old = readSysctl(key);
      if (old === undefined || old === value) return;
      this.#state.sysctls[key] ??= old;
      writeSysctl(key, value);
    };
    // Turning on IPv6 forwarding makes interfaces with accept_ra=1 ignore router advertisements;
    // those that learned routes from RAs keep accepting them (accept_ra=2).
    const raRoutes = JSON.parse(
      await run('ip', ['-j', '-6', 'route', 'show', 'proto', 'ra']).catch(() => '[]'),
    ) as RouteJson[];
    for (const dev of new Set(raRoutes.map((r) => r.dev).filter(Boolean))) {
      if (readSysctl(`net/ipv6/conf/${dev}/accept_ra`) === '1') {
        set(`net/ipv6/conf/${dev}/accept_ra`, '2');
      }
    }
    set('net/ipv6/conf/all/forwarding', '1');
    set('net/ipv4/ip_forward', '1');
    this.#save();
  }

  #hostTableScript(): string {
    const taps = `"${this.tapPrefix}*"`;
    const t = this.#hostTable;
    const bit = hex32(this.#mark);
    const clear = hex32(~this.#mark >>> 0);
    const egress = hex32(this.#egressMark);
    const ports = this.#hostTcpPorts.length
      ? `elements = { ${this.#hostTcpPorts.join(', ')} }`
      : '';
    return `table inet ${t} {}
delete table inet ${t}
table inet ${t} {
  set host_tcp { type inet_service; ${ports} }
  chain input {
    type filter hook input priority filter; policy accept;
    iifname ${taps} jump from_vms
  }
  chain from_vms {
    ct state established,related accept
    ct state invalid drop
    icmpv6 type { nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert, echo-request, destination-unreachable, packet-too-big, time-exceeded, parameter-problem } accept
    icmp type { echo-request, destination-unreachable, time-exceeded } accept
    ip daddr ${this.ipv4Gateway} meta l4proto { tcp, udp } th dport ${this.dnsPort} accept
    tcp dport @host_tcp accept
    meta l4proto tcp reject with tcp reset
    drop
  }
  chain forward {
    type filter hook forward priority filter; policy accept;
    iifname ${taps} oifname ${taps} drop
    iifname ${taps} ct state new meta mark & ${egress} == ${egress} meta l4proto tcp counter reject with tcp reset
    iifname ${taps} ct state new meta mark & ${egress} == ${egress} counter reject with icmpx type admin-prohibited
    oifname ${taps} meta mark set meta mark & ${clear}
    oifname ${taps} ct state established,related meta mark set meta mark | ${bit}
  }
  chain output {
    type filter hook output priority filter; policy accept;
    oifname ${taps} meta mark set meta mark & ${clear}
    oifname ${taps} ct state established,related meta mark set meta mark | ${bit}
  }
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr ${this.ipv4Subnet} oifname != ${taps} oifname != "${this.bridge}" masquerade
  }
}
`;
  }

  // ---------------------------------------------------------------------------------------------
  // Ports (one tap per VM, made ahead of time)

  #portOf(vmId: string): Port | undefined {
    return Object.values(this.#state.ports).find((p) => p.vmId === vmId);
  }

  #isOurTap(name: string): boolean {
    return (
      name.length === IFNAME_MAX &&
      name.startsWith(this.tapPrefix) &&
      /^[0-9a-f]+$/.test(name.slice(this.tapPrefix.length))
    );
  }

  /** A new port on record (name, public IPv6, IPv4), saved before anything is created. */
  #newPort(vmId?: string): Port {
    const used = Object.values(this.#state.ports);
    const taps = new Set(used.map((p) => p.tap));
    const v6s = new Set(used.map((p) => p.ipv6));
    const v4s = new Set(used.map((p) => p.ipv4));
    let tap = '';
    while (!tap || taps.has(tap)) {
      tap =
        this.tapPrefix +
        crypto
          .randomBytes(8)
          .toString('hex')
          .slice(0, IFNAME_MAX - this.tapPrefix.length);
    }
    let ipv6 = '';
    while (!ipv6 || v6s.has(ipv6)) {
      const iid = crypto.randomBytes(8).readBigUInt64BE();
      if (iid < 2n) continue; // ::0 is the subnet-router anycast, ::1 the host
      ipv6 = formatIpv6(this.#v6.base | iid);
    }
    const hosts = 2 ** (32 - this.#v4.len);
    // .0 network, .1 the host, last = broadcast; the lowest free one after the last handed out,
    // so that a released address is not reused at once (late packets of its old connections).
    const next = this.#state.nextIpv4 ?? 2;
    let ipv4 = '';
    for (let k = 0; k < hosts - 3 && !ipv4; k++) {
      const i = 2 + ((next - 2 + k) % (hosts - 3));
      const candidate = formatIpv4(this.#v4.base + i);
      if (!v4s.has(candidate)) {
        ipv4 = candidate;
        this.#state.nextIpv4 = i + 1;
      }
    }
    if (!ipv4) throw new Error(`IPv4 subnet ${this.ipv4Subnet} is full`);
    const port: Port = { tap, ipv6, ipv4, ...(vmId ? { vmId } : {}) };
    this.#state.ports[tap] = port;
    this.#save();
    return port;
  }

  /**
   * Creates (or completes) a port: the tap (the guests' gateway MAC, `fe80::1`, no other
   * link-local address), the routes and permanent neighbour entries of its public addresses,
   * and its nft table (anti-spoofing, translation, and a closed firewall unless `keepFirewall`
   * finds one). `fresh`: the tap is new, so it is made in the same `ip` batch.
   */
  async #createPort(
    p: Port,
    opts: { fresh?: boolean; keepFirewall?: boolean; nice?: boolean } = {},
  ): Promise<void> {
    const g = GUEST_NET;
    const setup = [
      `link set dev ${p.tap} address ${g.gatewayMac} addrgenmode none`,
      `link set dev ${p.tap} up`,
      `addr replace ${g.ipv6Gateway}/64 dev ${p.tap} nodad`,
      `route replace ${p.ipv6}/128 dev ${p.tap}`,
      `route replace ${p.ipv4}/32 dev ${p.tap}`,
      // Static neighbours: the host never asks where a VM's addresses are.
      `neigh replace ${p.ipv6} lladdr ${g.mac} dev ${p.tap} nud permanent`,
      `neigh replace ${p.ipv4} lladdr ${g.mac} dev ${p.tap} nud permanent`,
    ];
    const nice = opts.nice ?? false;
    const ensureThenSetup = async (): Promise<void> => {
      const links = await run('ip', ['-j', 'link', 'show', 'dev', p.tap])
        .then((out) => JSON.parse(out) as unknown[])
        .catch(() => []);
      if (links.length === 0) {
        await run('ip', ['tuntap', 'add', 'dev', p.tap, 'mode', 'tap']);
      }
      await ipBatch(setup, false, nice);
    };
    if (opts.fresh) {
      // Root's: a confined QEMU gets its tap's descriptor from the server (tap-handover.ts).
      await ipBatch([`tuntap add dev ${p.tap} mode tap`, ...setup], false, nice).catch(
        ensureThenSetup,
      );
    } else {
      await ensureThenSetup();
    }
    // A firewall is only kept if there is one (else the port starts closed).
    const keep =
      opts.keepFirewall === true &&
      (await listNftTables()).some((t) => t.family === 'netdev' && t.name === this.#vmTable(p));
    await nft(this.#vmTableScript(p, keep), nice);
    if (!keep) {
      this.#installed.set(p.tap, policyKey(CLOSED));
      this.#policies.set(p.tap, CLOSED);
    }
  }

  async #removePort(p: Port): Promise<void> {
    this.#reserved.delete(p.tap);
    this.#installed.delete(p.tap);
    this.#policies.delete(p.tap);
    this.#learned.delete(p.tap);
    this.#ready.delete(p.tap);
    await nft(`delete table netdev ${this.#vmTable(p)}\n`).catch(() => {});
    // Deleting the tap takes its routes and neighbour entries along.
    await run('ip', ['link', 'del', 'dev', p.tap]).catch(() => {});
    const still = await run('ip', ['-j', 'link', 'show', 'dev', p.tap])
      .then((out) => (JSON.parse(out) as unknown[]).length > 0)
      .catch(() => false);
    if (still) throw new Error(`could not remove tap ${p.tap}`);
  }

  /**
   * Makes spare ports in the background (at a low CPU priority) until `sparePorts` are ready,
   * once hand-outs have paused (`REFILL_IDLE_MS`; see there). A hand-out during a refill pauses it.
   */
  #scheduleRefill(delayMs?: number): void {
    if (this.#closed || !this.available || this.#spare <= 0 || this.#refilling) return;
    if (this.#refillTimer) clearTimeout(this.#refillTimer);
    const delay = delayMs ?? (this.#ready.size < SPARE_LOW ? REFILL_DELAY_MS : REFILL_IDLE_MS);
    this.#refillTimer = setTimeout(() => {
      this.#refillTimer = undefined;
      this.#refilling = this.#refill().then((paused) => {
        this.#refilling = undefined;
        if (paused) this.#scheduleRefill();
      });
    }, delay);
    this.#refillTimer.unref();
  }

  /** Makes spare ports; true when it stopped for hand-outs (see `#scheduleRefill`). */
  async #refill(): Promise<boolean> {
    while (!this.#closed && this.#ready.size < this.#spare) {
      const busy = performance.now() - this.#lastHandOut < REFILL_IDLE_MS;
      if (busy && this.#ready.size >= SPARE_LOW) return true;
      try {
        await this.#exclusive(async () => {
          if (this.#closed) return;
          const p = this.#newPort();
          try {
            await this.#createPort(p, { fresh: true, nice: true });
          } catch (err) {
            await this.#removePort(p).catch(() => {});
            delete this.#state.ports[p.tap];
            this.#save();
            throw err;
          }
          if (!p.vmId) this.#ready.add(p.tap);
        });
      } catch (err) {
        this.#log(`network: making a spare port failed: ${errText(err)}`);
        return false;
      }
    }
    return false;
  }

  #stopRefill(): void {
    this.#closed = true;
    if (this.#refillTimer) clearTimeout(this.#refillTimer);
    this.#refillTimer = undefined;
  }

  /**
   * The port's table: `ingress` (from the VM) admits only the guest's own MAC and addresses and
   * translates its source to the VM's public ones; `egress` (into the VM) translates the
   * destination back and holds the firewall, closed until `applyFirewall` unless `keepFirewall`.
   */
  #vmTableScript(p: Port, keepFirewall: boolean): string {
    const g = GUEST_NET;
    const t = this.#vmTable(p);
    const dev = `device "${p.tap}" priority filter; policy drop;`;
    const target = ipv6Hex(parseIpv6(g.ipv6));
    const lines = [
      `table netdev ${t} {`,
      `  chain ingress { type filter hook ingress ${dev} }`,
      `  chain egress { type filter hook egress ${dev} }`,
      `  chain outbound { }`,
      `}`,
      `flush chain netdev ${t} ingress`,
      `table netdev ${t} {`,
      `  chain ingress {`,
      `    ether saddr != ${g.mac} counter drop`,
      `    arp htype 1 arp ptype ip arp saddr ether ${g.mac} arp saddr ip ${g.ipv4} accept`,
      // The guest's resolver (its gateway, port 53) is the server's DNS forwarder on the host.
      ...(['udp', 'tcp'] as const).map(
        (proto) =>
          `    ip saddr ${g.ipv4} ip daddr ${g.ipv4Gateway} ${proto} dport 53 ` +
          `ip saddr set ${p.ipv4} ip daddr set ${this.ipv4Gateway} ${proto} dport set ${this.dnsPort} accept`,
      ),
      // Stateless 1:1 translation: the guest's fixed address becomes the VM's own; then the
      // egress policy (its verdict is a mark that the host's forward hook acts on).
      `    ip saddr ${g.ipv4} ip saddr set ${p.ipv4} goto outbound`,
      `    icmpv6 type { nd-router-advert, nd-redirect } counter drop`,
      // A neighbour advertisement may only announce the guest's own address (or its link-local).
      `    icmpv6 type nd-neighbor-advert @th,64,128 != ${target} @th,64,64 != 0xfe80000000000000 counter drop`,
      `    ip6 saddr ${g.ipv6} ip6 saddr set ${p.ipv6} goto outbound`,
      `    ip6 saddr fe80::/64 accept`,
      `    ip6 saddr :: meta l4proto ipv6-icmp accept`,
      `    counter drop`,
      `  }`,
      `}`,
    ];
    if (!keepFirewall) lines.push(this.#firewallScript(p, CLOSED));
    return `${lines.join('\n')}\n`;
  }

  #firewallScript(p: Port, policy: FirewallPolicy): string {
    const g = GUEST_NET;
    const t = this.#vmTable(p);
    const rules = [
      // Translation back to the guest's fixed addresses (the rules below never look at them).
      `ip daddr ${p.ipv4} ip daddr set ${g.ipv4}`,
      `ip6 daddr ${p.ipv6} ip6 daddr set ${g.ipv6}`,
      // Answers of the DNS forwarder come from the guest's resolver address.
      ...(['udp', 'tcp'] as const).map(
        (proto) =>
          `ip saddr ${this.ipv4Gateway} ${proto} sport ${this.dnsPort} ` +
          `ip saddr set ${g.ipv4Gateway} ${proto} sport set 53`,
      ),
      // Unicast frames for other MACs never enter this VM.
      `ether daddr != ${g.mac} ether daddr & 01:00:00:00:00:00 == 00:00:00:00:00:00 drop`,
      `meta protocol arp accept`,
      `icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, echo-request, destination-unreachable, packet-too-big, time-exceeded, parameter-problem } accept`,
      // Replies to the VM's own connections (and ICMP errors about them), marked by conntrack.
      `meta mark & ${hex32(this.#mark)} == ${hex32(this.#mark)} accept`,
    ];
    for (const r of policy.ingress) {
      const verdict = r.action === 'deny' ? 'counter drop' : 'accept';
      const ports =
        r.portEnd && r.portEnd !== r.portStart ? `${r.portStart}-${r.portEnd}` : `${r.portStart}`;
      const l4 = r.protocol === 'any' ? '' : `${r.protocol} dport ${ports} `;
      const cidrs = (r.sourceCidrs ?? []).map(normalizeCidr);
      const v6 = cidrs.filter((c) => c.includes(':'));
      const v4 = cidrs.filter((c) => !c.includes(':'));
      if (cidrs.length === 0) {
        rules.push(r.protocol === 'any' ? verdict : `${l4}${verdict}`);
        continue;
      }
      if (v6.length) rules.push(`ip6 saddr { ${v6.join(', ')} } ${l4}${verdict}`);
      if (v4.length) rules.push(`ip saddr { ${v4.join(', ')} } ${l4}${verdict}`);
    }
    rules.push(policy.mode === 'open' ? 'accept' : 'counter drop');
    const out = this.#outboundRules(policy);
    const sets = fqdnRules(policy).flatMap((pattern) => [
      `  set ${fqdnSetName(pattern, 4)} { type ipv4_addr; flags timeout; }`,
      `  set ${fqdnSetName(pattern, 6)} { type ipv6_addr; flags timeout; }`,
    ]);
    return [
      `table netdev ${t} {`,
      `  chain egress { type filter hook egress device "${p.tap}" priority filter; policy drop; }`,
      `  chain outbound { }`,
      ...sets,
      `}`,
      `flush chain netdev ${t} egress`,
      `flush chain netdev ${t} outbound`,
      `table netdev ${t} {`,
      `  chain egress {`,
      ...rules.map((r) => `    ${r}`),
      `  }`,
      `  chain outbound {`,
      ...out.map((r) => `    ${r}`),
      `  }`,
      `}`,
      '',
    ].join('\n');
  }

  /**
   * The egress policy, for frames from the VM after translation. Traffic to the host's
   * gateways passes (the host table decides what the VM may reach there). A refusal is a mark
   * (`egressMark`): the host's forward hook rejects *new* connections that carry it, so
   * established ones survive policy changes and the expiry of learned addresses.
   */
  #outboundRules(policy: FirewallPolicy): string[] {
    const refuse = `meta mark set meta mark | ${hex32(this.#egressMark)} accept`;
    const verdict = (action: 'allow' | 'deny'): string => (action === 'deny' ? refuse : 'accept');
    const rules = [`ip daddr ${this.ipv4Gateway} accept`, `ip6 daddr ${this.ipv6Gateway} accept`];
    if (policy.dns?.blockBypass) {
      const v4 = DOH_ENDPOINTS.filter((a) => !a.includes(':'));
      const v6 = DOH_ENDPOINTS.filter((a) => a.includes(':'));
      rules.push(
        `meta l4proto { tcp, udp } th dport { 53, 853 } ${refuse}`,
        `ip daddr { ${v4.join(', ')} } meta l4proto { tcp, udp } th dport 443 ${refuse}`,
        `ip6 daddr { ${v6.join(', ')} } meta l4proto { tcp, udp } th dport 443 ${refuse}`,
      );
    }
    for (const r of policy.egress?.rules ?? []) {
      const l4 = egressL4(r);
      if (r.kind === 'cidr') {
        const c = normalizeCidr(r.value);
        rules.push(`${c.includes(':') ? 'ip6' : 'ip'} daddr ${c} ${l4}${verdict(r.action)}`);
      } else {
        rules.push(`ip daddr @${fqdnSetName(r.value, 4)} ${l4}${verdict(r.action)}`);
        rules.push(`ip6 daddr @${fqdnSetName(r.value, 6)} ${l4}${verdict(r.action)}`);
      }
    }
    rules.push(policy.egress?.default === 'deny' ? refuse : 'accept');
    return rules;
  }

  /** Elements for the sets of a policy's FQDN rules, from names the VM resolved before. */
  #refillScript(p: Port, policy: FirewallPolicy): string {
    const known = this.#learned.get(p.tap);
    if (!known || fqdnRules(policy).length === 0) return '';
    const now = Date.now();
    let script = '';
    for (const [name, l] of known) {
      const left = Math.floor((l.expiresAt - now) / 1000);
      if (left < 1) {
        known.delete(name);
        continue;
      }
      const sets = fqdnSetsFor(policy, name);
      if (sets.length) script += this.#learnScript(p, sets, l.v4, l.v6, left);
    }
    return script;
  }

  /**
   * Puts addresses into sets with a new timeout: add (so that it exists), delete, add again, in
   * one transaction (a plain add keeps an existing element's older timeout).
   */
  #learnScript(
    p: Port,
    patterns: readonly string[],
    v4: readonly string[],
    v6: readonly string[],
    ttl: number,
  ): string {
    const t = this.#vmTable(p);
    const lines: string[] = [];
    for (const pattern of patterns) {
      for (const [family, addrs] of [
        [4, v4],
        [6, v6],
      ] as const) {
        if (addrs.length === 0) continue;
        const set = `netdev ${t} ${fqdnSetName(pattern, family)}`;
        const plain = addrs.join(', ');
        const timed = addrs.map((a) => `${a} timeout ${ttl}s`).join(', ');
        lines.push(
          `add element ${set} { ${timed} }`,
          `delete element ${set} { ${plain} }`,
          `add element ${set} { ${timed} }`,
        );
      }
    }
    return lines.length ? `${lines.join('\n')}\n` : '';
  }

  /** Links named like this manager's taps (ours, or left by a crashed run of ours). */
  async #ourLinks(): Promise<string[]> {
    const out = await run('ip', ['-j', 'link', 'show']).catch(() => '[]');
    return (JSON.parse(out || '[]') as Array<{ ifname: string }>)
      .map((l) => l.ifname)
      .filter((name) => this.#isOurTap(name));
  }

  #vmTable(p: Port): string {
    return `${this.#vmTablePrefix}${p.tap}`;
  }

  /** What the runtime and the API see: the tap and the VM's public addresses. */
  #toVmNetwork(p: Port): VmNetwork {
    return {
      tap: p.tap,
      mac: GUEST_NET.mac,
      ipv6: `${p.ipv6}/64`,
      ipv6Gateway: this.ipv6Gateway,
      ipv4: `${p.ipv4}/${this.#v4.len}`,
      ipv4Gateway: this.ipv4Gateway,
    };
  }

  #requireAvailable(): void {
    if (!this.available) throw new Error(`VM networking is unavailable: ${this.reason}`);
  }

  #save(): void {
    const tmp = `${this.#statePath}.tmp`;
    fs.writeFileSync(tmp, `${JSON.stringify(this.#state, null, 2)}\n`);
    fs.renameSync(tmp, this.#statePath);
  }

  /** Serialises host changes (port creation, release, reconcile, teardown). */
  #exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.#lock.then(fn, fn);
    this.#lock = p.catch(() => {});
    return p;
  }
}

const CLOSED: FirewallPolicy = { mode: 'restricted', ingress: [] };

function policyKey(policy: FirewallPolicy): string {
  return JSON.stringify([
    policy.mode,
    policy.ingress.map((r) => [
      r.action ?? 'allow',
      r.protocol,
      r.portStart,
      r.portEnd ?? r.portStart,
      [...(r.sourceCidrs ?? [])].map(normalizeCidr).sort(),
    ]),
    policy.egress ?? null,
    policy.dns?.blockBypass ?? false,
  ]);
}

function sameAddrs(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && [...a].sort().join() === [...b].sort().join();
}

/** What `learn` remembers of a resolved name. */
interface Learned {
  v4: readonly string[];
  v6: readonly string[];
  expiresAt: number;
}

/** The distinct patterns of a policy's FQDN egress rules. */
function fqdnRules(policy: FirewallPolicy | undefined): string[] {
  const out = new Set<string>();
  for (const r of policy?.egress?.rules ?? []) {
    if (r.kind === 'fqdn') out.add(normalizeName(r.value));
  }
  return [...out];
}

/** The patterns of the policy's FQDN rules that match `name`. */
function fqdnSetsFor(policy: FirewallPolicy | undefined, name: string): string[] {
  return fqdnRules(policy).filter((pattern) => fqdnMatches(pattern, name));
}

/** Name of the nft set holding the learned addresses of one FQDN pattern, per family. */
function fqdnSetName(pattern: string, family: 4 | 6): string {
  const h = crypto.createHash('sha256').update(normalizeName(pattern)).digest('hex').slice(0, 16);
  return `fq${family}_${h}`;
}

/** `tcp dport 443 ` / `meta l4proto udp ` / `` for an egress rule's protocol and ports. */
function egressL4(r: EgressRule): string {
  if (r.protocol === 'any') return '';
  if (r.ports === 'any') return `meta l4proto ${r.protocol} `;
  return `${r.protocol} dport ${r.ports} `;
}

/** A free port on the loopback (TCP), for the DNS forwarder. */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

/**
 * The default start of the tap names of a host interface: `fvt` for the default one, a hash of
 * the name for others (so that two servers' taps never look alike).
 */
export function tapPrefixFor(bridge: string): string {
  if (bridge === DEFAULT_BRIDGE) return DEFAULT_TAP_PREFIX;
  return `fv${crypto.createHash('sha256').update(bridge).digest('hex').slice(0, 4)}`;
}

// -----------------------------------------------------------------------------------------------
// Bridge ownership

/** A live hold on a bridge; shared by the managers of this process that use the same state dir. */
interface Claim {
  readonly bridge: string;
  readonly record: BridgeOwner;
  readonly server: net.Server;
  refs: number;
}

/** Claims held by this process, by bridge name. */
const claims = new Map<string, Claim>();

function ownerRecordPath(bridge: string): string {
  return path.join(OWNER_DIR, `bridge-${bridge}.json`);
}

/** Abstract socket (Linux): bound while its process lives, per network namespace. */
function lockAddress(bridge: string): string {
  return `\0fastvm-bridge:${bridge}`;
}

function readOwnerRecord(bridge: string): BridgeOwner | undefined {
  try {
    const r = JSON.parse(fs.readFileSync(ownerRecordPath(bridge), 'utf8')) as BridgeOwner;
    return typeof r.stateDir === 'string' ? r : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Claims `bridge` for `stateDir`, or throws `BridgeInUseError` when a live manager with another
 * state dir holds it. A claim whose process died is taken over (with a log line).
 */
async function claimBridge(
  bridge: string,
  stateDir: string,
  owner: string,
  log: (msg: string) => void,
): Promise<Claim> {
  const record: BridgeOwner = {
    stateDir,
    owner,
    pid: process.pid,
    since: new Date().toISOString(),
  };
  for (let attempt = 0; ; attempt++) {
    // Checked on every attempt: another manager of this process may have claimed it meanwhile.
    const held = claims.get(bridge);
    if (held) {
      if (held.record.stateDir !== stateDir) throw new BridgeInUseError(bridge, held.record);
      held.refs++;
      return held;
    }
    const server = net.createServer((sock) => {
      sock.on('error', () => {});
      sock.end(JSON.stringify(record));
    });
    const bound = await new Promise<boolean>((resolve, reject) => {
      server.once('error', (err: NodeJS.ErrnoException) =>
        err.code === 'EADDRINUSE' ? resolve(false) : reject(err),
      );
      server.listen({ path: lockAddress(bridge) }, () => resolve(true));
    });
    if (bound) {
      server.unref();
      const previous = readOwnerRecord(bridge);
      if (previous && previous.stateDir !== stateDir) {
        log(
          `network: taking over bridge ${bridge} from a FastVM server that is gone ` +
            `(${previous.owner}, pid ${previous.pid}); taps and tables it left are removed`,
        );
      }
      try {
        fs.mkdirSync(OWNER_DIR, { recursive: true, mode: 0o755 });
        const file = ownerRecordPath(bridge);
        fs.writeFileSync(`${file}.${process.pid}.tmp`, `${JSON.stringify(record)}\n`);
        fs.renameSync(`${file}.${process.pid}.tmp`, file);
      } catch (err) {
        log(`network: cannot record the owner of bridge ${bridge}: ${errText(err)}`);
      }
      const claim: Claim = { bridge, record, server, refs: 1 };
      claims.set(bridge, claim);
      return claim;
    }
    const holder = await askOwner(bridge);
    // The holder exited between our bind and our question: try again.
    if ((holder === null || claims.has(bridge)) && attempt < 3) continue;
    // Also when the holder has this state dir: two live servers on one data dir would undo
    // each other's work just the same.
    throw new BridgeInUseError(bridge, holder ?? undefined);
  }
}

/** The live owner's record (undefined if it did not answer sensibly), null when nobody listens. */
function askOwner(bridge: string): Promise<BridgeOwner | undefined | null> {
  return new Promise((resolve) => {
    const sock = net.connect({ path: lockAddress(bridge) });
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => {
      sock.destroy();
      resolve(undefined);
    }, 2000);
    sock.on('data', (b: Buffer) => chunks.push(b));
    sock.on('end', () => {
      clearTimeout(timer);
      try {
        resolve(JSON.parse(Buffer.concat(chunks).toString('utf8')) as BridgeOwner);
      } catch {
        resolve(undefined);
      }
    });
    sock.on('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      resolve(err.code === 'ECONNREFUSED' || err.code === 'ENOENT' ? null : undefined);
    });
  });
}

function releaseClaim(claim: Claim, forget: boolean): void {
  if (claims.get(claim.bridge) !== claim) return; // already dropped (the bridge was removed)
  if (forget) {
    const file = ownerRecordPath(claim.bridge);
    if (readOwnerRecord(claim.bridge)?.stateDir === claim.record.stateDir) {
      try {
        fs.rmSync(file, { force: true });
      } catch {
        // Only a record; the lock below is what counts.
      }
    }
  } else if (--claim.refs > 0) {
    return;
  }
  claims.delete(claim.bridge);
  claim.server.close();
}

// -----------------------------------------------------------------------------------------------
// Validation

function validateOptions(opts: NetworkManagerOptions): void {
  const bridge = opts.bridge ?? DEFAULT_BRIDGE;
  if (!/^[A-Za-z0-9_-]{1,15}$/.test(bridge)) throw new Error(`invalid bridge name ${bridge}`);
  const prefix = opts.tapPrefix ?? DEFAULT_TAP_PREFIX;
  if (!/^[A-Za-z][A-Za-z0-9]{0,7}$/.test(prefix)) {
    throw new Error(`tapPrefix must be 1-8 letters/digits, got ${prefix}`);
  }
  const mark = opts.replyMark ?? DEFAULT_REPLY_MARK;
  const egress = opts.egressMark ?? DEFAULT_EGRESS_MARK;
  for (const [what, bit] of [
    ['replyMark', mark],
    ['egressMark', egress],
  ] as const) {
    if (!Number.isInteger(bit) || bit <= 0 || bit > 0xffffffff || (bit & (bit - 1)) !== 0) {
      throw new Error(`${what} must be a single bit`);
    }
  }
  if (mark === egress) throw new Error('replyMark and egressMark must differ');
  if (opts.dnsPort !== undefined) checkPort(opts.dnsPort, 'dnsPort');
  for (const p of opts.hostTcpPorts ?? []) checkPort(p, 'host port');
  const spare = opts.sparePorts ?? DEFAULT_SPARE_PORTS;
  if (!Number.isInteger(spare) || spare < 0 || spare > 1024) {
    throw new Error(`sparePorts must be an integer 0-1024, got ${spare}`);
  }
}

/** Throws on anything that could not be expressed safely as nft rules. */
export function validatePolicy(policy: FirewallPolicy): void {
  if (policy.mode !== 'open' && policy.mode !== 'restricted') {
    throw new Error(`invalid firewall mode ${String(policy.mode)}`);
  }
  if (!Array.isArray(policy.ingress)) throw new Error('firewall ingress must be an array');
  validateEgress(policy);
  for (const r of policy.ingress) {
    const v2 = r.action !== undefined;
    if (v2 && r.action !== 'allow' && r.action !== 'deny') {
      throw new Error(`invalid action ${String(r.action)}`);
    }
    if (r.protocol !== 'tcp' && r.protocol !== 'udp' && !(v2 && r.protocol === 'any')) {
      throw new Error(`invalid protocol ${String(r.protocol)}`);
    }
    checkPort(r.portStart, 'portStart');
    if (r.portEnd !== undefined && r.portEnd !== null) {
      checkPort(r.portEnd, 'portEnd');
      if (r.portEnd < r.portStart) throw new Error('portEnd must be >= portStart');
    }
    for (const c of r.sourceCidrs ?? []) (v2 ? normalizeCidr : normalizeCidr6)(c);
  }
}

function validateEgress(policy: FirewallPolicy): void {
  const { egress, dns } = policy;
  if (dns !== undefined) {
    if (dns.mode !== 'allow' && dns.mode !== 'deny') throw new Error('invalid dns mode');
    if (typeof dns.blockBypass !== 'boolean') throw new Error('dns.blockBypass must be a boolean');
    for (const d of dns.domains) {
      const problem = fqdnPatternProblem(d);
      if (problem) throw new Error(`dns domain ${d} ${problem}`);
    }
  }
  if (egress === undefined) return;
  if (egress.default !== 'allow' && egress.default !== 'deny') {
    throw new Error(`invalid egress default ${String(egress.default)}`);
  }
  for (const r of egress.rules) {
    if (r.action !== 'allow' && r.action !== 'deny') throw new Error('invalid action');
    if (r.protocol !== 'tcp' && r.protocol !== 'udp' && r.protocol !== 'any') {
      throw new Error(`invalid protocol ${String(r.protocol)}`);
    }
    checkPorts(r.ports, r.protocol);
    if (r.kind === 'cidr') normalizeCidr(r.value);
    else if (r.kind === 'fqdn') {
      const problem = fqdnPatternProblem(r.value);
      if (problem) throw new Error(`fqdn ${r.value} ${problem}`);
    } else throw new Error(`invalid kind ${String(r.kind)}`);
  }
}

/** `443`, `8080-8090` or `any` (and only `any` with protocol `any`). */
export function checkPorts(ports: string, protocol: string): void {
  if (ports === 'any') return;
  if (protocol === 'any') throw new Error('ports must be "any" when protocol is "any"');
  const m = /^(\d{1,5})(?:-(\d{1,5}))?$/.exec(ports);
  if (!m) throw new Error(`ports must be "443", "8080-8090" or "any", got ${ports}`);
  const a = Number(m[1]);
  const b = m[2] === undefined ? a : Number(m[2]);
  checkPort(a, 'port');
  checkPort(b, 'port');
  if (b < a) throw new Error(`port range ${ports} ends before it starts`);
}

/** An IPv4 or IPv6 `addr` or `addr/len` → the masked `network/len` nft expects. */
export function normalizeCidr(cidr: string): string {
  const [addr = ''] = cidr.split('/');
  if (!net.isIPv4(addr)) return normalizeCidr6(cidr);
  const c = parseCidr4(cidr.includes('/') ? cidr : `${cidr}/32`, 'CIDR');
  return `${formatIpv4(c.base)}/${c.len}`;
}

function checkPort(p: unknown, what: string): void {
  if (typeof p !== 'number' || !Number.isInteger(p) || p < 1 || p > 65535) {
    throw new Error(`${what} must be an integer 1-65535, got ${String(p)}`);
  }
}

/** `addr` or `addr/len` (IPv6 only) → the masked `network/len` nft expects. */
function normalizeCidr6(cidr: string): string {
  const [addr = '', len] = cidr.split('/');
  if (net.isIPv4(addr)) throw new Error(`IPv4 source CIDRs are not supported: ${cidr}`);
  const c = parseCidr6(len === undefined ? `${addr}/128` : cidr, 'sourceCidrs');
  return `${formatIpv6(c.base)}/${c.len}`;
}

// -----------------------------------------------------------------------------------------------
// Addresses

interface Cidr6 {
  base: bigint;
  len: number;
}
interface Cidr4 {
  base: number;
  len: number;
}

const MASK128 = (1n << 128n) - 1n;

/** Parses an IPv6 address (any valid textual form, including an embedded IPv4 tail). */
export function parseIpv6(addr: string): bigint {
  if (!net.isIPv6(addr)) throw new Error(`not an IPv6 address: ${addr}`);
  let text = addr.split('%')[0]!;
  const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  if (v4) {
    const n = parseIpv4(v4[1]!);
    text = `${text.slice(0, -v4[1]!.length)}${(n >>> 16).toString(16)}:${(n & 0xffff).toString(16)}`;
  }
  const [head = '', tail] = text.split('::');
  const h = head ? head.split(':') : [];
  const t = tail ? tail.split(':') : [];
  const groups =
    tail === undefined ? h : [...h, ...Array<string>(8 - h.length - t.length).fill('0'), ...t];
  return groups.reduce((acc, g) => (acc << 16n) | BigInt(parseInt(g, 16)), 0n);
}

/** Canonical (RFC 5952) text of an IPv6 address. */
export function formatIpv6(v: bigint): string {
  const groups: string[] = [];
  for (let i = 7; i >= 0; i--) groups.push(((v >> BigInt(i * 16)) & 0xffffn).toString(16));
  // The WHATWG URL parser serialises IPv6 hosts in canonical compressed form.
  return new URL(`http://[${groups.join(':')}]/`).hostname.slice(1, -1);
}

function ipv6Hex(v: bigint): string {
  return `0x${v.toString(16).padStart(32, '0')}`;
}

function parseCidr6(cidr: string, what: string): Cidr6 {
  const [addr = '', lenText, ...rest] = cidr.split('/');
  const len = Number(lenText);
  if (rest.length || lenText === undefined || !/^\d{1,3}$/.test(lenText) || len > 128) {
    throw new Error(`${what}: invalid IPv6 CIDR ${cidr}`);
  }
  if (!net.isIPv6(addr)) throw new Error(`${what}: invalid IPv6 CIDR ${cidr}`);
  const mask = len === 0 ? 0n : (MASK128 << BigInt(128 - len)) & MASK128;
  return { base: parseIpv6(addr) & mask, len };
}

function cidr6Overlap(a: Cidr6, b: Cidr6): boolean {
  const len = Math.min(a.len, b.len);
  const mask = len === 0 ? 0n : (MASK128 << BigInt(128 - len)) & MASK128;
  return (a.base & mask) === (b.base & mask);
}

function parseIpv4(addr: string): number {
  if (!net.isIPv4(addr)) throw new Error(`not an IPv4 address: ${addr}`);
  return addr.split('.').reduce((acc, o) => ((acc << 8) | Number(o)) >>> 0, 0);
}

function formatIpv4(n: number): string {
  return [24, 16, 8, 0].map((s) => (n >>> s) & 0xff).join('.');
}

function parseCidr4(cidr: string, what: string): Cidr4 {
  const [addr = '', lenText, ...rest] = cidr.split('/');
  const len = Number(lenText);
  if (rest.length || lenText === undefined || !/^\d{1,2}$/.test(lenText) || len > 32) {
    throw new Error(`${what}: invalid IPv4 CIDR ${cidr}`);
  }
  const mask = len === 0 ? 0 : (0xffffffff << (32 - len)) >>> 0;
  return { base: (parseIpv4(addr) & mask) >>> 0, len };
}

function cidr4Overlap(a: Cidr4, b: Cidr4): boolean {
  const len = Math.min(a.len, b.len);
  const mask = len === 0 ? 0 : (0xffffffff << (32 - len)) >>> 0;
  return (a.base & mask) >>> 0 === (b.base & mask) >>> 0;
}

/** `fdXX:XXXX:XXXX::/64`: a unique local prefix with a random 40-bit global id (RFC 4193). */
function randomUlaPrefix(): string {
  const b = crypto.randomBytes(5);
  const v = (0xfdn << 120n) | (BigInt(`0x${b.toString('hex')}`) << 80n);
  return `${formatIpv6(v)}/64`;
}

function hex32(n: number): string {
  return `0x${(n >>> 0).toString(16).padStart(8, '0')}`;
}

// -----------------------------------------------------------------------------------------------
// State, sysctls, commands

function loadState(file: string): State {
  try {
    const s = JSON.parse(fs.readFileSync(file, 'utf8')) as State & {
      vms?: Record<string, { tap: string; ipv6: string; ipv4: string }>;
    };
    if (s.version === 1) {
      // Before ports: VMs on a bridge, each guest with its own addresses. Their ports are kept
      // (so reconcile removes them when those VMs go) and the rest of the state carries over.
      const ports: Record<string, Port> = {};
      for (const [vmId, a] of Object.entries(s.vms ?? {})) {
        ports[a.tap] = { tap: a.tap, ipv6: a.ipv6, ipv4: a.ipv4, vmId };
      }
      return {
        version: STATE_VERSION,
        ...(s.generatedIpv6Prefix ? { generatedIpv6Prefix: s.generatedIpv6Prefix } : {}),
        ports,
        sysctls: s.sysctls ?? {},
      };
    }
    if (s.version !== STATE_VERSION) throw new Error(`unsupported version ${s.version}`);
    return { ...s, ports: s.ports ?? {}, sysctls: s.sysctls ?? {} };
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      return { version: STATE_VERSION, ports: {}, sysctls: {} };
    }
    throw new Error(`cannot read ${file}: ${errText(err)}`, { cause: err });
  }
}

/** `key` is the path under /proc/sys (`net/ipv4/ip_forward`), which keeps dotted names intact. */
function sysctlPath(key: string): string {
  return path.join('/proc/sys', key);
}

function readSysctl(key: string): string | undefined {
  try {
    return fs.readFileSync(sysctlPath(key), 'utf8').trim();
  } catch {
    return undefined;
  }
}

function writeSysctl(key: string, value: string): void {
  try {
    fs.writeFileSync(sysctlPath(key), value);
  } catch {
    // The interface is gone, or the key does not exist on this kernel.
  }
}

interface RouteJson {
  dst?: string;
  dev?: string;
}

interface NftTable {
  family: string;
  name: string;
}

async function listNftTables(): Promise<NftTable[]> {
  const out = JSON.parse(await run('nft', ['-j', 'list', 'tables'])) as {
    nftables: Array<{ table?: NftTable }>;
  };
  return out.nftables.flatMap((e) => (e.table ? [e.table] : []));
}

/**
 * Runs an nft script as one transaction (all of it applies, or none); `nice`: at a low CPU
 * priority (background work).
 */
function nft(script: string, nice = false): Promise<string> {
  return niced(nice, 'nft', ['-f', '-'], { input: script });
}

/** Several `ip` commands in one process; `force` keeps going past failures. */
function ipBatch(lines: readonly string[], force = false, nice = false): Promise<string> {
  return niced(nice, 'ip', [...(force ? ['-force'] : []), '-batch', '-'], {
    input: `${lines.join('\n')}\n`,
  });
}

function niced(
  nice: boolean,
  cmd: string,
  args: readonly string[],
  opts: { input?: string },
): Promise<string> {
  return nice ? run('nice', ['-n', '10', cmd, ...args], opts) : run(cmd, args, opts);
}

function run(cmd: string, args: readonly string[], opts: { input?: string } = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'], timeout: CMD_TIMEOUT_MS });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => err.push(b));
    child.on('error', reject);
    child.on('close', (code, signal) => {
      if (code === 0) {
        resolve(Buffer.concat(out).toString());
        return;
      }
      const why = Buffer.concat(err).toString().trim() || `exit ${code ?? signal}`;
      const shown = opts.input ? `\n--- input ---\n${opts.input}` : '';
      reject(new Error(`${cmd} ${args.join(' ')}: ${why}${shown}`));
    });
    child.stdin.on('error', () => {});
    child.stdin.end(opts.input ?? '');
  });
}

function errText(err: unknown): string {
  return err instanceof Error ? err.message.split('\n')[0]! : String(err);
}
