/**
 * The durable state behind the API. One interface, implemented over Kysely for SQLite (default)
 * and PostgreSQL (`FASTVM_DATABASE_URL=postgres://…`). Everything is org-scoped except the
 * recovery queries used at startup.
 * @module
 */
import type {
  ApiKeyRecord,
  BuildCacheEntry,
  BuildKind,
  BuildRecord,
  BuildStatus,
  Move,
  PublishedService,
  OrgRecord,
  QuotaValues,
  SnapshotRecord,
  SnapshotStatus,
  SshKeyRecord,
  VmRecord,
  VmStatus,
  VolumeAttachment,
  VolumeRecord,
  VolumeStatus,
} from '../domain/index.js';

/**
 * Fields of a VM row that may change after insert without a status change. The status (and
 * `deletedAt`, which goes with `deleted`) only changes through `Store.transitionVm`.
 */
export type VmPatch = Partial<
  Pick<
    VmRecord,
    | 'name'
    | 'error'
    | 'firewall'
    | 'metadata'
    | 'publicIpv6'
    | 'ttl'
    | 'expiresAtMs'
    | 'ttlRemainingMs'
    | 'pausedAt'
  >
>;

/** What a VM status change may set besides the status. */
export type VmTransitionPatch = VmPatch & Partial<Pick<VmRecord, 'deletedAt'>>;

/** Fields of a snapshot row that may change after insert without a status change. */
export type SnapshotPatch = Partial<Pick<SnapshotRecord, 'name' | 'metadata'>>;

/** What a snapshot status change may set besides the status. */
export type SnapshotTransitionPatch = SnapshotPatch &
  Partial<Pick<SnapshotRecord, 'error' | 'deletedAt'>>;

/** Fields of a volume row that may change after insert. */
export type VolumePatch = Partial<
  Pick<
    VolumeRecord,
    'name' | 'sizeGiB' | 'accessMode' | 'pendingSizeGiB' | 'usedGiB' | 'status' | 'deletedAt'
  >
>;

/** Per-org quota overrides; absent/null dimensions fall back to the server defaults. */
export type QuotaOverrides = { [K in keyof QuotaValues]?: number | null };

/** Operations available while an org's quota lock is held (see `Store.withOrgLock`). */
export interface OrgTx {
  getQuotaOverrides(): Promise<QuotaOverrides>;
  getUsage(): Promise<QuotaValues>;
  /**
   * Inserts a new VM; its status must be `VM_INITIAL_STATUS` (`provisioning`). `hostId`: the
   * host that will run it (a fork spread over hosts); default the bound host.
   */
  insertVm(vm: VmRecord, hostId?: string): Promise<void>;
  /** Inserts a new snapshot; its status must be `SNAPSHOT_INITIAL_STATUS` (`creating`). */
  insertSnapshot(snapshot: SnapshotRecord): Promise<void>;
  /** Inserts a new volume (status `creating`). */
  insertVolume(volume: VolumeRecord): Promise<void>;
  /** `Store.updateVolume` inside the lock (a resize that reserves `volumeGiB`). */
  updateVolume(
    id: string,
    patch: VolumePatch,
    onlyIf?: readonly VolumeStatus[],
  ): Promise<VolumeRecord | undefined>;
  /** `Store.transitionVm` inside the lock (a resume that re-acquires quota). */
  transitionVm(
    id: string,
    move: Move<VmStatus>,
    patch?: VmTransitionPatch,
  ): Promise<VmRecord | undefined>;
}

/** Durable state; see the module comment. */
export interface Store {
  readonly dialect: 'sqlite' | 'postgres';
  /** Applies pending migrations; returns their names. */
  migrate(): Promise<string[]>;
  close(): Promise<void>;
  /**
   * Several hosts (`cluster/`): VMs and snapshots inserted from now on belong to this host, and
   * the host-local queries (`listVmsByStatus`, `listSnapshotsByStatus`: recovery, admission,
   * TTLs, metrics) see only this host's rows. Never called on one machine.
   */
  bindHost(hostId: string): void;
  /** The host bound by `bindHost`, if any. */
  readonly hostId: string | undefined;

  createOrg(org: OrgRecord): Promise<void>;
  getOrg(id: string): Promise<OrgRecord | undefined>;
  /** By id or by name. */
  findOrg(idOrName: string): Promise<OrgRecord | undefined>;
  listOrgs(): Promise<OrgRecord[]>;

  insertApiKey(key: ApiKeyRecord, keyHash: string): Promise<void>;
  /** The active (not revoked) key with this hash. */
  findActiveApiKey(keyHash: string): Promise<ApiKeyRecord | undefined>;
  listApiKeys(orgId?: string): Promise<ApiKeyRecord[]>;
  /** Revokes by key id or key prefix; returns the number of keys revoked. */
  revokeApiKey(idOrPrefix: string, at: string): Promise<number>;
  countActiveApiKeys(): Promise<number>;

