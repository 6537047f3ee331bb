// fastvm vm launch|list|get|rename|rm|exec|attach|console|ssh|pause|resume|ttl
import type { Command } from 'commander';
import { newGroup } from '../../cmdutil.js';
import type { Factory } from '../../factory.js';
import { newVmAttachCommand } from './attach.js';
import { newConsoleCommand } from './console.js';
import { newVmExecCommand } from './exec.js';
import { newVmGetCommand } from './get.js';
import { newVmLaunchCommand } from './launch.js';
import { newVmListCommand } from './list.js';
import { newVmPauseCommand } from './pause.js';
import { newVmRenameCommand } from './rename.js';
import { newVmResumeCommand } from './resume.js';
import { newVmRmCommand } from './rm.js';
import { newVmSshCommand } from './ssh.js';
import { newVmTtlCommand } from './ttl.js';

export function newVmCommand(f: Factory): Command {
  return newGroup(f, 'vm', 'Launch, inspect, run commands in and delete VMs', [
    newVmLaunchCommand(f),
    newVmListCommand(f),
    newVmGetCommand(f),
    newVmRenameCommand(f),
    newVmRmCommand(f),
    newVmExecCommand(f),
    newVmAttachCommand(f),
    newConsoleCommand(f),
    newVmSshCommand(f),
    newVmPauseCommand(f),
    newVmResumeCommand(f),
    newVmTtlCommand(f),
  ]);
}
