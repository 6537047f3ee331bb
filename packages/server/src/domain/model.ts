/**
 * Domain types and constants shared by the store, the services and the HTTP layer.
 * Nothing here knows about Fastify or SQL. Machine types and firewall policies are the
 * runtime's (`@fastvm/runtime`), so the API and the runtime cannot disagree on them.
 * @module
 */
import type { FirewallPolicy, MachineType } from '@fastvm/runtime';
import type { CapturedService, PublishedService } from './published.js';

export { DEFAULT_DISK_GIB, MACHINES, isMachineType } from '@fastvm/runtime';
export type {
  DnsPolicy,
  EgressPolicy,
  EgressRule,
  FirewallPolicy,
  FirewallRule,
  MachineSpec,
  MachineType,
} from '@fastvm/runtime';

/** VM lifecycle states as stored. `deleted` never leaves the server (deleted rows are hidden). */
export type VmStatus =
  | 'provisioning'
  | 'running'
  | 'pausing'
  | 'paused'
  | 'resuming'
  | 'stopped'
  | 'deleting'
  | 'error'
  | 'deleted';

/** Snapshot states as stored; `deleting`/`deleted` rows are hidden from the API. */
export type SnapshotStatus = 'creating' | 'ready' | 'error' | 'deleting' | 'deleted';

/** VM states that hold runtime resources and therefore count against the org's quota. */
export const VM_STATUSES_USING_QUOTA: readonly VmStatus[] = [
  'provisioning',
  'running',
  'pausing',
  'resuming',
  'deleting',
];

/**
 * A paused VM gives its vCPUs back (they are stopped and use no host CPU) but keeps counting
 * against `memoryMiB` and `diskGiB`: its QEMU process still holds the guest's RAM and its disk.
 */
export const VM_STATUSES_USING_MEMORY_AND_DISK: readonly VmStatus[] = [
  ...VM_STATUSES_USING_QUOTA,
  'paused',
];

/** A VM's time to live: when it runs out the VM is paused or deleted (contract §3.9). */
export interface VmTtl {
  seconds: number;
  action: 'pause' | 'delete';
}

/** Longest TTL accepted (one year, contract §3.9). */
export const MAX_TTL_SECONDS = 31_536_000;

/** Snapshot states that count against `snapshotCount`. */
export const SNAPSHOT_STATUSES_USING_QUOTA: readonly SnapshotStatus[] = ['creating', 'ready'];

/** Policy of a VM launched without one: everything closed (contract §3.8, PRE docs). */
export function defaultFirewall(): FirewallPolicy {
  return { mode: 'restricted', ingress: [] };
}

/** User labels on VMs and snapshots (limits in `schemas.ts`). */
export type Metadata = Record<string, string>;

/**
 * Environment variables of a VM (limits in `schemas.ts`): the environment of every exec,
 * streaming exec and console process in it (over the guest agent's defaults such as `PATH`).
 */
export type EnvVars = Record<string, string>;

/**
 * Environment variable limits: name bytes and JSON size from the contract (§4.2.1); the count
 * is this server's (the contract states none). A restore's merged map must fit them too.
 */
export const ENV_VARS_LIMITS = {
  maxKeys: 256,
  maxKeyBytes: 256,
  maxJsonBytes: 65536,
} as const;

/** Most VMs one `POST /v1/snapshots/{id}/fork` starts. */
export const MAX_FORK_COUNT = 100;

/** The six quota dimensions reported by `GET /v1/org/quotas`. */
export interface QuotaValues {
  vcpu: number;
  memoryMiB: number;
  diskGiB: number;
  snapshotCount: number;
  volumeCount: number;
  volumeGiB: number;
}

/** Limits applied to orgs without an explicit `quota_limits` row (overridable per org). */
export const DEFAULT_QUOTA_LIMITS: Readonly<QuotaValues> = {
  vcpu: 64,
  memoryMiB: 131072,
  diskGiB: 2048,
  snapshotCount: 256,
  volumeCount: 64,
  volumeGiB: 1024,
};

/** An organisation: the unit of ownership and quota. */
export interface OrgRecord {
  id: string;
  name: string;
  createdAt: string;
}

/** An API key as stored (the key itself is only kept hashed). */
export interface ApiKeyRecord {
  id: string;
  orgId: string;
  name: string;
  /** First characters of the key, kept to help humans tell keys apart. */
  prefix: string;
  createdAt: string;
  revokedAt: string | null;
}

/** One compute price tier (contract §4.12); rates are decimal strings in USD. */
export interface PricingTier {
  /** 1-based. */
  tier: number;
  fromVcpuHours: number;
  /** Null: the open top tier. */
  toVcpuHours: number | null;
  ratePerVcpuHour: string;
}

/** What `GET /v1/pricing` answers (server configuration, `FASTVM_PRICING`). */
export interface Pricing {
  compute: { tiers: PricingTier[] };
  volumeStorage: { ratePerGiBMonth: string };
}

