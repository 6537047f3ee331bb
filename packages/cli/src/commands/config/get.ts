// fastvm config get [key]
import type { Command } from 'commander';
import { newCommand, onRun, type CommandBase, type RunF } from '../../cmdutil.js';
import { CONFIG_KEYS, checkKey, readConfig, type ConfigKey } from '../../config.js';
import type { Factory } from '../../factory.js';
import { json } from '../../output.js';

export interface ConfigGetOptions extends CommandBase {
  /** One key, or all of them. */
  key: ConfigKey | undefined;
}

export function newConfigGetCommand(
  f: Factory,
  runF: RunF<ConfigGetOptions> = configGetRun,
): Command {
  const cmd = newCommand(
    f,
    'get [key]',
    'Print a config value, or all of them (the API key masked)',
  );
  return onRun(f, cmd, (c, base) => {
    const key = c.args[0];
    return runF({ ...base, key: key === undefined ? undefined : checkKey(key) });
  });
}

/** Exit code 1 when the one key asked for is not set. */
export async function configGetRun(o: ConfigGetOptions): Promise<number> {
  const config = readConfig(o.io.env);
  const out = (s: string): unknown => o.io.stdout.write(s);
  if (o.key !== undefined) {
    const value = config[o.key];
    if (o.json) out(`${JSON.stringify(value ?? null)}\n`);
    else if (value !== undefined) out(`${value}\n`);
    return value === undefined ? 1 : 0;
  }
  if (o.json) {
    out(json(config));
    return 0;
  }
  for (const k of CONFIG_KEYS) {
    const v = config[k];
    if (v !== undefined) out(`${k}=${k === 'api-key' ? mask(v) : v}\n`);
  }
  return 0;
}

function mask(value: string): string {
  return value.length <= 8 ? '********' : `${value.slice(0, 4)}…${value.slice(-4)}`;
}
