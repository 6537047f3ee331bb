/**
 * The host registry of a cluster (several hosts sharing one PostgreSQL): each host's row in
 * `hosts` (advertise URL, admission limits, goldens, state `active` | `draining` | `lost`,
 * heartbeat), the owner of each VM (`vms.host_id`) and the taker of each snapshot
 * (`snapshots.host_id`).
 *
 * - **Register** at start (an upsert: a returning host becomes `active` again, a draining one
 *   stays draining), then **heartbeat**: one UPDATE per interval, with the database's clock.
 * - **Lost hosts.** At each heartbeat one live host (the holder of a transaction-scoped
 *   advisory lock) marks the hosts whose heartbeat is older than the timeout `lost`, and in the
 *   same transaction their live VMs `error` with a reason and their unfinished snapshots
 *   `error`. Usage is derived from rows, so their quota is released by that. Requests for those
 *   VMs are then served from the store by any host (the forwarding layer does not forward to a
 *   lost host).
 * - **Return.** A host that finds itself `lost` (a heartbeat after a stall, or its restart)
 *   stops and cleans its VMs that were marked `error` meanwhile (`onReturn`; at a restart the
 *   startup recovery does it, since those VMs are no longer claimed) and becomes `active`.
 *   Nothing is resurrected: an `error` VM stays `error`.
 * @module
 */
import { sql } from 'kysely';
import type { Logger } from 'pino';
import type { KyselyStore } from '../store/kysely-store.js';
import type { ClusterPeers, PeerHost } from './seams.js';

/** A host's state in the registry. */
export type HostState = 'active' | 'draining' | 'lost';

/** A host as placement and the CLI see it. */
export interface HostInfo extends PeerHost {
  readonly advertiseUrl: string;
  readonly state: HostState;
  readonly stateReason: string | null;
  readonly memoryLimitMiB: number;
  readonly vcpuLimit: number;
  readonly machineTypes: readonly string[];
  readonly guestImage: string;
  readonly heartbeatAt: string;
  readonly startedAt: string;
  /**
   * Whether the heartbeat is within the timeout now (the database's clock) and the host has said
   * where it listens.
   */
  readonly live: boolean;
  /** Memory and vCPUs its VMs hold now (as `services/host-capacity.ts` counts them). */
  readonly memoryUsedMiB: number;
  readonly vcpuUsed: number;
}

/** What this host registers. */
export interface HostRegistration {
  hostId: string;
  advertiseUrl: string;
  memoryLimitMiB: number;
  vcpuLimit: number;
  machineTypes: readonly string[];
  guestImage: string;
}

/** Timing of heartbeats and of declaring a host lost. */
export interface HeartbeatSettings {
  /** Default 2000 ms. */
  intervalMs?: number;
  /** A host whose last heartbeat is older is lost (default 15000 ms). */
  timeoutMs?: number;
}

export const DEFAULT_HEARTBEAT_MS = 2000;
export const DEFAULT_HOST_TIMEOUT_MS = 15_000;

/** Key of the advisory lock whose holder checks for lost hosts ("fvm-lost"). */
const LOST_CHECK_LOCK = 0x66766d2d6c6f7374n;

/** Statuses whose VMs run on their host (what a lost host takes down with it). */
const LIVE_ON_HOST = ['provisioning', 'running', 'pausing', 'paused', 'resuming'] as const;
/** Statuses that hold a host's memory (`HostCapacity`'s `HOLDS_MEMORY`). */
const HOLDS_MEMORY = LIVE_ON_HOST;

type HostRow = {
  id: string;
  advertise_url: string;
  state: string;
  state_reason: string | null;
  memory_limit_mib: number;
  vcpu_limit: number;
  machine_types: string;
  guest_image: string;
  heartbeat_at: Date | string;
  started_at: Date | string;
  live: boolean;
  memory_used: number | string | null;
  vcpu_used: number | string | null;
};

