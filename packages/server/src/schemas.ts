/**
 * Request and response schemas of the v1 API (zod). They validate requests (through the
 * validator compiler in `http/zod.ts`) and generate `/openapi.json`, so the document and the
 * checks cannot disagree. Field names are the wire's camelCase (contract §3, §4).
 * @module
 */
import net from 'node:net';
import { z } from 'zod';
import { checkPorts, fqdnPatternProblem } from '@fastvm/runtime';
import { ENV_VARS_LIMITS, MACHINES, MAX_FORK_COUNT, MAX_TTL_SECONDS } from './domain/index.js';

// ---- shared pieces ------------------------------------------------------------------------------

/** Metadata limits (contract §4.2.1). */
export const METADATA_LIMITS = {
  maxKeys: 256,
  maxKeyBytes: 256,
  maxValueBytes: 4096,
  maxJsonBytes: 65536,
} as const;

const utf8Bytes = (s: string): number => Buffer.byteLength(s, 'utf8');

export const Metadata = z
  .record(z.string(), z.string())
  .superRefine((m, ctx) => {
    const keys = Object.keys(m);
    if (keys.length > METADATA_LIMITS.maxKeys) {
      ctx.addIssue({
        code: 'custom',
        message: `at most ${METADATA_LIMITS.maxKeys} keys are allowed (got ${keys.length})`,
      });
      return;
    }
    for (const key of keys) {
      const kb = utf8Bytes(key);
      if (kb < 1 || kb > METADATA_LIMITS.maxKeyBytes) {
        ctx.addIssue({
          code: 'custom',
          path: key === '' ? [] : [key],
          message: `keys must be 1-${METADATA_LIMITS.maxKeyBytes} bytes`,
        });
        return;
      }
      if (utf8Bytes(m[key] ?? '') > METADATA_LIMITS.maxValueBytes) {
        ctx.addIssue({
          code: 'custom',
          path: [key],
          message: `values must be at most ${METADATA_LIMITS.maxValueBytes} bytes`,
        });
        return;
      }
    }
    if (utf8Bytes(JSON.stringify(m)) > METADATA_LIMITS.maxJsonBytes) {
      ctx.addIssue({
        code: 'custom',
        message: `metadata must be at most ${METADATA_LIMITS.maxJsonBytes} bytes of JSON`,
      });
    }
  })
  .meta({
    id: 'Metadata',
    description: 'String-to-string labels; filter lists with metadata.<key>=<value>.',
  });

/** A POSIX-style variable name (so no `=`, NUL or whitespace). */
const ENV_NAME_RE = /^[A-Za-z_][A-Za-z0-9_]*$/;

export const EnvVars = z
  .record(z.string(), z.string())
  .superRefine((m, ctx) => {
    const keys = Object.keys(m);
    if (keys.length > ENV_VARS_LIMITS.maxKeys) {
      ctx.addIssue({
        code: 'custom',
        message: `at most ${ENV_VARS_LIMITS.maxKeys} variables are allowed (got ${keys.length})`,
      });
      return;
    }
    for (const key of keys) {
      const path = key === '' ? [] : [key];
      if (utf8Bytes(key) > ENV_VARS_LIMITS.maxKeyBytes) {
        ctx.addIssue({
          code: 'custom',
          path,
          message: `names must be 1-${ENV_VARS_LIMITS.maxKeyBytes} bytes`,
        });
        return;
      }
      if (!ENV_NAME_RE.test(key)) {
        ctx.addIssue({
          code: 'custom',
          path,
          message: `${JSON.stringify(key)} is not a valid variable name (letters, digits and _, not starting with a digit)`,
        });
        return;
      }
      if (/[\0\n\r]/.test(m[key] ?? '')) {
        ctx.addIssue({
          code: 'custom',
          path: [key],
          message: 'values must not contain NUL, newline or carriage return',
        });
        return;
      }
    }
    if (utf8Bytes(JSON.stringify(m)) > ENV_VARS_LIMITS.maxJsonBytes) {
      ctx.addIssue({
        code: 'custom',
        message: `envVars must be at most ${ENV_VARS_LIMITS.maxJsonBytes} bytes of JSON`,
      });
    }
  })
  .meta({
    id: 'EnvVars',
    description:
      'Environment of every exec, streaming exec and console process in the VM (over the guest defaults such as PATH). ' +
      `Names match [A-Za-z_][A-Za-z0-9_]* (1-${ENV_VARS_LIMITS.maxKeyBytes} bytes); values have no NUL, \\n or \\r; ` +
      `at most ${ENV_VARS_LIMITS.maxKeys} variables and ${ENV_VARS_LIMITS.maxJsonBytes} bytes of JSON.`,
  });

