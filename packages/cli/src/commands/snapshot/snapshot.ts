// fastvm snapshot create|list|get|rename|rm|restore|fork|tree
import type { Command } from 'commander';
import { newGroup } from '../../cmdutil.js';
import type { Factory } from '../../factory.js';
import { newSnapshotCreateCommand } from './create.js';
import { newSnapshotForkCommand } from './fork.js';
import { newSnapshotGetCommand } from './get.js';
import { newSnapshotListCommand } from './list.js';
import { newSnapshotRenameCommand } from './rename.js';
import { newSnapshotRestoreCommand } from './restore.js';
import { newSnapshotRmCommand } from './rm.js';
import { newSnapshotTreeCommand } from './tree.js';

export function newSnapshotCommand(f: Factory): Command {
  return newGroup(f, 'snapshot', 'Create, list, restore, fork and delete snapshots', [
    newSnapshotCreateCommand(f),
    newSnapshotListCommand(f),
    newSnapshotGetCommand(f),
    newSnapshotRenameCommand(f),
    newSnapshotRmCommand(f),
    newSnapshotRestoreCommand(f),
    newSnapshotForkCommand(f),
    newSnapshotTreeCommand(f),
  ]);
}
