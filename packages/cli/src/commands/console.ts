// fastvm vm console <vm> | fastvm console <vm>: an interactive shell in a VM.
import { spawnSync } from 'node:child_process';
import type { Command } from 'commander';
import type { ConsoleExit, ConsoleSession } from 'fastvm';
import type { Context } from '../context.js';
import { leaf } from './common.js';

const DESCRIPTION =
  'Open an interactive shell in a VM (a login shell on a terminal); exits with its exit status.\n' +
  'The local terminal is put in raw mode, so every key (Ctrl-C too) goes to the VM; Ctrl-] disconnects.\n' +
  'Without a terminal, standard input is typed into the shell and its end sends Ctrl-D.';

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

/** Adds `console <vm>` to the `vm` group. */
export function addConsoleCommand(
  group: Command,
  ctx: Context,
  done: (code: number) => void,
): void {
  leaf(group, 'console <vm>', DESCRIPTION).action(async (ref: string) => {
    done(await runConsole(ctx, ref));
  });
}

/** Configures `group` as the top-level `console` command (same as `vm console`). */
export function consoleCommand(group: Command, ctx: Context, done: (code: number) => void): void {
  group
    .description(DESCRIPTION)
    .arguments('<vm>')
    .action(async (ref: string) => {
      done(await runConsole(ctx, ref));
    });
}

/** Runs a console session on the process's terminal; resolves with the exit status to use. */
export async function runConsole(ctx: Context, ref: string): Promise<number> {
  const stdin = ctx.io.stdin as TerminalIn;
  const stdout = ctx.io.stdout as TerminalOut;
  const tty = stdin.isTTY === true && typeof stdin.setRawMode === 'function';
  const size =
    stdout.isTTY && stdout.columns && stdout.rows
      ? { cols: stdout.columns, rows: stdout.rows }
      : {};
  const session: ConsoleSession = await ctx.withRef('vm', ref, (id) =>
    ctx.client().console(id, size),
  );

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
  session.on('data', (chunk) => ctx.out(chunk));

  const wasRaw = stdin.isRaw === true;
  if (tty) {
    ctx.err(`Connected to ${ref}. Ctrl-] disconnects.\r\n`);
    stdin.setRawMode!(true);
    // Node's raw mode keeps output processing (\n → \r\n), which would garble full-screen
    // programs in the VM: the VM's terminal already did that. Turn it off too (as `tty.setraw`
    // does); setRawMode(false) restores the terminal as it was, this included.
    if (stdin === (process.stdin as unknown)) {
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
    ctx.err('\r\nDisconnected (the shell was hung up).\r\n');
    return 0;
  }
  const why = exit.reason || `WebSocket closed with code ${exit.closeCode}`;
  ctx.err(`\r\nfastvm: console closed: ${why}\r\n`);
  return 1;
}
