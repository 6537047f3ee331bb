// fastvm config unset <key>
import type { Command } from 'commander';
import { newCommand, onRun, type CommandBase, type RunF } from '../../cmdutil.js';
import { checkKey, readConfig, writeConfig, type ConfigKey } from '../../config.js';
import type { Factory } from '../../factory.js';

export interface ConfigUnsetOptions extends CommandBase {
  key: ConfigKey;
}

export function newConfigUnsetCommand(
  f: Factory,
  runF: RunF<ConfigUnsetOptions> = configUnsetRun,
): Command {
  const cmd = newCommand(f, 'unset <key>', 'Remove a config value');
  return onRun(f, cmd, (c, base) => runF({ ...base, key: checkKey(c.args[0]!) }));
}

export async function configUnsetRun(o: ConfigUnsetOptions): Promise<number> {
  const config = readConfig(o.io.env);
  delete config[o.key];
  writeConfig(o.io.env, config);
  return 0;
}