/** Validates `addr/len` (or a bare address) as IPv6; IPv4 is rejected explicitly. */
function checkIpv6Cidr(value: string): string | undefined {
  const [addr = '', len, ...rest] = value.split('/');
  if (rest.length > 0) return 'is not a CIDR';
  if (net.isIPv4(addr)) {
    return 'IPv4 CIDRs are not supported: the firewall filters public IPv6 ingress only';
  }
  if (!net.isIPv6(addr)) return 'is not an IPv6 CIDR';
  if (len !== undefined && (!/^\d{1,3}$/.test(len) || Number(len) > 128)) {
    return 'has an invalid prefix length (0-128)';
  }
  return undefined;
}

const Port = z.number().int().min(1).max(65535);

export const FirewallRule = z
  .object({
    protocol: z.enum(['tcp', 'udp']),
    portStart: Port,
    portEnd: Port.nullish().describe('Inclusive end of the range; omit for a single port.'),
    sourceCidrs: z
      .array(
        z.string().superRefine((v, ctx) => {
          const problem = checkIpv6Cidr(v);
          if (problem) ctx.addIssue({ code: 'custom', message: `${JSON.stringify(v)} ${problem}` });
        }),
      )
      .max(64)
      .nullish()
      .describe('IPv6 source CIDRs; empty or omitted means any (::/0).'),
    description: z.string().max(256).nullish(),
  })
  .superRefine((r, ctx) => {
    if (r.portEnd !== undefined && r.portEnd !== null && r.portEnd < r.portStart) {
      ctx.addIssue({ code: 'custom', path: ['portEnd'], message: 'must be >= portStart' });
    }
  })
  .meta({ id: 'FirewallRule' });

const Ingress = z.array(FirewallRule, {
  error: 'must be an array of rules {protocol, portStart, portEnd?, sourceCidrs?, description?}',
});

export const FirewallPolicyV1 = z
  .object({
    mode: z.enum(['open', 'restricted']),
    ingress: Ingress.max(256).nullish(),
  })
  .meta({
    id: 'FirewallPolicyV1',
    description:
      'v1 public IPv6 ingress policy: `open` allows all inbound; `restricted` only the listed rules.',
  });

const FirewallPatchV1 = z
  .object({
    mode: z.enum(['open', 'restricted']).optional(),
    ingress: Ingress.max(256).nullish().describe('Replaces all rules; [] clears them.'),
  })
  .meta({ id: 'FirewallPatchV1' });

/** Why `value` is not an IPv4 or IPv6 CIDR (or bare address), or undefined. */
function checkCidr(value: string): string | undefined {
  const [addr = '', len, ...rest] = value.split('/');
  if (rest.length > 0) return 'is not a CIDR';
  const max = net.isIPv4(addr) ? 32 : net.isIPv6(addr) ? 128 : 0;
  if (max === 0) return 'is not an IPv4 or IPv6 CIDR';
  if (len !== undefined && (!/^\d{1,3}$/.test(len) || Number(len) > max)) {
    return `has an invalid prefix length (0-${max})`;
  }
  return undefined;
}

const V2Rule = (kinds: readonly ['cidr'] | readonly ['cidr', 'fqdn']) =>
  z
    .object({
      action: z.enum(['allow', 'deny']),
      kind: z.enum(kinds),
      protocol: z.enum(['tcp', 'udp', 'any']),
      ports: z.string().max(11).describe('"443", an inclusive range "8080-8090", or "any".'),
      value: z.string().max(253).describe('An IPv4/IPv6 CIDR, or (fqdn) a name or *.name.'),
      description: z.string().max(256).nullish(),
    })
    .superRefine((r, ctx) => {
      try {
        checkPorts(r.ports, r.protocol);
      } catch (err) {
        ctx.addIssue({ code: 'custom', path: ['ports'], message: (err as Error).message });
      }
      const problem = r.kind === 'fqdn' ? fqdnPatternProblem(r.value) : checkCidr(r.value);
      if (problem) {
        ctx.addIssue({
          code: 'custom',
          path: ['value'],
          message: `${JSON.stringify(r.value)} ${problem}`,
        });
      }
    });

export const IngressRuleV2 = V2Rule(['cidr']).meta({ id: 'IngressRule' });
export const EgressRuleV2 = V2Rule(['cidr', 'fqdn']).meta({ id: 'EgressRule' });

