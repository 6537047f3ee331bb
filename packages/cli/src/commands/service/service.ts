// fastvm service add|ls|rm
import type { Command } from 'commander';
import { newGroup } from '../../cmdutil.js';
import type { Factory } from '../../factory.js';
import { newServiceAddCommand } from './add.js';
import { newServiceListCommand } from './list.js';
import { newServiceRmCommand } from './rm.js';

export function newServiceCommand(f: Factory): Command {
  return newGroup(f, 'service', "Publish a VM's HTTP services through the proxy", [
    newServiceAddCommand(f),
    newServiceListCommand(f),
    newServiceRmCommand(f),
  ]);
}
