// Conversions between wire JSON (camelCase with `memoryMiB`/`diskGiB`) and the SDK's public types.
// Tolerant on input: missing optional fields get neutral defaults, unknown fields are dropped.
import type {
  CommandResult,
  ExecSession,
  FirewallPolicy,
  FirewallPolicyV2,
  FirewallRule,
  Lineage,
  LineageNode,
  OrgQuotaUsage,
  OrgQuotaValues,
  PatchFirewallPolicy,
  Pricing,
  Snapshot,
  SshKey,
  VM,
  VMTtl,
  Service,
  Volume,
  VolumeAttachment,
} from '../types.js';

type Json = Record<string, unknown>;

function obj(v: unknown): Json {
  return typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Json) : {};
}
function str(v: unknown, fallback = ''): string {
  return typeof v === 'string' ? v : fallback;
}
function num(v: unknown): number {
  return typeof v === 'number' && Number.isFinite(v) ? v : 0;
}
function optStr(v: unknown): string | null {
  return typeof v === 'string' && v !== '' ? v : null;
}

export function firewallRuleFromWire(v: unknown): FirewallRule {
  const r = obj(v);
  const rule: FirewallRule = { protocol: str(r['protocol']), portStart: num(r['portStart']) };
  if (typeof r['portEnd'] === 'number') rule.portEnd = r['portEnd'];
  if (Array.isArray(r['sourceCidrs']))
    rule.sourceCidrs = r['sourceCidrs'].filter((c) => typeof c === 'string');
  if (typeof r['description'] === 'string') rule.description = r['description'];
  return rule;
}

/** Whether a policy (ours or the server's) is in the v2 shape (contract §3.8). */
export function isFirewallV2(p: unknown): boolean {
  if (typeof p !== 'object' || p === null) return false;
  const o = p as Record<string, unknown>;
  if ('mode' in o || Array.isArray(o['ingress'])) return false;
  const block = (k: string): boolean => typeof o[k] === 'object' && o[k] !== null;
  return block('ingress') || block('egress') || block('dns');
}

export function firewallV2FromWire(v: unknown): FirewallPolicyV2 | null {
  if (!isFirewallV2(v)) return null;
  return JSON.parse(JSON.stringify(v)) as FirewallPolicyV2;
}

export function firewallFromWire(v: unknown): FirewallPolicy | null {
  if (typeof v !== 'object' || v === null || isFirewallV2(v)) return null;
  const f = obj(v);
  const policy: FirewallPolicy = { mode: str(f['mode']) };
  if (Array.isArray(f['ingress'])) policy.ingress = f['ingress'].map(firewallRuleFromWire);
  return policy;
}

function ruleToWire(r: FirewallRule): Json {
  const out: Json = { protocol: r.protocol, portStart: r.portStart };
  if (r.portEnd !== undefined) out['portEnd'] = r.portEnd;
  if (r.sourceCidrs !== undefined) out['sourceCidrs'] = r.sourceCidrs;
  if (r.description !== undefined) out['description'] = r.description;
  return out;
}

export function firewallToWire(p: FirewallPolicy | PatchFirewallPolicy | FirewallPolicyV2): Json {
  // v2 goes as it is (undefined members dropped).
  if (!('mode' in p) && !Array.isArray(p.ingress) && isFirewallV2(p)) {
    return JSON.parse(JSON.stringify(p)) as Json;
  }
  const v1 = p as PatchFirewallPolicy;
  const out: Json = {};
  if (v1.mode !== undefined) out['mode'] = v1.mode;
  if (v1.ingress !== undefined) out['ingress'] = v1.ingress.map(ruleToWire);
  return out;
}

