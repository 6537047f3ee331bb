/**
 * Host → backend. A service hostname names a VM and a service; the backend is that VM's
 * `publicIpv6` and the service's registered port, and nothing else: no header or URI can
 * point the proxy anywhere else. Lookups are cached briefly and dropped when the VM changes
 * (its services live on its row, so every change is a VM change, `services/vm-events.ts`).
 * @module
 */
import type { PublishedService, VmRecord } from '../domain/index.js';
import type { VmEvents } from '../services/vm-events.js';
import type { Store } from '../store/index.js';
import type { ServiceHost } from './hostnames.js';
import type { ProxyError } from './pages.js';

/** Where a request for a service goes, and who may send it. */
export interface Backend {
  vmId: string;
  orgId: string;
  name: string;
  /** The VM's public IPv6 address. */
  address: string;
  port: number;
  h2c: boolean;
  auth: PublishedService['auth'];
  token: string | null;
}

/** A lookup's outcome: the backend, or the error page to answer. */
export type Resolution = { backend: Backend } | { error: ProxyError };

/** How long a lookup is reused (VM changes drop it sooner). */
const CACHE_MS = 2000;
/** Entries kept at most (garbage hostnames must not grow the cache without bound). */
const CACHE_MAX = 10_000;

/** See the module comment. */
export class BackendResolver {
  readonly #cache = new Map<string, { at: number; vmId: string; resolution: Resolution }>();
  readonly #unsubscribe: () => void;

  constructor(
    private readonly store: Pick<Store, 'findLiveVm'>,
    events: VmEvents,
  ) {
    this.#unsubscribe = events.subscribe((vm) => this.invalidate(vm.id));
  }

  /** The cached resolution of `host`, if fresh (the fast path: no promise). */
  cached(host: ServiceHost): Resolution | undefined {
    const hit = this.#cache.get(key(host));
    if (hit && Date.now() - hit.at < CACHE_MS) return hit.resolution;
    return undefined;
  }

  async resolve(host: ServiceHost): Promise<Resolution> {
    const hit = this.cached(host);
    if (hit) return hit;
    const vm = await this.store.findLiveVm(host.vmId);
    const resolution = resolutionFor(host, vm);
    if (this.#cache.size >= CACHE_MAX) this.#cache.clear();
    this.#cache.set(key(host), { at: Date.now(), vmId: host.vmId, resolution });
    return resolution;
  }

  /** Forgets every lookup of a VM. */
  invalidate(vmId: string): void {
    for (const [k, v] of this.#cache) if (v.vmId === vmId) this.#cache.delete(k);
  }

  close(): void {
    this.#unsubscribe();
    this.#cache.clear();
  }
}

const key = (host: ServiceHost): string => `${host.name}--${host.vmId}`;

function resolutionFor(host: ServiceHost, vm: VmRecord | undefined): Resolution {
  if (!vm) {
    return {
      error: {
        status: 404,
        code: 'unknown_vm',
        message: `There is no VM ${host.vmId} (it may have been deleted).`,
      },
    };
  }
  const service = vm.services?.find((s) => s.name === host.name);
  if (!service) {
    return {
      error: {
        status: 404,
        code: 'unknown_service',
        message: `VM ${vm.id} publishes no service named "${host.name}" (POST /v1/vms/{id}/services registers one).`,
      },
    };
  }
  if (vm.status !== 'running') {
    const hint = vm.status === 'paused' ? ' Resume it to reach its services.' : '';
    const why =
      vm.error && (vm.status === 'stopped' || vm.status === 'error') ? ` (${vm.error})` : '';
    return {
      error: {
        status: 502,
        code: 'vm_not_running',
        message: `VM ${vm.id} is ${vm.status}${why}, not running.${hint}`,
      },
    };
  }
  if (!vm.publicIpv6) {
    return {
      error: {
        status: 502,
        code: 'vm_no_address',
        message:
          `VM ${vm.id} has no network address: this server runs VMs without networking ` +
          "(FASTVM_NETWORK=off, or no CAP_NET_ADMIN), and the proxy reaches services over the VM's IPv6.",
      },
    };
  }
  return {
    backend: {
      vmId: vm.id,
      orgId: vm.orgId,
      name: service.name,
      address: vm.publicIpv6,
      port: service.port,
      h2c: service.h2c,
      auth: service.auth,
      token: service.token,
    },
  };
}
