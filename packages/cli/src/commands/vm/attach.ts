// fastvm vm attach <vm> <exec-id>: follow an exec session (started with `vm exec --detach`, or
// a stream that asked to stay alive) from a byte offset: its kept output, then live output;
// exits with the command's exit code. Leaving (Ctrl-C) does not stop the command.
import type { Command } from 'commander';
import type { ExecEvent } from 'fastvm';
import { newCommand, onRun, withRef, type CommandBase, type RunF } from '../../cmdutil.js';
import { CliError } from '../../errors.js';
import type { Factory } from '../../factory.js';
import { exitStatus } from './exec.js';

export interface VmAttachOptions extends CommandBase {
  vm: string;
  execId: string;
  /** Output offset to replay from (stdout and stderr counted together). */
  fromOffset: number;
}

export function newVmAttachCommand(f: Factory, runF: RunF<VmAttachOptions> = vmAttachRun): Command {
  const cmd = newCommand(
    f,
    'attach <vm> <exec-id>',
    "Follow an exec session (from 'fastvm vm exec --detach'): its output from a byte offset,\n" +
      'then live; exits with its exit code (leaving does not stop the command)',
  ).option(
    '--from-offset <n>',
    'replay output from this byte offset (stdout and stderr counted together)',
    '0',
  );
  return onRun(f, cmd, (c, base) => {
    const o = c.opts<{ fromOffset: string }>();
    if (!/^\d+$/.test(o.fromOffset) || !Number.isSafeInteger(Number(o.fromOffset))) {
      throw new CliError(`--from-offset must be a non-negative integer, got '${o.fromOffset}'`);
    }
    return runF({
      ...base,
      vm: c.args[0]!,
      execId: c.args[1]!,
      fromOffset: Number(o.fromOffset),
    });
  });
}

export async function vmAttachRun(o: VmAttachOptions): Promise<number> {
  const client = await o.client();
  // The first event (or error) decides whether the VM reference needs resolving.
  const open = async (id: string) => {
    const events = client.attach(id, o.execId, { fromOffset: o.fromOffset });
    return { events, first: await events.next() };
  };
  const { events, first } = await withRef(o, 'vm', o.vm, open);
  let exit: Extract<ExecEvent, { type: 'exit' }> | undefined;
  const handle = (ev: ExecEvent): void => {
    if (ev.type === 'exit') exit = ev;
    else if (o.json) {
      o.io.stdout.write(
        JSON.stringify({ type: ev.type, offset: ev.offset, data: ev.data.toString('base64') }) +
          '\n',
      );
    } else if (ev.type === 'stdout') o.io.stdout.write(ev.data);
    else o.io.stderr.write(ev.data);
  };
  if (!first.done) handle(first.value);
  for await (const ev of events) handle(ev);
  if (!exit) throw new CliError('the exec stream ended without an exit status');
  // --json: one JSON object per line, the exit event last.
  if (o.json) o.io.stdout.write(JSON.stringify(exit) + '\n');
  else if (exit.timedOut) o.io.stderr.write('fastvm: the command timed out\n');
  return exit.timedOut ? 124 : exitStatus(exit.exitCode);
}