/** An SSH public key of an org (`/v1/me/ssh-keys`, contract §4.11). */
export interface SshKeyRecord {
  id: string;
  orgId: string;
  /** OpenSSH `SHA256:<unpadded base64>` of the key blob; unique across all orgs. */
  fingerprint: string;
  /** `<type> <base64>`, comment stripped. */
  publicKey: string;
  name: string | null;
  createdAt: string;
}

/** A VM row. `deletedAt` set means deleted (hidden from the API). */
export interface VmRecord {
  id: string;
  orgId: string;
  name: string;
  machine: MachineType;
  cpu: number;
  memoryMiB: number;
  diskGiB: number;
  status: VmStatus;
  /** Why the VM is in `error`/`stopped`, if known. */
  error: string | null;
  sourceSnapshotId: string | null;
  sourceName: string;
  firewall: FirewallPolicy;
  metadata: Metadata;
  /** Environment of its processes (optional in records built by older code; the store always sets it). */
  envVars?: EnvVars;
  publicIpv6: string | null;
  createdAt: string;
  updatedAt: string;
  deletedAt: string | null;
  /** Time to live, if set (optional in records built by older code; the store always sets it). */
  ttl?: VmTtl | null;
  /** When the TTL runs out (epoch ms); set only while running with a TTL. */
  expiresAtMs?: number | null;
  /** TTL left when it was paused (ms); applied at the next resume. */
  ttlRemainingMs?: number | null;
  /** When the VM was last paused; null while not paused. */
  pausedAt?: string | null;
  /** Published services, sorted by name (optional in records built by older code). */
  services?: PublishedService[];
  /** Volume attachments (optional in records built by older code; the store always sets it). */
  volumes?: VolumeAttachment[];
}

/** Volume states as stored (contract §4.10); `deleted` rows are hidden. */
export type VolumeStatus = 'creating' | 'ready' | 'deleting' | 'deleted';

/** A persistent volume: an ext4 file on the host, attached to VMs at mount paths. */
export interface VolumeRecord {
  id: string;
  orgId: string;
  name: string;
  sizeGiB: number;
  /** `ro`: every attachment is read-only; `rw`: one writable attachment at a time. */
  accessMode: 'rw' | 'ro';
  status: VolumeStatus;
  /** Size a resize in flight goes to (counted against `volumeGiB` until done). */
  pendingSizeGiB: number | null;
  /** Space in use in its filesystem, when known (measured while no VM writes to it). */
  usedGiB: number | null;
  createdAt: string;
  updatedAt: string;
  deletedAt: string | null;
}

/**
 * A volume attached to a VM (contract §3.9 `VolumeAttachmentItem`). `pending` on a paused VM
 * (until resume) or while the hot attach runs; `detaching` while the guest unmounts.
 */
export interface VolumeAttachment {
  volumeId: string;
  mountPath: string;
  readOnly: boolean;
  mountStatus: 'pending' | 'mounted' | 'failed' | 'detaching';
  statusMessage?: string;
}

/** What a snapshot records of an attachment (contract §3.6): never the volume's contents. */
export interface SnapshotVolumeRef {
  volumeId: string;
  mountPath: string;
  readOnly: boolean;
}

/** Mount paths volumes may use in the guest (contract §4.2.1): `/mnt`, `/data` or under them. */
export const VOLUME_MOUNT_PATH_RE = /^\/(mnt|data)(\/[A-Za-z0-9._-]+)*$/;

/** Statuses of volumes that count against `volumeCount` / `volumeGiB`. */
export const VOLUME_STATUSES_USING_QUOTA: readonly VolumeStatus[] = [
  'creating',
  'ready',
  'deleting',
];

/** A snapshot row; carries what a restore inherits (machine, disk, firewall). */
export interface SnapshotRecord {
  id: string;
  orgId: string;
  vmId: string;
  name: string;
  status: SnapshotStatus;
  error: string | null;
  machine: MachineType;
  cpu: number;
  memoryMiB: number;
  diskGiB: number;
  firewall: FirewallPolicy;
  metadata: Metadata;
  /** The VM's environment variables when it was taken (a restore merges its own over them). */
  envVars?: EnvVars;
  /** The VM's published services when it was taken (a restore registers them again). */
  services?: CapturedService[];
  /**
   * Lineage: the snapshot the VM (`vmId`) was restored from, null for a fresh launch. Kept when
   * that snapshot is deleted (optional in records built by older code; the store always sets it).
   */
  parentSnapshotId?: string | null;
  /** The VM's volume attachments when it was taken (a restore re-attaches what it can). */
  volumes?: SnapshotVolumeRef[];
  /**
   * Content digests of the layers the snapshot owns, once the runtime has computed them (in the
   * background after `ready`); never stored in the database (`SnapshotService` asks the runtime).
   */
  digests?: Readonly<Record<string, string>>;
  createdAt: string;
  updatedAt: string;
  deletedAt: string | null;
}

/** RFC 3339 UTC timestamp with milliseconds and `Z`. */
export function nowIso(): string {
  return new Date().toISOString();
}