  getQuotaOverrides(orgId: string): Promise<QuotaOverrides>;
  setQuotaOverrides(orgId: string, overrides: QuotaOverrides): Promise<void>;
  getUsage(orgId: string): Promise<QuotaValues>;

  /**
   * Runs `fn` in one transaction that holds the org's write lock, so check-then-insert of quota
   * reservations is atomic across concurrent requests (and processes).
   */
  withOrgLock<T>(orgId: string, fn: (tx: OrgTx) => Promise<T>): Promise<T>;

  /** A live (not deleted) VM of the org. */
  getVm(orgId: string, id: string): Promise<VmRecord | undefined>;
  /**
   * What `getVm` would answer, when the store knows it without a query (a read cache): the
   * record (shared and frozen — read it, never change it), `null` for no such live VM of the org,
   * `undefined` when it cannot say (then ask `getVm`). Stores without a cache leave it out.
   */
  peekVm?(orgId: string, id: string): Readonly<VmRecord> | null | undefined;
  findVmsByName(orgId: string, name: string): Promise<VmRecord[]>;
  /** Live VMs of the org, oldest first. */
  listVms(orgId: string): Promise<VmRecord[]>;
  /**
   * Changes a VM's status, the only way to: `move` must be allowed by the transition table
   * (`domain/transitions.ts`; an illegal move throws `IllegalTransitionError`), and it applies,
   * with `patch`, only while the row is in one of the move's source statuses. Returns the
   * updated row, or undefined when the row was in another status (or does not exist).
   */
  transitionVm(
    id: string,
    move: Move<VmStatus>,
    patch?: VmTransitionPatch,
  ): Promise<VmRecord | undefined>;
  /**
   * Applies `patch` (never a status change); when `onlyIf` is given, only while the VM is in one
   * of those statuses. Returns the updated row, or undefined if nothing matched.
   */
  updateVm(id: string, patch: VmPatch, onlyIf?: readonly VmStatus[]): Promise<VmRecord | undefined>;
  /** VMs of every org in the given states (startup recovery); only this host's when bound. */
  listVmsByStatus(statuses: readonly VmStatus[]): Promise<VmRecord[]>;
  /**
   * Host admission's sums over every org's VMs (only this host's when bound): the memory of the
   * VMs in `memoryStatuses` and the vCPUs of those in `cpuStatuses`. One aggregate row, however
   * many VMs there are.
   */
  sumVmResources(
    memoryStatuses: readonly VmStatus[],
    cpuStatuses: readonly VmStatus[],
  ): Promise<{ memoryMiB: number; vcpu: number }>;
  /** A live (not deleted) VM of any org by id (the service proxy's lookup). */
  findLiveVm(id: string): Promise<VmRecord | undefined>;
  /**
   * Changes a live VM's published services in one transaction holding the VM row's lock:
   * `change` sees the row and returns the new list (`services`, omitted: unchanged) and a
   * result. Undefined when the VM does not exist or is deleted. Errors thrown by `change`
   * roll back and propagate.
   */
  changeVmServices<T>(
    vmId: string,
    change: (vm: VmRecord) => { services?: PublishedService[]; result: T },
  ): Promise<{ vm: VmRecord; result: T } | undefined>;

  getSnapshot(orgId: string, id: string): Promise<SnapshotRecord | undefined>;
  findSnapshotsByName(orgId: string, name: string): Promise<SnapshotRecord[]>;
  listSnapshots(orgId: string): Promise<SnapshotRecord[]>;
  /** Like `transitionVm`, for snapshots (`SNAPSHOT_TRANSITIONS`). */
  transitionSnapshot(
    id: string,
    move: Move<SnapshotStatus>,
    patch?: SnapshotTransitionPatch,
  ): Promise<SnapshotRecord | undefined>;
  /** Renames or relabels a snapshot (never a status change). */
  updateSnapshot(id: string, patch: SnapshotPatch): Promise<SnapshotRecord | undefined>;
  listSnapshotsByStatus(statuses: readonly SnapshotStatus[]): Promise<SnapshotRecord[]>;
  /** Lineage: a VM of the org by id, deleted or not. */
  getVmAny(orgId: string, id: string): Promise<VmRecord | undefined>;
  /** Lineage: the org's snapshots with these ids, deleted ones included. */
  getSnapshotsById(orgId: string, ids: readonly string[]): Promise<SnapshotRecord[]>;
  /** Lineage: the org's VMs restored from any of these snapshots, deleted ones included. */
  listVmsFromSnapshots(orgId: string, snapshotIds: readonly string[]): Promise<VmRecord[]>;
  /** Lineage: the org's snapshots taken of any of these VMs, deleted ones included. */
  listSnapshotsOfVms(orgId: string, vmIds: readonly string[]): Promise<SnapshotRecord[]>;

