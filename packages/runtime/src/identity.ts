/**
 * What makes a VM (launched, restored or taken from the warm pool) itself and not its source:
 * the IDENTITY the agent applies (hostname, machine-id, clock, RNG seed); its tap is plugged in by
 * `tap-handover.ts`. The guest's network configuration is not part of it:
 * every guest keeps the one of `guest-net.ts`, and the host translates (see `network.ts`).
 * @module
 */
import crypto from 'node:crypto';
import type { AgentClient, AgentIdentity, AgentRequestOptions } from './agent-client.js';
import { guestNetIdentity } from './guest-net.js';

/**
 * `legacyNet`: the guest comes from a snapshot taken before guests kept a fixed network
 * configuration (no `guestNet` on its record); it is given that configuration once.
 */
export function freshIdentity(
  id: string,
  hostname: string | undefined,
  legacyNet = false,
): AgentIdentity {
  return {
    hostname: hostnameOf(id, hostname),
    machineId: crypto.randomBytes(16).toString('hex'),
    clockNs: BigInt(Date.now()) * 1_000_000n,
    entropy: crypto.randomBytes(64),
    ...(legacyNet ? guestNetIdentity() : {}),
  };
}

/**
 * What a VM taken from the warm pool is told: its name and the time. Its machine id and RNG seed
 * are its own already — set by the IDENTITY of its restore into the pool (`freshIdentity`), which
 * no other VM had — so the guest has the least to do (no file but its hostname's, no reseed)
 * before the VM's first command.
 */
export function takenIdentity(id: string, hostname: string | undefined): AgentIdentity {
  return { hostname: hostnameOf(id, hostname), clockNs: BigInt(Date.now()) * 1_000_000n };
}

function hostnameOf(id: string, hostname: string | undefined): string {
  return hostname ?? `vm-${id.slice(0, 8)}`;
}

/**
 * A set clock is late by the IDENTITY's trip from here to the agent's `clock_settime` (the agent
 * sets the clock first), which is less than the round trip. A round trip longer than this is
 * followed by a clock-only one, which a guest that just ran the first IDENTITY serves in a
 * millisecond or two. 15 ms keeps the clock well within the 50 ms a fork promises, without a
 * second trip on most launches (a first IDENTITY under TCG takes 5–15 ms).
 */
const CLOCK_ROUND_TRIP_MS = 15;
const CLOCK_TRIES = 3;

/** Applies `identity`, then makes sure its clock was set promptly (see `syncClock`). */
export async function applyIdentity(agent: AgentClient, identity: AgentIdentity): Promise<void> {
  const t0 = performance.now();
  await agent.setIdentity(identity);
  if (identity.clockNs !== undefined && performance.now() - t0 > CLOCK_ROUND_TRIP_MS) {
    await syncClock(agent);
  }
}

/**
 * Sets the guest's wall clock from the host's. The error is at most one round trip, so a slow
 * one (a busy or cold guest) is repeated, up to three times in all.
 */
export async function syncClock(agent: AgentClient, opts: AgentRequestOptions = {}): Promise<void> {
  for (let i = 0; i < CLOCK_TRIES; i++) {
    const t0 = performance.now();
    await agent.setIdentity({ clockNs: BigInt(Date.now()) * 1_000_000n }, opts);
    if (performance.now() - t0 <= CLOCK_ROUND_TRIP_MS) return;
  }
}
