// fastvm service rm <vm> <name...>
import type { Command } from 'commander';
import { newCommand, onRun, withRef, type CommandBase, type RunF } from '../../cmdutil.js';
import type { Factory } from '../../factory.js';
import { json } from '../../output.js';

export interface ServiceRmOptions extends CommandBase {
  vm: string;
  names: string[];
}

export function newServiceRmCommand(
  f: Factory,
  runF: RunF<ServiceRmOptions> = serviceRmRun,
): Command {
  const cmd = newCommand(f, 'rm <vm> <name...>', 'Unpublish services of a VM');
  return onRun(f, cmd, (c, base) =>
    runF({ ...base, vm: c.args[0]!, names: c.processedArgs[1] as string[] }),
  );
}

export async function serviceRmRun(o: ServiceRmOptions): Promise<number> {
  const client = await o.client();
  for (const name of o.names) {
    await withRef(o, 'vm', o.vm, (id) => client.removeService(id, name));
    if (!o.json) o.io.stdout.write(`Unpublished ${name}\n`);
  }
  if (o.json) o.io.stdout.write(json(o.names.map((name) => ({ name, deleted: true }))));
  return 0;
}
