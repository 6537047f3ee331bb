// fastvm config set|get|unset
import type { Command } from 'commander';
import { newGroup } from '../../cmdutil.js';
import { configPath } from '../../config.js';
import type { Factory } from '../../factory.js';
import { newConfigGetCommand } from './get.js';
import { newConfigSetCommand } from './set.js';
import { newConfigUnsetCommand } from './unset.js';

export function newConfigCommand(f: Factory): Command {
  return newGroup(f, 'config', `Read and write the config file (${configPath(f.io.env)})`, [
    newConfigSetCommand(f),
    newConfigGetCommand(f),
    newConfigUnsetCommand(f),
  ]);
}
