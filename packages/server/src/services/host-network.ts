/**
 * The real `NetworkManager` seam (see `network.ts`): VMs get a routed tap of their own, a public
 * IPv6 address and NATed IPv4 (translated from the guest's fixed private addresses), and their firewall policy is enforced by nftables, all through
 * `@fastvm/runtime`'s host `NetworkManager`. `createNetworkManager` falls back to the no-op
 * manager (VMs without public networking, `publicIpv6: null`) when networking is switched off or
 * the host cannot do it, and says why.
 *
 * Environment (read in `main.ts` through `networkSettingsFromEnv`):
 * - `FASTVM_NETWORK=off` — no networking;
 * - `FASTVM_IPV6_PREFIX` — the VMs' /64 (default: a random ULA /64 chosen once and kept in
 *   `<dataDir>/network/network.json`);
 * - `FASTVM_IPV4_SUBNET` — private IPv4 subnet, NATed outbound (default 10.213.0.0/16);
 * - `FASTVM_BRIDGE` — name of the host interface holding the host's addresses in the VMs'
 *   prefix and subnet (default `fvbr0`; other names also get their own tap prefix);
 * - `FASTVM_HOST_TCP_PORTS` — comma-separated host TCP ports VMs may connect to (default none;
 *   the API port stays unreachable from VMs);
 * - `FASTVM_DNS_UPSTREAM` — the resolvers the VMs' DNS forwarder asks (`ip`, `ip:port`,
 *   `[ipv6]:port`, comma-separated; default: the host's `/etc/resolv.conf`).
 *
 * A bridge belongs to one data dir at a time: a server whose bridge another running server
 * (with another data dir) owns refuses to start, saying to set `FASTVM_BRIDGE` and a subnet of
 * its own, instead of deleting that server's taps and tables at reconcile. A dead owner's bridge
 * is taken over.
 * @module
 */
import path from 'node:path';
import {
  BridgeInUseError,
  NetworkManager as HostNetwork,
  type PoolNetwork,
  publicIpv6,
} from '@fastvm/runtime';
import type { Logger } from 'pino';
import type { FirewallPolicy } from '../domain/index.js';
import { DnsForwarder, hostResolvers, upstreamsFromEnv, type Upstream } from './dns-forwarder.js';
import { NoopNetworkManager, type NetworkManager, type VmNetworkAttachment } from './network.js';

export interface NetworkSettings {
  enabled: boolean;
  ipv6Prefix?: string;
  ipv4Subnet?: string;
  bridge?: string;
  hostTcpPorts?: number[];
  /** Resolvers behind the VMs' DNS forwarder (default: the host's). */
  dnsUpstreams?: Upstream[];
}

type Env = Record<string, string | undefined>;

/** Parses the `FASTVM_NETWORK*` variables; throws with a user-facing message on bad values. */
export function networkSettingsFromEnv(env: Env = process.env): NetworkSettings {
  const mode = env.FASTVM_NETWORK?.trim().toLowerCase();
  if (mode !== undefined && mode !== '' && !/^(on|off|auto|0|1|true|false|yes|no)$/.test(mode)) {
    throw new Error(`FASTVM_NETWORK must be on, off or auto, got ${env.FASTVM_NETWORK}`);
  }
  const settings: NetworkSettings = { enabled: !/^(off|0|false|no)$/.test(mode ?? '') };
  if (env.FASTVM_IPV6_PREFIX) settings.ipv6Prefix = env.FASTVM_IPV6_PREFIX.trim();
  if (env.FASTVM_IPV4_SUBNET) settings.ipv4Subnet = env.FASTVM_IPV4_SUBNET.trim();
  if (env.FASTVM_BRIDGE) settings.bridge = env.FASTVM_BRIDGE.trim();
  if (env.FASTVM_HOST_TCP_PORTS) {
    settings.hostTcpPorts = env.FASTVM_HOST_TCP_PORTS.split(',')
      .map((p) => p.trim())
      .filter(Boolean)
      .map((p) => {
        const n = Number(p);
        if (!/^\d+$/.test(p) || n < 1 || n > 65535) {
          throw new Error(`FASTVM_HOST_TCP_PORTS: invalid port ${p}`);
        }
        return n;
      });
  }
  const upstreams = upstreamsFromEnv(env.FASTVM_DNS_UPSTREAM);
  if (upstreams) settings.dnsUpstreams = upstreams;
  return settings;
}