/** See the module comment. */
export class HostRegistry implements ClusterPeers {
  readonly self: PeerHost;
  readonly intervalMs: number;
  readonly timeoutMs: number;
  #timer: NodeJS.Timeout | undefined;
  #beating: Promise<void> | undefined;
  #stopped = false;
  #reconciling: Promise<void> | undefined;

  constructor(
    private readonly store: KyselyStore,
    private readonly me: HostRegistration,
    private readonly logger: Logger,
    settings: HeartbeatSettings = {},
    /** Stops and cleans this host's VMs that were marked `error` while it was lost. */
    private readonly onReturn: () => Promise<void> = async () => {},
  ) {
    this.self = { id: me.hostId, internalUrl: me.advertiseUrl };
    this.intervalMs = settings.intervalMs ?? DEFAULT_HEARTBEAT_MS;
    this.timeoutMs = settings.timeoutMs ?? DEFAULT_HOST_TIMEOUT_MS;
  }

  get hostId(): string {
    return this.me.hostId;
  }

  /**
   * Registers (or re-registers) this host and claims rows written without a host (a database
   * that served one machine before). Returns the state the host had (undefined: new).
   */
  async register(): Promise<HostState | undefined> {
    const { db } = this.store;
    const me = this.me;
    return db.transaction().execute(async (trx) => {
      const before = await trx
        .selectFrom('hosts')
        .select('state')
        .where('id', '=', me.hostId)
        .forUpdate()
        .executeTakeFirst();
      await sql`
        INSERT INTO hosts (id, advertise_url, memory_limit_mib, vcpu_limit, machine_types,
                           guest_image, state, state_reason, heartbeat_at, started_at)
        VALUES (${me.hostId}, ${me.advertiseUrl}, ${me.memoryLimitMiB}, ${me.vcpuLimit},
                ${JSON.stringify(me.machineTypes)}, ${me.guestImage}, 'active', NULL, now(), now())
        ON CONFLICT (id) DO UPDATE SET
          advertise_url = EXCLUDED.advertise_url,
          memory_limit_mib = EXCLUDED.memory_limit_mib,
          vcpu_limit = EXCLUDED.vcpu_limit,
          machine_types = EXCLUDED.machine_types,
          guest_image = EXCLUDED.guest_image,
          state = CASE WHEN hosts.state = 'draining' THEN 'draining' ELSE 'active' END,
          state_reason = CASE WHEN hosts.state = 'draining' THEN hosts.state_reason ELSE NULL END,
          heartbeat_at = now(),
          started_at = now()`.execute(trx);
      await trx
        .updateTable('vms')
        .set({ host_id: me.hostId })
        .where('host_id', 'is', null)
        .execute();
      await trx
        .updateTable('snapshots')
        .set({ host_id: me.hostId })
        .where('host_id', 'is', null)
        .execute();
      if (before?.state === 'lost') {
        this.logger.warn({ hostId: me.hostId }, 'this host was marked lost; it is active again');
      }
      return before?.state as HostState | undefined;
    });
  }

  /** Records the URL peers reach this host at (known once the listener is up). */
  async setAdvertiseUrl(url: string): Promise<void> {
    (this.me as { advertiseUrl: string }).advertiseUrl = url;
    (this.self as { internalUrl: string }).internalUrl = url;
    await this.store.db
      .updateTable('hosts')
      .set({ advertise_url: url })
      .where('id', '=', this.me.hostId)
      .execute();
  }

