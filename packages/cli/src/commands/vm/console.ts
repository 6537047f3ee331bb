// fastvm vm console <vm> | fastvm console <vm>: an interactive shell in a VM.
import type { Command } from 'commander';
import type { ConsoleExit, ConsoleSession } from 'fastvm';
import { newCommand, onRun, withRef, type CommandBase, type RunF } from '../../cmdutil.js';
import type { Factory } from '../../factory.js';

const DESCRIPTION =
  'Open an interactive shell in a VM (a login shell on a terminal); exits with its exit status.\n' +
  'The local terminal is put in raw mode, so every key (Ctrl-C too) goes to the VM; Ctrl-] disconnects.\n' +
  'Without a terminal, standard input is typed into the shell and its end sends Ctrl-D.';

export interface ConsoleOptions extends CommandBase {
  vm: string;
}

/** `console <vm>`, both as `fastvm vm console` and as the top-level `fastvm console`. */
export function newConsoleCommand(f: Factory, runF: RunF<ConsoleOptions> = consoleRun): Command {
  const cmd = newCommand(f, 'console <vm>', DESCRIPTION);
  return onRun(f, cmd, (c, base) => runF({ ...base, vm: c.args[0]! }));
}

/** Ctrl-]: disconnect (as in telnet and the official CLI). */
const ESCAPE = 0x1d;
/** Ctrl-D: end of input at an empty shell prompt. */
const EOT = Buffer.from([0x04]);

/** The streams the console needs; `process.stdin`/`process.stdout` in real use. */
interface TerminalIn {
  isTTY?: boolean | undefined;
  setRawMode?: (raw: boolean) => unknown;
  isRaw?: boolean | undefined;
  on(event: 'data', cb: (chunk: Buffer) => void): unknown;
  on(event: 'end', cb: () => void): unknown;
  off(event: string, cb: (...args: never[]) => void): unknown;
  resume(): unknown;
  pause(): unknown;
}

interface TerminalOut {
  isTTY?: boolean | undefined;
  columns?: number | undefined;
  rows?: number | undefined;
  on?(event: 'resize', cb: () => void): unknown;
  off?(event: 'resize', cb: () => void): unknown;
}

/** Runs a console session on the process's terminal; resolves with the exit status to use. */
export async function consoleRun(o: ConsoleOptions): Promise<number> {
  const client = await o.client();
  const ref = o.vm;
  const stdin = o.io.stdin as TerminalIn;
  const stdout = o.io.stdout as TerminalOut;
  const tty = stdin.isTTY === true && typeof stdin.setRawMode === 'function';
  const size =
    stdout.isTTY && stdout.columns && stdout.rows
      ? { cols: stdout.columns, rows: stdout.rows }
      : {};
  const session: ConsoleSession = await withRef(o, 'vm', ref, (id) => client.console(id, size));

  let detached = false;
  const onInput = (chunk: Buffer): void => {
    const esc = tty ? chunk.indexOf(ESCAPE) : -1;
    if (esc >= 0) {
      if (esc > 0) session.write(chunk.subarray(0, esc));
      detached = true;
      session.close();
      return;
    }
    session.write(chunk);
  };
  const onEnd = (): void => session.write(EOT);
  const onResize = (): void => {
    if (stdout.columns && stdout.rows) session.resize(stdout.columns, stdout.rows);
  };
  session.on('data', (chunk) => o.io.stdout.write(chunk));

  const wasRaw = stdin.isRaw === true;
  if (tty) {
    o.io.stderr.write(`Connected to ${ref}. Ctrl-] disconnects.\r\n`);
    stdin.setRawMode!(true);
    // Node's raw mode keeps output processing (\n → \r\n), which would garble full-screen
    // programs in the VM: the VM's terminal already did that. Turn it off too (as `tty.setraw`
    // does); setRawMode(false) restores the terminal as it was, this included.
    if (stdin === (process.stdin as unknown)) {
      const { spawnSync } = await import('node:child_process');
      spawnSync('stty', ['-opost'], { stdio: ['inherit', 'ignore', 'ignore'] });
    }
  }
  stdin.on('data', onInput);
  stdin.on('end', onEnd);
  stdout.on?.('resize', onResize);
  stdin.resume();
  let exit: ConsoleExit;
  try {
    exit = await session.exited;
  } finally {
    stdin.off('data', onInput);
    stdin.off('end', onEnd);
    stdout.off?.('resize', onResize);
    if (tty) stdin.setRawMode!(wasRaw);
    stdin.pause();
  }

  if (exit.exitCode !== null) {
    return Number.isInteger(exit.exitCode) && exit.exitCode >= 0 && exit.exitCode <= 255
      ? exit.exitCode
      : 255;
  }
  if (detached) {
    o.io.stderr.write('\r\nDisconnected (the shell was hung up).\r\n');
    return 0;
  }
  const why = exit.reason || `WebSocket closed with code ${exit.closeCode}`;
  o.io.stderr.write(`\r\nfastvm: console closed: ${why}\r\n`);
  return 1;
}
