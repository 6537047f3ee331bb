/**
 * Published services of a VM (`/v1/vms/{id}/services`, contract §4.4): register, update, list
 * and remove them, and keep the host firewall in step. The list lives on the VM row; every
 * change is applied to the host as the VM's effective policy (user rules + one auto-rule per
 * service, `domain/published.ts`) before the call returns, and published as a VM change so the
 * proxy forgets what it cached. The proxy itself is `proxy/`.
 * @module
 */
import { randomBytes } from 'node:crypto';
import {
  InvalidInputError,
  MAX_SERVICES_PER_VM,
  MIN_SERVICE_PORT,
  QuotaExceededError,
  RuntimeFailureError,
  StateConflictError,
  effectiveFirewall,
  nowIso,
  serviceNameProblem,
  type CapturedService,
  type PublishedService,
  type ServiceAuth,
  type VmRecord,
  type VmStatus,
} from '../domain/index.js';
import type { ServiceContext } from './context.js';
import { resolveVm } from './resolve.js';

/** What a POST or PUT gives besides the name. */
export interface ServiceInput {
  port: number;
  /** Absent: false. */
  h2c?: boolean | undefined;
  /** Absent: public on a new service; unchanged on an existing one. */
  auth?: ServiceAuth | undefined;
}

/** Outcome of a restore's re-registration (contract §3.2 `snapshotRestoreWarnings`). */
export interface ServiceRestore {
  services: PublishedService[];
  /** Set when none could be registered (all or nothing). */
  warning?: {
    servicesRegistrationFailed: true;
    reason: string;
    unregisteredServices: Array<{ name: string; port: number; h2c: boolean }>;
  };
}

/** Statuses whose VM has a tap whose rules follow the policy. */
const NETWORKED: readonly VmStatus[] = ['running', 'provisioning', 'pausing', 'paused', 'resuming'];

/** A fresh bearer token for an `auth: "token"` service (192 random bits). */
export function newServiceToken(): string {
  return `fvs_${randomBytes(24).toString('base64url')}`;
}

/** Throws `InvalidInputError` unless `name` and `input` make a valid service. */
export function checkService(name: string, input: ServiceInput): void {
  const problem = serviceNameProblem(name);
  if (problem) throw new InvalidInputError(`service name ${problem}`, 'name');
  if (!Number.isInteger(input.port) || input.port < MIN_SERVICE_PORT || input.port > 65535) {
    throw new InvalidInputError(
      `port must be an integer from ${MIN_SERVICE_PORT} to 65535 (privileged ports are refused)`,
      'port',
    );
  }
}

/**
 * The services a restore registers for its new VM from the snapshot's list: all of them, each
 * with a new token where needed, or none and the reason.
 */
export function restoreServices(captured: readonly CapturedService[] | undefined): ServiceRestore {
  const list = captured ?? [];
  try {
    if (list.length > MAX_SERVICES_PER_VM) {
      throw new Error(`${list.length} services exceed the cap of ${MAX_SERVICES_PER_VM}`);
    }
    const seen = new Set<string>();
    const now = nowIso();
    const services = list.map((s) => {
      checkService(s.name, s);
      if (seen.has(s.name)) throw new Error(`service ${s.name} appears twice`);
      seen.add(s.name);
      return newRecord(s.name, { port: s.port, h2c: s.h2c, auth: s.auth }, now);
    });
    return { services };
  } catch (err) {
    return {
      services: [],
      warning: {
        servicesRegistrationFailed: true,
        reason: (err as Error).message,
        unregisteredServices: list.map(({ name, port, h2c }) => ({ name, port, h2c })),
      },
    };
  }
}

function newRecord(name: string, input: ServiceInput, createdAt: string): PublishedService {
  const auth = input.auth ?? 'public';
  return {
    name,
    port: input.port,
    h2c: input.h2c ?? false,
    auth,
    token: auth === 'token' ? newServiceToken() : null,
    createdAt,
  };
}

/** The services of the caller org's VMs. */
export class PublishedServices {
  constructor(private readonly ctx: Pick<ServiceContext, 'store' | 'network' | 'events'>) {}

  /** The VM and its services, sorted by name. */
  async list(orgId: string, ref: string): Promise<{ vm: VmRecord; services: PublishedService[] }> {
    const vm = await resolveVm(this.ctx.store, orgId, ref);
    return { vm, services: vm.services ?? [] };
  }

