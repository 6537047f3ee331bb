// Helpers shared by the command groups.
import type { Command } from 'commander';
import type { FirewallPolicy, VM } from 'fastvm';
import type { Context } from '../context.js';
import { CliError } from '../errors.js';
import { age, formatFirewall, keyValues, table, vmToJson } from '../output.js';
import { parseRule } from '../rules.js';

/** Adds a leaf subcommand whose action receives its arguments and an options object. */
export function leaf(group: Command, spec: string, description: string): Command {
  return group
    .command(spec)
    .description(description)
    .storeOptionsAsProperties(false)
    .passCommandToAction(false);
}

/**
 * Deletes already-resolved VMs or snapshots after one confirmation (unless `yes`), printing a
 * line per object, or with `--json` the API's `{id, deleted}` (an array for several).
 */
export async function removeAll(
  ctx: Context,
  items: ReadonlyArray<{ id: string; name: string }>,
  kind: { one: string; many: string },
  yes: boolean | undefined,
  remove: (id: string) => Promise<void>,
): Promise<void> {
  const what =
    items.length === 1
      ? `${kind.one} ${items[0]!.name} (${items[0]!.id})`
      : `${items.length} ${kind.many} (${items.map((i) => i.name).join(', ')})`;
  if (!yes && !(await ctx.confirm(`Delete ${what}?`))) throw new CliError('aborted');
  const deleted: Array<{ id: string; deleted: true }> = [];
  for (const item of items) {
    await remove(item.id);
    deleted.push({ id: item.id, deleted: true });
    if (!ctx.json) ctx.out(`Deleted ${kind.one} ${item.name} (${item.id})\n`);
  }
  if (ctx.json)
    ctx.out(`${JSON.stringify(deleted.length === 1 ? deleted[0] : deleted, null, 2)}\n`);
}

/** Parses a positive integer option value. */
export function positiveInt(value: string | undefined, flag: string): number | undefined {
  if (value === undefined) return undefined;
  if (!/^\d+$/.test(value) || Number(value) <= 0)
    throw new CliError(`${flag} must be a positive integer, got '${value}'`);
  return Number(value);
}

/** Builds a firewall policy from `--mode` and repeatable `-r` values. */
export function policyFrom(
  mode: string | undefined,
  rules: string[] | undefined,
): FirewallPolicy | undefined {
  if (mode === undefined && rules === undefined) return undefined;
  const m = mode ?? 'restricted';
  if (m !== 'open' && m !== 'restricted')
    throw new CliError(`--mode must be 'open' or 'restricted', got '${m}'`);
  const policy: FirewallPolicy = { mode: m };
  if (rules !== undefined) policy.ingress = rules.map(parseRule);
  return policy;
}

/** Colours a status word. */
export function statusText(ctx: Context, status: string): string {
  const c = ctx.colors;
  if (status === 'running' || status === 'ready' || status === 'active') return c.green(status);
  if (status === 'error' || status === 'stopped' || status === 'deleting') return c.red(status);
  return c.yellow(status);
}

/** Prints one VM: a key/value block, or wire JSON. */
export function printVm(ctx: Context, vm: VM): void {
  if (ctx.json) {
    ctx.out(`${JSON.stringify(vmToJson(vm), null, 2)}\n`);
    return;
  }
  ctx.out(
    keyValues([
      ['ID', vm.id],
      ['NAME', vm.name],
      ['STATUS', statusText(ctx, vm.status)],
      [
        'MACHINE',
        `${vm.machineName || '-'} (${vm.cpu} vCPU, ${vm.memoryMib} MiB, ${vm.diskGib} GiB disk)`,
      ],
      ['SOURCE', vm.sourceName || '-'],
      ['IPV6', vm.publicIpv6 ?? '-'],
      ['FIREWALL', formatFirewall(vm.firewall)],
      ['TTL', formatTtl(vm)],
      ...(vm.pausedAt
        ? [['PAUSED', `${vm.pausedAt} (${age(vm.pausedAt)})`] as [string, string]]
        : []),
      ['CREATED', `${vm.createdAt} (${age(vm.createdAt)})`],
    ]),
  );
}

/** `10m, then pause (4m 12s left)` or `-`. */
export function formatTtl(vm: VM, now = Date.now()): string {
  if (!vm.ttl) return '-';
  const left =
    vm.expiresAt !== null
      ? Math.max(0, vm.expiresAt - now)
      : vm.ttlRemainingMs !== null
        ? vm.ttlRemainingMs
        : undefined;
  const dur = (ms: number): string => {
    const s = Math.round(ms / 1000);
    if (s < 60) return `${s}s`;
    if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
    return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  };
  const tail =
    left === undefined ? '' : ` (${dur(left)} left${vm.expiresAt === null ? ' when resumed' : ''})`;
  return `${dur(vm.ttl.seconds * 1000)}, then ${vm.ttl.action}${tail}`;
}

/** Prints VMs: a table, or a wire JSON array. */
export function printVms(ctx: Context, vms: VM[]): void {
  if (ctx.json) {
    ctx.out(`${JSON.stringify(vms.map(vmToJson), null, 2)}\n`);
    return;
  }
  if (vms.length === 0) {
    ctx.out('No VMs.\n');
    return;
  }
  ctx.out(
    table(
      ['ID', 'NAME', 'MACHINE', 'STATUS', 'IPV6', 'CREATED'],
      vms.map((v) => [
        v.id,
        v.name,
        v.machineName || '-',
        statusText(ctx, v.status),
        v.publicIpv6 ?? '-',
        age(v.createdAt),
      ]),
    ),
  );
}