export function vmFromWire(v: unknown): VM {
  const w = obj(v);
  const metadata: Record<string, string> = {};
  for (const [k, val] of Object.entries(obj(w['metadata'])))
    if (typeof val === 'string') metadata[k] = val;
  const envVars: Record<string, string> = {};
  for (const [k, val] of Object.entries(obj(w['envVars'])))
    if (typeof val === 'string') envVars[k] = val;
  return {
    id: str(w['id']),
    name: str(w['name']),
    orgId: str(w['orgId']),
    machineName: str(w['machineName']),
    cpu: num(w['cpu']),
    memoryMib: num(w['memoryMiB'] ?? w['memoryMib']),
    diskGib: num(w['diskGiB'] ?? w['diskGib']),
    status: str(w['status']),
    createdAt: str(w['createdAt']),
    sourceName: str(w['sourceName']),
    publicIpv6: optStr(w['publicIpv6']),
    firewall: firewallFromWire(w['firewall']),
    firewallV2: firewallV2FromWire(w['firewall']),
    deletedAt: optStr(w['deletedAt']),
    metadata,
    envVars,
    ttl: ttlFromWire(w['ttl']),
    expiresAt: typeof w['expiresAtMs'] === 'number' ? w['expiresAtMs'] : null,
    ttlRemainingMs: typeof w['ttlRemainingMs'] === 'number' ? w['ttlRemainingMs'] : null,
    pausedAt: optStr(w['pausedAt']),
    sourceSnapshotId: optStr(w['sourceSnapshotId']),
    effectiveFirewall: firewallFromWire(w['effectiveFirewall']),
    volumes: asArray(w['volumes'] ?? []).map(attachmentFromWire),
  };
}

export function ttlFromWire(v: unknown): VMTtl | null {
  if (typeof v !== 'object' || v === null) return null;
  const t = obj(v);
  if (typeof t['seconds'] !== 'number') return null;
  return { seconds: t['seconds'], action: t['action'] === 'delete' ? 'delete' : 'pause' };
}

export function snapshotFromWire(v: unknown): Snapshot {
  const w = obj(v);
  return {
    id: str(w['id']),
    name: str(w['name']),
    orgId: str(w['orgId']),
    vmId: str(w['vmId']),
    status: str(w['status']),
    createdAt: str(w['createdAt']),
    firewall: firewallFromWire(w['firewall']),
    firewallV2: firewallV2FromWire(w['firewall']),
    parentSnapshotId: optStr(w['parentSnapshotId']),
    digests: digestsFromWire(w['digests']),
  };
}

function digestsFromWire(v: unknown): Record<string, string> | null {
  if (typeof v !== 'object' || v === null) return null;
  const out: Record<string, string> = {};
  for (const [k, d] of Object.entries(v)) if (typeof d === 'string') out[k] = d;
  return out;
}

export function lineageNodeFromWire(v: unknown): LineageNode {
  const w = obj(v);
  const node: LineageNode = {
    type: w['type'] === 'vm' ? 'vm' : 'snapshot',
    id: str(w['id']),
    deleted: w['deleted'] === true,
    children: asArray(w['children']).map(lineageNodeFromWire),
  };
  if (typeof w['name'] === 'string') node.name = w['name'];
  if (typeof w['status'] === 'string') node.status = w['status'];
  if (typeof w['createdAt'] === 'string') node.createdAt = w['createdAt'];
  return node;
}

export function lineageFromWire(v: unknown): Lineage {
  const w = obj(v);
  return {
    ancestors: asArray(w['ancestors']).map(lineageNodeFromWire),
    descendants: asArray(w['descendants']).map(lineageNodeFromWire),
    truncated: w['truncated'] === true,
  };
}

export function commandResultFromWire(v: unknown): CommandResult {
  const w = obj(v);
  return {
    exitCode: num(w['exitCode']),
    stdout: str(w['stdout']),
    stderr: str(w['stderr']),
    timedOut: w['timedOut'] === true,
    stdoutTruncated: w['stdoutTruncated'] === true,
    stderrTruncated: w['stderrTruncated'] === true,
    durationMs: num(w['durationMs']),
  };
}

function quotaValuesFromWire(v: unknown): OrgQuotaValues {
  const w = obj(v);
  return {
    vcpu: num(w['vcpu']),
    memoryMib: num(w['memoryMiB'] ?? w['memoryMib']),
    diskGib: num(w['diskGiB'] ?? w['diskGib']),
    snapshotCount: num(w['snapshotCount']),
    volumeCount: num(w['volumeCount']),
    volumeGib: num(w['volumeGiB'] ?? w['volumeGib']),
  };
}

