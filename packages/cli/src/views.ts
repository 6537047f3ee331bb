// How commands print VMs, snapshots and firewall policies: key/value blocks and tables for people,
// the API's JSON with `--json`.
import type { FirewallPolicy, Snapshot, VM } from 'fastvm';
import type { CommandBase } from './cmdutil.js';
import {
  age,
  colorEnabled,
  firewallToJson,
  formatFirewall,
  formatRule,
  json,
  keyValues,
  palette,
  snapshotToJson,
  Spinner,
  table,
  vmToJson,
} from './output.js';

/** Colours for stdout (none unless it is a terminal). */
export function colors(o: CommandBase): ReturnType<typeof palette> {
  return palette(colorEnabled(o.io.stdout, o.io.env));
}

/** A spinner on stderr (drawn only when stderr is a terminal and the output is not JSON). */
export function spinner(o: CommandBase): Spinner {
  return new Spinner(o.json ? { write: () => true, isTTY: false } : o.io.stderr);
}

/** Colours a status word. */
export function statusText(o: CommandBase, status: string): string {
  const c = colors(o);
  if (status === 'running' || status === 'ready' || status === 'active') return c.green(status);
  if (status === 'error' || status === 'stopped' || status === 'deleting') return c.red(status);
  return c.yellow(status);
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

/** Prints one VM: a key/value block, or wire JSON. */
export function printVm(o: CommandBase, vm: VM): void {
  if (o.json) {
    o.io.stdout.write(json(vmToJson(vm)));
    return;
  }
  o.io.stdout.write(
    keyValues([
      ['ID', vm.id],
      ['NAME', vm.name],
      ['STATUS', statusText(o, vm.status)],
      [
        'MACHINE',
        `${vm.machineName || '-'} (${vm.cpu} vCPU, ${vm.memoryMib} MiB, ${vm.diskGib} GiB disk)`,
      ],
      ['SOURCE', vm.sourceName || '-'],
      ['IPV6', vm.publicIpv6 ?? '-'],
      ['FIREWALL', formatFirewall(vm.firewall)],
      ['TTL', formatTtl(vm)],
      ...(vm.volumes?.length
        ? [
            [
              'VOLUMES',
              vm.volumes
                .map(
                  (a) =>
                    `${a.volumeId} at ${a.mountPath} (${a.readOnly ? 'ro' : 'rw'}, ${a.mountStatus})`,
                )
                .join('; '),
            ] as [string, string],
          ]
        : []),
      ...(vm.pausedAt
        ? [['PAUSED', `${vm.pausedAt} (${age(vm.pausedAt)})`] as [string, string]]
        : []),
      ['CREATED', `${vm.createdAt} (${age(vm.createdAt)})`],
    ]),
  );
}

/** Prints VMs: a table, or a wire JSON array. */
export function printVms(o: CommandBase, vms: VM[]): void {
  if (o.json) {
    o.io.stdout.write(json(vms.map(vmToJson)));
    return;
  }
  if (vms.length === 0) {
    o.io.stdout.write('No VMs.\n');
    return;
  }
  o.io.stdout.write(
    table(
      ['ID', 'NAME', 'MACHINE', 'STATUS', 'IPV6', 'CREATED'],
      vms.map((v) => [
        v.id,
        v.name,
        v.machineName || '-',
        statusText(o, v.status),
        v.publicIpv6 ?? '-',
        age(v.createdAt),
      ]),
    ),
  );
}

/** Prints one snapshot: a key/value block, or wire JSON. */
export function printSnapshot(o: CommandBase, s: Snapshot): void {
  if (o.json) {
    o.io.stdout.write(json(snapshotToJson(s)));
    return;
  }
  o.io.stdout.write(
    keyValues([
      ['ID', s.id],
      ['NAME', s.name],
      ['STATUS', statusText(o, s.status)],
      ['VM', s.vmId],
      ['PARENT', s.parentSnapshotId ?? '-'],
      ['FIREWALL', formatFirewall(s.firewall)],
      ['CREATED', `${s.createdAt} (${age(s.createdAt)})`],
    ]),
  );
}

/** Prints snapshots: a table, or a wire JSON array. */
export function printSnapshots(o: CommandBase, snaps: Snapshot[]): void {
  if (o.json) o.io.stdout.write(json(snaps.map(snapshotToJson)));
  else if (snaps.length === 0) o.io.stdout.write('No snapshots.\n');
  else
    o.io.stdout.write(
      table(
        ['ID', 'NAME', 'VM', 'STATUS', 'CREATED'],
        snaps.map((s) => [s.id, s.name, s.vmId, statusText(o, s.status), age(s.createdAt)]),
      ),
    );
}

/** Prints a VM's firewall policy: mode and a rule table, or wire JSON. */
export function printFirewall(o: CommandBase, vm: VM): void {
  const f: FirewallPolicy | null = vm.firewall;
  const out = (s: string): unknown => o.io.stdout.write(s);
  if (o.json) {
    out(json(firewallToJson(f)));
    return;
  }
  if (!f) {
    out(`VM ${vm.name}: no firewall policy (server default)\n`);
    return;
  }
  out(`MODE  ${f.mode}\n`);
  const rules = f.ingress ?? [];
  if (rules.length === 0) {
    out(
      f.mode === 'open'
        ? 'All inbound traffic is allowed.\n'
        : 'No ingress rules: inbound traffic is blocked.\n',
    );
    return;
  }
  out('\n');
  out(
    table(
      ['RULE', 'PROTOCOL', 'PORTS', 'SOURCES', 'DESCRIPTION'],
      rules.map((r) => [
        formatRule(r),
        r.protocol,
        r.portEnd !== undefined && r.portEnd !== r.portStart
          ? `${r.portStart}-${r.portEnd}`
          : String(r.portStart),
        r.sourceCidrs && r.sourceCidrs.length > 0 ? r.sourceCidrs.join(', ') : 'any',
        r.description ?? '',
      ]),
    ),
  );
}
