/**
 * Public data types returned and accepted by the SDK.
 *
 * Field names are camelCase. Sizes follow the seed SDK's idiom: `memoryMib` and `diskGib` (the wire
 * spells them `memoryMiB` and `diskGiB`; the SDK converts in both directions).
 *
 * @module
 */

/** Machine type: `c{vCPUs}m{GiB RAM}`. The server may accept others besides the listed ones. */
export type MachineType = 'c1m2' | 'c2m4' | 'c4m8' | 'c8m16' | (string & {});

/**
 * VM status. `provisioning` is transitional, `running` is ready, `error`/`stopped` are terminal
 * failures; newer servers add `pausing`/`paused`/`resuming`. Unknown values mean "in transition".
 */
export type VMStatus =
  | 'provisioning'
  | 'running'
  | 'stopped'
  | 'deleting'
  | 'error'
  | 'pausing'
  | 'paused'
  | 'resuming'
  | (string & {});

/** Snapshot status: `creating`, then `ready` (some servers say `active`) or `error`. */
export type SnapshotStatus = 'creating' | 'ready' | 'error' | (string & {});

/** One ingress allow rule of a {@link FirewallPolicy}. */
export interface FirewallRule {
  /** `tcp` or `udp`. */
  protocol: 'tcp' | 'udp' | (string & {});
  /** First port of the range. */
  portStart: number;
  /** Last port of the range, inclusive; omit for a single port. */
  portEnd?: number;
  /** Allowed IPv6 source CIDRs; omitted or empty means any source. */
  sourceCidrs?: string[];
  /** Human-readable description. */
  description?: string;
}

/** Public IPv6 ingress firewall policy of a VM. */
export interface FirewallPolicy {
  /** `open` allows all inbound traffic; `restricted` allows only the `ingress` rules. */
  mode: 'open' | 'restricted' | (string & {});
  /** Ingress allow rules (used in `restricted` mode). */
  ingress?: FirewallRule[];
}

/**
 * One rule of a v2 firewall (contract §3.8): ingress rules are `cidr` (IPv4 or IPv6 source);
 * egress rules are `cidr` or `fqdn` (a name, or `*.name` for one or more labels below it).
 */
export interface FirewallRuleV2 {
  action: 'allow' | 'deny';
  kind: 'cidr' | 'fqdn';
  protocol: 'tcp' | 'udp' | 'any';
  /** `"443"`, an inclusive range `"8080-8090"`, or `"any"` (required with protocol `any`). */
  ports: string;
  /** A CIDR, or for `fqdn` a domain name pattern. */
  value: string;
  description?: string;
}

/** A v2 rule list: `default` applies when no rule matches (rules are tried in order). */
export interface FirewallDirectionV2 {
  default: 'allow' | 'deny';
  rules?: FirewallRuleV2[];
}

/** The DNS gate of a VM's resolver. */
export interface DnsPolicy {
  /** `allow`: only `domains` resolve (others NXDOMAIN); `deny` (default): `domains` do not. */
  mode?: 'allow' | 'deny';
  domains?: string[];
  /** Block other resolvers (53), DNS over TLS/QUIC (853) and known DNS-over-HTTPS endpoints. */
  blockBypass?: boolean;
}

/**
 * A v2 firewall policy: ingress, egress and DNS. Every block is optional; on `setFirewall`
 * missing blocks take the defaults (ingress deny, egress allow, DNS resolves everything), on
 * `patchFirewall` they are kept.
 */
export interface FirewallPolicyV2 {
  ingress?: FirewallDirectionV2;
  egress?: FirewallDirectionV2;
  dns?: DnsPolicy;
}

/** Partial firewall update: only the given fields change; `ingress: []` clears all rules. */
export interface PatchFirewallPolicy {
  /** New mode, or omit to keep the current one. */
  mode?: FirewallPolicy['mode'];
  /** New rule list, or omit to keep the current rules. */
  ingress?: FirewallRule[];
}