const DnsPolicyV2 = z
  .object({
    mode: z.enum(['allow', 'deny']).nullish().describe('allow = allowlist, deny = blocklist.'),
    domains: z
      .array(
        z
          .string()
          .max(253)
          .superRefine((v, ctx) => {
            const problem = fqdnPatternProblem(v);
            if (problem)
              ctx.addIssue({ code: 'custom', message: `${JSON.stringify(v)} ${problem}` });
          }),
      )
      .max(256)
      .nullish(),
    blockBypass: z
      .boolean()
      .nullish()
      .describe('Block other resolvers (53), DoT/DoQ (853) and known DoH endpoints.'),
  })
  .meta({ id: 'DNSPolicy' });

export const FirewallPolicyV2 = z
  .object({
    ingress: z
      .object({
        default: z.enum(['allow', 'deny']),
        rules: z.array(IngressRuleV2).max(256).nullish(),
      })
      .nullish(),
    egress: z
      .object({
        default: z.enum(['allow', 'deny']),
        rules: z.array(EgressRuleV2).max(256).nullish(),
      })
      .nullish(),
    dns: DnsPolicyV2.nullish(),
  })
  .meta({
    id: 'FirewallPolicyV2',
    description:
      'v2 policy: ingress and egress rules by CIDR (egress also by FQDN) and a DNS gate.',
  });

/**
 * v1 when the body has `mode` or an array `ingress` (contract §3.8); v2 when it has an object
 * `ingress`, `egress` or `dns`; anything else (`{}`, only nulls) is v1, the older shape.
 */
function firewallShapeOf(v: unknown): 'v1' | 'v2' {
  if (typeof v !== 'object' || v === null) return 'v1';
  const o = v as Record<string, unknown>;
  if ('mode' in o || Array.isArray(o.ingress)) return 'v1';
  const block = (k: string): boolean => typeof o[k] === 'object' && o[k] !== null;
  return block('ingress') || block('egress') || block('dns') ? 'v2' : 'v1';
}

/** Adds `shape` (v1/v2) to an object body, so a discriminated union picks the generation. */
function tagShape(v: unknown): unknown {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
    ? { ...(v as object), shape: firewallShapeOf(v) }
    : v;
}

const EITHER =
  'v1 `{mode, ingress: FirewallRule[]}` or v2 `{ingress?: {default, rules}, egress?: {default, rules}, dns?}`, ' +
  'told apart by `mode` and the JSON type of `ingress`.';

/** A firewall body of either generation, told apart by its shape; errors name the field. */
export const FirewallPolicy = z
  .preprocess(
    tagShape,
    z.discriminatedUnion('shape', [
      FirewallPolicyV1.extend({ shape: z.literal('v1') }),
      FirewallPolicyV2.extend({ shape: z.literal('v2') }),
    ]),
  )
  .meta({ id: 'FirewallPolicy', description: EITHER });

export const FirewallPatch = z
  .preprocess(
    tagShape,
    z.discriminatedUnion('shape', [
      FirewallPatchV1.extend({ shape: z.literal('v1') }),
      FirewallPolicyV2.extend({ shape: z.literal('v2') }),
    ]),
  )
  .meta({
    id: 'FirewallPatch',
    description: `${EITHER} v2: each block given replaces that block.`,
  });

const Name = z
  .string()
  .max(4096)
  .nullish()
  .describe('Normalised: trimmed, whitespace collapsed, truncated to 64 characters.');

/** Time to live (contract §3.9). */
export const Ttl = z
  .object({
    seconds: z.number().int().min(1).max(MAX_TTL_SECONDS),
    action: z.enum(['pause', 'delete']),
  })
  .meta({
    id: 'VmTtl',
    description:
      'When a running VM has run `seconds` (since launch, resume or ttl/refresh) it is paused or deleted.',
  });

/** `c1m2, c2m4, c4m8 or c8m16`, from the runtime's machine catalogue. */
function machineNames(): string {
  const names = Object.keys(MACHINES);
  return names.length > 1 ? `${names.slice(0, -1).join(', ')} or ${names.at(-1)}` : names.join('');
}

// ---- requests -----------------------------------------------------------------------------------

export const IdParams = z.object({
  id: z.string().describe('Id, or a name that is unique in the org.'),
});

