// fastvm quota
import type { Command } from 'commander';
import type { Context } from '../context.js';
import { quotasToJson, table } from '../output.js';

/** Configures `group` as the `quota` command itself. */
export function quotaCommand(group: Command, ctx: Context, done: (code: number) => void): void {
  group.description("Show the organisation's quota limits and usage").action(async () => {
    const q = await ctx.client().quotas();
    if (ctx.json) {
      ctx.out(`${JSON.stringify(quotasToJson(q), null, 2)}\n`);
    } else {
      const row = (name: string, used: number, limit: number, unit = ''): string[] => [
        name,
        `${used}${unit}`,
        `${limit}${unit}`,
        limit > 0 ? `${Math.round((used / limit) * 100)}%` : '-',
      ];
      ctx.out(
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
    }
    done(0);
  });
}