  /** Starts heartbeating (and checking for lost peers) every `intervalMs`. */
  start(): void {
    if (this.#timer || this.#stopped) return;
    this.#timer = setInterval(() => {
      this.#beating ??= this.beat()
        .catch((err: unknown) => this.logger.warn({ err }, 'cluster heartbeat failed'))
        .finally(() => {
          this.#beating = undefined;
        });
    }, this.intervalMs);
    this.#timer.unref();
  }

  /** Stops heartbeating (the row stays; peers declare the host lost after the timeout). */
  async stop(): Promise<void> {
    this.#stopped = true;
    clearInterval(this.#timer);
    this.#timer = undefined;
    await this.#beating;
    await this.#reconciling;
  }

  /** One heartbeat, then the check for lost peers. */
  async beat(): Promise<void> {
    const row = await this.store.db
      .updateTable('hosts')
      .set({ heartbeat_at: sql<string>`now()` })
      .where('id', '=', this.me.hostId)
      .returning('state')
      .executeTakeFirst();
    if (!row) {
      // Removed from the registry (an operator's DELETE): register again.
      await this.register();
    } else if (row.state === 'lost') {
      // Beside the heartbeats, which go on meanwhile (the host stays `lost`, so nothing is placed
      // on it, until its VMs of the lost period are stopped).
      this.#reconciling ??= (async () => {
        this.logger.warn({ hostId: this.me.hostId }, 'this host was marked lost; reconciling');
        await this.onReturn();
        await this.store.db
          .updateTable('hosts')
          .set({ state: 'active', state_reason: null })
          .where('id', '=', this.me.hostId)
          .where('state', '=', 'lost')
          .execute();
      })()
        .catch((err: unknown) => this.logger.warn({ err }, 'reconciling after lost failed'))
        .finally(() => {
          this.#reconciling = undefined;
        });
    }
    await this.markLostHosts();
  }

  /**
   * Marks hosts past the heartbeat timeout `lost`, their live VMs and unfinished snapshots
   * `error`. Only the holder of the advisory lock does it; returns the ids it marked.
   */
  async markLostHosts(): Promise<string[]> {
    const timeoutSec = this.timeoutMs / 1000;
    return this.store.db.transaction().execute(async (trx) => {
      const lock = await sql<{ ok: boolean }>`
        SELECT pg_try_advisory_xact_lock(${LOST_CHECK_LOCK.toString()}::bigint) AS ok`.execute(trx);
      if (!lock.rows[0]?.ok) return [];
      const lost = await sql<{ id: string; heartbeat_at: Date | string }>`
        UPDATE hosts SET state = 'lost',
          state_reason = 'no heartbeat since ' || to_char(heartbeat_at AT TIME ZONE 'UTC',
            'YYYY-MM-DD"T"HH24:MI:SS"Z"')
        WHERE state <> 'lost' AND id <> ${this.me.hostId}
          AND heartbeat_at < now() - make_interval(secs => ${timeoutSec})
        RETURNING id, heartbeat_at`.execute(trx);
      const now = new Date().toISOString();
      for (const host of lost.rows) {
        const since = new Date(host.heartbeat_at).toISOString();
        const reason = `host ${host.id} was lost (no heartbeat since ${since}); the VM is gone with it`;
        const vms = await trx
          .updateTable('vms')
          .set({ status: 'error', error: reason, updated_at: now, expires_at_ms: null })
          .where('host_id', '=', host.id)
          .where('status', 'in', [...LIVE_ON_HOST])
          .where('deleted_at', 'is', null)
          .returning('id')
          .execute();
        await trx
          .updateTable('snapshots')
          .set({
            status: 'error',
            error: `host ${host.id} was lost while the snapshot was being taken`,
            updated_at: now,
          })
          .where('host_id', '=', host.id)
          .where('status', '=', 'creating')
          .execute();
        this.logger.warn(
          { hostId: host.id, since, vms: vms.length },
          'host lost: its VMs are marked error',
        );
      }
      return lost.rows.map((r) => r.id);
    });
  }

  /** Every host with its usage (placement, `hosts ls`). */
  async list(): Promise<HostInfo[]> {
    const timeoutSec = this.timeoutMs / 1000;
    return listHosts(this.store, timeoutSec);
  }

  async host(hostId: string): Promise<HostInfo | undefined> {
    return (await this.list()).find((h) => h.id === hostId);
  }

  // ---- ClusterPeers ---------------------------------------------------------------------------

  async peers(): Promise<readonly PeerHost[]> {
    return (await this.list()).filter(
      (h) => h.live && h.state !== 'lost' && h.id !== this.me.hostId,
    );
  }

  async peer(hostId: string): Promise<PeerHost | undefined> {
    return this.host(hostId);
  }

  /** The host that owns a VM (any org; the caller has scoped the VM already). */
  async vmHost(vmId: string): Promise<string | null | undefined> {
    const row = await this.store.db
      .selectFrom('vms')
      .select('host_id')
      .where('id', '=', vmId)
      .executeTakeFirst();
    return row?.host_id;
  }

  /** The host that took a snapshot. */
  async snapshotHost(snapshotId: string): Promise<string | null | undefined> {
    const row = await this.store.db
      .selectFrom('snapshots')
      .select('host_id')
      .where('id', '=', snapshotId)
      .executeTakeFirst();
    return row?.host_id;
  }

  /**
   * The hosts that hold the golden of this machine type: those that registered it (built at
   * start: `serve` prewarms c1m2) and those that ran a VM of it (built then, kept in their cache).
   */
  async goldenHolders(machine: string): Promise<Set<string>> {
    const rows = await this.store.db
      .selectFrom('vms')
      .select('host_id')
      .distinct()
      .where('machine', '=', machine)
      .where('host_id', 'is not', null)
      .execute();
    const out = new Set(rows.map((r) => r.host_id!));
    const hosts = await this.store.db.selectFrom('hosts').select(['id', 'machine_types']).execute();
    for (const h of hosts) {
      if ((JSON.parse(h.machine_types) as string[]).includes(machine)) out.add(h.id);
    }
    return out;
  }
}

