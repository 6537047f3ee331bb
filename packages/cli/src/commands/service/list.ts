// fastvm service list (ls) <vm>
import type { Command } from 'commander';
import type { Service } from 'fastvm';
import { newCommand, onRun, withRef, type CommandBase, type RunF } from '../../cmdutil.js';
import type { Factory } from '../../factory.js';
import { json, table } from '../../output.js';

export interface ServiceListOptions extends CommandBase {
  vm: string;
}

export function newServiceListCommand(
  f: Factory,
  runF: RunF<ServiceListOptions> = serviceListRun,
): Command {
  const cmd = newCommand(f, 'list <vm>', "List a VM's published services").alias('ls');
  return onRun(f, cmd, (c, base) => runF({ ...base, vm: c.args[0]! }));
}

/** The API's Service object (contract §3.9, plus `auth`, `url` and `token`). */
export function serviceToJson(s: Service): Record<string, unknown> {
  return {
    name: s.name,
    port: s.port,
    h2c: s.h2c,
    auth: s.auth,
    url: s.url,
    ...(s.token !== null ? { token: s.token } : {}),
  };
}

/** The table people see (tokens are shown: the caller owns the VM). */
export function serviceTable(services: Service[]): string {
  return table(
    ['NAME', 'PORT', 'PROTOCOL', 'AUTH', 'URL'],
    services.map((s) => [
      s.name,
      String(s.port),
      s.h2c ? 'h2c' : 'http/1.1',
      s.auth === 'token' && s.token ? `token ${s.token}` : s.auth,
      s.url,
    ]),
  );
}

export async function serviceListRun(o: ServiceListOptions): Promise<number> {
  const client = await o.client();
  const services = await withRef(o, 'vm', o.vm, (id) => client.listServices(id));
  if (o.json) o.io.stdout.write(json(services.map(serviceToJson)));
  else if (services.length === 0)
    o.io.stdout.write(`No published services. Publish one: fastvm service add ${o.vm} 8000\n`);
  else o.io.stdout.write(serviceTable(services));
  return 0;
}
