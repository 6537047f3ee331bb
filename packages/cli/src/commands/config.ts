// fastvm config set|get|unset
import type { Command } from 'commander';
import {
  CONFIG_KEYS,
  configPath,
  isConfigKey,
  readConfig,
  writeConfig,
  type ConfigKey,
} from '../config.js';
import type { Context } from '../context.js';
import { CliError } from '../errors.js';
import { leaf } from './common.js';

function checkKey(key: string): ConfigKey {
  if (!isConfigKey(key))
    throw new CliError(`unknown config key '${key}' (valid keys: ${CONFIG_KEYS.join(', ')})`);
  return key;
}

function mask(value: string): string {
  return value.length <= 8 ? '********' : `${value.slice(0, 4)}…${value.slice(-4)}`;
}

/** Registers the `config` subcommands on `group`. */
export function configCommands(group: Command, ctx: Context, done: (code: number) => void): void {
  group.description(`Read and write the config file (${configPath(ctx.io.env)})`);

  leaf(group, 'set <key> <value>', `Set a config value (keys: ${CONFIG_KEYS.join(', ')})`).action(
    (key: string, value: string) => {
      const k = checkKey(key);
      if (k === 'base-url' && !/^https?:\/\//.test(value))
        throw new CliError('base-url must start with http:// or https://');
      const config = readConfig(ctx.io.env);
      config[k] = value;
      const path = writeConfig(ctx.io.env, config);
      if (!ctx.json) ctx.err(`Saved ${k} to ${path}\n`);
      done(0);
    },
  );

  leaf(group, 'get [key]', 'Print a config value, or all of them (the API key masked)').action(
    (key?: string) => {
      const config = readConfig(ctx.io.env);
      if (key !== undefined) {
        const value = config[checkKey(key)];
        if (ctx.json) ctx.out(`${JSON.stringify(value ?? null)}\n`);
        else if (value !== undefined) ctx.out(`${value}\n`);
        done(value === undefined ? 1 : 0);
        return;
      }
      if (ctx.json) {
        ctx.out(`${JSON.stringify(config, null, 2)}\n`);
      } else {
        for (const k of CONFIG_KEYS) {
          const v = config[k];
          if (v !== undefined) ctx.out(`${k}=${k === 'api-key' ? mask(v) : v}\n`);
        }
      }
      done(0);
    },
  );

  leaf(group, 'unset <key>', 'Remove a config value').action((key: string) => {
    const k = checkKey(key);
    const config = readConfig(ctx.io.env);
    delete config[k];
    writeConfig(ctx.io.env, config);
    done(0);
  });
}