export const VolumeAttachBody = z
  .object({
    volumeId: z.string().min(1).max(256).describe('Volume id (or unique name).'),
    mountPath: z.string().min(1).max(256).describe('Absolute guest path under /mnt/ or /data/.'),
    readOnly: z
      .boolean()
      .nullish()
      .describe("Read-only, enforced by the host; default: the volume's accessMode."),
  })
  .meta({ id: 'VolumeAttachRequest' });

export const CreateVolumeBody = z
  .object({
    name: z.string().min(1).max(4096),
    sizeGiB: z.number().int().min(1).max(16384),
    accessMode: z.enum(['rw', 'ro']),
  })
  .meta({ id: 'VolumeCreateRequest' });

export const UpdateVolumeBody = z
  .object({
    name: z.string().min(1).max(4096).optional(),
    sizeGiB: z
      .number()
      .int()
      .min(1)
      .max(16384)
      .optional()
      .describe(
        'Grow (online when attached read-write to a running VM), or shrink when detached and the data fits.',
      ),
    accessMode: z.enum(['rw', 'ro']).optional(),
  })
  .meta({ id: 'VolumeUpdateRequest' });

export const VolumeParams = z.object({ id: z.string(), volumeId: z.string() });

export const LaunchVmBody = z
  .object({
    machineType: z
      .string()
      .optional()
      .describe(`${machineNames()}; required unless snapshotId is given.`),
    snapshotId: z.string().optional().describe('Restore from this snapshot (id or unique name).'),
    name: Name,
    diskGiB: z
      .number()
      .int()
      .min(0)
      .nullish()
      .describe('Root disk size; 0 or omitted = 10 (minimum 10).'),
    firewall: FirewallPolicy.nullish(),
    metadata: Metadata.optional(),
    envVars: EnvVars.optional().describe(
      "The VM's environment variables; on a restore, merged over the snapshot's.",
    ),
    ttl: Ttl.nullish(),
    volumes: z
      .array(VolumeAttachBody)
      .max(64)
      .optional()
      .describe(
        "Volumes to attach once the VM runs; on a restore replaces the snapshot's list (omit to keep it).",
      ),
    bucketMounts: z
      .array(z.unknown())
      .optional()
      .describe('Not supported yet (501 when non-empty).'),
  })
  .meta({ id: 'VmLaunchRequest' });

export const ListVmsQuery = z
  .looseObject({
    status: z
      .union([z.string(), z.array(z.string())])
      .optional()
      .describe('Only VMs in this status (comma-separated or repeated for several).'),
  })
  .describe('Also accepts metadata.<key>=<value> and metadata[<key>]=<value> (AND-ed).');

export const UpdateVmBody = z
  .object({
    name: z.string().max(4096).optional(),
    metadata: Metadata.optional().describe('Replaces the whole map; {} clears it.'),
    ttl: Ttl.nullish().describe('Sets the TTL and restarts its countdown; null removes it.'),
  })
  .meta({ id: 'VmUpdateRequest' });

export const ExecBody = z
  .object({
    command: z
      .union([
        z.array(z.string()).min(1),
        z.string().describe('A string is run as ["sh", "-c", <string>].'),
      ])
      .describe('argv; the first element must be non-empty.'),
    timeoutSec: z.number().int().positive().max(86400).nullish(),
    stdin: z.string().nullish().describe('Base64 bytes written to the command stdin, then closed.'),
    detach: z
      .boolean()
      .nullish()
      .describe(
        'Start the command as an exec session and answer 202 with it at once (any Accept); ' +
          'follow it with GET /v1/vms/{id}/execs/{execId}/stream.',
      ),
    keepAlive: z
      .boolean()
      .nullish()
      .describe(
        'NDJSON only: the command survives a client disconnect (reattach with its x-exec-id). ' +
          'Without it a disconnect kills the command.',
      ),
  })
  .meta({ id: 'ExecRequest' });

export const FilePresignBody = z
  .object({
    path: z
      .string()
      .max(4096)
      .optional()
      .describe('Guest path the transfer is for; only names the staging object.'),
  })
  .meta({ id: 'FilePresignRequest' });

export const FileFetchBody = z
  .object({
    url: z.string().min(1).max(8192).describe('A downloadUrl minted by files/presign for this VM.'),
    path: z.string().min(1).max(4096).describe('Absolute guest path; created or overwritten.'),
    timeoutSec: z.number().int().min(0).max(86400).nullish().describe('0 or omitted: default.'),
  })
  .meta({ id: 'FileFetchRequest' });

