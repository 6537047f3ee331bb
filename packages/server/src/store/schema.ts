/**
 * Kysely table types. Columns are portable between SQLite and PostgreSQL: ids and timestamps are
 * text (RFC 3339 UTC), JSON documents are text, sizes are integers.
 * @module
 */
export interface OrgsTable {
  id: string;
  name: string;
  created_at: string;
  /** Touched by every quota reservation: the row lock that serialises them (see `withOrgLock`). */
  updated_at: string;
}

/** API keys (hashed). */
export interface ApiKeysTable {
  id: string;
  org_id: string;
  name: string;
  /** Hex SHA-256 of the whole key; the key itself is never stored. */
  key_hash: string;
  key_prefix: string;
  created_at: string;
  revoked_at: string | null;
}

/** Per-org overrides; a null column means "use the server default". */
export interface QuotaLimitsTable {
  org_id: string;
  vcpu: number | null;
  memory_mib: number | null;
  disk_gib: number | null;
  snapshot_count: number | null;
  volume_count: number | null;
  volume_gib: number | null;
  updated_at: string;
}

/** VMs, soft-deleted (`deleted_at`). */
export interface VmsTable {
  id: string;
  org_id: string;
  name: string;
  machine: string;
  cpu: number;
  memory_mib: number;
  disk_gib: number;
  status: string;
  error: string | null;
  source_snapshot_id: string | null;
  source_name: string;
  firewall: string;
  metadata: string;
  public_ipv6: string | null;
  created_at: string;
  updated_at: string;
  deleted_at: string | null;
  /** TTL (migration 0002); both null when none. */
  ttl_seconds: number | null;
  ttl_action: string | null;
  /** Epoch ms (bigint: PostgreSQL returns it as a string). */
  expires_at_ms: number | string | null;
  ttl_remaining_ms: number | string | null;
  paused_at: string | null;
  /** JSON object of environment variables (migration 0003; `{}` for older rows). */
  env_vars: string;
  /** JSON array of published services, sorted by name (migration 0005; `[]` for older rows). */
  services: string;
  /** JSON array of volume attachments (migration 0007; `[]` for older rows). */
  volumes: string;
  /** The host that runs it (migration 0009); null on one machine. */
  host_id?: string | null;
}

/** Snapshots, soft-deleted (`deleted_at`). */
export interface SnapshotsTable {
  id: string;
  org_id: string;
  vm_id: string;
  name: string;
  status: string;
  error: string | null;
  machine: string;
  cpu: number;
  memory_mib: number;
  disk_gib: number;
  firewall: string;
  metadata: string;
  created_at: string;
  updated_at: string;
  deleted_at: string | null;
  /** JSON object: the VM's environment variables when taken (migration 0003). */
  env_vars: string;
  /** JSON array: the VM's services when taken, without tokens (migration 0005). */
  services: string;
  /** Lineage: the source snapshot of the VM it was taken of (migration 0006); null: none. */
  parent_snapshot_id: string | null;
  /** JSON array: the VM's volume attachments when taken (migration 0007). */
  volumes: string;
  /** The host that took it (migration 0009); null on one machine. */
  host_id?: string | null;
}

/** Volumes of orgs (migration 0007), soft-deleted (`deleted_at`). */
export interface VolumesTable {
  id: string;
  org_id: string;
  name: string;
  size_gib: number;
  pending_size_gib: number | null;
  used_gib: number | null;
  access_mode: string;
  status: string;
  created_at: string;
  updated_at: string;
  deleted_at: string | null;
}

/** SSH public keys of orgs (migration 0004). */
export interface SshKeysTable {
  id: string;
  org_id: string;
  /** OpenSSH `SHA256:…`; unique across all orgs. */
  fingerprint: string;
  public_key: string;
  name: string | null;
  created_at: string;
}

/** Builds and snapshot imports (migration 0008); `doc` is the JSON `BuildRecord`. */
export interface BuildsTable {
  id: string;
  org_id: string;
  kind: string;
  status: string;
  created_at: string;
  updated_at: string;
  doc: string;
}

/** The build step cache (migration 0008). */
export interface BuildCacheTable {
  org_id: string;
  key: string;
  snapshot_id: string;
  created_at: string;
  last_used_at: string;
}

/** Hosts of a cluster (migration 0009; see `cluster/host-registry.ts`). */
export interface HostsTable {
  id: string;
  /** How peers reach the host's API and internal routes, e.g. `http://10.0.0.2:8080`. */
  advertise_url: string;
  /** Host admission limits (`services/host-capacity.ts`): memory on paper and vCPUs. */
  memory_limit_mib: number;
  vcpu_limit: number;
  /** JSON array of the machine types whose golden this host holds. */
  machine_types: string;
  /** Guest image version (goldens are keyed by it). */
  guest_image: string;
  /** `active` | `draining` | `lost`. */
  state: string;
  state_reason: string | null;
  /** The database's clock (PostgreSQL `now()`) at the last heartbeat. */
  heartbeat_at: Date | string;
  started_at: Date | string;
}

/** Which hosts hold a verified copy of a snapshot's files (migration 0010, multi-host). */
export interface SnapshotHoldersTable {
  snapshot_id: string;
  host_id: string;
  verified_at: string;
}

/** All tables, for `Kysely<Database>`. */
export interface Database {
  orgs: OrgsTable;
  api_keys: ApiKeysTable;
  quota_limits: QuotaLimitsTable;
  vms: VmsTable;
  snapshots: SnapshotsTable;
  ssh_keys: SshKeysTable;
  volumes: VolumesTable;
  builds: BuildsTable;
  build_cache: BuildCacheTable;
  hosts: HostsTable;
  snapshot_holders: SnapshotHoldersTable;
}
