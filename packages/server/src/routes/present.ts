/**
 * Records → wire objects (camelCase, contract §3). Optional fields that have no value are
 * omitted rather than sent as null, except the ones the contract types as nullable.
 * @module
 */
import {
  effectiveFirewall,
  toV1,
  toV2,
  type FirewallPolicy,
  type FirewallShape,
  type PublishedService,
  type SnapshotRecord,
  type SshKeyRecord,
  type VmRecord,
  type VolumeAttachment,
} from '../domain/index.js';
import type { VolumeView as VolumeServiceView } from '../services/volume-service.js';
import type { ExecResult } from '@fastvm/runtime';
import type {
  ExecResultView,
  LineageNodeView,
  LineageView,
  ServiceView,
  SnapshotView,
  SshKeyView,
  VmView,
  VolumeAttachmentView,
  VolumeView,
} from '../schemas.js';
import type { Lineage, LineageNode } from '../services/lineage.js';

/** The policy in the generation the client reads (`firewall-shape.ts`). */
function presentFirewall(p: FirewallPolicy, shape: FirewallShape): VmView['firewall'] {
  return shape === 2 ? toV2(p) : toV1(p);
}

/** The contract's `Vm` (§3.1). */
export function presentVm(vm: VmRecord, shape: FirewallShape): VmView {
  const view: VmView = {
    id: vm.id,
    name: vm.name,
    orgId: vm.orgId,
    status: vm.status as VmView['status'],
    cpu: vm.cpu,
    memoryMiB: vm.memoryMiB,
    diskGiB: vm.diskGiB,
    createdAt: vm.createdAt,
    machineName: vm.machine,
    sourceName: vm.sourceName,
    publicIpv6: vm.publicIpv6,
    deletedAt: vm.deletedAt,
    metadata: { ...vm.metadata },
    firewall: presentFirewall(vm.firewall, shape),
    envVars: { ...vm.envVars },
    ttl: vm.ttl ? { seconds: vm.ttl.seconds, action: vm.ttl.action } : null,
    pausedAt: vm.pausedAt ?? null,
    // Computed per response, never stored (contract §3.1).
    effectiveFirewall: presentFirewall(effectiveFirewall(vm.firewall, vm.services), shape),
    sourceSnapshotId: vm.sourceSnapshotId,
    volumes: (vm.volumes ?? []).map(presentAttachment),
  };
  if (vm.error && (vm.status === 'error' || vm.status === 'stopped')) view.statusMessage = vm.error;
  // Contract §3.1: expiresAtMs only while running, ttlRemainingMs only while paused.
  if (vm.ttl && vm.status === 'running' && typeof vm.expiresAtMs === 'number') {
    view.expiresAtMs = vm.expiresAtMs;
  }
  if (vm.ttl && vm.status === 'paused' && typeof vm.ttlRemainingMs === 'number') {
    view.ttlRemainingMs = vm.ttlRemainingMs;
  }
  return view;
}

/** The contract's `VolumeAttachmentItem` (§3.9). */
export function presentAttachment(a: VolumeAttachment): VolumeAttachmentView {
  return {
    volumeId: a.volumeId,
    mountPath: a.mountPath,
    mountStatus: a.mountStatus,
    readOnly: a.readOnly,
    ...(a.statusMessage ? { statusMessage: a.statusMessage } : {}),
  };
}

/** The contract's `Volume` (§4.10). */
export function presentVolume({ volume: v, mountedCount }: VolumeServiceView): VolumeView {
  return {
    id: v.id,
    name: v.name,
    orgId: v.orgId,
    sizeGiB: v.sizeGiB,
    accessMode: v.accessMode,
    status: v.status === 'deleted' ? 'deleting' : v.status,
    mountedCount,
    createdAt: v.createdAt,
    ...(v.pendingSizeGiB !== null && v.pendingSizeGiB !== v.sizeGiB
      ? { pendingSizeGiB: v.pendingSizeGiB }
      : {}),
    ...(v.usedGiB !== null ? { usedGiB: v.usedGiB } : {}),
  };
}