export const CreateSnapshotBody = z
  .object({
    vmId: z.string().min(1).describe('Id or unique name of a running VM.'),
    name: Name,
    metadata: Metadata.optional(),
  })
  .meta({ id: 'SnapshotCreateRequest' });

export const ForkSnapshotBody = z
  .object({
    count: z
      .number()
      .int()
      .min(1)
      .max(MAX_FORK_COUNT)
      .describe(`How many VMs to restore from the snapshot (1–${MAX_FORK_COUNT}).`),
    namePrefix: Name.describe(
      'VM names are `<namePrefix>-1` … `<namePrefix>-<count>`; default: the snapshot name.',
    ),
    firewall: FirewallPolicy.nullish().describe("Every fork's policy; default: the snapshot's."),
    envVars: EnvVars.optional().describe("Merged over the snapshot's, for every fork."),
    metadata: Metadata.optional(),
  })
  .meta({ id: 'SnapshotForkRequest' });

export const UpdateSnapshotBody = z
  .object({
    name: z.string().max(4096).optional(),
    metadata: Metadata.optional(),
  })
  .meta({ id: 'SnapshotUpdateRequest' });

export const ListSnapshotsQuery = z
  .looseObject({})
  .describe('Accepts metadata.<key>=<value> and metadata[<key>]=<value> (AND-ed).');

// ---- responses ----------------------------------------------------------------------------------

const Timestamp = z.string().describe('RFC 3339, UTC');

const V2RuleOut = z.object({
  action: z.enum(['allow', 'deny']),
  kind: z.enum(['cidr', 'fqdn']),
  protocol: z.enum(['tcp', 'udp', 'any']),
  ports: z.string(),
  value: z.string(),
  description: z.string().optional(),
});

const FirewallPolicyOut = z
  .union([
    z.object({
      mode: z.enum(['open', 'restricted']),
      ingress: z.array(
        z.object({
          protocol: z.enum(['tcp', 'udp']),
          portStart: z.number().int(),
          portEnd: z.number().int().optional(),
          sourceCidrs: z.array(z.string()).optional(),
          description: z.string().optional(),
        }),
      ),
    }),
    z.object({
      ingress: z.object({ default: z.enum(['allow', 'deny']), rules: z.array(V2RuleOut) }),
      egress: z.object({ default: z.enum(['allow', 'deny']), rules: z.array(V2RuleOut) }),
      dns: z.object({
        mode: z.enum(['allow', 'deny']),
        domains: z.array(z.string()),
        blockBypass: z.boolean(),
      }),
    }),
  ])
  .meta({
    id: 'FirewallPolicyView',
    description:
      'v1 for v1 clients, v2 for v2 clients: `X-FastVM-Firewall-Version: 1|2`, else the client ' +
      '(Stainless Python: v1; Stainless JS >= 0.7: v2), else the shape of a firewall write in the ' +
      'same request, else v1.',
  });

export const VolumeAttachmentItem = z
  .object({
    volumeId: z.string(),
    mountPath: z.string(),
    mountStatus: z
      .enum(['mounted', 'failed', 'pending', 'detaching'])
      .describe('pending on paused VMs and during a hot attach'),
    readOnly: z.boolean(),
    statusMessage: z.string().optional(),
  })
  .meta({ id: 'VolumeAttachmentItem' });

export const VolumeAttachmentWithVm = VolumeAttachmentItem.extend({ vmId: z.string() }).meta({
  id: 'VolumeAttachment',
});

export const Volume = z
  .object({
    id: z.string(),
    name: z.string(),
    orgId: z.string(),
    sizeGiB: z.number().int(),
    accessMode: z.enum(['rw', 'ro']),
    status: z.enum(['creating', 'ready', 'deleting']),
    mountedCount: z.number().int().describe('Attachments mounted on running VMs.'),
    createdAt: z.string(),
    pendingSizeGiB: z.number().int().optional().describe('While a resize is in flight.'),
    usedGiB: z.number().optional().describe('Space in use, when known.'),
  })
  .meta({ id: 'Volume' });

export const DetachResponse = z
  .object({
    detached: z.boolean(),
    warnings: z.array(z.object({ type: z.string(), message: z.string() })).optional(),
  })
  .meta({ id: 'VolumeDetachResponse' });

