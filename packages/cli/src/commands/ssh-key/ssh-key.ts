// fastvm ssh-key add|list|rm
import type { Command } from 'commander';
import { newGroup } from '../../cmdutil.js';
import type { Factory } from '../../factory.js';
import { newSshKeyAddCommand } from './add.js';
import { newSshKeyListCommand } from './list.js';
import { newSshKeyRmCommand } from './rm.js';

export function newSshKeyCommand(f: Factory): Command {
  return newGroup(
    f,
    'ssh-key',
    "Manage the SSH public keys the SSH gateway accepts for your org's VMs",
    [newSshKeyAddCommand(f), newSshKeyListCommand(f), newSshKeyRmCommand(f)],
  );
}