/** Adapts the runtime's host network manager to the server's hooks. */
export class HostNetworkManager implements NetworkManager {
  /**
   * Policies changed while a VM was being attached: a PUT/PATCH that lands before `allocate`
   * finds no tap yet, and the policy `attach` was given is older than the stored one.
   */
  private readonly latest = new Map<string, FirewallPolicy>();
  /** Host TCP ports open to VMs: the configured ones plus those added by `allowHostTcpPort`. */
  private readonly hostPorts: Set<number>;
  /** The policy each live VM's port holds (for the DNS forwarder's gate). */
  private readonly policies = new Map<string, FirewallPolicy>();
  private forwarder: DnsForwarder | undefined;

  constructor(
    readonly host: HostNetwork,
    private readonly logger: Logger,
    configuredHostTcpPorts: readonly number[] = [],
  ) {
    this.hostPorts = new Set(configuredHostTcpPorts);
  }

  get gateways(): readonly string[] {
    return [this.host.ipv4Gateway, this.host.ipv6Gateway].filter(
      (a): a is string => typeof a === 'string' && a !== '',
    );
  }

  /**
   * Starts the VMs' DNS forwarder on the IPv4 gateway (`host.dnsPort`). Without it the guests'
   * resolver does not answer (names do not resolve; addresses still work).
   */
  async startDns(upstreams: readonly Upstream[]): Promise<void> {
    const forwarder = new DnsForwarder({
      host: this.host.ipv4Gateway,
      port: this.host.dnsPort,
      upstreams,
      logger: this.logger,
      vmFor: (addr) => {
        const vmId = this.host.vmForAddress(addr);
        return vmId ? { vmId, dns: this.policies.get(vmId)?.dns } : undefined;
      },
      learn: (vmId, name, addrs, ttl) => this.host.learn(vmId, name, addrs, ttl),
    });
    await forwarder.start();
    this.forwarder = forwarder;
  }

  async allowHostTcpPort(port: number): Promise<void> {
    this.hostPorts.add(port);
    await this.host.setHostTcpPorts([...this.hostPorts]);
  }

  readonly pool: PoolNetwork = {
    reserve: (name) => this.host.reserve(name),
    release: (name) => this.host.release(name),
  };

  async attach(
    vmId: string,
    firewall: FirewallPolicy,
    pooledFrom?: string,
  ): Promise<VmNetworkAttachment> {
    const network =
      (pooledFrom !== undefined ? this.host.rebind(pooledFrom, vmId) : undefined) ??
      (await this.host.allocate(vmId));
    try {
      // Before the VM runs, so it is never reachable under a policy it was not given. Applies
      // are queued per VM in call order, so a later change is never overtaken by this one.
      const policy = this.latest.get(vmId) ?? firewall;
      await this.host.applyFirewall(vmId, policy);
      this.policies.set(vmId, policy);
    } catch (err) {
      await this.host.release(vmId).catch(() => {});
      throw err;
    }
    return { network, publicIpv6: publicIpv6(network) };
  }

  async onFirewallChange(vmId: string, policy: FirewallPolicy): Promise<void> {
    this.latest.set(vmId, policy);
    // No tap yet (still launching, or launched while networking was off): `attach` applies it.
    if (this.host.get(vmId)) {
      await this.host.applyFirewall(vmId, policy);
      this.policies.set(vmId, policy);
    }
  }

  release(vmId: string): Promise<void> {
    this.latest.delete(vmId);
    this.policies.delete(vmId);
    return this.host.release(vmId);
  }