export const Vm = z
  .object({
    id: z.string(),
    name: z.string(),
    orgId: z.string(),
    status: z
      .enum([
        'provisioning',
        'running',
        'pausing',
        'paused',
        'resuming',
        'stopped',
        'deleting',
        'error',
      ])
      .describe('Clients treat unknown values as transitional.'),
    cpu: z.number().int(),
    memoryMiB: z.number().int(),
    diskGiB: z.number().int(),
    createdAt: Timestamp,
    machineName: z.string(),
    sourceName: z.string().describe('Snapshot name for restores; empty on a fresh boot.'),
    publicIpv6: z.string().nullable(),
    deletedAt: Timestamp.nullable(),
    metadata: z.record(z.string(), z.string()),
    firewall: FirewallPolicyOut,
    envVars: z.record(z.string(), z.string()).describe('Environment of its processes.'),
    statusMessage: z.string().optional().describe('Why the VM is stopped or in error, when known.'),
    ttl: z.object({ seconds: z.number().int(), action: z.enum(['pause', 'delete']) }).nullable(),
    expiresAtMs: z
      .number()
      .int()
      .optional()
      .describe('When the TTL runs out (epoch ms); only while running.'),
    ttlRemainingMs: z
      .number()
      .int()
      .optional()
      .describe('TTL left, applied at the next resume; only while paused.'),
    pausedAt: Timestamp.nullable(),
    effectiveFirewall: FirewallPolicyOut.describe(
      'Read-only: firewall plus one auto-rule per published service (computed, never stored).',
    ),
    sourceSnapshotId: z
      .string()
      .nullable()
      .optional()
      .describe('Lineage: the snapshot it was restored or forked from; null for a fresh launch.'),
    volumes: z.array(VolumeAttachmentItem).optional(),
  })
  .meta({ id: 'Vm' });

/** `POST /v1/vms` (contract §3.2): a `Vm`, plus warnings of a restore. */
export const VmLaunchResponse = Vm.extend({
  snapshotRestoreWarnings: z
    .object({
      servicesRegistrationFailed: z.literal(true),
      reason: z.string().optional(),
      unregisteredServices: z
        .array(z.object({ name: z.string(), port: z.number().int(), h2c: z.boolean() }))
        .optional(),
    })
    .optional()
    .describe("Only on a restore whose snapshot's services could not be registered (none were)."),
  attachmentWarnings: z
    .object({
      failedVolumeAttachments: z
        .array(z.object({ volumeId: z.string(), mountPath: z.string(), statusMessage: z.string() }))
        .optional(),
      skippedSnapshotVolumes: z
        .array(z.object({ volumeId: z.string(), mountPath: z.string(), reason: z.string() }))
        .optional(),
    })
    .optional()
    .describe('Volumes that were not attached, and why.'),
}).meta({ id: 'VmLaunchResponse' });

export const Snapshot = z
  .object({
    id: z.string(),
    name: z.string(),
    orgId: z.string(),
    vmId: z.string(),
    status: z.enum(['creating', 'ready', 'error']),
    createdAt: Timestamp,
    machineName: z.string(),
    firewall: FirewallPolicyOut,
    metadata: z.record(z.string(), z.string()),
    envVars: z
      .record(z.string(), z.string())
      .describe("The VM's environment variables when it was taken."),
    services: z
      .array(z.object({ name: z.string(), port: z.number().int(), h2c: z.boolean() }))
      .describe("The VM's published services when it was taken; a restore registers them."),
    statusMessage: z.string().optional(),
    parentSnapshotId: z
      .string()
      .nullable()
      .optional()
      .describe(
        'Lineage: the snapshot its VM (`vmId`) was restored from; null when that VM was a fresh ' +
          'launch. Kept when that snapshot is deleted.',
      ),
    volumes: z
      .array(z.object({ volumeId: z.string(), mountPath: z.string(), readOnly: z.boolean() }))
      .optional()
      .describe('Volume attachments when taken (not their contents); a restore re-attaches them.'),
    digests: z
      .record(z.string(), z.string())
      .optional()
      .describe(
        '`{memory, disk, state}`: `sha256:<hex>` of the layer files the snapshot owns, computed ' +
          'in the background after it is ready (absent until then). Restores check them.',
      ),
  })
  .meta({ id: 'Snapshot' });

export const ForkResponse = z
  .object({ vms: z.array(Vm).describe('The forks, in name order, all running.') })
  .meta({ id: 'SnapshotForkResponse' });

/** One snapshot or VM in a lineage; `children` are the objects made from it. */
export const LineageNode = z
  .object({
    type: z.enum(['snapshot', 'vm']),
    id: z.string(),
    deleted: z
      .boolean()
      .describe('Deleted: only the id (and links) are shown; kept to connect the tree.'),
    name: z.string().optional(),
    status: z.string().optional(),
    createdAt: Timestamp.optional(),
    get children(): z.ZodArray<typeof LineageNode> {
      return z
        .array(LineageNode)
        .describe('Snapshot: the VMs restored from it. VM: the snapshots taken of it.');
    },
  })
  .meta({ id: 'LineageNode' });