export function volumeFromWire(v: unknown): Volume {
  const w = obj(v);
  return {
    id: str(w['id']),
    name: str(w['name']),
    orgId: str(w['orgId']),
    sizeGib: num(w['sizeGiB'] ?? w['sizeGib']),
    accessMode: w['accessMode'] === 'ro' ? 'ro' : 'rw',
    status: str(w['status']),
    mountedCount: num(w['mountedCount']),
    createdAt: str(w['createdAt']),
    usedGib: typeof w['usedGiB'] === 'number' ? w['usedGiB'] : null,
  };
}

export function attachmentFromWire(v: unknown): VolumeAttachment {
  const w = obj(v);
  return {
    volumeId: str(w['volumeId']),
    mountPath: str(w['mountPath']),
    mountStatus: str(w['mountStatus']),
    readOnly: w['readOnly'] === true,
    statusMessage: optStr(w['statusMessage']),
    ...(typeof w['vmId'] === 'string' ? { vmId: w['vmId'] } : {}),
  };
}

export function quotasFromWire(v: unknown): OrgQuotaUsage {
  const w = obj(v);
  return {
    orgId: str(w['orgId']),
    limits: quotaValuesFromWire(w['limits']),
    usage: quotaValuesFromWire(w['usage']),
  };
}

export function sshKeyFromWire(v: unknown): SshKey {
  const w = obj(v);
  return {
    fingerprint: str(w['fingerprint']),
    publicKey: str(w['publicKey']),
    createdAt: str(w['createdAt']),
    name: optStr(w['name']),
  };
}

/** `GET /v1/me/ssh-keys` answers `{keys: [...]}` (the one wrapped list of the API). */
export function sshKeysFromWire(v: unknown): SshKey[] {
  const keys = obj(v)['keys'];
  return (Array.isArray(keys) ? keys : asArray(v)).map(sshKeyFromWire);
}

export function serviceFromWire(v: unknown): Service {
  const w = obj(v);
  const auth = w['auth'];
  return {
    name: str(w['name']),
    port: num(w['port']),
    h2c: w['h2c'] === true,
    auth: auth === 'token' || auth === 'api_key' ? auth : 'public',
    url: str(w['url']),
    token: optStr(w['token']),
  };
}

export function pricingFromWire(v: unknown): Pricing {
  const w = obj(v);
  const tiers = obj(w['compute'])['tiers'];
  return {
    compute: {
      tiers: (Array.isArray(tiers) ? tiers : []).map((t) => {
        const r = obj(t);
        return {
          tier: num(r['tier']),
          fromVcpuHours: num(r['fromVcpuHours']),
          toVcpuHours: typeof r['toVcpuHours'] === 'number' ? r['toVcpuHours'] : null,
          ratePerVcpuHour: str(r['ratePerVcpuHour'], '0'),
        };
      }),
    },
    volumeStorage: { ratePerGiBMonth: str(obj(w['volumeStorage'])['ratePerGiBMonth'], '0') },
  };
}

export function execSessionFromWire(v: unknown): ExecSession {
  const w = obj(v);
  const optNum = (x: unknown): number | null => (typeof x === 'number' ? x : null);
  const status = str(w['status'], 'running');
  return {
    execId: str(w['execId']),
    vmId: str(w['vmId']),
    command: Array.isArray(w['command']) ? w['command'].map((a) => str(a)) : [],
    status: (['running', 'exited', 'killed', 'failed'].includes(status)
      ? status
      : 'failed') as ExecSession['status'],
    exitCode: optNum(w['exitCode']),
    timedOut: w['timedOut'] === true,
    durationMs: optNum(w['durationMs']),
    error: optStr(w['error']),
    keepAlive: w['keepAlive'] === true,
    startedAt: str(w['startedAt']),
    endedAt: optStr(w['endedAt']),
    expiresAt: optStr(w['expiresAt']),
    stdoutBytes: num(w['stdoutBytes']),
    stderrBytes: num(w['stderrBytes']),
    outputBytes: num(w['outputBytes']),
    truncatedBefore: num(w['truncatedBefore']),
  };
}

export function asArray(v: unknown): unknown[] {
  if (Array.isArray(v)) return v;
  // Tolerate an envelope such as {"data": [...]} / {"items": [...]}.
  const w = obj(v);
  for (const key of ['data', 'items', 'vms', 'snapshots']) if (Array.isArray(w[key])) return w[key];
  return [];
}
