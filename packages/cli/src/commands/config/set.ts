// fastvm config set <key> <value>
import type { Command } from 'commander';
import { newCommand, onRun, type CommandBase, type RunF } from '../../cmdutil.js';
import { CONFIG_KEYS, checkKey, readConfig, writeConfig, type ConfigKey } from '../../config.js';
import { CliError } from '../../errors.js';
import type { Factory } from '../../factory.js';

export interface ConfigSetOptions extends CommandBase {
  key: ConfigKey;
  value: string;
}

export function newConfigSetCommand(
  f: Factory,
  runF: RunF<ConfigSetOptions> = configSetRun,
): Command {
  const cmd = newCommand(
    f,
    'set <key> <value>',
    `Set a config value (keys: ${CONFIG_KEYS.join(', ')})`,
  );
  return onRun(f, cmd, (c, base) => {
    const key = checkKey(c.args[0]!);
    const value = c.args[1]!;
    if (key === 'base-url' && !/^https?:\/\//.test(value))
      throw new CliError('base-url must start with http:// or https://');
    return runF({ ...base, key, value });
  });
}

export async function configSetRun(o: ConfigSetOptions): Promise<number> {
  const config = readConfig(o.io.env);
  config[o.key] = o.value;
  const path = writeConfig(o.io.env, config);
  if (!o.json) o.io.stderr.write(`Saved ${o.key} to ${path}\n`);
  return 0;
}