/** A microVM. */
export interface VM {
  /** Unique VM identifier. */
  id: string;
  /** VM name. */
  name: string;
  /** Organisation id. */
  orgId: string;
  /** Machine type name, e.g. `c1m2` (empty if the server did not say). */
  machineName: string;
  /** Number of vCPUs. */
  cpu: number;
  /** Memory in MiB (wire: `memoryMiB`). */
  memoryMib: number;
  /** Disk size in GiB (wire: `diskGiB`). */
  diskGib: number;
  /** Current status. */
  status: VMStatus;
  /** ISO 8601 creation timestamp. */
  createdAt: string;
  /** Snapshot or image the VM was booted from (empty for a fresh boot). */
  sourceName: string;
  /** Public IPv6 address, if assigned. */
  publicIpv6: string | null;
  /** Firewall policy in the v1 shape; `null` when the server answered in v2 (see `firewallV2`). */
  firewall: FirewallPolicy | null;
  /**
   * The v2 policy, when the server answered in v2: with `firewallVersion: 2` on the client, or
   * in the answer to a v2 write. `null` otherwise.
   */
  firewallV2: FirewallPolicyV2 | null;
  /** Deletion timestamp, or `null`. */
  deletedAt: string | null;
  /** User metadata (string → string). */
  metadata: Record<string, string>;
  /** Environment variables of every command and console shell in the VM (`{}` when none). */
  envVars: Record<string, string>;
  /** Time to live, or `null` when the VM has none. */
  ttl: VMTtl | null;
  /** When the TTL runs out (epoch ms); set only while `running` with a TTL. */
  expiresAt: number | null;
  /** TTL left (ms), applied at the next resume; set only while `paused`. */
  ttlRemainingMs: number | null;
  /** When the VM was paused (ISO 8601), or `null`. */
  pausedAt: string | null;
  /** Lineage: the snapshot it was restored or forked from; `null` for a fresh launch. */
  sourceSnapshotId: string | null;
  /** `firewall` plus one auto-rule per published service: what the host enforces (read-only). */
  effectiveFirewall: FirewallPolicy | null;
  /** Attached volumes. */
  volumes: VolumeAttachment[];
}

/** A VM's time to live: after `seconds` of running it is paused or deleted. */
export interface VMTtl {
  /** Running time allowed, 1 to 31 536 000 (one year). */
  seconds: number;
  /** What happens when it runs out. */
  action: 'pause' | 'delete';
}

/**
 * One event of {@link FastVM.stream} or {@link FastVM.attach}: output as it is produced, then
 * exactly one `exit`. From `attach`, output events carry `offset`: the position of their first
 * byte in the session's output (stdout and stderr counted together), so
 * `offset + data.length` is where to attach again.
 */
export type ExecEvent =
  | { type: 'stdout'; data: Buffer; offset?: number }
  | { type: 'stderr'; data: Buffer; offset?: number }
  | { type: 'exit'; exitCode: number; timedOut: boolean; durationMs: number };

/**
 * An exec session: a command whose output the server keeps (the last 1 MiB) so that clients
 * can attach to it, leave and attach again; see {@link FastVM.execDetached}.
 */
export interface ExecSession {
  execId: string;
  vmId: string;
  command: string[];
  /** `killed`: by a request or a departing client; `failed`: the VM went away. */
  status: 'running' | 'exited' | 'killed' | 'failed';
  /** Set once `exited`. */
  exitCode: number | null;
  timedOut: boolean;
  durationMs: number | null;
  /** Why a `killed` or `failed` session has no exit code. */
  error: string | null;
  /** Whether the command survives its client disconnecting. */
  keepAlive: boolean;
  startedAt: string;
  endedAt: string | null;
  /** When the server forgets an ended session (10 minutes after its end). */
  expiresAt: string | null;
  stdoutBytes: number;
  stderrBytes: number;
  /** stdout + stderr so far: the offset after the last byte. */
  outputBytes: number;
  /** The oldest offset still kept (0 until output was dropped). */
  truncatedBefore: number;
}

/** Progress of {@link FastVM.upload} / {@link FastVM.download}. */
export interface TransferProgress {
  /** Bytes moved so far (for directories: bytes of the tar stream). */
  bytes: number;
  /** Expected total, when known (for directories an estimate of the tar stream's size). */
  total: number | undefined;
}

/** Result of {@link FastVM.upload} / {@link FastVM.download}. */
export interface TransferResult {
  /** `file` or `directory`. */
  kind: 'file' | 'directory';
  /** Bytes moved (for directories: bytes of the tar stream). */
  bytes: number;
  /** Where the data ended up (a remote path for uploads, a local path for downloads). */
  destination: string;
  /** Wall time in milliseconds. */
  durationMs: number;
}

