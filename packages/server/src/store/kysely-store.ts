/**
 * `Store` over Kysely. The SQL is dialect-neutral; `sqlite.ts` and `postgres.ts` only build the
 * dialect and connection.
 * @module
 */
import type { Kysely, Selectable, Transaction } from 'kysely';
import {
  type BuildCacheEntry,
  type BuildKind,
  type BuildRecord,
  type BuildStatus,
  SNAPSHOT_INITIAL_STATUS,
  SNAPSHOT_STATUSES_USING_QUOTA,
  SNAPSHOT_TRANSITIONS,
  VM_INITIAL_STATUS,
  VM_STATUSES_USING_MEMORY_AND_DISK,
  VM_STATUSES_USING_QUOTA,
  VM_TRANSITIONS,
  nowIso,
  sourcesOf,
  type ApiKeyRecord,
  type EnvVars,
  type FirewallPolicy,
  type MachineType,
  type Metadata,
  type Move,
  type OrgRecord,
  type CapturedService,
  type PublishedService,
  type QuotaValues,
  type SnapshotRecord,
  type SnapshotStatus,
  type SshKeyRecord,
  type VmRecord,
  type VmStatus,
  type VmTtl,
  type VolumeAttachment,
  type VolumeRecord,
  type VolumeStatus,
  type SnapshotVolumeRef,
  VOLUME_STATUSES_USING_QUOTA,
} from '../domain/index.js';
import { migrateToLatest } from './migrations.js';
import { prepared } from './prepared.js';
import type {
  BuildCacheTable,
  BuildsTable,
  Database,
  SnapshotsTable,
  VmsTable,
  VolumesTable,
} from './schema.js';
import type {
  OrgTx,
  QuotaOverrides,
  SnapshotHolder,
  SnapshotPatch,
  SnapshotTransitionPatch,
  Store,
  VmPatch,
  VmTransitionPatch,
  VolumePatch,
} from './store.js';

type Db = Kysely<Database> | Transaction<Database>;

type VmsRow = Selectable<VmsTable>;

/**
 * A store whose database only this process writes through it (SQLite: one connection, admin
 * commands in other processes are seen through `data_version`) can keep what it read: the rows
 * hold while `generation()` (moved by every write) is unchanged. Only `getVm` uses it — the
 * lookup every `GET /v1/vms/{id}` makes.
 */
export interface ReadCacheOptions {
  generation(): number;
}

const VM_ROW_CACHE_MAX = 10_000;

/** Shared implementation; construct through `openSqliteStore` / `openPostgresStore`. */
export class KyselyStore implements Store {
  // Hot lookups (every request authenticates and most address one VM), compiled once.
  readonly #activeKeyByHash;
  readonly #liveVmById;
  readonly #liveSnapshotById;
  #hostId: string | undefined;

  /**
   * Live VM rows by id, valid while the store's generation stands still (see `ReadCacheOptions`),
   * with the record made from the row once it was peeked at (`peekVm`).
   */
  readonly #vmRows = new Map<string, { row: VmsRow; shared?: Readonly<VmRecord> }>();
  #vmRowsGeneration = -1;

