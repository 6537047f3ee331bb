/**
 * The durable state behind the API. One interface, implemented over Kysely for SQLite (default)
 * and PostgreSQL (`FASTVM_DATABASE_URL=postgres://…`). Everything is org-scoped except the
 * recovery queries used at startup.
 * @module
 */
import type {
  ApiKeyRecord,
  OrgRecord,
  QuotaValues,
  SnapshotRecord,
  SnapshotStatus,
  VmRecord,
  VmStatus,
} from '../domain.js';

/** Fields of a VM row that may change after insert. */
export type VmPatch = Partial<
  Pick<
    VmRecord,
    | 'name'
    | 'status'
    | 'error'
    | 'firewall'
    | 'metadata'
    | 'publicIpv6'
    | 'deletedAt'
    | 'ttl'
    | 'expiresAtMs'
    | 'ttlRemainingMs'
    | 'pausedAt'
  >
>;

/** Fields of a snapshot row that may change after insert. */
export type SnapshotPatch = Partial<
  Pick<SnapshotRecord, 'name' | 'status' | 'error' | 'metadata' | 'deletedAt'>
>;

/** Per-org quota overrides; absent/null dimensions fall back to the server defaults. */
export type QuotaOverrides = { [K in keyof QuotaValues]?: number | null };

/** Operations available while an org's quota lock is held (see `Store.withOrgLock`). */
export interface OrgTx {
  getQuotaOverrides(): Promise<QuotaOverrides>;
  getUsage(): Promise<QuotaValues>;
  insertVm(vm: VmRecord): Promise<void>;
  insertSnapshot(snapshot: SnapshotRecord): Promise<void>;
  /** `Store.updateVm` inside the lock (e.g. a resume that re-acquires quota). */
  updateVm(id: string, patch: VmPatch, onlyIf?: readonly VmStatus[]): Promise<VmRecord | undefined>;
}

/** Durable state; see the module comment. */
export interface Store {
  readonly dialect: 'sqlite' | 'postgres';
  /** Applies pending migrations; returns their names. */
  migrate(): Promise<string[]>;
  close(): Promise<void>;

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
  findVmsByName(orgId: string, name: string): Promise<VmRecord[]>;
  /** Live VMs of the org, oldest first. */
  listVms(orgId: string): Promise<VmRecord[]>;
  /**
   * Applies `patch`; when `onlyIf` is given, only while the VM is in one of those states.
   * Returns the updated row, or undefined if nothing matched.
   */
  updateVm(id: string, patch: VmPatch, onlyIf?: readonly VmStatus[]): Promise<VmRecord | undefined>;
  /** VMs of every org in the given states (startup recovery). */
  listVmsByStatus(statuses: readonly VmStatus[]): Promise<VmRecord[]>;

  getSnapshot(orgId: string, id: string): Promise<SnapshotRecord | undefined>;
  findSnapshotsByName(orgId: string, name: string): Promise<SnapshotRecord[]>;
  listSnapshots(orgId: string): Promise<SnapshotRecord[]>;
  updateSnapshot(
    id: string,
    patch: SnapshotPatch,
    onlyIf?: readonly SnapshotStatus[],
  ): Promise<SnapshotRecord | undefined>;
  listSnapshotsByStatus(statuses: readonly SnapshotStatus[]): Promise<SnapshotRecord[]>;
}
