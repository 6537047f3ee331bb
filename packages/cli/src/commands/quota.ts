// fastvm quota
import type { Command } from 'commander';
import { newCommand, onRun, type CommandBase, type RunF } from '../cmdutil.js';
import type { Factory } from '../factory.js';
import { json, quotasToJson, table } from '../output.js';

export type QuotaOptions = CommandBase;

export function newQuotaCommand(f: Factory, runF: RunF<QuotaOptions> = quotaRun): Command {
  const cmd = newCommand(f, 'quota', "Show the organisation's quota limits and usage");
  return onRun(f, cmd, (_c, base) => runF(base));
}

export async function quotaRun(o: QuotaOptions): Promise<number> {
  const client = await o.client();
  const q = await client.quotas();
  if (o.json) {
    o.io.stdout.write(json(quotasToJson(q)));
    return 0;
  }
  const row = (name: string, used: number, limit: number, unit = ''): string[] => [
    name,
    `${used}${unit}`,
    `${limit}${unit}`,
    limit > 0 ? `${Math.round((used / limit) * 100)}%` : '-',
  ];
  o.io.stdout.write(
    table(
      ['RESOURCE', 'USED', 'LIMIT', 'USE%'],
      [
        row('vCPU', q.usage.vcpu, q.limits.vcpu),
        row('Memory', q.usage.memoryMib, q.limits.memoryMib, ' MiB'),
        row('Disk', q.usage.diskGib, q.limits.diskGib, ' GiB'),
        row('Snapshots', q.usage.snapshotCount, q.limits.snapshotCount),
      ],
    ),
  );
  return 0;
}