export const Lineage = z
  .object({
    ancestors: z
      .array(LineageNode)
      .describe(
        'The path from the root (the freshly launched VM it all started from) down to this ' +
          'snapshot (the last element), alternating VMs and the snapshots taken of them; ' +
          '`children` are empty here.',
      ),
    descendants: z
      .array(LineageNode)
      .describe('The tree below: VMs restored from this snapshot, their snapshots, and so on.'),
    truncated: z
      .boolean()
      .optional()
      .describe('Present (true) when the tree was cut at 10 000 nodes.'),
  })
  .meta({ id: 'Lineage' });

export const ExecResult = z
  .object({
    exitCode: z.number().int(),
    stdout: z.string(),
    stderr: z.string(),
    timedOut: z.boolean(),
    durationMs: z.number().int(),
    stdoutTruncated: z.boolean(),
    stderrTruncated: z.boolean(),
  })
  .meta({
    id: 'ExecResult',
    description:
      'Buffered result (4 MiB cap per stream). With Accept: application/x-ndjson the response is ' +
      'a stream of {"t":"o"|"e","d":<base64>} events and one final {"t":"x","c"?,"to"?,"ms"}.',
  });

export const ExecSessionParams = z.object({
  id: z.string().describe('Id, or a name that is unique in the org.'),
  execId: z.string().describe('An exec session id (x-exec-id, or execId from a detached exec).'),
});

export const ExecStreamQuery = z.object({
  fromOffset: z.coerce
    .number()
    .int()
    .min(0)
    .max(Number.MAX_SAFE_INTEGER)
    .optional()
    .describe(
      'Replay output from this byte offset (stdout and stderr count together; default 0). ' +
        'Raised to truncatedBefore when older bytes were dropped (x-exec-from-offset says).',
    ),
});

export const ExecSession = z
  .object({
    execId: z.string(),
    vmId: z.string(),
    command: z.array(z.string()),
    status: z.enum(['running', 'exited', 'killed', 'failed']),
    exitCode: z.number().int().nullable().describe('Set once exited.'),
    timedOut: z.boolean(),
    durationMs: z.number().int().nullable(),
    error: z.string().nullable().describe('Why a killed or failed session has no exit code.'),
    keepAlive: z.boolean().describe('Whether the session survives its client disconnecting.'),
    startedAt: z.string(),
    endedAt: z.string().nullable(),
    expiresAt: z.string().nullable().describe('When an ended session is forgotten.'),
    stdoutBytes: z.number().int(),
    stderrBytes: z.number().int(),
    outputBytes: z.number().int().describe('stdout + stderr: the offset after the last byte.'),
    truncatedBefore: z
      .number()
      .int()
      .describe('Offset of the oldest output byte still kept (0 while nothing was dropped).'),
  })
  .meta({ id: 'ExecSession' });

export const ExecSessionList = z.array(ExecSession).meta({ id: 'ExecSessionList' });

export const FilePresignResponse = z
  .object({
    uploadUrl: z.string().describe('PUT the bytes here (no API key; the URL is the credential).'),
    downloadUrl: z.string().describe('GET the same object; also the url for files/fetch.'),
    expiresInSec: z.number().int(),
    maxUploadBytes: z.number().int().describe("The VM's disk size in bytes."),
  })
  .meta({ id: 'FilePresignResponse' });

export const DeleteResponse = z
  .object({ id: z.string(), deleted: z.boolean() })
  .meta({ id: 'DeleteResponse' });

const QuotaValues = z
  .object({
    vcpu: z.number().int(),
    memoryMiB: z.number().int(),
    diskGiB: z.number().int(),
    snapshotCount: z.number().int(),
    volumeCount: z.number().int(),
    volumeGiB: z.number().int(),
  })
  .meta({ id: 'QuotaValues' });

export const OrgQuotas = z
  .object({ orgId: z.string(), limits: QuotaValues, usage: QuotaValues })
  .meta({ id: 'OrgQuotaUsage' });

const DecimalUsd = z
  .string()
  .regex(/^\d{1,9}(?:\.\d{1,9})?$/, 'a decimal string such as "0.09"')
  .describe('Decimal string, USD.');

