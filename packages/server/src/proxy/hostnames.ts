/**
 * Service hostnames: `<name>--<vm id hex>.proxy.<domain>` (contract §4.4), parsed from a Host
 * header and built into the URLs the API reports.
 * @module
 */
import { SERVICE_NAME_RE, vmIdFromHex, vmIdHex } from '../domain/index.js';

/** Where the proxy is reached. */
export interface ProxyAddress {
  /** `https` when the proxy has a certificate. */
  scheme: 'http' | 'https';
  /** The stack domain; hostnames end in `.proxy.<domain>`. */
  domain: string;
  /** The proxy's port (omitted from URLs when it is the scheme's default). */
  port: number;
}

/** A service named by a Host header. */
export interface ServiceHost {
  name: string;
  vmId: string;
}

/** The hostname of a VM's service. */
export function serviceHostname(domain: string, vmId: string, name: string): string {
  return `${name}--${vmIdHex(vmId)}.proxy.${domain}`;
}

/** The URL of a VM's service. */
export function serviceUrl(addr: ProxyAddress, vmId: string, name: string): string {
  const defaultPort = addr.scheme === 'https' ? 443 : 80;
  const port = addr.port === defaultPort ? '' : `:${addr.port}`;
  return `${addr.scheme}://${serviceHostname(addr.domain, vmId, name)}${port}`;
}

/**
 * The service a Host header (or HTTP/2 `:authority`) names, or undefined when it is not a
 * service hostname under `domain`. A port suffix and a trailing dot are ignored; case is not
 * significant.
 */
export function parseServiceHost(
  host: string | undefined,
  domain: string,
): ServiceHost | undefined {
  if (!host) return undefined;
  let name = host.toLowerCase();
  // A port suffix (IPv6 literals never name a service, so the last colon is the port's).
  const colon = name.lastIndexOf(':');
  if (colon !== -1 && /^\d{1,5}$/.test(name.slice(colon + 1))) name = name.slice(0, colon);
  if (name.endsWith('.')) name = name.slice(0, -1);
  const suffix = `.proxy.${domain.toLowerCase()}`;
  if (!name.endsWith(suffix)) return undefined;
  const label = name.slice(0, -suffix.length);
  const sep = label.lastIndexOf('--');
  if (sep <= 0) return undefined;
  const service = label.slice(0, sep);
  const vmId = vmIdFromHex(label.slice(sep + 2));
  if (!vmId || !SERVICE_NAME_RE.test(service)) return undefined;
  return { name: service, vmId };
}
