// The CLI's settings: flags > environment > config file.
import { chmodSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, isAbsolute, join } from 'node:path';
import { CliError } from './errors.js';

/** Keys accepted by `fastvm config set|get|unset`. */
export const CONFIG_KEYS = ['api-key', 'base-url'] as const;

/** One of {@link CONFIG_KEYS}. */
export type ConfigKey = (typeof CONFIG_KEYS)[number];

/** Contents of the config file. */
export type Config = Partial<Record<ConfigKey, string>>;

/** Environment variable behind each key. */
export const ENV_VARS: Record<ConfigKey, string> = {
  'api-key': 'FASTVM_API_KEY',
  'base-url': 'FASTVM_BASE_URL',
};

/** Checks that `key` is a known config key. */
export function isConfigKey(key: string): key is ConfigKey {
  return (CONFIG_KEYS as readonly string[]).includes(key);
}

/** Checks `key` against {@link CONFIG_KEYS}; an unknown key is a CliError naming the valid ones. */
export function checkKey(key: string): ConfigKey {
  if (!isConfigKey(key))
    throw new CliError(`unknown config key '${key}' (valid keys: ${CONFIG_KEYS.join(', ')})`);
  return key;
}

/** `$XDG_CONFIG_HOME/fastvm/config.json`, or `~/.config/fastvm/config.json`. */
export function configPath(env: NodeJS.ProcessEnv): string {
  const xdg = env['XDG_CONFIG_HOME'];
  const base = xdg && isAbsolute(xdg) ? xdg : join(env['HOME'] || homedir(), '.config');
  return join(base, 'fastvm', 'config.json');
}

/** Reads the config file; a missing file is an empty config. */
export function readConfig(env: NodeJS.ProcessEnv): Config {
  const path = configPath(env);
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return {};
    throw new CliError(`cannot read ${path}: ${(err as Error).message}`);
  }
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch {
    throw new CliError(`${path} is not valid JSON; fix or delete it`);
  }
  const out: Config = {};
  if (typeof data === 'object' && data !== null) {
    for (const key of CONFIG_KEYS) {
      const v = (data as Record<string, unknown>)[key];
      if (typeof v === 'string' && v !== '') out[key] = v;
    }
  }
  return out;
}

/** Writes the config file atomically with mode 0600 (directory 0700). */
export function writeConfig(env: NodeJS.ProcessEnv, config: Config): string {
  const path = configPath(env);
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
  const tmp = `${path}.${process.pid}.tmp`;
  writeFileSync(tmp, `${JSON.stringify(config, null, 2)}\n`, { mode: 0o600 });
  chmodSync(tmp, 0o600);
  renameSync(tmp, path);
  return path;
}

/** Resolved connection settings. */
export interface Settings {
  apiKey: string | undefined;
  baseUrl: string | undefined;
}

/** Applies the precedence flags > environment (empty = unset) > config file. */
export function resolveSettings(
  flags: Partial<Settings>,
  env: NodeJS.ProcessEnv,
  file: Config,
): Settings {
  const pick = (flag: string | undefined, key: ConfigKey): string | undefined =>
    nonEmpty(flag) ?? nonEmpty(env[ENV_VARS[key]]) ?? nonEmpty(file[key]);
  return { apiKey: pick(flags.apiKey, 'api-key'), baseUrl: pick(flags.baseUrl, 'base-url') };
}

function nonEmpty(v: string | undefined): string | undefined {
  return v === undefined || v.trim() === '' ? undefined : v.trim();
}