export const Pricing = z
  .object({
    compute: z.object({
      tiers: z
        .array(
          z.object({
            tier: z.number().int().min(1).describe('1-based.'),
            fromVcpuHours: z.number().min(0),
            toVcpuHours: z.number().min(0).nullable().describe('null: the open top tier.'),
            ratePerVcpuHour: DecimalUsd,
          }),
        )
        .max(64),
    }),
    volumeStorage: z.object({ ratePerGiBMonth: DecimalUsd }),
  })
  .meta({ id: 'Pricing' });

export const SshKey = z
  .object({
    fingerprint: z.string().describe('OpenSSH `SHA256:<base64>`.'),
    publicKey: z.string().describe('`<type> <base64>`, comment stripped.'),
    createdAt: z.string(),
    name: z.string().optional(),
  })
  .meta({ id: 'SSHKey' });

export const SshKeyList = z.object({ keys: z.array(SshKey) }).meta({ id: 'SSHKeyList' });

export const CreateSshKeyBody = z
  .object({
    publicKey: z.string().describe('OpenSSH `<type> <base64> [comment]`, one line.'),
    name: z.string().max(256).nullish(),
  })
  .meta({ id: 'CreateSSHKeyRequest' });

export const FingerprintParams = z.object({ fingerprint: z.string().min(1) });

// ---- published services (contract §4.4) ------------------------------------------------------

const ServiceAuth = z
  .enum(['public', 'token', 'api_key'])
  .describe(
    'Extension: who may use the service through the proxy. public (default); token: ' +
      '`Authorization: Bearer <token>` with the token returned here; api_key: an API key of the org.',
  );

export const ServiceParams = z.object({
  id: z.string().describe('Id, or a name that is unique in the org.'),
  serviceName: z.string(),
});

export const CreateServiceBody = z
  .object({
    name: z
      .string()
      .describe('1-29 characters: lowercase letters, digits and single hyphens (a DNS label).'),
    port: z.number().int().describe('Guest TCP port, 1024-65535.'),
    h2c: z.boolean().nullish().describe('Speak HTTP/2 cleartext to the backend (gRPC).'),
    auth: ServiceAuth.nullish(),
  })
  .meta({ id: 'ServiceCreateRequest' });

export const PutServiceBody = z
  .object({
    port: z.number().int().describe('Guest TCP port, 1024-65535.'),
    h2c: z.boolean().nullish(),
    auth: ServiceAuth.nullish().describe('Omitted: unchanged (public for a new service).'),
  })
  .meta({ id: 'ServicePutRequest' });

export const Service = z
  .object({
    name: z.string(),
    port: z.number().int(),
    h2c: z.boolean(),
    auth: ServiceAuth,
    url: z.string().describe('Extension: where the proxy serves it.'),
    token: z.string().optional().describe('Extension: the bearer token (auth "token" only).'),
  })
  .meta({ id: 'Service' });

export const Health = z.object({ status: z.string() }).meta({ id: 'Health' });

export const ErrorBody = z
  .looseObject({
    error: z.string(),
    code: z.string().describe('Stable code from the error catalog.'),
    field: z.string().optional().describe('Offending request field (400).'),
    dimension: z.string().optional().describe('Exceeded quota dimension (429).'),
    requestId: z
      .string()
      .optional()
      .describe('The request id (also the `x-request-id` header), for finding its log lines.'),
  })
  .meta({ id: 'Error' });

export type LaunchVmInput = z.output<typeof LaunchVmBody>;
export type TtlInput = z.output<typeof Ttl>;
export type ExecInput = z.output<typeof ExecBody>;
export type ExecSessionView = z.input<typeof ExecSession>;
export type FirewallPolicyInput = z.output<typeof FirewallPolicy>;
export type FirewallPatchInput = z.output<typeof FirewallPatch>;
export type VmView = z.input<typeof Vm>;
export type SnapshotView = z.input<typeof Snapshot>;
export type ForkInput = z.output<typeof ForkSnapshotBody>;
export type LineageView = z.input<typeof Lineage>;
export type LineageNodeView = z.input<typeof LineageNode>;
export type ExecResultView = z.input<typeof ExecResult>;
export type SshKeyView = z.input<typeof SshKey>;
export type ServiceView = z.input<typeof Service>;
export type CreateSshKeyInput = z.output<typeof CreateSshKeyBody>;
export type PricingView = z.input<typeof Pricing>;
export type VolumeView = z.input<typeof Volume>;
export type VolumeAttachmentView = z.input<typeof VolumeAttachmentItem>;