  async reconcile(live: ReadonlyArray<{ id: string; firewall: FirewallPolicy }>): Promise<void> {
    const result = await this.host.reconcile(live.map((vm) => vm.id));
    for (const vm of live) {
      if (!this.host.get(vm.id)) continue;
      this.policies.set(vm.id, vm.firewall);
      await this.host.applyFirewall(vm.id, vm.firewall).catch((err: unknown) => {
        this.logger.error({ err, vmId: vm.id }, 'could not re-apply firewall policy');
      });
    }
    this.logger.info(
      {
        live: live.length,
        released: result.released.length,
        removedTaps: result.removedTaps.length,
        removedTables: result.removedTables.length,
      },
      'network reconciled',
    );
  }

  async close(): Promise<void> {
    await this.forwarder?.close();
    this.forwarder = undefined;
    // VMs survive a server restart, so their taps and rules stay (learned addresses included);
    // with none left, the bridge and host rules go too.
    await this.host.close();
  }
}

export interface CreatedNetwork {
  network: NetworkManager;
  /** One line for the start-up banner: what VMs get, or why they get no networking. */
  summary: string;
}

/** The host network manager, or the no-op one (with the reason) when off or unavailable. */
export async function createNetworkManager(opts: {
  dataDir: string;
  logger: Logger;
  settings: NetworkSettings;
}): Promise<CreatedNetwork> {
  const { logger, settings } = opts;
  const without = (why: string): CreatedNetwork => {
    const summary = `networking off: ${why}; VMs run without public IPv6 (publicIpv6: null)`;
    logger.warn(summary);
    return { network: new NoopNetworkManager(), summary };
  };
  if (!settings.enabled) return without('FASTVM_NETWORK=off');
  let host: HostNetwork;
  try {
    host = await HostNetwork.create({
      stateDir: path.join(opts.dataDir, 'network'),
      ...(settings.bridge ? { bridge: settings.bridge } : {}),
      ...(settings.ipv6Prefix ? { ipv6Prefix: settings.ipv6Prefix } : {}),
      ...(settings.ipv4Subnet ? { ipv4Subnet: settings.ipv4Subnet } : {}),
      ...(settings.hostTcpPorts ? { hostTcpPorts: settings.hostTcpPorts } : {}),
      owner: opts.dataDir,
      log: (msg) => logger.info(msg),
    });
  } catch (err) {
    if (err instanceof BridgeInUseError) {
      const who = err.holder
        ? `data dir ${err.holder.owner}, pid ${err.holder.pid}`
        : 'it did not say which';
      throw new Error(
        `VM network setup failed: bridge ${err.bridge} belongs to another running FastVM server ` +
          `(${who}), and taking it over would cut its VMs off. Give this server a network of ` +
          `its own: set FASTVM_BRIDGE to another name and FASTVM_IPV4_SUBNET to a subnet that ` +
          `does not overlap the other server's (and FASTVM_IPV6_PREFIX if you set one), or ` +
          `FASTVM_NETWORK=off to run VMs without networking`,
        { cause: err },
      );
    }
    throw new Error(
      `VM network setup failed: ${(err as Error).message.split('\n')[0]} ` +
        '(FASTVM_NETWORK=off runs VMs without networking)',
      { cause: err },
    );
  }
  if (!host.available) return without(host.reason ?? 'unavailable');
  const summary =
    `networking: one routed tap per VM (${host.tapPrefix}…, host interface ${host.bridge}), ` +
    `public IPv6 ${host.ipv6Prefix}, IPv4 ${host.ipv4Subnet} NAT`;
  logger.info(summary);
  const network = new HostNetworkManager(host, logger, settings.hostTcpPorts ?? []);
  const upstreams = settings.dnsUpstreams ?? hostResolvers();
  try {
    await network.startDns(upstreams);
  } catch (err) {
    await host.close().catch(() => {});
    throw new Error(
      `VM DNS forwarder cannot listen on ${host.ipv4Gateway}:${host.dnsPort}: ${(err as Error).message}`,
      { cause: err },
    );
  }
  const dnsSummary = `${summary}; DNS for VMs via ${upstreams.map((u) => `${u.host}:${u.port}`).join(', ') || 'no upstream resolver'}`;
  logger.info(dnsSummary);
  return { network, summary: dnsSummary };
}