  constructor(
    readonly db: Kysely<Database>,
    readonly dialect: 'sqlite' | 'postgres',
    private readonly onClose?: () => Promise<void> | void,
    private readonly readCache?: ReadCacheOptions,
  ) {
    this.#activeKeyByHash = prepared(db, 1, (hash: string) =>
      db
        .selectFrom('api_keys')
        .selectAll()
        .where('key_hash', '=', hash)
        .where('revoked_at', 'is', null),
    );
    this.#liveVmById = prepared(db, 2, (orgId: string, id: string) =>
      db
        .selectFrom('vms')
        .selectAll()
        .where('org_id', '=', orgId)
        .where('id', '=', id)
        .where('deleted_at', 'is', null),
    );
    this.#liveSnapshotById = prepared(db, 2, (orgId: string, id: string) =>
      db
        .selectFrom('snapshots')
        .selectAll()
        .where('org_id', '=', orgId)
        .where('id', '=', id)
        .where('deleted_at', 'is', null),
    );
  }

  bindHost(hostId: string): void {
    this.#hostId = hostId;
  }

  get hostId(): string | undefined {
    return this.#hostId;
  }

  migrate(): Promise<string[]> {
    return migrateToLatest(this.db);
  }

  async close(): Promise<void> {
    await this.db.destroy();
    await this.onClose?.();
  }

  // ---- orgs and keys ------------------------------------------------------------------------

  async createOrg(org: OrgRecord): Promise<void> {
    await this.db
      .insertInto('orgs')
      .values({ id: org.id, name: org.name, created_at: org.createdAt, updated_at: org.createdAt })
      .execute();
  }

  async getOrg(id: string): Promise<OrgRecord | undefined> {
    const row = await this.db
      .selectFrom('orgs')
      .selectAll()
      .where('id', '=', id)
      .executeTakeFirst();
    return row && { id: row.id, name: row.name, createdAt: row.created_at };
  }

  async findOrg(idOrName: string): Promise<OrgRecord | undefined> {
    const row = await this.db
      .selectFrom('orgs')
      .selectAll()
      .where((eb) => eb.or([eb('id', '=', idOrName), eb('name', '=', idOrName)]))
      .orderBy('created_at')
      .executeTakeFirst();
    return row && { id: row.id, name: row.name, createdAt: row.created_at };
  }

  async listOrgs(): Promise<OrgRecord[]> {
    const rows = await this.db.selectFrom('orgs').selectAll().orderBy('created_at').execute();
    return rows.map((r) => ({ id: r.id, name: r.name, createdAt: r.created_at }));
  }

  async insertApiKey(key: ApiKeyRecord, keyHash: string): Promise<void> {
    await this.db
      .insertInto('api_keys')
      .values({
        id: key.id,
        org_id: key.orgId,
        name: key.name,
        key_hash: keyHash,
        key_prefix: key.prefix,
        created_at: key.createdAt,
        revoked_at: key.revokedAt,
      })
      .execute();
  }

  async findActiveApiKey(keyHash: string): Promise<ApiKeyRecord | undefined> {
    const [row] = await this.#activeKeyByHash(keyHash);
    return row && toApiKey(row);
  }

  async listApiKeys(orgId?: string): Promise<ApiKeyRecord[]> {
    let q = this.db.selectFrom('api_keys').selectAll().orderBy('created_at');
    if (orgId !== undefined) q = q.where('org_id', '=', orgId);
    return (await q.execute()).map(toApiKey);
  }

  async revokeApiKey(idOrPrefix: string, at: string): Promise<number> {
    const res = await this.db
      .updateTable('api_keys')
      .set({ revoked_at: at })
      .where((eb) => eb.or([eb('id', '=', idOrPrefix), eb('key_prefix', '=', idOrPrefix)]))
      .where('revoked_at', 'is', null)
      .executeTakeFirst();
    return Number(res.numUpdatedRows);
  }

  async countActiveApiKeys(): Promise<number> {
    const row = await this.db
      .selectFrom('api_keys')
      .select((eb) => eb.fn.countAll().as('n'))
      .where('revoked_at', 'is', null)
      .executeTakeFirstOrThrow();
    return Number(row.n);
  }

  // ---- quotas -------------------------------------------------------------------------------

  getQuotaOverrides(orgId: string): Promise<QuotaOverrides> {
    return readQuotaOverrides(this.db, orgId);
  }

  async setQuotaOverrides(orgId: string, o: QuotaOverrides): Promise<void> {
    const values = {
      vcpu: o.vcpu,
      memory_mib: o.memoryMiB,
      disk_gib: o.diskGiB,
      snapshot_count: o.snapshotCount,
      volume_count: o.volumeCount,
      volume_gib: o.volumeGiB,
    };
    // Only the dimensions named in `o` change; `null` resets one to the server default.
    const set = Object.fromEntries(Object.entries(values).filter(([, v]) => v !== undefined));
    const now = nowIso();
    await this.db
      .insertInto('quota_limits')
      .values({ org_id: orgId, ...set, updated_at: now })
      .onConflict((oc) => oc.column('org_id').doUpdateSet({ ...set, updated_at: now }))
      .execute();
  }

  getUsage(orgId: string): Promise<QuotaValues> {
    return readUsage(this.db, orgId);
  }

  async withOrgLock<T>(orgId: string, fn: (tx: OrgTx) => Promise<T>): Promise<T> {
    return this.db.transaction().execute(async (trx) => {
      // Writing the org row first takes SQLite's write lock (so no deferred-transaction upgrade
      // can fail later) and a row lock in PostgreSQL; concurrent reservations queue here.
      const res = await trx
        .updateTable('orgs')
        .set({ updated_at: nowIso() })
        .where('id', '=', orgId)
        .executeTakeFirst();
      if (Number(res.numUpdatedRows) !== 1) throw new Error(`org ${orgId} does not exist`);
      const tx: OrgTx = {
        getQuotaOverrides: () => readQuotaOverrides(trx, orgId),
        getUsage: () => readUsage(trx, orgId),
        insertVm: async (vm, hostId) => {
          if (vm.status !== VM_INITIAL_STATUS) {
            throw new Error(`a new VM must be ${VM_INITIAL_STATUS}, not ${vm.status}`);
          }
          await trx
            .insertInto('vms')
            .values({
              ...fromVm(vm),
              ...((hostId ?? this.#hostId) ? { host_id: hostId ?? this.#hostId } : {}),
            })
            .execute();
        },
        insertSnapshot: async (s) => {
          if (s.status !== SNAPSHOT_INITIAL_STATUS) {
            throw new Error(`a new snapshot must be ${SNAPSHOT_INITIAL_STATUS}, not ${s.status}`);
          }
          await trx
            .insertInto('snapshots')
            .values({ ...fromSnapshot(s), ...(this.#hostId ? { host_id: this.#hostId } : {}) })
            .execute();
        },
        transitionVm: (id, move, patch) => transitionVmRow(trx, id, move, patch),
        insertVolume: async (v) => {
          if (v.status !== 'creating') throw new Error(`a new volume must be creating`);
          await trx.insertInto('volumes').values(fromVolume(v)).execute();
        },
        updateVolume: (id, patch, onlyIf) => writeVolumeRow(trx, id, patch, onlyIf),
      };
      return fn(tx);
    });
  }

  // ---- VMs ----------------------------------------------------------------------------------

  async getVm(orgId: string, id: string): Promise<VmRecord | undefined> {
    const cache = this.readCache;
    if (!cache) {
      const [row] = await this.#liveVmById(orgId, id);
      return row && toVm(row);
    }
    // The generation is read before the query: a write after it makes the row stale.
    const generation = this.#currentVmRows(cache);
    const hit = this.#vmRows.get(id);
    if (hit) return hit.row.org_id === orgId ? toVm(hit.row) : undefined;
    const [row] = await this.#liveVmById(orgId, id);
    if (row && cache.generation() === generation) {
      if (this.#vmRows.size >= VM_ROW_CACHE_MAX) this.#vmRows.clear();
      this.#vmRows.set(id, { row });
    }
    return row && toVm(row);
  }

  /**
   * The read cache's answer to `getVm`, without a query and without waiting: the record when
   * the cache holds the VM (shared between callers and frozen: the same object until the VM
   * changes), `null` when it holds the VM under another org, `undefined` when it cannot say.
   */
  peekVm(orgId: string, id: string): Readonly<VmRecord> | null | undefined {
    const cache = this.readCache;
    if (!cache) return undefined;
    this.#currentVmRows(cache);
    const hit = this.#vmRows.get(id);
    if (!hit) return undefined;
    if (hit.row.org_id !== orgId) return null;
    return (hit.shared ??= Object.freeze(toVm(hit.row)));
  }

  /** Drops the cached rows if the store was written since they were read; the generation. */
  #currentVmRows(cache: ReadCacheOptions): number {
    const generation = cache.generation();
    if (generation !== this.#vmRowsGeneration) {
      this.#vmRows.clear();
      this.#vmRowsGeneration = generation;
    }
    return generation;
  }

  async findVmsByName(orgId: string, name: string): Promise<VmRecord[]> {
    const rows = await this.db
      .selectFrom('vms')
      .selectAll()
      .where('org_id', '=', orgId)
      .where('name', '=', name)
      .where('deleted_at', 'is', null)
      .orderBy('created_at')
      .execute();
    return rows.map(toVm);
  }

  async listVms(orgId: string): Promise<VmRecord[]> {
    const rows = await this.db
      .selectFrom('vms')
      .selectAll()
      .where('org_id', '=', orgId)
      .where('deleted_at', 'is', null)
      .orderBy('created_at')
      .orderBy('id')
      .execute();
    return rows.map(toVm);
  }

  transitionVm(
    id: string,
    move: Move<VmStatus>,
    patch: VmTransitionPatch = {},
  ): Promise<VmRecord | undefined> {
    return transitionVmRow(this.db, id, move, patch);
  }

  async updateVm(
    id: string,
    patch: VmPatch,
    onlyIf?: readonly VmStatus[],
  ): Promise<VmRecord | undefined> {
    rejectStatusIn(patch);
    return writeVmRow(this.db, id, vmColumns(patch), onlyIf);
  }

  async listVmsByStatus(statuses: readonly VmStatus[]): Promise<VmRecord[]> {
    let q = this.db
      .selectFrom('vms')
      .selectAll()
      .where('status', 'in', [...statuses]);
    if (this.#hostId) q = q.where('host_id', '=', this.#hostId);
    const rows = await q.orderBy('created_at').execute();
    return rows.map(toVm);
  }

  async sumVmResources(
    memoryStatuses: readonly VmStatus[],
    cpuStatuses: readonly VmStatus[],
  ): Promise<{ memoryMiB: number; vcpu: number }> {
    const statuses = [...new Set([...memoryStatuses, ...cpuStatuses])];
    if (statuses.length === 0) return { memoryMiB: 0, vcpu: 0 };
    let q = this.db
      .selectFrom('vms')
      .select((eb) => {
        const sumOf = (list: readonly VmStatus[], column: 'memory_mib' | 'cpu') =>
          eb.fn.coalesce(
            eb.fn.sum<number>(
              list.length
                ? eb
                    .case()
                    .when('status', 'in', [...list])
                    .then(eb.ref(column))
                    .else(0)
                    .end()
                : eb.lit(0),
            ),
            eb.lit(0),
          );
        return [
          sumOf(memoryStatuses, 'memory_mib').as('memory'),
          sumOf(cpuStatuses, 'cpu').as('cpu'),
        ];
      })
      .where('status', 'in', statuses);
    if (this.#hostId) q = q.where('host_id', '=', this.#hostId);
    const row = await q.executeTakeFirstOrThrow();
    // PostgreSQL returns SUM as a bigint string.
    return { memoryMiB: Number(row.memory), vcpu: Number(row.cpu) };
  }

  async findLiveVm(id: string): Promise<VmRecord | undefined> {
    const row = await this.db
      .selectFrom('vms')
      .selectAll()
      .where('id', '=', id)
      .where('deleted_at', 'is', null)
      .executeTakeFirst();
    return row && toVm(row);
  }

  async changeVmServices<T>(
    vmId: string,
    change: (vm: VmRecord) => { services?: PublishedService[]; result: T },
  ): Promise<{ vm: VmRecord; result: T } | undefined> {
    return this.db.transaction().execute(async (trx) => {
      // Writing the row first takes SQLite's write lock and PostgreSQL's row lock, so two
      // changes of one VM's list (a cap check and an insert) never interleave.
      const row = await trx
        .updateTable('vms')
        .set({ updated_at: nowIso() })
        .where('id', '=', vmId)
        .where('deleted_at', 'is', null)
        .returningAll()
        .executeTakeFirst();
      if (!row) return undefined;
      const vm = toVm(row);
      const { services, result } = change(vm);
      if (services === undefined) return { vm, result };
      const sorted = [...services].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
      const updated = await trx
        .updateTable('vms')
        .set({ services: JSON.stringify(sorted) })
        .where('id', '=', vmId)
        .returningAll()
        .executeTakeFirstOrThrow();
      return { vm: toVm(updated), result };
    });
  }

  // ---- snapshots ----------------------------------------------------------------------------

  async getSnapshot(orgId: string, id: string): Promise<SnapshotRecord | undefined> {
    const [row] = await this.#liveSnapshotById(orgId, id);
    return row && toSnapshot(row);
  }

  async findSnapshotsByName(orgId: string, name: string): Promise<SnapshotRecord[]> {
    const rows = await this.db
      .selectFrom('snapshots')
      .selectAll()
      .where('org_id', '=', orgId)
      .where('name', '=', name)
      .where('deleted_at', 'is', null)
      .orderBy('created_at')
      .execute();
    return rows.map(toSnapshot);
  }

  async listSnapshots(orgId: string): Promise<SnapshotRecord[]> {
    const rows = await this.db
      .selectFrom('snapshots')
      .selectAll()
      .where('org_id', '=', orgId)
      .where('deleted_at', 'is', null)
      .orderBy('created_at')
      .orderBy('id')
      .execute();
    return rows.map(toSnapshot);
  }

  async transitionSnapshot(
    id: string,
    move: Move<SnapshotStatus>,
    patch: SnapshotTransitionPatch = {},
  ): Promise<SnapshotRecord | undefined> {
    const from = sourcesOf('snapshot', SNAPSHOT_TRANSITIONS, move);
    const set = snapshotColumns(patch);
    set.status = move.to;
    if (patch.error !== undefined) set.error = patch.error;
    if (patch.deletedAt !== undefined) set.deleted_at = patch.deletedAt;
    return writeSnapshotRow(this.db, id, set, from);
  }

  async updateSnapshot(id: string, patch: SnapshotPatch): Promise<SnapshotRecord | undefined> {
    rejectStatusIn(patch);
    return writeSnapshotRow(this.db, id, snapshotColumns(patch));
  }

  // Lineage walks see deleted rows too: a deleted ancestor or VM still links the tree.

  async getVmAny(orgId: string, id: string): Promise<VmRecord | undefined> {
    const row = await this.db
      .selectFrom('vms')
      .selectAll()
      .where('org_id', '=', orgId)
      .where('id', '=', id)
      .executeTakeFirst();
    return row && toVm(row);
  }

  async getSnapshotsById(orgId: string, ids: readonly string[]): Promise<SnapshotRecord[]> {
    const out: SnapshotRecord[] = [];
    for (const part of chunks(ids)) {
      const rows = await this.db
        .selectFrom('snapshots')
        .selectAll()
        .where('org_id', '=', orgId)
        .where('id', 'in', part)
        .execute();
      out.push(...rows.map(toSnapshot));
    }
    return out;
  }

  async listVmsFromSnapshots(orgId: string, snapshotIds: readonly string[]): Promise<VmRecord[]> {
    const out: VmRecord[] = [];
    for (const part of chunks(snapshotIds)) {
      const rows = await this.db
        .selectFrom('vms')
        .selectAll()
        .where('org_id', '=', orgId)
        .where('source_snapshot_id', 'in', part)
        .orderBy('created_at')
        .orderBy('id')
        .execute();
      out.push(...rows.map(toVm));
    }
    return out;
  }

  async listSnapshotsOfVms(orgId: string, vmIds: readonly string[]): Promise<SnapshotRecord[]> {
    const out: SnapshotRecord[] = [];
    for (const part of chunks(vmIds)) {
      const rows = await this.db
        .selectFrom('snapshots')
        .selectAll()
        .where('org_id', '=', orgId)
        .where('vm_id', 'in', part)
        .orderBy('created_at')
        .orderBy('id')
        .execute();
      out.push(...rows.map(toSnapshot));
    }
    return out;
  }

  async listSnapshotsByStatus(statuses: readonly SnapshotStatus[]): Promise<SnapshotRecord[]> {
    let q = this.db
      .selectFrom('snapshots')
      .selectAll()
      .where('status', 'in', [...statuses]);
    if (this.#hostId) q = q.where('host_id', '=', this.#hostId);
    const rows = await q.orderBy('created_at').execute();
    return rows.map(toSnapshot);
  }

  // ---- volumes ------------------------------------------------------------------------------

  async getVolume(orgId: string, id: string): Promise<VolumeRecord | undefined> {
    const row = await this.db
      .selectFrom('volumes')
      .selectAll()
      .where('org_id', '=', orgId)
      .where('id', '=', id)
      .where('deleted_at', 'is', null)
      .executeTakeFirst();
    return row && toVolume(row);
  }

  async findVolumesByName(orgId: string, name: string): Promise<VolumeRecord[]> {
    const rows = await this.db
      .selectFrom('volumes')
      .selectAll()
      .where('org_id', '=', orgId)
      .where('name', '=', name)
      .where('deleted_at', 'is', null)
      .orderBy('created_at')
      .execute();
    return rows.map(toVolume);
  }

  async listVolumes(orgId: string): Promise<VolumeRecord[]> {
    const rows = await this.db
      .selectFrom('volumes')
      .selectAll()
      .where('org_id', '=', orgId)
      .where('deleted_at', 'is', null)
      .orderBy('created_at')
      .orderBy('id')
      .execute();
    return rows.map(toVolume);
  }

  async findVolumeAnyOrg(id: string): Promise<VolumeRecord | undefined> {
    const row = await this.db
      .selectFrom('volumes')
      .selectAll()
      .where('id', '=', id)
      .executeTakeFirst();
    return row && toVolume(row);
  }

  async listVolumesByStatus(statuses: readonly VolumeStatus[]): Promise<VolumeRecord[]> {
    const rows = await this.db
      .selectFrom('volumes')
      .selectAll()
      .where('status', 'in', [...statuses])
      .orderBy('created_at')
      .execute();
    return rows.map(toVolume);
  }

  updateVolume(
    id: string,
    patch: VolumePatch,
    onlyIf?: readonly VolumeStatus[],
  ): Promise<VolumeRecord | undefined> {
    return writeVolumeRow(this.db, id, patch, onlyIf);
  }

  async changeVmVolumes<T>(
    orgId: string,
    vmId: string,
    change: (
      vm: VmRecord,
      others: readonly VmRecord[],
    ) => { volumes?: VolumeAttachment[]; result: T },
  ): Promise<{ vm: VmRecord; result: T } | undefined> {
    return this.db.transaction().execute(async (trx) => {
      // The org row write serialises attachment changes of the org (as in `withOrgLock`).
      const res = await trx
        .updateTable('orgs')
        .set({ updated_at: nowIso() })
        .where('id', '=', orgId)
        .executeTakeFirst();
      if (Number(res.numUpdatedRows) !== 1) return undefined;
      const rows = await trx
        .selectFrom('vms')
        .selectAll()
        .where('org_id', '=', orgId)
        .where('deleted_at', 'is', null)
        .execute();
      const vms = rows.map(toVm);
      const vm = vms.find((v) => v.id === vmId);
      if (!vm) return undefined;
      const { volumes, result } = change(
        vm,
        vms.filter((v) => v.id !== vmId),
      );
      if (volumes === undefined) return { vm, result };
      const updated = await trx
        .updateTable('vms')
        .set({ volumes: JSON.stringify(volumes), updated_at: nowIso() })
        .where('id', '=', vmId)
        .returningAll()
        .executeTakeFirstOrThrow();
      return { vm: toVm(updated), result };
    });
  }

  // ---- SSH keys -----------------------------------------------------------------------------

  async listSshKeys(orgId: string): Promise<SshKeyRecord[]> {
    const rows = await this.db
      .selectFrom('ssh_keys')
      .selectAll()
      .where('org_id', '=', orgId)
      .orderBy('created_at')
      .orderBy('id')
      .execute();
    return rows.map(toSshKey);
  }

  async insertSshKey(
    key: SshKeyRecord,
    limit: number,
  ): Promise<'inserted' | 'duplicate' | 'limit'> {
    const exists = async (): Promise<boolean> =>
      (await this.db
        .selectFrom('ssh_keys')
        .select('id')
        .where('fingerprint', '=', key.fingerprint)
        .executeTakeFirst()) !== undefined;
    try {
      return await this.db.transaction().execute(async (trx) => {
        // The org row write serialises the count-then-insert of one org (as in `withOrgLock`).
        const res = await trx
          .updateTable('orgs')
          .set({ updated_at: nowIso() })
          .where('id', '=', key.orgId)
          .executeTakeFirst();
        if (Number(res.numUpdatedRows) !== 1) throw new Error(`org ${key.orgId} does not exist`);
        const same = await trx
          .selectFrom('ssh_keys')
          .select('id')
          .where('fingerprint', '=', key.fingerprint)
          .executeTakeFirst();
        if (same) return 'duplicate' as const;
        const { n } = await trx
          .selectFrom('ssh_keys')
          .select((eb) => eb.fn.countAll().as('n'))
          .where('org_id', '=', key.orgId)
          .executeTakeFirstOrThrow();
        if (Number(n) >= limit) return 'limit' as const;
        await trx
          .insertInto('ssh_keys')
          .values({
            id: key.id,
            org_id: key.orgId,
            fingerprint: key.fingerprint,
            public_key: key.publicKey,
            name: key.name,
            created_at: key.createdAt,
          })
          .execute();
        return 'inserted' as const;
      });
    } catch (err) {
      // Another org inserted the same key concurrently: the unique index refused this one.
      if (await exists()) return 'duplicate';
      throw err;
    }
  }

  async findSshKey(fingerprint: string): Promise<SshKeyRecord | undefined> {
    const row = await this.db
      .selectFrom('ssh_keys')
      .selectAll()
      .where('fingerprint', '=', fingerprint)
      .executeTakeFirst();
    return row && toSshKey(row);
  }

  async deleteSshKey(orgId: string, fingerprint: string): Promise<SshKeyRecord | undefined> {
    const row = await this.db
      .deleteFrom('ssh_keys')
      .where('org_id', '=', orgId)
      .where('fingerprint', '=', fingerprint)
      .returningAll()
      .executeTakeFirst();
    return row && toSshKey(row);
  }

  // ---- builds and the step cache --------------------------------------------------------------

  async insertBuild(b: BuildRecord): Promise<void> {
    await this.db.insertInto('builds').values(fromBuild(b)).execute();
  }

  async getBuild(orgId: string, id: string): Promise<BuildRecord | undefined> {
    const row = await this.db
      .selectFrom('builds')
      .selectAll()
      .where('org_id', '=', orgId)
      .where('id', '=', id)
      .executeTakeFirst();
    return row && toBuild(row);
  }

  async listBuilds(orgId: string, kind: BuildKind): Promise<BuildRecord[]> {
    const rows = await this.db
      .selectFrom('builds')
      .selectAll()
      .where('org_id', '=', orgId)
      .where('kind', '=', kind)
      .orderBy('created_at', 'desc')
      .orderBy('id', 'desc')
      .execute();
    return rows.map(toBuild);
  }

  async saveBuild(b: BuildRecord): Promise<void> {
    const row = fromBuild(b);
    await this.db
      .updateTable('builds')
      .set({ status: row.status, updated_at: row.updated_at, doc: row.doc })
      .where('id', '=', b.id)
      .execute();
  }

  async deleteBuild(id: string): Promise<void> {
    await this.db.deleteFrom('builds').where('id', '=', id).execute();
  }

  async listBuildsByStatus(statuses: readonly BuildStatus[]): Promise<BuildRecord[]> {
    if (statuses.length === 0) return [];
    const rows = await this.db
      .selectFrom('builds')
      .selectAll()
      .where('status', 'in', [...statuses])
      .orderBy('created_at')
      .execute();
    return rows.map(toBuild);
  }

  async getBuildCacheEntry(orgId: string, key: string): Promise<BuildCacheEntry | undefined> {
    const row = await this.db
      .selectFrom('build_cache')
      .selectAll()
      .where('org_id', '=', orgId)
      .where('key', '=', key)
      .executeTakeFirst();
    return row && toCacheEntry(row);
  }

  async putBuildCacheEntry(e: BuildCacheEntry): Promise<void> {
    await this.db
      .insertInto('build_cache')
      .values({
        org_id: e.orgId,
        key: e.key,
        snapshot_id: e.snapshotId,
        created_at: e.createdAt,
        last_used_at: e.lastUsedAt,
      })
      .onConflict((oc) =>
        oc.columns(['org_id', 'key']).doUpdateSet({
          snapshot_id: e.snapshotId,
          created_at: e.createdAt,
          last_used_at: e.lastUsedAt,
        }),
      )
      .execute();
  }

  async touchBuildCacheEntry(orgId: string, key: string, at: string): Promise<void> {
    await this.db
      .updateTable('build_cache')
      .set({ last_used_at: at })
      .where('org_id', '=', orgId)
      .where('key', '=', key)
      .execute();
  }

  async deleteBuildCacheEntry(orgId: string, key: string): Promise<void> {
    await this.db
      .deleteFrom('build_cache')
      .where('org_id', '=', orgId)
      .where('key', '=', key)
      .execute();
  }

  async listBuildCacheEntries(orgId: string): Promise<BuildCacheEntry[]> {
    const rows = await this.db
      .selectFrom('build_cache')
      .selectAll()
      .where('org_id', '=', orgId)
      .orderBy('last_used_at')
      .execute();
    return rows.map(toCacheEntry);
  }

  async isBuildCacheSnapshot(snapshotId: string): Promise<boolean> {
    const row = await this.db
      .selectFrom('build_cache')
      .select('key')
      .where('snapshot_id', '=', snapshotId)
      .executeTakeFirst();
    return row !== undefined;
  }

  async addSnapshotHolder(snapshotId: string, hostId: string): Promise<void> {
    const verifiedAt = new Date().toISOString();
    await this.db
      .insertInto('snapshot_holders')
      .values({ snapshot_id: snapshotId, host_id: hostId, verified_at: verifiedAt })
      .onConflict((oc) =>
        oc.columns(['snapshot_id', 'host_id']).doUpdateSet({ verified_at: verifiedAt }),
      )
      .execute();
  }

  async listSnapshotHolders(snapshotId: string): Promise<SnapshotHolder[]> {
    const rows = await this.db
      .selectFrom('snapshot_holders')
      .selectAll()
      .where('snapshot_id', '=', snapshotId)
      .orderBy('verified_at', 'desc')
      .execute();
    return rows.map((r) => ({
      snapshotId: r.snapshot_id,
      hostId: r.host_id,
      verifiedAt: r.verified_at,
    }));
  }

  async removeSnapshotHolder(snapshotId: string, hostId?: string): Promise<void> {
    let q = this.db.deleteFrom('snapshot_holders').where('snapshot_id', '=', snapshotId);
    if (hostId !== undefined) q = q.where('host_id', '=', hostId);
    await q.execute();
  }
}

function toBuild(row: Selectable<BuildsTable>): BuildRecord {
  const doc = JSON.parse(row.doc) as BuildRecord;
  return {
    ...doc,
    id: row.id,
    orgId: row.org_id,
    kind: row.kind as BuildKind,
    status: row.status as BuildStatus,
  };
}

function fromBuild(b: BuildRecord): BuildsTable {
  return {
    id: b.id,
    org_id: b.orgId,
    kind: b.kind,
    status: b.status,
    created_at: b.createdAt,
    updated_at: b.updatedAt,
    doc: JSON.stringify(b),
  };
}

function toCacheEntry(row: Selectable<BuildCacheTable>): BuildCacheEntry {
  return {
    orgId: row.org_id,
    key: row.key,
    snapshotId: row.snapshot_id,
    createdAt: row.created_at,
    lastUsedAt: row.last_used_at,
  };
}

function toSshKey(row: Selectable<Database['ssh_keys']>): SshKeyRecord {
  return {
    id: row.id,
    orgId: row.org_id,
    fingerprint: row.fingerprint,
    publicKey: row.public_key,
    name: row.name,
    createdAt: row.created_at,
  };
}

/** The status of a row changes only through a transition (`domain/transitions.ts`). */
function rejectStatusIn(patch: object): void {
  if ('status' in patch || 'deletedAt' in patch) {
    throw new Error('a status change goes through transitionVm/transitionSnapshot');
  }
}

async function transitionVmRow(
  db: Db,
  id: string,
  move: Move<VmStatus>,
  patch: VmTransitionPatch = {},
): Promise<VmRecord | undefined> {
  const from = sourcesOf('vm', VM_TRANSITIONS, move);
  const set = vmColumns(patch);
  set.status = move.to;
  if (patch.deletedAt !== undefined) set.deleted_at = patch.deletedAt;
  return writeVmRow(db, id, set, from);
}

/** The columns a VM patch sets (status and `deleted_at` are the transition's business). */
function vmColumns(patch: VmPatch): Partial<VmsTable> {
  const set: Partial<VmsTable> = { updated_at: nowIso() };
  if (patch.name !== undefined) set.name = patch.name;
  if (patch.error !== undefined) set.error = patch.error;
  if (patch.firewall !== undefined) set.firewall = JSON.stringify(patch.firewall);
  if (patch.metadata !== undefined) set.metadata = JSON.stringify(patch.metadata);
  if (patch.publicIpv6 !== undefined) set.public_ipv6 = patch.publicIpv6;
  if (patch.ttl !== undefined) {
    set.ttl_seconds = patch.ttl?.seconds ?? null;
    set.ttl_action = patch.ttl?.action ?? null;
  }
  if (patch.expiresAtMs !== undefined) set.expires_at_ms = patch.expiresAtMs;
  if (patch.ttlRemainingMs !== undefined) set.ttl_remaining_ms = patch.ttlRemainingMs;
  if (patch.pausedAt !== undefined) set.paused_at = patch.pausedAt;
  return set;
}

/** One UPDATE of a VM row, only while its status is one of `onlyIf` when given. */
async function writeVmRow(
  db: Db,
  id: string,
  set: Partial<VmsTable>,
  onlyIf?: readonly VmStatus[],
): Promise<VmRecord | undefined> {
  let q = db.updateTable('vms').set(set).where('id', '=', id);
  if (onlyIf) q = q.where('status', 'in', [...onlyIf]);
  const row = await q.returningAll().executeTakeFirst();
  return row && toVm(row);
}

function snapshotColumns(patch: SnapshotPatch): Partial<SnapshotsTable> {
  const set: Partial<SnapshotsTable> = { updated_at: nowIso() };
  if (patch.name !== undefined) set.name = patch.name;
  if (patch.metadata !== undefined) set.metadata = JSON.stringify(patch.metadata);
  return set;
}

async function writeSnapshotRow(
  db: Db,
  id: string,
  set: Partial<SnapshotsTable>,
  onlyIf?: readonly SnapshotStatus[],
): Promise<SnapshotRecord | undefined> {
  let q = db.updateTable('snapshots').set(set).where('id', '=', id);
  if (onlyIf) q = q.where('status', 'in', [...onlyIf]);
  const row = await q.returningAll().executeTakeFirst();
  return row && toSnapshot(row);
}

async function readQuotaOverrides(db: Db, orgId: string): Promise<QuotaOverrides> {
  const row = await db
    .selectFrom('quota_limits')
    .selectAll()
    .where('org_id', '=', orgId)
    .executeTakeFirst();
  if (!row) return {};
  return {
    vcpu: row.vcpu,
    memoryMiB: row.memory_mib,
    diskGiB: row.disk_gib,
    snapshotCount: row.snapshot_count,
    volumeCount: row.volume_count,
    volumeGiB: row.volume_gib,
  };
}

/** Usage is always derived from rows, never kept as a counter, so it cannot drift. */
async function readUsage(db: Db, orgId: string): Promise<QuotaValues> {
  const cpu = await db
    .selectFrom('vms')
    .select((eb) => eb.fn.coalesce(eb.fn.sum<number>('cpu'), eb.lit(0)).as('vcpu'))
    .where('org_id', '=', orgId)
    .where('deleted_at', 'is', null)
    .where('status', 'in', [...VM_STATUSES_USING_QUOTA])
    .executeTakeFirstOrThrow();
  // Paused VMs release their vCPUs but keep memory and disk (see domain.ts).
  const vm = await db
    .selectFrom('vms')
    .select((eb) => [
      eb.fn.coalesce(eb.fn.sum<number>('memory_mib'), eb.lit(0)).as('memory'),
      eb.fn.coalesce(eb.fn.sum<number>('disk_gib'), eb.lit(0)).as('disk'),
    ])
    .where('org_id', '=', orgId)
    .where('deleted_at', 'is', null)
    .where('status', 'in', [...VM_STATUSES_USING_MEMORY_AND_DISK])
    .executeTakeFirstOrThrow();
  const snap = await db
    .selectFrom('snapshots')
    .select((eb) => eb.fn.countAll().as('n'))
    .where('org_id', '=', orgId)
    .where('deleted_at', 'is', null)
    .where('status', 'in', [...SNAPSHOT_STATUSES_USING_QUOTA])
    .executeTakeFirstOrThrow();
  // A resize in flight counts at the larger of its two sizes.
  const vol = await db
    .selectFrom('volumes')
    .select((eb) => [
      eb.fn.countAll().as('n'),
      eb.fn
        .coalesce(
          eb.fn.sum<number>(
            eb
              .case()
              .when('pending_size_gib', '>', eb.ref('size_gib'))
              .then(eb.ref('pending_size_gib'))
              .else(eb.ref('size_gib'))
              .end(),
          ),
          eb.lit(0),
        )
        .as('gib'),
    ])
    .where('org_id', '=', orgId)
    .where('deleted_at', 'is', null)
    .where('status', 'in', [...VOLUME_STATUSES_USING_QUOTA])
    .executeTakeFirstOrThrow();
  // PostgreSQL returns SUM/COUNT as bigint strings.
  return {
    vcpu: Number(cpu.vcpu),
    memoryMiB: Number(vm.memory),
    diskGiB: Number(vm.disk),
    snapshotCount: Number(snap.n),
    volumeCount: Number(vol.n),
    volumeGiB: Number(vol.gib),
  };
}

function toApiKey(row: Selectable<Database['api_keys']>): ApiKeyRecord {
  return {
    id: row.id,
    orgId: row.org_id,
    name: row.name,
    prefix: row.key_prefix,
    createdAt: row.created_at,
    revokedAt: row.revoked_at,
  };
}

function toVm(row: Selectable<VmsTable>): VmRecord {
  return {
    id: row.id,
    orgId: row.org_id,
    name: row.name,
    machine: row.machine as MachineType,
    cpu: Number(row.cpu),
    memoryMiB: Number(row.memory_mib),
    diskGiB: Number(row.disk_gib),
    status: row.status as VmStatus,
    error: row.error,
    sourceSnapshotId: row.source_snapshot_id,
    sourceName: row.source_name,
    firewall: JSON.parse(row.firewall) as FirewallPolicy,
    metadata: JSON.parse(row.metadata) as Metadata,
    envVars: JSON.parse(row.env_vars) as EnvVars,
    publicIpv6: row.public_ipv6,
    createdAt: row.created_at,
    updatedAt: row.updated_at,
    deletedAt: row.deleted_at,
    ttl:
      row.ttl_seconds !== null && row.ttl_action !== null
        ? { seconds: Number(row.ttl_seconds), action: row.ttl_action as VmTtl['action'] }
        : null,
    expiresAtMs: row.expires_at_ms === null ? null : Number(row.expires_at_ms),
    ttlRemainingMs: row.ttl_remaining_ms === null ? null : Number(row.ttl_remaining_ms),
    pausedAt: row.paused_at,
    services: JSON.parse(row.services) as PublishedService[],
    volumes: JSON.parse(row.volumes ?? '[]') as VolumeAttachment[],
  };
}

function fromVm(vm: VmRecord): VmsTable {
  return {
    id: vm.id,
    org_id: vm.orgId,
    name: vm.name,
    machine: vm.machine,
    cpu: vm.cpu,
    memory_mib: vm.memoryMiB,
    disk_gib: vm.diskGiB,
    status: vm.status,
    error: vm.error,
    source_snapshot_id: vm.sourceSnapshotId,
    source_name: vm.sourceName,
    firewall: JSON.stringify(vm.firewall),
    metadata: JSON.stringify(vm.metadata),
    env_vars: JSON.stringify(vm.envVars ?? {}),
    public_ipv6: vm.publicIpv6,
    created_at: vm.createdAt,
    updated_at: vm.updatedAt,
    deleted_at: vm.deletedAt,
    ttl_seconds: vm.ttl?.seconds ?? null,
    ttl_action: vm.ttl?.action ?? null,
    expires_at_ms: vm.expiresAtMs ?? null,
    ttl_remaining_ms: vm.ttlRemainingMs ?? null,
    paused_at: vm.pausedAt ?? null,
    services: JSON.stringify(vm.services ?? []),
    volumes: JSON.stringify(vm.volumes ?? []),
  };
}

function toSnapshot(row: Selectable<SnapshotsTable>): SnapshotRecord {
  return {
    id: row.id,
    orgId: row.org_id,
    vmId: row.vm_id,
    name: row.name,
    status: row.status as SnapshotStatus,
    error: row.error,
    machine: row.machine as MachineType,
    cpu: Number(row.cpu),
    memoryMiB: Number(row.memory_mib),
    diskGiB: Number(row.disk_gib),
    firewall: JSON.parse(row.firewall) as FirewallPolicy,
    metadata: JSON.parse(row.metadata) as Metadata,
    envVars: JSON.parse(row.env_vars) as EnvVars,
    services: JSON.parse(row.services) as CapturedService[],
    parentSnapshotId: row.parent_snapshot_id,
    volumes: JSON.parse(row.volumes ?? '[]') as SnapshotVolumeRef[],
    createdAt: row.created_at,
    updatedAt: row.updated_at,
    deletedAt: row.deleted_at,
  };
}

function fromSnapshot(s: SnapshotRecord): SnapshotsTable {
  return {
    id: s.id,
    org_id: s.orgId,
    vm_id: s.vmId,
    name: s.name,
    status: s.status,
    error: s.error,
    machine: s.machine,
    cpu: s.cpu,
    memory_mib: s.memoryMiB,
    disk_gib: s.diskGiB,
    firewall: JSON.stringify(s.firewall),
    metadata: JSON.stringify(s.metadata),
    env_vars: JSON.stringify(s.envVars ?? {}),
    services: JSON.stringify(s.services ?? []),
    parent_snapshot_id: s.parentSnapshotId ?? null,
    volumes: JSON.stringify(s.volumes ?? []),
    created_at: s.createdAt,
    updated_at: s.updatedAt,
    deleted_at: s.deletedAt,
  };
}

function toVolume(row: Selectable<VolumesTable>): VolumeRecord {
  return {
    id: row.id,
    orgId: row.org_id,
    name: row.name,
    sizeGiB: Number(row.size_gib),
    accessMode: row.access_mode as VolumeRecord['accessMode'],
    status: row.status as VolumeStatus,
    pendingSizeGiB: row.pending_size_gib === null ? null : Number(row.pending_size_gib),
    usedGiB: row.used_gib === null ? null : Number(row.used_gib),
    createdAt: row.created_at,
    updatedAt: row.updated_at,
    deletedAt: row.deleted_at,
  };
}

function fromVolume(v: VolumeRecord): VolumesTable {
  return {
    id: v.id,
    org_id: v.orgId,
    name: v.name,
    size_gib: v.sizeGiB,
    pending_size_gib: v.pendingSizeGiB,
    used_gib: v.usedGiB,
    access_mode: v.accessMode,
    status: v.status,
    created_at: v.createdAt,
    updated_at: v.updatedAt,
    deleted_at: v.deletedAt,
  };
}

async function writeVolumeRow(
  db: Db,
  id: string,
  patch: VolumePatch,
  onlyIf?: readonly VolumeStatus[],
): Promise<VolumeRecord | undefined> {
  const set: Partial<VolumesTable> = { updated_at: nowIso() };
  if (patch.name !== undefined) set.name = patch.name;
  if (patch.sizeGiB !== undefined) set.size_gib = patch.sizeGiB;
  if (patch.accessMode !== undefined) set.access_mode = patch.accessMode;
  if (patch.pendingSizeGiB !== undefined) set.pending_size_gib = patch.pendingSizeGiB;
  if (patch.usedGiB !== undefined) set.used_gib = patch.usedGiB;
  if (patch.status !== undefined) set.status = patch.status;
  if (patch.deletedAt !== undefined) set.deleted_at = patch.deletedAt;
  let q = db.updateTable('volumes').set(set).where('id', '=', id);
  if (onlyIf) q = q.where('status', 'in', [...onlyIf]);
  const row = await q.returningAll().executeTakeFirst();
  return row && toVolume(row);
}

/** `ids` in slices small enough for one `IN (…)` (SQLite binds at most 32 766 parameters). */
function chunks(ids: readonly string[], size = 500): string[][] {
  const out: string[][] = [];
  for (let i = 0; i < ids.length; i += size) out.push(ids.slice(i, i + size));
  return out;
}
