/**
 * Wire requests → domain inputs (the counterpart of `present.ts`). Routes validate bodies with
 * the zod schemas of `schemas.ts`, then turn them into the plain inputs the services take:
 * nullable wire fields become absent ones, a string command becomes `sh -c`, base64 becomes
 * bytes. Fields the server does not support yet are refused here (501).
 * @module
 */
import type { FirewallRule, FirewallWrite, V2Rule, V2Write } from '../domain/index.js';
import { badRequest, notImplemented } from '../errors.js';
import type {
  CreateSshKeyInput,
  ExecInput,
  FirewallPolicyInput,
  FirewallPatchInput,
  LaunchVmInput,
} from '../schemas.js';
import { checkArgv, type ExecCommand, type LaunchRequest } from '../services/vm-service.js';

type WireRule = NonNullable<Extract<FirewallPolicyInput, { shape: 'v1' }>['ingress']>[number];

/** A wire rule with its empty optionals dropped. */
function firewallRuleOf(r: WireRule): FirewallRule {
  return {
    protocol: r.protocol,
    portStart: r.portStart,
    ...(r.portEnd !== undefined && r.portEnd !== null ? { portEnd: r.portEnd } : {}),
    ...(r.sourceCidrs && r.sourceCidrs.length > 0 ? { sourceCidrs: [...r.sourceCidrs] } : {}),
    ...(r.description !== undefined && r.description !== null
      ? { description: r.description }
      : {}),
  };
}

/** The v2 blocks of a body, as the domain's write (null and absent alike: not given). */
function v2WriteOf(input: Extract<FirewallPolicyInput, { shape: 'v2' }>): V2Write {
  const rules = (
    rs:
      | ReadonlyArray<Omit<V2Rule, 'description'> & { description?: string | null }>
      | null
      | undefined,
  ): V2Rule[] =>
    (rs ?? []).map((r) => ({
      action: r.action,
      kind: r.kind,
      protocol: r.protocol,
      ports: r.ports,
      value: r.value,
      ...(r.description != null ? { description: r.description } : {}),
    }));
  return {
    ...(input.ingress
      ? { ingress: { default: input.ingress.default, rules: rules(input.ingress.rules) } }
      : {}),
    ...(input.egress
      ? { egress: { default: input.egress.default, rules: rules(input.egress.rules) } }
      : {}),
    ...(input.dns ? { dns: input.dns } : {}),
  };
}

/** A validated launch/restore/PUT body, in the generation it was sent in. */
export function firewallWriteOf(input: FirewallPolicyInput): FirewallWrite {
  if (input.shape === 'v1') {
    return { v1: { mode: input.mode, ingress: (input.ingress ?? []).map(firewallRuleOf) } };
  }
  return { v2: v2WriteOf(input) };
}

/** A validated `PATCH /v1/vms/{id}/firewall` body. */
export function firewallPatchOf(input: FirewallPatchInput): FirewallWrite {
  if (input.shape === 'v2') return { v2Patch: v2WriteOf(input) };
  const { mode, ingress } = input;
  return {
    v1Patch: {
      ...(mode !== undefined ? { mode } : {}),
      ...(ingress !== undefined && ingress !== null
        ? { ingress: ingress.map(firewallRuleOf) }
        : {}),
    },
  };
}

/** `POST /v1/vms`. Non-empty `bucketMounts` are 501. */
export function launchRequestOf(body: LaunchVmInput): LaunchRequest {
  if (body.bucketMounts && body.bucketMounts.length > 0) throw notImplemented('bucket mounts');
  return {
    machineType: body.machineType,
    snapshotId: body.snapshotId,
    name: body.name,
    diskGiB: body.diskGiB,
    firewall: body.firewall ? firewallWriteOf(body.firewall) : undefined,
    metadata: body.metadata,
    envVars: body.envVars,
    ttl: body.ttl ? { seconds: body.ttl.seconds, action: body.ttl.action } : body.ttl,
    ...(body.volumes
      ? {
          volumes: body.volumes.map((v) => ({
            volumeId: v.volumeId,
            mountPath: v.mountPath,
            ...(v.readOnly !== undefined && v.readOnly !== null ? { readOnly: v.readOnly } : {}),
          })),
        }
      : {}),
  };
}

/** `POST /v1/vms/{id}/exec`: a string command runs as `sh -c`; `stdin` is base64. */
export function execCommandOf(body: ExecInput): ExecCommand {
  const argv = typeof body.command === 'string' ? ['sh', '-c', body.command] : body.command;
  checkArgv(argv);
  let stdin: Uint8Array | undefined;
  if (body.stdin !== undefined && body.stdin !== null) {
    const compact = body.stdin.replace(/\s+/g, '');
    if (!/^[A-Za-z0-9+/_-]*={0,2}$/.test(compact)) throw badRequest('must be base64', 'stdin');
    stdin = Buffer.from(compact, 'base64');
  }
  return { argv, ...(stdin ? { stdin } : {}), timeoutSec: body.timeoutSec };
}

/** A validated `POST /v1/me/ssh-keys` body as the service's input (a null name: none). */
export function sshKeyInputOf(input: CreateSshKeyInput): { publicKey: string; name?: string } {
  return {
    publicKey: input.publicKey,
    ...(input.name !== undefined && input.name !== null ? { name: input.name } : {}),
  };
}
