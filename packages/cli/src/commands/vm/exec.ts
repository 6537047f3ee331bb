// fastvm vm exec <vm> <command...>: run a command in a VM, streaming its output; exits with its
// exit code. With --detach: start it as an exec session and print its id (see vm attach).
import type { Command } from 'commander';
import type { ExecEvent } from 'fastvm';
import {
  newCommand,
  onRun,
  positiveInt,
  withRef,
  type CommandBase,
  type RunF,
} from '../../cmdutil.js';
import { CliError } from '../../errors.js';
import type { Factory } from '../../factory.js';
import { json, resultToJson } from '../../output.js';

export interface VmExecOptions extends CommandBase {
  vm: string;
  /** The words after the VM: one `sh -c` command, or with `argv` the exact argv. */
  command: string[];
  argv: boolean;
  /** Server-side limit on the command, in seconds. */
  timeoutSec: number | undefined;
  /** Write output as it is produced (`--no-stream`: at the end). */
  stream: boolean;
  /** Start an exec session, print its id and return at once. */
  detach: boolean;
}

export function newVmExecCommand(f: Factory, runF: RunF<VmExecOptions> = vmExecRun): Command {
  const cmd = newCommand(
    f,
    'exec <vm> <command...>',
    'Run a command in a VM (words after <vm> form one sh -c command); output streams as it is\n' +
      'produced; exits with its exit code',
  )
    .option('--timeout <sec>', 'server-side limit on the command, in seconds')
    .option('--argv', 'send the arguments as the exact argv instead of through sh -c')
    .option('--no-stream', 'wait for the command to finish and print its output at once')
    .option('--detach', "start it in the background and print its exec id (see 'fastvm vm attach')")
    // Everything after the VM belongs to the remote command (like `docker exec`), options too.
    .passThroughOptions();
  return onRun(f, cmd, (c, base) => {
    const o = c.opts<{ timeout?: string; argv?: boolean; stream: boolean; detach?: boolean }>();
    const words = c.processedArgs[1] as string[];
    return runF({
      ...base,
      vm: c.processedArgs[0] as string,
      // `exec dev -- ls`: a `--` right after the VM only separates.
      command: words[0] === '--' ? words.slice(1) : words,
      argv: o.argv === true,
      timeoutSec: positiveInt(o.timeout, '--timeout'),
      stream: o.stream,
      detach: o.detach === true,
    });
  });
}

export async function vmExecRun(o: VmExecOptions): Promise<number> {
  if (o.command.length === 0) throw new CliError("missing required argument 'command'");
  const command = o.argv ? o.command : o.command.join(' ');
  const { timeoutSec } = o;
  const client = await o.client();
  if (o.detach) {
    const session = await withRef(o, 'vm', o.vm, (id) =>
      client.execDetached(id, command, { timeoutSec }),
    );
    o.io.stdout.write(o.json ? json(session) : `${session.execId}\n`);
    return 0;
  }
  if (o.stream && !o.json) {
    // Streaming (NDJSON): output is written as it arrives; the first event (or error) decides
    // whether the VM reference needs resolving.
    const open = async (id: string) => {
      const events = client.stream(id, command, { timeoutSec });
      return { events, first: await events.next() };
    };
    const { events, first } = await withRef(o, 'vm', o.vm, open);
    let exit: Extract<ExecEvent, { type: 'exit' }> | undefined;
    const handle = (ev: ExecEvent): void => {
      if (ev.type === 'stdout') o.io.stdout.write(ev.data);
      else if (ev.type === 'stderr') o.io.stderr.write(ev.data);
      else exit = ev;
    };
    if (!first.done) handle(first.value);
    for await (const ev of events) handle(ev);
    if (!exit) throw new CliError('the command stream ended without an exit status');
    if (exit.timedOut) o.io.stderr.write(`fastvm: command timed out after ${timeoutSec ?? '?'}s\n`);
    return exit.timedOut ? 124 : exitStatus(exit.exitCode);
  }
  const transport =
    timeoutSec === undefined ? undefined : Math.max(client.timeout, (timeoutSec + 30) * 1000);
  const result = await withRef(o, 'vm', o.vm, (id) =>
    client.run(id, command, { timeoutSec, timeout: transport }),
  );
  if (o.json) {
    o.io.stdout.write(json(resultToJson(result)));
  } else {
    o.io.stdout.write(result.stdout);
    o.io.stderr.write(result.stderr);
    if (result.stdoutTruncated)
      o.io.stderr.write('fastvm: warning: stdout was truncated by the server\n');
    if (result.stderrTruncated)
      o.io.stderr.write('fastvm: warning: stderr was truncated by the server\n');
    if (result.timedOut)
      o.io.stderr.write(`fastvm: command timed out after ${timeoutSec ?? '?'}s\n`);
  }
  return result.timedOut ? 124 : exitStatus(result.exitCode);
}

/** A remote exit code as a process exit status (0..255; out-of-range values become 255). */
export function exitStatus(code: number): number {
  return Number.isInteger(code) && code >= 0 && code <= 255 ? code : 255;
}
