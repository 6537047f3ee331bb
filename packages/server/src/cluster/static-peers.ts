/**
 * `StaticPeers`: a fixed list of hosts as `ClusterPeers` (tests, benches, and a cluster whose
 * members are configured rather than registered). The host registry implements the same seam
 * over the `hosts` table.
 * @module
 */
import type { ClusterPeers, PeerHost } from './seams.js';

export class StaticPeers implements ClusterPeers {
  readonly #hosts = new Map<string, PeerHost>();
  /** Hosts taken for dead (`down`): still known by id, not listed as live. */
  readonly #down = new Set<string>();

  constructor(
    readonly self: PeerHost,
    hosts: readonly PeerHost[] = [],
  ) {
    for (const h of hosts) this.add(h);
  }

  /** Adds (or replaces) a peer; it is live. */
  add(host: PeerHost): void {
    if (host.id === this.self.id) return;
    this.#hosts.set(host.id, host);
    this.#down.delete(host.id);
  }

  /** Marks a peer dead (false: live again), as a host that stopped heartbeating. */
  down(hostId: string, isDown = true): void {
    if (isDown) this.#down.add(hostId);
    else this.#down.delete(hostId);
  }

  async peers(): Promise<readonly PeerHost[]> {
    return [...this.#hosts.values()].filter((h) => !this.#down.has(h.id));
  }

  async peer(hostId: string): Promise<PeerHost | undefined> {
    return hostId === this.self.id ? this.self : this.#hosts.get(hostId);
  }
}
