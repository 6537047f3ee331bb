// fastvm vm ttl <vm> DURATION[:pause|delete] | refresh | off
import type { Command } from 'commander';
import type { VMTtl } from 'fastvm';
import { newCommand, onRun, withRef, type CommandBase, type RunF } from '../../cmdutil.js';
import { CliError } from '../../errors.js';
import type { Factory } from '../../factory.js';
import { printVm } from '../../views.js';

export interface VmTtlOptions extends CommandBase {
  vm: string;
  /** A new TTL, `null` to remove it, or `'refresh'` to restart the countdown. */
  ttl: VMTtl | null | 'refresh';
}

export function newVmTtlCommand(f: Factory, runF: RunF<VmTtlOptions> = vmTtlRun): Command {
  const cmd = newCommand(
    f,
    'ttl <vm> <ttl>',
    "Set a VM's time to live (DURATION[:pause|delete], e.g. 10m:pause), 'refresh' it, or 'off'",
  );
  return onRun(f, cmd, (c, base) => {
    const spec = c.args[1]!;
    const ttl = spec === 'refresh' ? 'refresh' : spec === 'off' ? null : parseTtl(spec);
    return runF({ ...base, vm: c.args[0]!, ttl });
  });
}

export async function vmTtlRun(o: VmTtlOptions): Promise<number> {
  const client = await o.client();
  const { ttl } = o;
  const vm = await withRef(o, 'vm', o.vm, (id) =>
    ttl === 'refresh' ? client.refreshTtl(id) : client.setTtl(id, ttl),
  );
  printVm(o, vm);
  return 0;
}

const UNIT_SECONDS: Record<string, number> = { s: 1, m: 60, h: 3600, d: 86400 };

/** `30`, `30s`, `10m:pause`, `2h:delete`, `1d` → a TTL (action defaults to pause). */
export function parseTtl(spec: string): VMTtl {
  const m = /^(\d+)([smhd]?)(?::(pause|delete))?$/.exec(spec.trim());
  const seconds = m ? Number(m[1]) * UNIT_SECONDS[m[2] || 's']! : NaN;
  if (!m || !(seconds >= 1) || seconds > 31_536_000) {
    throw new CliError(
      `--ttl must be DURATION[:pause|delete] with DURATION like 30s, 10m, 2h or 1d (1 s to 365 d), got '${spec}'`,
    );
  }
  return { seconds, action: (m[3] as VMTtl['action'] | undefined) ?? 'pause' };
}