  /** A live (not deleted) volume of the org. */
  getVolume(orgId: string, id: string): Promise<VolumeRecord | undefined>;
  findVolumesByName(orgId: string, name: string): Promise<VolumeRecord[]>;
  /** Live volumes of the org, oldest first. */
  listVolumes(orgId: string): Promise<VolumeRecord[]>;
  /** A volume of any org by id, deleted or not (a restore tells `deleted` from `cross_org`). */
  findVolumeAnyOrg(id: string): Promise<VolumeRecord | undefined>;
  /** Volumes of every org in these statuses (startup recovery). */
  listVolumesByStatus(statuses: readonly VolumeStatus[]): Promise<VolumeRecord[]>;
  /** Applies `patch`; with `onlyIf`, only while the volume is in one of those statuses. */
  updateVolume(
    id: string,
    patch: VolumePatch,
    onlyIf?: readonly VolumeStatus[],
  ): Promise<VolumeRecord | undefined>;
  /**
   * Changes a live VM's volume attachments under the org's lock (so the one-writer rule holds
   * across concurrent attaches): `change` sees the VM and the org's other live VMs and returns
   * the VM's new list (`volumes`, omitted: unchanged) and a result. Undefined when the VM does
   * not exist or is deleted; errors thrown by `change` roll back and propagate.
   */
  changeVmVolumes<T>(
    orgId: string,
    vmId: string,
    change: (
      vm: VmRecord,
      others: readonly VmRecord[],
    ) => { volumes?: VolumeAttachment[]; result: T },
  ): Promise<{ vm: VmRecord; result: T } | undefined>;

  /** The org's SSH keys, oldest first. */
  listSshKeys(orgId: string): Promise<SshKeyRecord[]>;
  /**
   * Inserts `key` unless its fingerprint is stored already (for any org) or its org has `limit`
   * keys; the checks and the insert hold the org's lock. Says which.
   */
  insertSshKey(key: SshKeyRecord, limit: number): Promise<'inserted' | 'duplicate' | 'limit'>;
  /** Deletes the org's key with this fingerprint; returns it, or undefined if none. */
  deleteSshKey(orgId: string, fingerprint: string): Promise<SshKeyRecord | undefined>;
  /** The key with this fingerprint, whichever org holds it (the SSH gateway's login lookup). */
  findSshKey(fingerprint: string): Promise<SshKeyRecord | undefined>;

  /** Inserts a build or import record. */
  insertBuild(build: BuildRecord): Promise<void>;
  /** The org's build or import by id. */
  getBuild(orgId: string, id: string): Promise<BuildRecord | undefined>;
  /** The org's builds of one kind, newest first. */
  listBuilds(orgId: string, kind: BuildKind): Promise<BuildRecord[]>;
  /** Writes the whole record (status and document). */
  saveBuild(build: BuildRecord): Promise<void>;
  deleteBuild(id: string): Promise<void>;
  /** Builds of every org in these statuses (startup recovery). */
  listBuildsByStatus(statuses: readonly BuildStatus[]): Promise<BuildRecord[]>;

  getBuildCacheEntry(orgId: string, key: string): Promise<BuildCacheEntry | undefined>;
  /** Inserts or replaces the entry of `key`. */
  putBuildCacheEntry(entry: BuildCacheEntry): Promise<void>;
  touchBuildCacheEntry(orgId: string, key: string, at: string): Promise<void>;
  deleteBuildCacheEntry(orgId: string, key: string): Promise<void>;
  /** The org's entries, least recently used first. */
  listBuildCacheEntries(orgId: string): Promise<BuildCacheEntry[]>;
  /** Whether any org's cache entry holds this snapshot. */
  isBuildCacheSnapshot(snapshotId: string): Promise<boolean>;

  /**
   * Multi-host (migration 0010): records that a host holds a complete, verified copy of a
   * snapshot's files (`cluster/snapshot-mobility.ts`); idempotent, refreshes `verifiedAt`.
   */
  addSnapshotHolder(snapshotId: string, hostId: string): Promise<void>;
  /** The hosts holding a snapshot, most recently verified first. */
  listSnapshotHolders(snapshotId: string): Promise<SnapshotHolder[]>;
  /** Forgets one host's copy, or (no `hostId`) every copy. */
  removeSnapshotHolder(snapshotId: string, hostId?: string): Promise<void>;
}

/** A host holding a copy of a snapshot (`Store.addSnapshotHolder`). */
export interface SnapshotHolder {
  readonly snapshotId: string;
  readonly hostId: string;
  readonly verifiedAt: string;
}