/** The contract's `Snapshot` (§3.6). */
export function presentSnapshot(s: SnapshotRecord, shape: FirewallShape): SnapshotView {
  const view: SnapshotView = {
    id: s.id,
    name: s.name,
    orgId: s.orgId,
    vmId: s.vmId,
    status: s.status as SnapshotView['status'],
    createdAt: s.createdAt,
    machineName: s.machine,
    firewall: presentFirewall(s.firewall, shape),
    metadata: { ...s.metadata },
    envVars: { ...s.envVars },
    services: (s.services ?? []).map(({ name, port, h2c }) => ({ name, port, h2c })),
    parentSnapshotId: s.parentSnapshotId ?? null,
    volumes: (s.volumes ?? []).map(({ volumeId, mountPath, readOnly }) => ({
      volumeId,
      mountPath,
      readOnly,
    })),
  };
  if (s.digests) view.digests = { ...s.digests };
  if (s.error && s.status === 'error') view.statusMessage = s.error;
  return view;
}

/**
 * Metadata filters from a parsed query string: `metadata.k=v` and `metadata[k]=v` (the Python
 * client's bracket style). Repeated keys must all match.
 */
export function metadataFilters(query: Record<string, unknown>): Array<[string, string]> {
  const out: Array<[string, string]> = [];
  for (const [rawKey, rawValue] of Object.entries(query)) {
    let key: string | undefined;
    if (rawKey.startsWith('metadata.')) key = rawKey.slice('metadata.'.length);
    else {
      const m = /^metadata\[(.*)\]$/s.exec(rawKey);
      if (m) key = m[1];
    }
    if (key === undefined || key === '') continue;
    const values = Array.isArray(rawValue) ? rawValue : [rawValue];
    for (const v of values) if (typeof v === 'string') out.push([key, v]);
  }
  return out;
}

/** The contract's `SSHKey` (§4.11). */
export function presentSshKey(key: SshKeyRecord): SshKeyView {
  return {
    fingerprint: key.fingerprint,
    publicKey: key.publicKey,
    createdAt: key.createdAt,
    ...(key.name !== null ? { name: key.name } : {}),
  };
}

/** The contract's `Service` (§3.9) plus `auth`, `url` and, for token services, `token`. */
export function presentService(service: PublishedService, url: string): ServiceView {
  return {
    name: service.name,
    port: service.port,
    h2c: service.h2c,
    auth: service.auth,
    url,
    ...(service.auth === 'token' && service.token ? { token: service.token } : {}),
  };
}

/** `GET /v1/snapshots/{id}/lineage`: deleted objects as their id and `deleted: true`. */
export function presentLineage(l: Lineage): LineageView {
  return {
    ancestors: l.ancestors.map(presentLineageNode),
    descendants: l.descendants.map(presentLineageNode),
    ...(l.truncated ? { truncated: true } : {}),
  };
}

function presentLineageNode(n: LineageNode): LineageNodeView {
  const r = n.record;
  return {
    type: n.type,
    id: n.id,
    deleted: n.deleted,
    ...(r ? { name: r.name, status: r.status, createdAt: r.createdAt } : {}),
    children: n.children.map(presentLineageNode),
  };
}

/** The contract's `ExecResult`: a finished command's answer (JSON exec, fast or full path). */
export function presentExecResult(res: ExecResult): ExecResultView {
  return {
    exitCode: res.exitCode,
    stdout: res.stdout.toString('utf8'),
    stderr: res.stderr.toString('utf8'),
    timedOut: res.timedOut,
    durationMs: Math.round(res.durationMs),
    stdoutTruncated: res.stdoutTruncated,
    stderrTruncated: res.stderrTruncated,
  };
}
