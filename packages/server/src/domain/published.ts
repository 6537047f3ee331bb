/**
 * Published services (contract §4.4): HTTP services of a VM reachable through the proxy at
 * `<name>--<vm id hex>.proxy.<domain>`. A VM's list lives on its row (and is copied onto its
 * snapshots); the firewall auto-rules they imply are computed here, never stored.
 * @module
 */
import type { FirewallPolicy, FirewallRule } from '@fastvm/runtime';

/** Who may use a service through the proxy (an extension of the contract; default public). */
export type ServiceAuth = 'public' | 'token' | 'api_key';

/** A service as stored on its VM. */
export interface PublishedService {
  name: string;
  port: number;
  /** The proxy speaks HTTP/2 cleartext to the backend (gRPC). */
  h2c: boolean;
  auth: ServiceAuth;
  /** The bearer token of an `auth: "token"` service; null otherwise. */
  token: string | null;
  createdAt: string;
}

/** A service as a snapshot captures it: a restore registers it again (with a new token). */
export interface CapturedService {
  name: string;
  port: number;
  h2c: boolean;
  auth: ServiceAuth;
}

/** Most services one VM may publish (contract §4.4). */
export const MAX_SERVICES_PER_VM = 16;

/** Lowest service port (privileged ports are refused, contract §3.9). */
export const MIN_SERVICE_PORT = 1024;

/**
 * Service names: 1–29 characters, lowercase letters, digits and single hyphens, starting and
 * ending with a letter or digit. 29 = 63 (a DNS label) − 2 (`--`) − 32 (the VM id's hex); no
 * `--` inside, so `<name>--<hex>` splits one way only.
 */
export const SERVICE_NAME_RE = /^(?!.*--)[a-z0-9](?:[a-z0-9-]{0,27}[a-z0-9])?$/;

/** Why `name` is not a valid service name, or undefined if it is. */
export function serviceNameProblem(name: string): string | undefined {
  if (name.length < 1 || name.length > 29) return 'must be 1-29 characters';
  if (!SERVICE_NAME_RE.test(name)) {
    return 'must be lowercase letters, digits and single hyphens, starting and ending with a letter or digit';
  }
  return undefined;
}

/** The auto-rule a service adds to its VM's effective firewall. */
export function autoRuleFor(service: { name: string; port: number }): FirewallRule {
  return {
    protocol: 'tcp',
    portStart: service.port,
    sourceCidrs: ['::/0'],
    description: `auto: proxy service ${service.name}`,
  };
}

/**
 * The policy the host enforces: the user's rules plus one auto-rule per service (the proxy
 * reaches the VM over its public IPv6, through the same firewall). `open` stays `open`.
 */
export function effectiveFirewall(
  policy: FirewallPolicy,
  services: ReadonlyArray<{ name: string; port: number }> | undefined,
): FirewallPolicy {
  if (policy.mode === 'open' || !services || services.length === 0) return policy;
  return { ...policy, ingress: [...policy.ingress, ...services.map(autoRuleFor)] };
}

/** What a snapshot keeps of a VM's services. */
export function captureServices(
  services: readonly PublishedService[] | undefined,
): CapturedService[] {
  return (services ?? []).map(({ name, port, h2c, auth }) => ({ name, port, h2c, auth }));
}

/** A VM id (UUID) as it appears in service hostnames: lowercase hex without hyphens. */
export function vmIdHex(vmId: string): string {
  return vmId.replace(/-/g, '').toLowerCase();
}

/** The UUID for a 32-digit hex id, or undefined if `hex` is not one. */
export function vmIdFromHex(hex: string): string | undefined {
  if (!/^[0-9a-f]{32}$/.test(hex)) return undefined;
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}
