// fastvm service add <vm> <port>[:name] [--name N] [--h2c] [--auth public|token|api_key]
import type { Command } from 'commander';
import type { ServiceAuth } from 'fastvm';
import { newCommand, onRun, withRef, type CommandBase, type RunF } from '../../cmdutil.js';
import { CliError } from '../../errors.js';
import type { Factory } from '../../factory.js';
import { json } from '../../output.js';
import { serviceTable, serviceToJson } from './list.js';

export interface ServiceAddOptions extends CommandBase {
  vm: string;
  port: number;
  /** From `PORT:NAME` or `--name`; `p<PORT>` when neither is given. */
  name: string;
  h2c: boolean;
  auth: ServiceAuth | undefined;
}

const AUTHS: readonly ServiceAuth[] = ['public', 'token', 'api_key'];

/** `8000` or `8000:web` → port and name (`p8000` when none is given). */
export function parsePublish(spec: string, name?: string): { port: number; name: string } {
  const m = /^(\d{1,5})(?::([a-z0-9-]+))?$/.exec(spec);
  const port = m ? Number(m[1]) : NaN;
  if (!m || port < 1 || port > 65535) {
    throw new CliError(`invalid service '${spec}': expected PORT or PORT:NAME, e.g. 8000:web`);
  }
  return { port, name: name ?? m[2] ?? `p${port}` };
}

export function newServiceAddCommand(
  f: Factory,
  runF: RunF<ServiceAddOptions> = serviceAddRun,
): Command {
  const cmd = newCommand(f, 'add <vm> <port[:name]>', 'Publish a port of a VM through the proxy')
    .option('--name <name>', 'service name (default: the :name suffix, else p<port>)')
    .option('--h2c', 'speak HTTP/2 cleartext to the service (gRPC)')
    .option('--auth <mode>', 'who may use it: public (default), token or api_key');
  return onRun(f, cmd, (c, base) => {
    const o = c.opts<{ name?: string; h2c?: boolean; auth?: string }>();
    if (o.auth !== undefined && !AUTHS.includes(o.auth as ServiceAuth)) {
      throw new CliError(`--auth must be one of ${AUTHS.join(', ')}`);
    }
    const { port, name } = parsePublish(c.args[1]!, o.name);
    return runF({
      ...base,
      vm: c.args[0]!,
      port,
      name,
      h2c: o.h2c === true,
      auth: o.auth as ServiceAuth | undefined,
    });
  });
}

export async function serviceAddRun(o: ServiceAddOptions): Promise<number> {
  const client = await o.client();
  const service = await withRef(o, 'vm', o.vm, (id) =>
    client.publishService(id, o.name, o.port, { h2c: o.h2c, auth: o.auth }),
  );
  if (o.json) o.io.stdout.write(json(serviceToJson(service)));
  else o.io.stdout.write(serviceTable([service]));
  return 0;
}