/** Every host with its usage; `timeoutSec` decides `live`. */
export async function listHosts(store: KyselyStore, timeoutSec: number): Promise<HostInfo[]> {
  const res = await sql<HostRow>`
    SELECT h.*, h.heartbeat_at >= now() - make_interval(secs => ${timeoutSec})
        AND h.advertise_url <> '' AS live,
      (SELECT coalesce(sum(v.memory_mib), 0) FROM vms v
        WHERE v.host_id = h.id AND v.status IN (${sql.join([...HOLDS_MEMORY])})) AS memory_used,
      (SELECT coalesce(sum(v.cpu), 0) FROM vms v
        WHERE v.host_id = h.id AND v.status IN (${sql.join(
          HOLDS_MEMORY.filter((s) => s !== 'paused'),
        )})) AS vcpu_used
    FROM hosts h ORDER BY h.id`.execute(store.db);
  return res.rows.map((r) => ({
    id: r.id,
    internalUrl: r.advertise_url,
    advertiseUrl: r.advertise_url,
    state: r.state as HostState,
    stateReason: r.state_reason,
    memoryLimitMiB: Number(r.memory_limit_mib),
    vcpuLimit: Number(r.vcpu_limit),
    machineTypes: JSON.parse(r.machine_types) as string[],
    guestImage: r.guest_image,
    heartbeatAt: new Date(r.heartbeat_at).toISOString(),
    startedAt: new Date(r.started_at).toISOString(),
    live: Boolean(r.live),
    memoryUsedMiB: Number(r.memory_used ?? 0),
    vcpuUsed: Number(r.vcpu_used ?? 0),
  }));
}

/** Sets a host's state by hand (`fastvm-server hosts drain|undrain`); false: no such host. */
export async function setHostState(
  store: KyselyStore,
  hostId: string,
  state: 'active' | 'draining',
  reason: string | null,
): Promise<boolean> {
  const res = await store.db
    .updateTable('hosts')
    .set({ state, state_reason: reason })
    .where('id', '=', hostId)
    .executeTakeFirst();
  return Number(res.numUpdatedRows) === 1;
}