/** Result of {@link FastVM.run}. */
export interface CommandResult {
  /** Process exit code. */
  exitCode: number;
  /** Standard output (UTF-8). */
  stdout: string;
  /** Standard error (UTF-8). */
  stderr: string;
  /** Whether the server-side timeout (`timeoutSec`) killed the command. */
  timedOut: boolean;
  /** Whether stdout was cut at the server's cap. */
  stdoutTruncated: boolean;
  /** Whether stderr was cut at the server's cap. */
  stderrTruncated: boolean;
  /** Execution time in milliseconds, measured in the VM host. */
  durationMs: number;
}

/** A snapshot of a VM, restorable any number of times. */
export interface Snapshot {
  /** Unique snapshot identifier. */
  id: string;
  /** Snapshot name. */
  name: string;
  /** Organisation id. */
  orgId: string;
  /** Id of the VM it was taken from. */
  vmId: string;
  /** Current status. */
  status: SnapshotStatus;
  /** ISO 8601 creation timestamp. */
  createdAt: string;
  /** Firewall policy captured from the source VM, if any. */
  firewall: FirewallPolicy | null;
  /** The v2 policy when the server answered in v2, else `null`. */
  firewallV2: FirewallPolicyV2 | null;
  /**
   * Lineage: the snapshot its VM (`vmId`) was restored from; `null` when that VM was a fresh
   * launch. Kept when that snapshot is deleted.
   */
  parentSnapshotId: string | null;
  /**
   * `{memory, disk, state}`: `sha256:<hex>` of the snapshot's own layer files, once the server
   * has computed them (shortly after `ready`); `null` until then. Restores check them.
   */
  digests: Record<string, string> | null;
}

/** One snapshot or VM in a {@link Lineage}. */
export interface LineageNode {
  type: 'snapshot' | 'vm';
  id: string;
  /** Deleted: only `id` is known; kept because it links the objects around it. */
  deleted: boolean;
  /** Absent when deleted. */
  name?: string;
  status?: string;
  createdAt?: string;
  /** A snapshot's: the VMs restored from it. A VM's: the snapshots taken of it. */
  children: LineageNode[];
}

/** A snapshot's lineage, from {@link FastVM.lineage}. */
export interface Lineage {
  /** From the root (the freshly launched VM) down to the snapshot itself (the last element). */
  ancestors: LineageNode[];
  /** The VMs restored from the snapshot, with everything below them. */
  descendants: LineageNode[];
  /** The server cut the tree short (10 000 nodes). */
  truncated: boolean;
}

/** Quota values: limits or current usage. */
export interface OrgQuotaValues {
  /** Number of vCPUs. */
  vcpu: number;
  /** Memory in MiB. */
  memoryMib: number;
  /** Disk in GiB. */
  diskGib: number;
  /** Number of snapshots. */
  snapshotCount: number;
  /** Number of volumes. */
  volumeCount: number;
  /** Volume space in GiB. */
  volumeGib: number;
}

/** A persistent volume (an ext4 disk that outlives VMs), from {@link FastVM.createVolume}. */
export interface Volume {
  id: string;
  name: string;
  orgId: string;
  /** Size in GiB (wire: `sizeGiB`). */
  sizeGib: number;
  /** `rw`: one writable attachment at a time; `ro`: read-only attachments only. */
  accessMode: 'rw' | 'ro';
  /** `creating`, `ready` or `deleting`. */
  status: string;
  /** Attachments mounted on running VMs. */
  mountedCount: number;
  createdAt: string;
  /** Space in use in GiB, when the server knows it. */
  usedGib: number | null;
}

/** A volume attached to a VM (`VM.volumes`, {@link FastVM.attachVolume}). */
export interface VolumeAttachment {
  volumeId: string;
  mountPath: string;
  /** `mounted`, `pending` (paused VM, or attach in progress), `failed` or `detaching`. */
  mountStatus: string;
  readOnly: boolean;
  statusMessage: string | null;
  /** The VM (only in {@link FastVM.volumeAttachments}). */
  vmId?: string;
}