  /**
   * `POST`: registers a service. The same name with the same port and h2c (and auth, when
   * given) returns the existing entry; anything else under that name is a conflict. The 17th
   * service is refused (`vm_service_quota_exceeded`).
   */
  async add(
    orgId: string,
    ref: string,
    name: string,
    input: ServiceInput,
  ): Promise<{ vm: VmRecord; service: PublishedService }> {
    checkService(name, input);
    const vm = await resolveVm(this.ctx.store, orgId, ref);
    return this.change(vm, (current) => {
      const existing = current.find((s) => s.name === name);
      if (existing) {
        const same =
          existing.port === input.port &&
          existing.h2c === (input.h2c ?? false) &&
          (input.auth === undefined || input.auth === existing.auth);
        if (!same) {
          throw new StateConflictError(
            `service ${name} exists with port ${existing.port}, h2c ${existing.h2c}, auth ${existing.auth}; ` +
              'PUT /v1/vms/{id}/services/{name} changes it',
            { name },
          );
        }
        return { service: existing };
      }
      if (current.length >= MAX_SERVICES_PER_VM) {
        throw new QuotaExceededError(
          'vmServiceCount',
          MAX_SERVICES_PER_VM,
          current.length,
          1,
          `a VM publishes at most ${MAX_SERVICES_PER_VM} services; delete one first`,
        );
      }
      const service = newRecord(name, input, nowIso());
      return { service, services: [...current, service] };
    });
  }

  /** `PUT`: registers or updates a service; the same values change nothing. */
  async put(
    orgId: string,
    ref: string,
    name: string,
    input: ServiceInput,
  ): Promise<{ vm: VmRecord; service: PublishedService }> {
    checkService(name, input);
    const vm = await resolveVm(this.ctx.store, orgId, ref);
    return this.change(vm, (current) => {
      const existing = current.find((s) => s.name === name);
      if (!existing) {
        if (current.length >= MAX_SERVICES_PER_VM) {
          throw new QuotaExceededError(
            'vmServiceCount',
            MAX_SERVICES_PER_VM,
            current.length,
            1,
            `a VM publishes at most ${MAX_SERVICES_PER_VM} services; delete one first`,
          );
        }
        const service = newRecord(name, input, nowIso());
        return { service, services: [...current, service] };
      }
      const auth = input.auth ?? existing.auth;
      const h2c = input.h2c ?? false;
      if (existing.port === input.port && existing.h2c === h2c && existing.auth === auth) {
        return { service: existing };
      }
      const service: PublishedService = {
        ...existing,
        port: input.port,
        h2c,
        auth,
        token: auth === 'token' ? (existing.token ?? newServiceToken()) : null,
      };
      return { service, services: current.map((s) => (s.name === name ? service : s)) };
    });
  }

  /** `DELETE`: removes a service; an unknown name is fine (idempotent). */
  async remove(orgId: string, ref: string, name: string): Promise<void> {
    const vm = await resolveVm(this.ctx.store, orgId, ref);
    await this.change(vm, (current) =>
      current.some((s) => s.name === name)
        ? { service: undefined, services: current.filter((s) => s.name !== name) }
        : { service: undefined },
    );
  }

  /**
   * Runs one change of the VM's list under its row lock; when the list changed, applies the
   * new effective policy to the host (and puts the old list back if that fails).
   */
  private async change<S>(
    vm: VmRecord,
    fn: (current: PublishedService[]) => { service: S; services?: PublishedService[] },
  ): Promise<{ vm: VmRecord; service: S }> {
    const { store, network, events } = this.ctx;
    let before: PublishedService[] = [];
    const out = await store.changeVmServices(vm.id, (row) => {
      before = row.services ?? [];
      const { service, services } = fn(before);
      return services
        ? { services, result: { service, changed: true } }
        : { result: { service, changed: false } };
    });
    if (!out) throw new StateConflictError('the VM was deleted', { status: 'deleted' });
    const { result } = out;
    const updated = out.vm;
    if (result.changed) {
      if (NETWORKED.includes(updated.status)) {
        try {
          await network.onFirewallChange(
            updated.id,
            effectiveFirewall(updated.firewall, updated.services),
          );
        } catch (err) {
          await store.changeVmServices(updated.id, () => ({ services: before, result: null }));
          throw new RuntimeFailureError(
            `could not apply the firewall rule for the service: ${(err as Error).message}`,
            { vmId: updated.id },
            { cause: err },
          );
        }
      }
      events.changed(updated);
    }
    return { vm: updated, service: result.service };
  }
}
