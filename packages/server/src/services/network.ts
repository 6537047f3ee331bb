/**
 * The seam for VM networking (public IPv6 + enforced firewall, a later issue). The VM service
 * calls these hooks at the right moments; today's implementation does nothing, so VMs run
 * without public networking and report `publicIpv6: null`.
 * @module
 */
import type { PoolNetwork, VmNetwork } from '@fastvm/runtime';
import type { FirewallPolicy } from '../domain/index.js';

/** What a network manager hands the runtime for one VM. */
export interface VmNetworkAttachment {
  /** Passed to `Runtime.launch/restore` as `network`; undefined = no NIC. */
  network?: VmNetwork;
  /** Address reported to clients as `publicIpv6`. */
  publicIpv6: string | null;
}

/**
 * Networking hooks the VM service calls. Implementations must be idempotent: recovery and
 * failure paths may call `release` for VMs that never had networking.
 */
export interface NetworkManager {
  /**
   * Allocates networking for a VM about to boot (before `Runtime.launch/restore`, or when the
   * runtime claims it). `pooledFrom`: the warm-pool VM the launch is made from, whose port
   * (`pool`) the VM takes along.
   */
  attach(vmId: string, firewall: FirewallPolicy, pooledFrom?: string): Promise<VmNetworkAttachment>;
  /** Ports for the runtime's warm-pool VMs (`Runtime.setPoolNetwork`); absent without networking. */
  readonly pool?: PoolNetwork;
  /** Applies a changed policy to a live VM; called after the new policy is stored. */
  onFirewallChange(vmId: string, policy: FirewallPolicy): Promise<void>;
  /** Frees what `attach` allocated (VM deleted, failed or lost). Idempotent. */
  release(vmId: string): Promise<void>;
  /**
   * After a restart: keep the resources of `liveVmIds` (re-applying their policies) and remove
   * anything else left behind by a crash.
   */
  reconcile(live: ReadonlyArray<{ id: string; firewall: FirewallPolicy }>): Promise<void>;
  close(): Promise<void>;
  /** Host addresses VMs reach the host at (the bridge gateways); absent without networking. */
  readonly gateways?: readonly string[];
  /** Lets VMs connect to this host TCP port too (the file-transfer storage listener). */
  allowHostTcpPort?(port: number): Promise<void>;
}

/** No networking: every hook is a no-op and VMs get no public address. */
export class NoopNetworkManager implements NetworkManager {
  async attach(): Promise<VmNetworkAttachment> {
    return { publicIpv6: null };
  }
  async onFirewallChange(): Promise<void> {}
  async release(): Promise<void> {}
  async reconcile(): Promise<void> {}
  async close(): Promise<void> {}
}