/** A volume to attach at launch or restore. */
export interface VolumeMount {
  /** Volume id or name, or a {@link Volume}. */
  volume: string | Pick<Volume, 'id'>;
  /** Guest path under `/mnt/` or `/data/`. */
  mountPath: string;
  /** Default: the volume's access mode. */
  readOnly?: boolean;
}

/** Organisation quota limits and usage, from {@link FastVM.quotas}. */
export interface OrgQuotaUsage {
  /** Organisation id. */
  orgId: string;
  /** Maximum allowed resources. */
  limits: OrgQuotaValues;
  /** Currently consumed resources. */
  usage: OrgQuotaValues;
}

/** An SSH public key of the organisation (contract §4.11), from {@link FastVM.listSshKeys}. */
export interface SshKey {
  /** `SHA256:<base64>`, as `ssh-keygen -l` prints it; the key's id. */
  fingerprint: string;
  /** `<type> <base64>` (the comment stripped). */
  publicKey: string;
  /** ISO 8601. */
  createdAt: string;
  name: string | null;
}

/**
 * Who may use a published service through the proxy: everyone (`public`, the default), holders
 * of the service's bearer `token`, or holders of an API key of the organisation (`api_key`).
 */
export type ServiceAuth = 'public' | 'token' | 'api_key';

/** Options of {@link FastVM.publishService} and {@link FastVM.updateService}. */
export interface ServiceOptions {
  /** The proxy speaks HTTP/2 cleartext to the service (gRPC). Default false. */
  h2c?: boolean | undefined;
  /** Default `public` for a new service; unchanged on an update when omitted. */
  auth?: ServiceAuth | undefined;
}

/** An HTTP service of a VM published through the proxy (contract §4.4), from {@link FastVM.listServices}. */
export interface Service {
  /** 1–29 characters: lowercase letters, digits and single hyphens. */
  name: string;
  /** Guest TCP port (1024–65535). */
  port: number;
  /** The proxy speaks HTTP/2 cleartext to it (gRPC). */
  h2c: boolean;
  auth: ServiceAuth;
  /** `http(s)://<name>--<vm id hex>.proxy.<domain>[:port]`. */
  url: string;
  /** The bearer token of an `auth: 'token'` service; `null` otherwise. */
  token: string | null;
}

/** One tier of compute pricing. */
export interface PricingTier {
  /** 1-based. */
  tier: number;
  fromVcpuHours: number;
  /** `null` for the open top tier. */
  toVcpuHours: number | null;
  /** USD per vCPU hour, as a decimal string (`"0.09"`). */
  ratePerVcpuHour: string;
}

/** The server's prices (contract §4.12), from {@link FastVM.pricing}. */
export interface Pricing {
  compute: { tiers: PricingTier[] };
  /** USD per GiB-month, as a decimal string. */
  volumeStorage: { ratePerGiBMonth: string };
}

/** A VM given by id (or name, which the server resolves) or as an object with an `id`. */
export type VMRef = string | Pick<VM, 'id'>;

/** A snapshot given by id (or name) or as an object with an `id`. */
export type SnapshotRef = string | Pick<Snapshot, 'id'>;

/** One step of a build or image import (contract §4.7 event). */
export interface BuildEvent {
  /** `preparing`, `pull`, `fetch_context`, `build`, `saving`, `done`, … */
  phase: string;
  /** `started`, `completed`, `failed`, `skipped` or `cancelled`. */
  status: string;
  timestampMs: number;
  message?: string;
}

/** A snapshot import (a Dockerfile build or an image import), as the server reports it. */
export interface SnapshotImport {
  id: string;
  /** `pending`, `claimed`, `running`, `succeeded`, `failed` or `cancelled`. */
  status: string;
  name?: string;
  /** The produced snapshot, once `succeeded`. */
  snapshotId?: string;
  /** Why it failed (user-safe, at most 4 KiB). */
  error?: string;
  /** What it is doing now, while it runs. */
  progress?: string;
  events: BuildEvent[];
  /** Steps of the Dockerfile: all, restored from the step cache, run. */
  steps?: { total: number; cached: number; ran: number };
  source: Record<string, unknown>;
  createdAt: string;
  startedAt?: string;
  finishedAt?: string;
}

/** What `watchImport` yields: events, build output, and the final state last. */
export type BuildStreamItem =
  | { type: 'event'; event: BuildEvent }
  | { type: 'log'; data: string }
  | { type: 'done'; import: SnapshotImport };
