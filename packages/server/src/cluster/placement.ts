/**
 * Placement: which host runs a new VM. Pure, over what the registry reports (`HostInfo`).
 *
 * - Candidates are live hosts (heartbeat within the timeout) that are `active`; a restore whose
 *   snapshot only some hosts can restore (without snapshot mobility: the host that took it) is
 *   limited to those, and may then fall back to a `draining` holder (draining stops new
 *   launches, not the use of what only that host has).
 * - A candidate must fit the request under the host's admission limits (the paper count of
 *   `services/host-capacity.ts`: memory of the VMs that hold it, vCPUs of those that run). The
 *   host itself then admits it for real (its MemAvailable too) and may still refuse with 503.
 * - Among those that fit, the highest score: the free fraction of the host's memory limit, plus
 *   `PREFER_BONUS` for a host that already holds the golden or the snapshot (so a holder wins
 *   until it is a quarter fuller than the others: spreading still happens, but a cold golden
 *   boot or a snapshot pull is not paid for a small gain); ties by free vCPUs, then id.
 * @module
 */
import type { HostInfo } from './host-registry.js';

/** Score added for a host that holds what the VM needs (see the module comment). */
export const PREFER_BONUS = 0.25;

/** What the new VM(s) need and which hosts may or should run them. */
export interface PlacementRequest {
  memoryMiB: number;
  vcpu: number;
  /** Only these hosts can run it (a restore without mobility); absent: any. */
  only?: ReadonlySet<string>;
  /** Hosts that hold what it needs already (golden, snapshot layers). */
  prefer?: ReadonlySet<string>;
}

/** Why no host was chosen. */
export type PlacementFailure =
  { reason: 'no_host'; detail: string } | { reason: 'no_room'; detail: string };

/** The chosen host, or why there is none. */
export type PlacementResult = { host: HostInfo } | PlacementFailure;

/** Picks a host for `req` (see the module comment). */
export function place(hosts: readonly HostInfo[], req: PlacementRequest): PlacementResult {
  const usable = (h: HostInfo, states: readonly string[]): boolean =>
    h.live && states.includes(h.state) && (!req.only || req.only.has(h.id));
  let candidates = hosts.filter((h) => usable(h, ['active']));
  if (candidates.length === 0 && req.only) {
    candidates = hosts.filter((h) => usable(h, ['draining']));
  }
  if (candidates.length === 0) {
    const what = req.only
      ? `the host(s) that can run it (${[...req.only].join(', ') || 'none'})`
      : 'no host';
    const states = req.only
      ? hosts
          .filter((h) => req.only!.has(h.id))
          .map(
            (h) =>
              `${h.id}: ${h.live ? h.state : h.state === 'lost' ? 'lost' : 'not heartbeating'}`,
          )
      : [];
    return {
      reason: 'no_host',
      detail: req.only
        ? `${what} ${states.length ? `are unavailable (${states.join('; ')})` : 'are unknown'}`
        : 'no active host is heartbeating',
    };
  }
  const fits = candidates.filter(
    (h) =>
      h.memoryUsedMiB + req.memoryMiB <= h.memoryLimitMiB && h.vcpuUsed + req.vcpu <= h.vcpuLimit,
  );
  if (fits.length === 0) {
    return {
      reason: 'no_room',
      detail: `no host has room for ${req.memoryMiB} MiB and ${req.vcpu} vCPUs (${candidates
        .map(
          (h) =>
            `${h.id}: ${h.memoryUsedMiB}/${h.memoryLimitMiB} MiB, ${h.vcpuUsed}/${h.vcpuLimit} vCPUs`,
        )
        .join('; ')})`,
    };
  }
  const freeMem = (h: HostInfo) => (h.memoryLimitMiB - h.memoryUsedMiB) / h.memoryLimitMiB;
  const freeCpu = (h: HostInfo) => (h.vcpuLimit - h.vcpuUsed) / h.vcpuLimit;
  const score = (h: HostInfo) => freeMem(h) + (req.prefer?.has(h.id) ? PREFER_BONUS : 0);
  fits.sort((a, b) => score(b) - score(a) || freeCpu(b) - freeCpu(a) || a.id.localeCompare(b.id));
  return { host: fits[0]! };
}
