// fastvm firewall get|set|patch
import type { Command } from 'commander';
import { newGroup } from '../../cmdutil.js';
import type { Factory } from '../../factory.js';
import { newFirewallEgressCommand } from './egress.js';
import { newFirewallGetCommand } from './get.js';
import { newFirewallPatchCommand } from './patch.js';
import { newFirewallSetCommand } from './set.js';

export function newFirewallCommand(f: Factory): Command {
  return newGroup(f, 'firewall', "Show and change a VM's firewall (ingress; egress and DNS)", [
    newFirewallGetCommand(f),
    newFirewallSetCommand(f),
    newFirewallPatchCommand(f),
    newFirewallEgressCommand(f),
  ]);
}
