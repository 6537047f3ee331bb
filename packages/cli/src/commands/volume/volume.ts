// fastvm volume create|list|rm|resize|attach|detach
import type { Command } from 'commander';
import { newGroup } from '../../cmdutil.js';
import type { Factory } from '../../factory.js';
import { newVolumeAttachCommand, newVolumeDetachCommand } from './attach.js';
import { newVolumeCreateCommand } from './create.js';
import { newVolumeListCommand } from './list.js';
import { newVolumeResizeCommand, newVolumeRmCommand } from './rm.js';

export function newVolumeCommand(f: Factory): Command {
  return newGroup(f, 'volume', 'Manage persistent volumes (disks that outlive VMs)', [
    newVolumeCreateCommand(f),
    newVolumeListCommand(f),
    newVolumeRmCommand(f),
    newVolumeResizeCommand(f),
    newVolumeAttachCommand(f),
    newVolumeDetachCommand(f),
  ]);
}
