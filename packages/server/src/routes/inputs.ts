/**
 * Wire requests → domain inputs (the counterpart of `present.ts`). Routes validate bodies with
 * the zod schemas of `schemas.ts`, then turn them into the plain inputs the services take:
 * nullable wire fields become absent ones, a string command becomes `sh -c`, base64 becomes
 * bytes. Fields the server does not support yet are refused here (501).
 * @module
 */
import type { FirewallPolicy, FirewallRule } from '../domain/index.js';
import { badRequest, notImplemented } from '../errors.js';
import type {
  CreateSshKeyInput,
  ExecInput,
  FirewallPolicyInput,
  FirewallPatchInput,
  LaunchVmInput,
} from '../schemas.js';
import {
  checkArgv,
  type ExecCommand,
  type FirewallChange,
  type LaunchRequest,
} from '../services/vm-service.js';

type WireRule = NonNullable<FirewallPolicyInput['ingress']>[number];

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

/** A validated wire policy as the domain's `FirewallPolicy` (no rules: none). */
export function firewallPolicyOf(input: FirewallPolicyInput): FirewallPolicy {
  return { mode: input.mode, ingress: (input.ingress ?? []).map(firewallRuleOf) };
}

/** `PUT` (the whole policy) or `PATCH` (mode and/or rules) of `/v1/vms/{id}/firewall`. */
export function firewallChangeOf(
  change: { replace: FirewallPolicyInput } | { patch: FirewallPatchInput },
): FirewallChange {
  if ('replace' in change) return { replace: firewallPolicyOf(change.replace) };
  const { mode, ingress } = change.patch;
  return {
    patch: {
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
    firewall: body.firewall ? firewallPolicyOf(body.firewall) : undefined,
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
