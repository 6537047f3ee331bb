/**
 * Fork N over several hosts (`ForkService`'s `ForkSpread`), when snapshot mobility lets other
 * hosts than the snapshot's restore it. The coordinating host (the one asked) reserves all N
 * rows, each with its host, then each host boots its share: the others through
 * `POST /internal/v1/forks/boot` (`internal-routes.ts`), which pulls the snapshot there first.
 *
 * The plan deals the forks out one at a time to the host with the best placement score
 * (`placement.ts`), counting what it has dealt already, so N forks spread over the hosts that
 * have room instead of piling onto the emptiest one. Without mobility there is no plan: the
 * fork runs on the snapshot's host, where the forwarding layer sent it.
 * @module
 */
import type { VmRecord } from '../domain/index.js';
import type { ForkSpread } from '../services/fork.js';
import type { HostInfo, HostRegistry } from './host-registry.js';
import { INTERNAL_PREFIX } from './internal-auth.js';
import { place } from './placement.js';
import { CLUSTER_TOKEN_HEADER, type SnapshotMobility } from './seams.js';

/** See the module comment. */
export class ClusterForkSpread implements ForkSpread {
  constructor(
    private readonly registry: HostRegistry,
    private readonly secret: string,
    private readonly hasSnapshot: (snapshotId: string) => Promise<boolean>,
    private readonly mobility?: SnapshotMobility,
  ) {}

  get selfId(): string {
    return this.registry.hostId;
  }

  async plan(
    snapshotId: string,
    count: number,
    unit: { memoryMiB: number; vcpu: number },
  ): Promise<readonly string[] | undefined> {
    if (!this.mobility || count < 2) return undefined;
    const prefer = new Set(await this.mobility.holders(snapshotId));
    const taker = await this.registry.snapshotHost(snapshotId);
    if (taker) prefer.add(taker);
    const hosts: HostInfo[] = await this.registry.list();
    const out: string[] = [];
    for (let i = 0; i < count; i++) {
      const r = place(hosts, { ...unit, prefer });
      if (!('host' in r)) return undefined; // the local admission answers
      out.push(r.host.id);
      const at = hosts.indexOf(r.host);
      hosts[at] = {
        ...r.host,
        memoryUsedMiB: r.host.memoryUsedMiB + unit.memoryMiB,
        vcpuUsed: r.host.vcpuUsed + unit.vcpu,
      };
      // Dealing, not piling: a host that got one waits for the others to catch up.
      prefer.delete(r.host.id);
    }
    return out;
  }

  async boot(hostId: string, orgId: string, vmIds: readonly string[]): Promise<VmRecord[]> {
    const body = await this.#call(hostId, '/forks/boot', { orgId, vmIds });
    return (body as { vms: VmRecord[] }).vms;
  }

  async remove(hostId: string, orgId: string, vmIds: readonly string[]): Promise<void> {
    await this.#call(hostId, '/forks/remove', { orgId, vmIds });
  }

  async ensureLocal(snapshotId: string): Promise<void> {
    if (this.mobility && !(await this.hasSnapshot(snapshotId))) {
      await this.mobility.ensureLocal(snapshotId);
    }
  }

  async #call(hostId: string, path: string, payload: unknown): Promise<unknown> {
    const host = await this.registry.host(hostId);
    if (!host || host.state === 'lost' || !host.live) {
      throw new Error(`host ${hostId} is not available`);
    }
    const res = await fetch(`${host.advertiseUrl}${INTERNAL_PREFIX}${path}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', [CLUSTER_TOKEN_HEADER]: this.secret },
      body: JSON.stringify(payload),
    });
    const text = await res.text();
    const body: unknown = text ? JSON.parse(text) : undefined;
    if (!res.ok) {
      const msg = (body as { error?: string } | undefined)?.error ?? `HTTP ${res.status}`;
      throw new Error(`host ${hostId}: ${msg}`);
    }
    return body;
  }
}
